//! The change feed carries erasures, so that whoever copied records from it
//! can drop what they hold about the person.

use std::time::Duration;

use consentd::grpc::pb::{
    self, Choice, subject_rights_service_client::SubjectRightsServiceClient,
    watch_changes_response::Change,
};
use prost::Message as _;
use tokio_stream::StreamExt as _;
use tonic::Streaming;

use crate::helpers::{TestApp, as_actor, spawn_app};

const ID: &str = "C-1042-erase-me";
const SOON: Duration = Duration::from_secs(10);

async fn erase(app: &TestApp) -> pb::EraseSubjectResponse {
    SubjectRightsServiceClient::new(app.channel.clone())
        .erase_subject(as_actor(
            "privacy-officer",
            pb::EraseSubjectRequest {
                subject_id: ID.into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn watch(app: &TestApp, purposes: &[&str]) -> Streaming<pb::WatchChangesResponse> {
    app.client
        .clone()
        .watch_changes(pb::WatchChangesRequest {
            after: 0,
            purposes: purposes.iter().map(|p| p.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The sequences of the records before the next erasure, and the erasure.
async fn until_erasure(
    stream: &mut Streaming<pb::WatchChangesResponse>,
) -> (Vec<i64>, pb::SubjectErased, Vec<u8>) {
    let mut before = Vec::new();
    loop {
        let change = tokio::time::timeout(SOON, stream.next())
            .await
            .expect("a change within the time limit")
            .expect("the stream is open")
            .expect("no error");
        let wire = change.encode_to_vec();
        match change.change.expect("a change") {
            Change::Record(record) => before.push(record.sequence),
            Change::Erasure(erasure) => return (before, erasure, wire),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_stream_sees_an_erasure_after_the_persons_records_naming_them_by_sequence_only() {
    let app = spawn_app().await;
    app.register(ID).await;
    let promo = app.record(ID, "promotional_mail", "", Choice::Refuse).await;
    app.register("C-other").await;
    let other = app
        .record("C-other", "promotional_mail", "", Choice::Refuse)
        .await;
    let partner = app.record(ID, "partner_offers", "", Choice::Grant).await;
    let mut live = watch(&app, &[]).await;
    let mut mailer = watch(&app, &["promotional_mail"]).await;

    let erased = erase(&app).await;
    // One that reads the erasure from the tables rather than live.
    let mut late = watch(&app, &[]).await;

    for stream in [&mut live, &mut late] {
        let (before, erasure, wire) = until_erasure(stream).await;
        assert_eq!(before, [promo.sequence, other.sequence, partner.sequence]);
        assert!(
            erasure.sequence > partner.sequence,
            "after the person's records"
        );
        assert_eq!(erasure.record_sequences, [promo.sequence, partner.sequence]);
        assert_eq!(erasure.pseudonym, erased.pseudonym);
        assert!(erasure.erased_at.is_some());
        assert!(
            !contains(&wire, ID.as_bytes()),
            "no external id on the wire"
        );
        assert!(!format!("{erasure:?}").contains("1042"));
    }
    // A stream of one purpose is named only the records it could have had.
    let (before, erasure, _) = until_erasure(&mut mailer).await;
    assert_eq!(before, [promo.sequence, other.sequence]);
    assert_eq!(erasure.record_sequences, [promo.sequence]);
}

#[tokio::test]
async fn a_person_erased_again_after_registering_again_gets_a_second_event() {
    let app = spawn_app().await;
    app.register(ID).await;
    let first_life = app.record(ID, "promotional_mail", "", Choice::Refuse).await;
    let first = erase(&app).await;
    // The refusal is carried into the second registration as a new record.
    app.register(ID).await;
    let granted = app.record(ID, "partner_offers", "", Choice::Grant).await;
    let second = erase(&app).await;
    assert!(!second.already_erased);

    let mut stream = watch(&app, &[]).await;
    let (_, one, _) = until_erasure(&mut stream).await;
    let (between, two, _) = until_erasure(&mut stream).await;
    assert_eq!(one.record_sequences, [first_life.sequence]);
    assert_eq!(one.pseudonym, first.pseudonym);
    assert_eq!(two.pseudonym, second.pseudonym);
    assert_eq!(
        between.len(),
        2,
        "the carried refusal and the grant: {between:?}"
    );
    assert_eq!(
        two.record_sequences, between,
        "the second life's records only"
    );
    assert!(two.record_sequences.contains(&granted.sequence));
}
