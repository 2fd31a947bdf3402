//! The person's own page behind the HTML (`service::preferences`), against
//! a real server and database: what the page shows, GPC, changes, concerns
//! and the download with its confirmation.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use consentd::{
    domain::{Choice, ConcernCategory, ConcernStatus, PurposeCode, RecipientId, SubjectId},
    error::Error,
    grpc::pb::{
        self, Decision, disclosure_service_client::DisclosureServiceClient,
        subject_rights_service_client::SubjectRightsServiceClient,
    },
    keys::KeyFile as _,
    policy::{Basis, Policy},
    service::{
        export::Exporter,
        preferences::{Change, DownloadError, LinkError, PreferenceLink, Preferences},
        unsubscribe::UnsubscribeKeys,
        vault::DataKeys,
    },
    store::Store,
};

use crate::helpers::{
    TestApp, fully_consistent, policy_path, spawn_app, test_data_keys_file, test_keys_file,
};

/// The page's service as the server builds it, on the test's database and
/// keys, with `clock` as its clock.
async fn build(app: &TestApp, clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>) -> Preferences {
    let store = Store::connect(app.db_url(), 4).unwrap();
    let policy = Arc::new(Policy::load(&policy_path()).unwrap());
    let keys = Arc::new(UnsubscribeKeys::load(&test_keys_file()).unwrap());
    let data_keys = Arc::new(DataKeys::load(&test_data_keys_file()).unwrap());
    let exporter = Exporter::new(store.clone(), data_keys, policy.concern_deadlines());
    let base_url = format!("http://{}", app.http_addr);
    Preferences::new(store, policy, keys, exporter, &base_url, 30).with_clock(clock)
}

pub async fn service(app: &TestApp) -> Preferences {
    build(app, Arc::new(Utc::now)).await
}

/// The service with its clock stopped at `at`.
pub async fn service_at(app: &TestApp, at: DateTime<Utc>) -> Preferences {
    build(app, Arc::new(move || at)).await
}

/// A registered subject's link, opened.
pub async fn opened_link(app: &TestApp, prefs: &Preferences, subject: &str) -> PreferenceLink {
    let response = crate::preference_links::preference_links(app, &[subject], "autumn-letter")
        .await
        .unwrap();
    prefs
        .open(crate::preference_links::token_of(&response.links[0].url))
        .unwrap()
}

fn purpose(code: &str) -> PurposeCode {
    PurposeCode::parse(code).unwrap()
}

fn partner() -> RecipientId {
    RecipientId::parse("travel-partner").unwrap()
}

/// The tests write through a `Preferences` of their own, as another
/// server would: a fully consistent check sees it.
async fn decision(app: &TestApp, subject: &str, purpose: &str, field: &str) -> Decision {
    app.check_with(subject, purpose, field, fully_consistent())
        .await
        .decision()
}

