//! Use cases: what the service does, independent of how it is called. Each
//! method validates against the policy, asks `policy` for decisions and
//! `store` for state, and returns domain types. No SQL and no prost here.

mod batcher;
mod bulk;
pub mod concern;
mod consent;
pub mod disclosure;
pub mod erasure;
pub mod export;
pub mod feed;
pub mod import;
pub mod ledger;
pub mod preferences;
pub mod readiness;
pub mod record_writer;
pub mod unsubscribe;
pub mod vault;

pub use batcher::BatchLimits;
pub use bulk::{BULK_SUBJECTS, BulkQuery, MAX_BULK};
pub use consent::{
    BATCH_ITEMS, CheckQuery, ConsentOverview, ConsentService, MAX_BATCH, MAX_PAGE_SIZE,
    WATCH_PURPOSES,
};
pub use disclosure::{DisclosureAnswer, DisclosureService};
