//! The written policy and the pure rules that apply it. Nothing here does IO
//! except `Policy::load`, which reads the file once at start: every decision
//! is a function of its arguments, so it can be tested over every branch
//! without a database.
//!
//! - `model`: the policy as the rules read it, with its lookups.
//! - `load`: reads `policy.toml`, one check per section, every problem with
//!   its line.
//! - `check`: whether a request names only what the policy declares; a
//!   request that fails is a caller bug, answered before any decision.
//! - `decide`: may a field of a subject be used for a purpose?
//! - `disclose`: what may go to a recipient, and why the rest may not.
//! - [`concern`]: deadlines and status changes of a concern.
//! - [`callers`]: the callers file and `authorize`, whether one caller may
//!   make one call.
//! - [`rate`]: whether one more call fits a caller's rate, and the buckets.
//!
//! This module never touches `store`, `grpc` or `service`.

pub mod callers;
mod check;
pub mod concern;
mod decide;
mod disclose;
mod load;
mod model;
pub mod preferences;
pub mod rate;

pub use crate::domain::Reason;
pub use callers::{Access, Callers, CallersError, Known, Refusal, authorize};
pub use check::DisclosureParts;
pub use decide::{
    DataFacts, Decision, Outcome, Standing, decide, decide_known, decide_standing,
    decide_with_data, is_stale,
};
pub use disclose::{
    DisclosureDecision, DisclosureFacts, DisclosureRequest, EMERGENCY_REVIEW_HOURS, FieldOutcome,
    Ground, decide_disclosure,
};
pub use load::{PolicyError, Problem};
pub use model::{Basis, Category, DisclosureRule, FieldDef, Policy, Purpose, Recipient};