async fn history(app: &TestApp, subject: &str) -> Vec<pb::ConsentRecord> {
    app.client
        .clone()
        .list_consent_history(pb::ListConsentHistoryRequest {
            subject_id: subject.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records
}

#[tokio::test]
async fn the_page_shows_every_purpose_each_partner_the_disclosures_and_the_concerns() {
    let app = spawn_app().await;
    app.register("C-1").await;
    app.record("C-1", "promotional_mail", "", pb::Choice::Refuse)
        .await;
    let mut vault = DisclosureServiceClient::new(app.channel.clone());
    vault
        .put_personal_data(pb::PutPersonalDataRequest {
            subject_id: "C-1".into(),
            field: "postal_address".into(),
            value: "1 Nanjing Road".into(),
            collected_for: vec!["order_delivery".into()],
            channel: pb::Channel::Web.into(),
            notice_version: "2026-11".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    vault
        .request_disclosure(pb::RequestDisclosureRequest {
            subject_id: "C-1".into(),
            recipient_id: "express-courier".into(),
            purpose: "order_delivery".into(),
            fields: vec!["postal_address".into()],
            reference: "order-7781".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let prefs = service(&app).await;
    let link = opened_link(&app, &prefs, "C-1").await;
    prefs
        .file_concern(
            &link,
            ConcernCategory::UnwantedMail,
            "Too many letters".into(),
            "by email".into(),
        )
        .await
        .unwrap();

    let page = prefs.page(&link).await.unwrap();
    let policy = Policy::load(&policy_path()).unwrap();
    assert_eq!(page.policy_version, policy.version());
    let codes: Vec<_> = page.purposes.iter().map(|p| p.code.as_str()).collect();
    assert_eq!(
        codes,
        policy
            .purposes()
            .map(|p| p.code.as_str())
            .collect::<Vec<_>>()
    );
    for view in &page.purposes {
        let declared = policy.purpose(&view.code).unwrap();
        assert_eq!(view.description, declared.description);
        assert_eq!(view.basis, declared.basis);
        assert_eq!(
            view.changeable,
            view.basis != Basis::Contract,
            "{}",
            view.code
        );
        assert!(!view.from_gpc);
        let expected = !matches!(view.code.as_str(), "promotional_mail" | "partner_offers");
        assert_eq!(view.allowed, expected, "{}", view.code);
    }
    let partners: Vec<_> = page.recipients.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(partners, ["travel-partner"], "partners only");
    assert_eq!(page.recipients[0].name, "Changwei Travel Partners Ltd.");
    assert_eq!(page.recipients[0].contact, "dpo@travel-partner.example");
    assert!(!page.recipients[0].permitted);
    assert_eq!(page.disclosures.len(), 1);
    let line = &page.disclosures[0];
    assert_eq!(line.recipient_name, "SF Express (Shanghai) Co., Ltd.");
    assert_eq!(
        line.fields.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
        ["postal_address"]
    );
    assert_eq!(line.basis, "purpose: order_delivery");
    assert!(
        !format!("{line:?}").contains("Nanjing"),
        "names, never values"
    );
    assert_eq!(page.concerns.len(), 1);
    assert_eq!(page.concerns[0].status, ConcernStatus::Filed);
}

#[tokio::test]
async fn looking_at_the_page_writes_nothing() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let prefs = service(&app).await;
    let link = opened_link(&app, &prefs, "C-1").await;
    let before = app.counts().await;
    prefs.page(&link).await.unwrap();
    prefs.page(&link).await.unwrap();
    assert_eq!(app.counts().await, before);
}

#[tokio::test]
async fn gpc_refuses_every_opt_out_purpose_on_the_first_visit_only() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let prefs = service(&app).await;
    let link = opened_link(&app, &prefs, "C-1").await;
    assert_eq!(prefs.honour_gpc(&link).await.unwrap(), 1);
    assert_eq!(
        decision(&app, "C-1", "promotional_mail", "email").await,
        Decision::Deny
    );
    let records = history(&app, "C-1").await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].purpose, "promotional_mail");
    assert_eq!(records[0].evidence, "GPC");
    assert_eq!(records[0].channel(), pb::Channel::Web);
    let page = prefs.page(&link).await.unwrap();
    let from_gpc: Vec<_> = (page.purposes.iter())
        .filter(|p| p.from_gpc)
        .map(|p| p.code.as_str())
        .collect();
    assert_eq!(from_gpc, ["promotional_mail"]);
    assert_eq!(prefs.honour_gpc(&link).await.unwrap(), 0, "a second visit");
    assert_eq!(history(&app, "C-1").await.len(), 1);
}

#[tokio::test]
async fn an_explicit_choice_wins_over_gpc_then_and_later() {
    let app = spawn_app().await;
    app.register("C-1").await;
    app.register("C-2").await;
    let prefs = service(&app).await;
    // Chosen before the signal: the signal leaves it alone.
    app.record("C-2", "promotional_mail", "", pb::Choice::Grant)
        .await;
    let before = opened_link(&app, &prefs, "C-2").await;
    assert_eq!(prefs.honour_gpc(&before).await.unwrap(), 0);
    assert_eq!(
        decision(&app, "C-2", "promotional_mail", "email").await,
        Decision::Allow
    );

    // Chosen after the signal: the choice stands at every later visit.
    let link = opened_link(&app, &prefs, "C-1").await;
    prefs.honour_gpc(&link).await.unwrap();
    let grant = [Change::Purpose(purpose("promotional_mail"), Choice::Grant)];
    assert_eq!(prefs.change(&link, &grant).await.unwrap().written, 1);
    assert_eq!(prefs.honour_gpc(&link).await.unwrap(), 0);
    assert_eq!(
        decision(&app, "C-1", "promotional_mail", "email").await,
        Decision::Allow
    );
    let page = prefs.page(&link).await.unwrap();
    let promo = page
        .purposes
        .iter()
        .find(|p| p.code.as_str() == "promotional_mail")
        .unwrap();
    assert!(promo.allowed && !promo.from_gpc);
}

#[tokio::test]
async fn a_change_is_recorded_from_the_web_with_the_campaign_and_check_sees_it_at_once() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let prefs = service(&app).await;
    let link = opened_link(&app, &prefs, "C-1").await;
    assert_eq!(
        decision(&app, "C-1", "promotional_mail", "email").await,
        Decision::Allow
    );
    let changes = [
        Change::Purpose(purpose("promotional_mail"), Choice::Refuse),
        Change::Purpose(purpose("partner_offers"), Choice::Grant),
    ];
    assert_eq!(prefs.change(&link, &changes).await.unwrap().written, 2);
    assert_eq!(
        decision(&app, "C-1", "promotional_mail", "email").await,
        Decision::Deny
    );
    assert_eq!(
        decision(&app, "C-1", "partner_offers", "email").await,
        Decision::Allow
    );
    let policy = Policy::load(&policy_path()).unwrap();
    for record in history(&app, "C-1").await {
        assert_eq!(record.channel(), pb::Channel::Web);
        assert_eq!(record.evidence, "preference page, campaign: autumn-letter");
        assert_eq!(record.notice_version, policy.version());
        assert_eq!(record.field, "");
    }
}

#[tokio::test]
async fn a_second_post_of_the_same_form_writes_nothing() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let prefs = service(&app).await;
    let link = opened_link(&app, &prefs, "C-1").await;
    let form = [
        Change::Purpose(purpose("promotional_mail"), Choice::Refuse),
        Change::Purpose(purpose("partner_offers"), Choice::Refuse),
        Change::Recipient(partner(), Choice::Grant),
    ];
    // partner_offers is refused already (consent, never granted).
    assert_eq!(prefs.change(&link, &form).await.unwrap().written, 2);
    let records = app.count("consent_records").await;
    assert_eq!(prefs.change(&link, &form).await.unwrap().written, 0);
    assert_eq!(app.count("consent_records").await, records);
    let page = prefs.page(&link).await.unwrap();
    assert!(page.recipients[0].permitted);
    let withdraw = [Change::Recipient(partner(), Choice::Refuse)];
    assert_eq!(prefs.change(&link, &withdraw).await.unwrap().written, 1);
    assert!(!prefs.page(&link).await.unwrap().recipients[0].permitted);
}

