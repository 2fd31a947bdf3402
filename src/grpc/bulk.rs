//! BulkCheck over gRPC: a stream of requests, each one purpose, one field
//! and up to [`MAX_BULK`](crate::service::MAX_BULK) subject ids, answered one by one in order.
//!
//! Flow control is end to end. One task per stream reads a request,
//! decides it and hands the answer to a channel of one slot; only then does
//! it read the next request. The connection takes answers from the channel
//! only as HTTP/2 flow control lets it send them, so when the client stops
//! reading, the task blocks on the full slot, stops reading requests, and
//! the client's own sends stall once the server's receive window is full. At
//! most one answer waits in the slot and one request is being decided.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Status, Streaming};
use tracing::{Instrument as _, field::Empty};

use super::{
    ConsentGrpc,
    auth::Permit,
    convert::done,
    enums::PbEnum as _,
    pb::{BulkCheckRequest, BulkCheckResponse},
};
use crate::{
    domain::{ConsistencyToken, FieldName, PurposeCode, SubjectId, Violations},
    error::{Error, Result},
    policy::{Decision, Outcome, Policy},
    service::{BULK_SUBJECTS, BulkQuery},
};

/// The answers of one BulkCheck stream.
pub type BulkStream = Pin<Box<dyn Stream<Item = Result<BulkCheckResponse, Status>> + Send>>;

/// The most malformed subject ids named one by one in a BadRequest; the
/// rest are counted in one more violation, so a hostile list of 10,000 bad
/// ids costs 101 violations, not 10,000.
const MAX_ID_VIOLATIONS: usize = 100;

/// A request as the service takes it. The purpose and field are checked
/// once for the request, each id on its own.
pub fn parse_bulk(policy: &Policy, r: BulkCheckRequest) -> Result<BulkQuery> {
    let mut v = Violations::new();
    let purpose = v.check("purpose", PurposeCode::parse(r.purpose));
    let field = v.check("field", FieldName::parse(r.field));
    v.merge(policy.check_query_parts(purpose.as_ref(), field.as_ref()));
    let count = r.subject_ids.len();
    if !BULK_SUBJECTS.check(&mut v, count) {
        // Over the limit the ids are not worth looking at.
        return Err(v.into());
    }
    let mut subject_ids = Vec::with_capacity(count);
    let mut malformed = 0usize;
    // Each id's String moves into its SubjectId: no copy per id.
    for (i, id) in r.subject_ids.into_iter().enumerate() {
        match SubjectId::parse(id) {
            Ok(id) => subject_ids.push(id),
            Err(problem) => {
                malformed += 1;
                if malformed <= MAX_ID_VIOLATIONS {
                    v.push(format!("subject_ids[{i}]"), problem);
                }
            }
        }
    }
    if malformed > MAX_ID_VIOLATIONS {
        v.push(
            "subject_ids",
            format!(
                "{} more subject ids are malformed; the first {MAX_ID_VIOLATIONS} are listed",
                malformed - MAX_ID_VIOLATIONS
            ),
        );
    }
    let consistency = super::consistency::parse_consistency(&mut v, r.consistency);
    let parsed = (|| {
        Some(BulkQuery {
            purpose: purpose?,
            field: field?,
            subject_ids,
            consistency: consistency?,
        })
    })();
    done(v, parsed)
}

/// One answer: decisions and reasons in the order of the ids, and the
/// positions that need verification.
pub fn bulk_response(
    decisions: &[Decision],
    policy_version: String,
    at: ConsistencyToken,
) -> BulkCheckResponse {
    let mut response = BulkCheckResponse {
        decisions: Vec::with_capacity(decisions.len()),
        reasons: Vec::with_capacity(decisions.len()),
        needs_verification: Vec::new(),
        policy_version,
        consistency_token: at.encode(),
    };
    for (i, decision) in decisions.iter().enumerate() {
        response.decisions.push(decision.outcome.to_wire());
        response.reasons.push(decision.reason.to_wire());
        if decision.needs_verification {
            // i < MAX_BULK, far below u32::MAX.
            response.needs_verification.push(i as u32);
        }
    }
    response
}

impl ConsentGrpc {
    /// Starts answering `requests` in a task of its own, in the current
    /// (the RPC's) span.
    pub(super) fn bulk_stream(
        &self,
        permit: Permit,
        requests: Streaming<BulkCheckRequest>,
    ) -> BulkStream {
        // One slot: see the module doc. A larger buffer would let a client
        // that never reads make the server decide and hold its whole input.
        let (answers, rx) = mpsc::channel(1);
        tokio::spawn(
            self.clone()
                .answer_bulk(permit, requests, answers)
                .instrument(tracing::Span::current()),
        );
        Box::pin(ReceiverStream::new(rx))
    }

    /// Answers each request in turn until the client closes its side, a
    /// request fails (its status ends the stream), the client goes away, or
    /// the server shuts down.
    async fn answer_bulk(
        self,
        permit: Permit,
        mut requests: Streaming<BulkCheckRequest>,
        answers: mpsc::Sender<Result<BulkCheckResponse, Status>>,
    ) {
        loop {
            let next = tokio::select! {
                // A request already read is answered before shutdown ends
                // the stream; shutdown only stops the reading of another.
                biased;
                () = self.stop.cancelled() => Err(Status::from(Error::ShuttingDown)),
                () = answers.closed() => return,
                message = requests.message() => message,
            };
            let answer = match next {
                Ok(Some(request)) => self.answer(&permit, request).await.map_err(Status::from),
                Ok(None) => return,
                Err(status) => Err(status),
            };
            let last = answer.is_err();
            if answers.send(answer).await.is_err() || last {
                return;
            }
        }
    }

    /// One request, in a span of its own under the stream's.
    async fn answer(
        &self,
        permit: &Permit,
        request: BulkCheckRequest,
    ) -> Result<BulkCheckResponse> {
        let span = tracing::info_span!(
            "bulk_check.request",
            consent.purpose = Empty,
            consent.field = Empty,
            consent.bulk.size = request.subject_ids.len() as i64,
            consent.bulk.allowed = Empty,
            consent.bulk.needs_verification = Empty,
            consent.policy_version = Empty,
        );
        async {
            let policy = self.service.policy();
            let query = parse_bulk(policy, request)?;
            permit.allow(std::slice::from_ref(&query.purpose), &[], &[])?;
            let (decisions, at) = self.service.bulk_check(&query).await?;
            let response = bulk_response(&decisions, policy.version().to_string(), at);
            let span = tracing::Span::current();
            span.record("consent.purpose", query.purpose.as_str());
            span.record("consent.field", query.field.as_str());
            // Counts as i64: OpenTelemetry has no unsigned integers.
            let allowed = (decisions.iter())
                .filter(|d| d.outcome == Outcome::Allow)
                .count();
            span.record("consent.bulk.allowed", allowed as i64);
            span.record(
                "consent.bulk.needs_verification",
                response.needs_verification.len() as i64,
            );
            span.record("consent.policy_version", policy.version());
            Ok(response)
        }
        .instrument(span)
        .await
    }
}
