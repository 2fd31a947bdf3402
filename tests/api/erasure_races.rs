//! Erasure racing the other writers of a subject: whichever takes the
//! subject's row first, nothing of the person survives under their id or
//! their pseudonym. Each writer is held mid-way on a row lock the test
//! takes, so both orders really overlap.

use consentd::grpc::pb::{
    self, disclosure_service_client::DisclosureServiceClient,
    subject_rights_service_client::SubjectRightsServiceClient,
};
use tonic::Code;

use crate::helpers::{as_actor, spawn_app};

/// An erasure of `subject` under way in its own task.
fn erasing(
    channel: tonic::transport::Channel,
    subject: &'static str,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::EraseSubjectResponse>, tonic::Status>> {
    tokio::spawn(async move {
        let request = pb::EraseSubjectRequest {
            subject_id: subject.into(),
            request_id: String::new(),
        };
        (SubjectRightsServiceClient::new(channel))
            .erase_subject(as_actor("privacy-officer", request))
            .await
    })
}

fn put_email(subject: &str, value: &str) -> pb::PutPersonalDataRequest {
    crate::disclosure::put_request(subject, "email", value, &["customer_support"])
}

/// A value stored while an erasure of its subject runs must not survive it
/// under the pseudonym: the two take turns on the subject's row, whichever
/// comes first. Each is held mid-way on a row lock the test takes, so both
/// orders really overlap.
#[tokio::test]
async fn a_value_stored_during_an_erasure_does_not_survive_it() {
    let app = spawn_app().await;
    let mut data = DisclosureServiceClient::new(app.channel.clone());
    let row_lock =
        "SELECT 1 FROM personal_data WHERE subject_id = $1 AND field = 'email' FOR UPDATE";

    // The store first: it holds the subject while it waits to replace the
    // stored row; the erasure then waits for it, and takes the new value too.
    app.register("C-put-first").await;
    (data
        .put_personal_data(put_email("C-put-first", "old-first@example.com"))
        .await)
        .unwrap();
    let mut holder = app.connect_db().await;
    let held = holder.transaction().await.unwrap();
    held.query_one(row_lock, &[&"C-put-first"]).await.unwrap();
    let mut put_client = data.clone();
    let put = tokio::spawn(async move {
        (put_client.put_personal_data(put_email("C-put-first", "new-first@example.com"))).await
    });
    app.until_waiting_on_locks(1).await;
    let erasure = erasing(app.channel.clone(), "C-put-first");
    app.until_waiting_on_locks(2).await;
    held.rollback().await.unwrap();
    put.await
        .unwrap()
        .expect("the store, first in line, succeeds");
    erasure
        .await
        .unwrap()
        .expect("the erasure succeeds after it");
    assert_eq!(app.count("personal_data").await, 0, "no value survives");

    // The erasure first: it holds the subject while it waits to delete the
    // stored row; the store then waits for it, and finds no subject.
    app.register("C-erase-first").await;
    (data
        .put_personal_data(put_email("C-erase-first", "old-second@example.com"))
        .await)
        .unwrap();
    let held = holder.transaction().await.unwrap();
    held.query_one(row_lock, &[&"C-erase-first"]).await.unwrap();
    let erasure = erasing(app.channel.clone(), "C-erase-first");
    app.until_waiting_on_locks(1).await;
    let put = tokio::spawn(async move {
        (data.put_personal_data(put_email("C-erase-first", "new-second@example.com"))).await
    });
    app.until_waiting_on_locks(2).await;
    held.rollback().await.unwrap();
    erasure
        .await
        .unwrap()
        .expect("the erasure, first in line, succeeds");
    let refused = put
        .await
        .unwrap()
        .expect_err("the store after it is refused");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert_eq!(app.count("personal_data").await, 0, "no value survives");
}