#[tokio::test]
async fn contract_purposes_and_unknown_names_cannot_be_changed() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let prefs = service(&app).await;
    let link = opened_link(&app, &prefs, "C-1").await;
    let before = app.counts().await;
    for change in [
        Change::Purpose(purpose("order_delivery"), Choice::Refuse),
        Change::Purpose(purpose("no_such_purpose"), Choice::Refuse),
        Change::Recipient(
            RecipientId::parse("express-courier").unwrap(),
            Choice::Grant,
        ),
    ] {
        let error = prefs
            .change(&link, std::slice::from_ref(&change))
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::InvalidArgument(_)),
            "{change:?}: {error:?}"
        );
    }
    assert_eq!(app.counts().await, before);
}

#[tokio::test]
async fn a_concern_is_filed_with_the_subject_attached() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let prefs = service(&app).await;
    let link = opened_link(&app, &prefs, "C-1").await;
    let view = prefs
        .file_concern(
            &link,
            ConcernCategory::WrongData,
            "My address is old".into(),
            "phone me".into(),
        )
        .await
        .unwrap();
    assert_eq!(
        view.concern.content.subject_id,
        Some(SubjectId::parse("C-1").unwrap())
    );
    assert_eq!(view.concern.content.contact.as_str(), "phone me");
    assert!(view.resolve_by > view.concern.filed_at);
    let stored: Option<String> = app
        .db
        .query_one("SELECT subject_id FROM concerns", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.as_deref(), Some("C-1"));
    let empty = prefs
        .file_concern(&link, ConcernCategory::Other, " ".into(), "x".into())
        .await
        .unwrap_err();
    assert!(matches!(empty, Error::InvalidArgument(_)), "{empty:?}");
}

