//! BulkCheck's use case: one purpose and field, decided for many subjects.
//!
//! A mailer going through a list asks the same question of thousands of
//! subjects, so a request names its purpose and field once and its subjects
//! as a plain list. Decisions come from the same source as Check and
//! BatchCheck ([`ConsentService::decide_each`]), so the three never differ.

use crate::{
    domain::{Consistency, ConsistencyToken, FieldName, ListLimit, PurposeCode, SubjectId},
    error::{Error, Result},
    policy::Decision,
    service::ConsentService,
};

/// The most subject ids one BulkCheck request may carry.
pub const MAX_BULK: usize = 10_000;
/// BulkCheck's `subject_ids`, counted in the raw bytes before decoding.
pub const BULK_SUBJECTS: ListLimit = ListLimit {
    field: "subject_ids",
    noun: "subject ids",
    min: 1,
    max: MAX_BULK,
};

/// One BulkCheck request: may `field` of each subject be used for `purpose`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkQuery {
    pub purpose: PurposeCode,
    pub field: FieldName,
    /// 1 to [`MAX_BULK`]; an id may repeat.
    pub subject_ids: Vec<SubjectId>,
    pub consistency: Consistency,
}

impl ConsentService {
    /// One decision per subject of `query`, in its order. The purpose and
    /// field are checked against the policy once for the whole request.
    pub async fn bulk_check(&self, query: &BulkQuery) -> Result<(Vec<Decision>, ConsistencyToken)> {
        if let Some(violation) = BULK_SUBJECTS.violation(query.subject_ids.len()) {
            return Err(Error::InvalidArgument(vec![violation]));
        }
        let violations = self.policy().check_query(&query.purpose, &query.field);
        if !violations.is_empty() {
            return Err(violations.into());
        }
        let ids: Vec<&SubjectId> = query.subject_ids.iter().collect();
        self.decide_each(&ids, query.consistency, |_| (&query.purpose, &query.field))
            .await
    }
}
