//! Every write answers with a consistency token (issue 12): the feed
//! position of what it wrote, read here against the rows themselves.

use std::process::Command;

use consentd::{
    domain::ConsistencyToken,
    grpc::pb::{
        self, Choice, disclosure_service_client::DisclosureServiceClient,
        subject_rights_service_client::SubjectRightsServiceClient,
    },
};

use crate::{
    disclosure::put_request,
    helpers::{
        TestApp, as_actor, http_request, policy_path, record_request, registration, spawn_app,
    },
    preference_page::{csrf_of, preference_link},
    unsubscribe::{links, path_of},
};

const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

/// The feed position a token carries; fails the test if it does not parse.
fn position(token: &str) -> i64 {
    ConsistencyToken::parse(token)
        .unwrap_or_else(|e| panic!("{token:?} {e}"))
        .sequence()
}

/// One bigint a query reads.
async fn sql(app: &TestApp, query: &str, param: &str) -> i64 {
    app.db.query_one(query, &[&param]).await.unwrap().get(0)
}

async fn register(app: &TestApp, request: pb::RegisterSubjectRequest) -> String {
    app.client
        .clone()
        .register_subject(request)
        .await
        .unwrap()
        .into_inner()
        .consistency_token
}

async fn erase(app: &TestApp, subject: &str) -> pb::EraseSubjectResponse {
    SubjectRightsServiceClient::new(app.channel.clone())
        .erase_subject(as_actor(
            "privacy-officer",
            pb::EraseSubjectRequest {
                subject_id: subject.into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

const SUBJECT_SEQUENCE: &str = "SELECT sequence FROM subjects WHERE subject_id = $1";

#[tokio::test]
async fn a_registration_answers_with_its_position_also_on_a_repeat_and_a_retry() {
    let app = spawn_app().await;
    let retried = pb::RegisterSubjectRequest {
        request_id: "reg-1".into(),
        ..registration("C-1")
    };
    let first = register(&app, retried.clone()).await;
    assert_eq!(position(&first), sql(&app, SUBJECT_SEQUENCE, "C-1").await);
    assert_eq!(register(&app, retried).await, first, "a retry");
    let changed = pb::RegisterSubjectRequest {
        notice_version: "2027-01".into(),
        ..registration("C-1")
    };
    assert_eq!(
        register(&app, changed).await,
        first,
        "a repeat that updates"
    );

    let later = register(&app, registration("C-2")).await;
    assert_eq!(position(&later), sql(&app, SUBJECT_SEQUENCE, "C-2").await);
    assert!(position(&later) > position(&first));
}

/// A registration of an erased id carries its refusals over in the same
/// transaction, after the subject row: a Check passing the token must see
/// them, so the token names the last of them.
#[tokio::test]
async fn a_registration_of_an_erased_id_answers_with_the_refusals_it_carried() {
    let app = spawn_app().await;
    app.register("C-9").await;
    app.record("C-9", "promotional_mail", "", Choice::Refuse)
        .await;
    app.record("C-9", "partner_offers", "", Choice::Refuse)
        .await;
    erase(&app, "C-9").await;

    let token = register(&app, registration("C-9")).await;
    let carried = sql(
        &app,
        "SELECT max(sequence) FROM consent_records
          WHERE subject_id = $1 AND actor = 'erasure-suppression'",
        "C-9",
    )
    .await;
    assert!(carried > sql(&app, SUBJECT_SEQUENCE, "C-9").await);
    assert_eq!(position(&token), carried);
    let again = register(&app, registration("C-9")).await;
    assert_eq!(again, token, "a repeat");
}

#[tokio::test]
async fn a_record_answers_with_its_sequence_and_a_retry_with_the_first_ones() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let request = pb::RecordConsentRequest {
        request_id: "rec-1".into(),
        ..record_request("C-1", "promotional_mail", "", Choice::Refuse)
    };
    let first = app
        .client
        .clone()
        .record_consent(request.clone())
        .await
        .unwrap()
        .into_inner();
    let record = first.record.unwrap();
    let stored = sql(
        &app,
        "SELECT sequence FROM consent_records WHERE record_id::text = $1",
        &record.record_id,
    )
    .await;
    assert_eq!(position(&first.consistency_token), stored);

    let retry = app
        .client
        .clone()
        .record_consent(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.consistency_token, first.consistency_token);

    let later = app
        .client
        .clone()
        .record_consent(record_request("C-1", "promotional_mail", "", Choice::Grant))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        position(&later.consistency_token),
        later.record.unwrap().sequence
    );
    assert!(position(&later.consistency_token) > stored);
}

const FIELD_SEQUENCE: &str =
    "SELECT sequence FROM personal_data WHERE subject_id = $1 AND field = 'phone'";

#[tokio::test]
async fn storing_and_verifying_a_value_answer_with_the_values_position() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let mut vault = DisclosureServiceClient::new(app.channel.clone());
    let put = pb::PutPersonalDataRequest {
        request_id: "put-1".into(),
        ..put_request("C-1", "phone", "+86 21 5555 0100", &["order_delivery"])
    };
    let first = vault.put_personal_data(put.clone()).await.unwrap();
    let first = first.into_inner().consistency_token;
    assert_eq!(position(&first), sql(&app, FIELD_SEQUENCE, "C-1").await);
    let retry = vault.put_personal_data(put).await.unwrap().into_inner();
    assert_eq!(retry.consistency_token, first, "a retry");

    let verified = vault
        .verify_personal_data(pb::VerifyPersonalDataRequest {
            subject_id: "C-1".into(),
            field: "phone".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .consistency_token;
    assert_eq!(position(&verified), sql(&app, FIELD_SEQUENCE, "C-1").await);
    assert!(position(&verified) > position(&first));

    let replaced = vault
        .put_personal_data(put_request(
            "C-1",
            "phone",
            "+86 21 5555 0199",
            &["order_delivery"],
        ))
        .await
        .unwrap()
        .into_inner()
        .consistency_token;
    assert_eq!(position(&replaced), sql(&app, FIELD_SEQUENCE, "C-1").await);
    assert!(position(&replaced) > position(&verified));
}

#[tokio::test]
async fn an_erasure_answers_with_its_events_position_and_a_repeat_with_the_same() {
    let app = spawn_app().await;
    app.register("C-1").await;
    app.record("C-1", "promotional_mail", "", Choice::Refuse)
        .await;
    let erased = erase(&app, "C-1").await;
    assert!(!erased.already_erased);
    let event = sql(
        &app,
        "SELECT sequence FROM erasure_events WHERE pseudonym = $1",
        &erased.pseudonym,
    )
    .await;
    assert_eq!(position(&erased.consistency_token), event);

    let again = erase(&app, "C-1").await;
    assert!(again.already_erased);
    assert_eq!(again.consistency_token, erased.consistency_token);

    // Registered and erased again: a new event, a later position.
    app.register("C-1").await;
    let second = erase(&app, "C-1").await;
    assert!(position(&second.consistency_token) > event);
}

#[tokio::test]
async fn the_one_click_post_answers_with_the_refusals_position() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let link = links(&app, &["C-1"], "").await.links.remove(0);
    let post = || http_post(&app, &link.url);

    let response = post().await;
    assert_eq!(response.status, 200, "{}", response.body);
    let token = response
        .header("consistency-token")
        .expect("a Consistency-Token header")
        .to_string();
    let refusal = sql(
        &app,
        "SELECT max(sequence) FROM consent_records WHERE subject_id = $1 AND choice = 'refuse'",
        "C-1",
    )
    .await;
    assert_eq!(position(&token), refusal);

    let again = post().await;
    assert_eq!(again.status, 200);
    assert_eq!(app.count("consent_records").await, 1);
    assert_eq!(again.header("consistency-token"), Some(token.as_str()));
}

async fn http_post(app: &TestApp, url: &str) -> crate::helpers::HttpResponse {
    http_request(app.http_addr, "POST", &path_of(url), &[], ONE_CLICK).await
}

/// Several records from one form: the token is the last one's.
#[tokio::test]
async fn a_saved_preference_form_answers_with_its_last_records_position() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let path = preference_link(&app, "C-1").await;
    let page = http_request(app.http_addr, "GET", &path, &[], "").await;
    let form = format!(
        "csrf={}&intent=choices&purpose.promotional_mail=refuse&recipient.travel-partner=grant",
        csrf_of(&page.body)
    );
    let post = || http_request(app.http_addr, "POST", &path, &[], &form);

    let saved = post().await;
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert!(app.count("consent_records").await >= 2);
    let last = sql(
        &app,
        "SELECT max(sequence) FROM consent_records WHERE subject_id = $1",
        "C-1",
    )
    .await;
    let token = saved
        .header("consistency-token")
        .expect("a Consistency-Token header");
    assert_eq!(position(token), last);

    let unchanged = post().await;
    assert!(unchanged.body.contains("Nothing changed"));
    assert_eq!(
        unchanged.header("consistency-token"),
        None,
        "nothing written, no token"
    );
}

#[tokio::test]
async fn an_import_prints_the_position_of_the_last_refusal_it_wrote() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let dir =
        std::env::temp_dir().join(format!("consentd-tokens-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("list.csv");
    std::fs::write(&file, "C-1\nC-2\nC-3\n").unwrap();
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_consentd"))
            .arg("import-refusals")
            .args(["--database-url", app.db_url()])
            .args(["--purpose", "promotional_mail", "--policy"])
            .arg(policy_path())
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("consistency token: "))
            .unwrap_or_else(|| panic!("no token line in {stdout:?}"));
        position(line)
    };

    let first = run();
    let last = sql(
        &app,
        "SELECT max(sequence) FROM consent_records WHERE channel = $1",
        "import",
    )
    .await;
    assert_eq!(first, last);
    assert_eq!(app.count("consent_records").await, 3);
    // A second run writes nothing; the refusals it found are at or before
    // its token, and nothing else was written since.
    assert_eq!(run(), first);
    std::fs::remove_dir_all(dir).unwrap();
}