#[tokio::test]
async fn the_download_token_works_for_fifteen_minutes_and_no_longer() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let now = Arc::new(Mutex::new(Utc::now()));
    let clock = now.clone();
    let prefs = build(&app, Arc::new(move || *clock.lock().unwrap())).await;
    let link = opened_link(&app, &prefs, "C-1").await;
    let token = prefs.download_token(&link);
    *now.lock().unwrap() += TimeDelta::minutes(15) - TimeDelta::seconds(1);
    assert!(prefs.download(&token).await.is_ok());
    *now.lock().unwrap() += TimeDelta::seconds(1);
    assert!(matches!(
        prefs.download(&token).await,
        Err(DownloadError::Link(LinkError::Expired))
    ));
    assert_eq!(
        app.count("access_events").await,
        1,
        "a refused download is not one"
    );
}

#[tokio::test]
async fn the_page_link_alone_downloads_nothing() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let prefs = service(&app).await;
    let response = crate::preference_links::preference_links(&app, &["C-1"], "")
        .await
        .unwrap();
    let token = crate::preference_links::token_of(&response.links[0].url);
    assert!(matches!(
        prefs.download(token).await,
        Err(DownloadError::Link(LinkError::Forged))
    ));
    let download = prefs.download_token(&prefs.open(token).unwrap());
    assert_eq!(prefs.open(&download).unwrap_err(), LinkError::Forged);
    assert_eq!(app.count("access_events").await, 0);
}

#[tokio::test]
async fn every_download_is_recorded_and_export_subject_lists_it() {
    let app = spawn_app().await;
    app.register("C-1").await;
    app.register("C-2").await;
    let prefs = service(&app).await;
    let link = opened_link(&app, &prefs, "C-1").await;
    let first = prefs.download(&prefs.download_token(&link)).await.unwrap();
    assert_eq!(first.subject.subject_id.as_str(), "C-1");
    assert_eq!(first.access_events.len(), 1, "the download lists itself");
    let second = prefs.download(&prefs.download_token(&link)).await.unwrap();
    assert_eq!(second.access_events.len(), 2);
    let export = |subject: &str| {
        let mut client = SubjectRightsServiceClient::new(app.channel.clone());
        let subject = subject.to_string();
        async move {
            client
                .export_subject(pb::ExportSubjectRequest {
                    subject_id: subject,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let listed = export("C-1").await.access_events;
    assert_eq!(listed.len(), 2);
    for (event, stored) in listed.iter().zip(&second.access_events) {
        assert_eq!(event.access_id, stored.access_id.to_string());
        assert_eq!(event.channel(), pb::Channel::Web);
        assert_eq!(event.campaign, "autumn-letter");
        assert!(event.accessed_at.is_some());
    }
    assert!(export("C-2").await.access_events.is_empty());
}
