//! Consistency tokens across two servers (issue 12): A writes to the
//! primary, B keeps its memory from a hot standby (`--read-database-url`).
//! A token from A's write makes B's answer include that write: from B's
//! memory when it has applied it in time, else read through to the primary.

use std::time::Duration;

use consentd::{
    domain::ConsistencyToken,
    grpc::pb::{self, Choice, Decision, Reason},
};

use crate::{
    helpers::{TestApp, at_least_as_fresh, record_request},
    standby::pair,
};

/// Only a hang guard: a correct pair propagates in milliseconds.
const GUARD: Duration = Duration::from_secs(30);

fn position(token: &str) -> i64 {
    ConsistencyToken::parse(token).unwrap().sequence()
}

/// A refusal of promotional mail written through `app`, and its token.
async fn opt_out(app: &TestApp, subject: &str) -> String {
    app.client
        .clone()
        .record_consent(record_request(
            subject,
            "promotional_mail",
            "",
            Choice::Refuse,
        ))
        .await
        .unwrap()
        .into_inner()
        .consistency_token
}

fn outcome(answer: &pb::CheckResponse) -> (Decision, Reason) {
    (answer.decision(), answer.reason())
}

/// Polls B's `minimize_latency` Check until it answers `wanted`; the hang
/// guard is the only time limit.
async fn until_b_answers(b: &TestApp, subject: &str, wanted: (Decision, Reason)) {
    let polled = async {
        while outcome(&b.check(subject, "promotional_mail", "email").await) != wanted {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(GUARD, polled)
        .await
        .unwrap_or_else(|_| panic!("B never answered {wanted:?} for {subject}"));
}

const ALLOWED: (Decision, Reason) = (Decision::Allow, Reason::NotOptedOut);
const OPTED_OUT: (Decision, Reason) = (Decision::Deny, Reason::OptedOut);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_through_a_is_denied_on_b_with_its_token_at_once_and_without_one_soon() {
    let pair = pair("tokens_pair").await;
    let (a, b) = (&pair.a, &pair.b);
    for subject in ["C-1", "C-2"] {
        a.register(subject).await;
        until_b_answers(b, subject, ALLOWED).await;
    }

    let token = opt_out(a, "C-1").await;
    let answer = b
        .check_with(
            "C-1",
            "promotional_mail",
            "email",
            at_least_as_fresh(&token),
        )
        .await;
    assert_eq!(outcome(&answer), OPTED_OUT, "at once, with A's token");
    assert!(position(&answer.consistency_token) >= position(&token));

    // No token: B's memory catches up from the standby by itself.
    opt_out(a, "C-2").await;
    until_b_answers(b, "C-2", OPTED_OUT).await;
}

/// The standby's replay is paused, so B's memory cannot reach the token:
/// B reads through to the primary, and says it answered at least that
/// fresh. Once replay resumes, B's memory has the opt-out too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_standby_has_not_reached_is_answered_from_the_primary() {
    let pair = pair("tokens_paused").await;
    let (a, b) = (&pair.a, &pair.b);
    a.register("C-1").await;
    until_b_answers(b, "C-1", ALLOWED).await;

    let standby = consentd::store::admin_connect(&pair.standby.url("tokens_paused"))
        .await
        .unwrap();
    standby
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let paused = async {
        loop {
            let state: String = standby
                .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
                .await
                .unwrap()
                .get(0);
            if state == "paused" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(GUARD, paused).await.unwrap();

    let token = opt_out(a, "C-1").await;
    let answer = b
        .check_with(
            "C-1",
            "promotional_mail",
            "email",
            at_least_as_fresh(&token),
        )
        .await;
    assert_eq!(outcome(&answer), OPTED_OUT, "read through to the primary");
    assert!(
        position(&answer.consistency_token) >= position(&token),
        "{} < {token}",
        answer.consistency_token
    );
    // The pause holds: B's memory has not got it, so the answer above did
    // not come from memory.
    let memory = b.check("C-1", "promotional_mail", "email").await;
    assert_eq!(outcome(&memory), ALLOWED);
    assert!(position(&memory.consistency_token) < position(&token));

    standby
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    until_b_answers(b, "C-1", OPTED_OUT).await;
}
