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

/// Runs `consentd_import_refusals` for `ids` as the serving role, on a
/// connection of its own, in its own task.
fn importing(
    db: tokio_postgres::Client,
    ids: &'static [&'static str],
) -> tokio::task::JoinHandle<(i64, i64)> {
    tokio::spawn(async move {
        db.batch_execute("SET ROLE consentd_serving").await.unwrap();
        crate::appends::import_refusals(&db, ids).await
    })
}

/// The rows of `table` under `subject_id`.
async fn rows_of(app: &crate::helpers::TestApp, table: &str, subject_id: &str) -> i64 {
    app.db
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE subject_id = $1"),
            &[&subject_id],
        )
        .await
        .unwrap()
        .get(0)
}

/// The history's and the current state's rows under a pseudonym.
async fn erased_rows(db: &tokio_postgres::Client) -> (i64, i64) {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM consent_records WHERE subject_id LIKE 'erased-%'),
                    (SELECT count(*) FROM consent_state WHERE subject_id LIKE 'erased-%')",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The history and the current state no longer reach the subject through
/// a foreign key (V14): the import locks each subject it appends to, so an
/// erasure and an import of the same person take turns. An import first:
/// the erasure renames its refusal with the rest. An erasure first: the
/// import finds the id gone and registers it anew, refused.
#[tokio::test]
async fn an_import_racing_an_erasure_leaves_nothing_under_the_erased_id() {
    use pb::{Choice, Decision};
    let app = spawn_app().await;
    let mut holder = app.connect_db().await;
    // The import first: it holds the subject while it waits for the chain
    // head the test holds; the erasure waits for it.
    app.register("C-import-first").await;
    app.record("C-import-first", "partner_offers", "", Choice::Grant)
        .await;
    let held = holder.transaction().await.unwrap();
    held.query_one(
        "SELECT 1 FROM ledger_heads h JOIN subjects s USING (subject_key)
          WHERE s.subject_id = 'C-import-first' FOR UPDATE OF h",
        &[],
    )
    .await
    .unwrap();
    let import = importing(app.connect_db().await, &["C-import-first"]);
    app.until_waiting_on_locks(1).await;
    let erasure = erasing(app.channel.clone(), "C-import-first");
    app.until_waiting_on_locks(2).await;
    held.rollback().await.unwrap();
    assert_eq!(import.await.unwrap(), (0, 1), "the import, first, refuses");
    erasure
        .await
        .unwrap()
        .expect("the erasure after it succeeds");
    for table in ["subjects", "consent_records", "consent_state"] {
        assert_eq!(rows_of(&app, table, "C-import-first").await, 0, "{table}");
    }
    assert_eq!(
        erased_rows(&app.db).await,
        (2, 2),
        "the grant and the imported refusal, and both purposes' state, carry the pseudonym"
    );

    // The erasure first: it holds the subject while it waits for the
    // current state the test holds; the import waits for it, then finds
    // the id renamed and registers it anew.
    app.register("C-erase-first").await;
    app.record("C-erase-first", "partner_offers", "", Choice::Grant)
        .await;
    let held = holder.transaction().await.unwrap();
    held.query_one(
        "SELECT 1 FROM consent_state WHERE subject_id = 'C-erase-first' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let erasure = erasing(app.channel.clone(), "C-erase-first");
    app.until_waiting_on_locks(1).await;
    let import = importing(app.connect_db().await, &["C-erase-first"]);
    app.until_waiting_on_locks(2).await;
    held.rollback().await.unwrap();
    erasure
        .await
        .unwrap()
        .expect("the erasure, first, succeeds");
    assert_eq!(
        import.await.unwrap(),
        (1, 1),
        "the import registers the id anew and refuses"
    );
    assert_eq!(
        erased_rows(&app.db).await,
        (3, 3),
        "only the erased life's grant joins the pseudonyms"
    );
    assert_eq!(
        crate::appends::chain_positions(&app, "C-erase-first").await,
        [1],
        "one record, and the new registration's chain starts anew"
    );
    let fresh = app.position_now().await;
    let answer = app
        .check_with("C-erase-first", "promotional_mail", "email", fresh)
        .await;
    assert_eq!(answer.decision(), Decision::Deny);
    let (ok, out, _) = crate::ledger::verify(&app).await;
    assert!(ok, "{out}");
}
