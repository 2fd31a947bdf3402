//! The written policy and the pure rules that apply it. Nothing here does IO
//! except `Policy::load`, which reads the file once at start: every decision
//! is a function of its arguments, so it can be tested over every branch
//! without a database.

pub mod concern;
mod decide;
mod file;

pub use decide::{Decision, Outcome, Reason, Undeclared, decide};
pub use file::{Basis, FieldDef, Policy, PolicyError, Purpose};
