//! The written policy and the pure rules that apply it. Nothing here does IO
//! except `Policy::load`, which reads the file once at start: every decision
//! is a function of its arguments, so it can be tested over every branch
//! without a database.

mod check;
pub mod concern;
mod decide;
mod disclose;
mod load;
mod model;

pub use crate::domain::Reason;
pub use decide::{Decision, Outcome, decide, decide_with_data, is_stale};
pub use disclose::{
    DisclosureDecision, DisclosureFacts, DisclosureRequest, EMERGENCY_REVIEW_HOURS, FieldOutcome,
    Ground, decide_disclosure,
};
pub use load::PolicyError;
pub use model::{Basis, Category, DisclosureRule, FieldDef, Policy, Purpose, Recipient};
