//! CreatePreferenceLinks: links to the person's own page, and what it
//! refuses. The page's service is tested in `preferences`.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{TimeDelta, Utc};
use consentd::{
    grpc::pb,
    service::preferences::{LinkError, PreferenceLink},
};
use tonic::Code;

use crate::{
    helpers::{TestApp, spawn_app, spawn_app_with, violated_fields},
    preferences::{service, service_at},
};

pub async fn preference_links(
    app: &TestApp,
    subjects: &[&str],
    campaign: &str,
) -> Result<pb::CreatePreferenceLinksResponse, tonic::Status> {
    app.client
        .clone()
        .create_preference_links(pb::CreatePreferenceLinksRequest {
            subject_ids: subjects.iter().map(|s| s.to_string()).collect(),
            campaign: campaign.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// The token at the end of a link.
pub fn token_of(url: &str) -> &str {
    url.rsplit_once("/p/").unwrap().1
}

#[tokio::test]
async fn links_point_to_the_page_one_per_subject_in_order_and_hide_the_external_id() {
    let app = spawn_app().await;
    app.register("C-1042").await;
    app.register("C-7").await;
    let response = preference_links(&app, &["C-7", "C-1042"], "spring-sale")
        .await
        .unwrap();
    let subjects: Vec<_> = response
        .links
        .iter()
        .map(|l| l.subject_id.as_str())
        .collect();
    assert_eq!(subjects, ["C-7", "C-1042"]);
    let prefs = service(&app).await;
    for link in &response.links {
        let token = token_of(&link.url);
        assert_eq!(link.url, format!("http://{}/p/{token}", app.http_addr));
        let bytes = URL_SAFE_NO_PAD.decode(token).unwrap();
        let id = link.subject_id.as_bytes();
        assert!(!bytes.windows(id.len()).any(|w| w == id), "{}", link.url);
        assert!(!link.url.contains(&link.subject_id));
        let opened = prefs.open(token).unwrap();
        assert_eq!(opened.subject_id.as_str(), link.subject_id);
        assert_eq!(opened.campaign.as_deref(), Some("spring-sale"));
    }
    let nobody = preference_links(&app, &["C-7"], "").await.unwrap();
    let opened = prefs.open(token_of(&nobody.links[0].url)).unwrap();
    assert_eq!(opened.campaign, None, "an empty campaign is none");
}

#[tokio::test]
async fn links_live_for_the_configured_days_and_are_refused_as_expired_after() {
    let app = spawn_app_with(|args| args.preference_link_days = 2).await;
    app.register("C-1").await;
    let before = Utc::now();
    let response = preference_links(&app, &["C-1"], "c").await.unwrap();
    let expires = response.links[0].expires_at.unwrap();
    let expires = chrono::DateTime::from_timestamp(expires.seconds, 0).unwrap();
    assert!(expires >= before + TimeDelta::days(2) - TimeDelta::seconds(1));
    assert!(expires <= Utc::now() + TimeDelta::days(2));
    let token = token_of(&response.links[0].url);
    let opened: PreferenceLink = service_at(&app, expires - TimeDelta::seconds(1))
        .await
        .open(token)
        .unwrap();
    assert_eq!(opened.expires_at, expires);
    assert_eq!(
        service_at(&app, expires).await.open(token).unwrap_err(),
        LinkError::Expired
    );
}

#[tokio::test]
async fn links_are_built_on_the_public_url() {
    let app = spawn_app_with(|args| {
        args.public_url = Some("https://consent.example.org/".into());
    })
    .await;
    app.register("C-1").await;
    let response = preference_links(&app, &["C-1"], "").await.unwrap();
    let url = &response.links[0].url;
    assert!(url.starts_with("https://consent.example.org/p/"), "{url}");
}

#[tokio::test]
async fn an_altered_or_forged_token_is_refused() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let response = preference_links(&app, &["C-1"], "").await.unwrap();
    let token = token_of(&response.links[0].url);
    let prefs = service(&app).await;
    let mut bytes = URL_SAFE_NO_PAD.decode(token).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let altered = URL_SAFE_NO_PAD.encode(&bytes);
    assert_eq!(prefs.open(&altered).unwrap_err(), LinkError::Forged);
    assert_eq!(prefs.open("not-a-token").unwrap_err(), LinkError::Malformed);
}

#[tokio::test]
async fn bad_requests_name_every_mistake_and_write_nothing() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let before = app.counts().await;
    let fields = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        violated_fields(&status)
    };

    let none = preference_links(&app, &[], "").await.unwrap_err();
    assert_eq!(fields(none), ["subject_ids"]);

    let ids: Vec<String> = (0..1001).map(|i| format!("C-{i}")).collect();
    let many: Vec<&str> = ids.iter().map(String::as_str).collect();
    let too_many = preference_links(&app, &many, "").await.unwrap_err();
    assert_eq!(fields(too_many), ["subject_ids"]);

    let long = "x".repeat(129);
    let mixed = preference_links(&app, &["C-1", "", "bad\u{7}id"], &long)
        .await
        .unwrap_err();
    let mut mixed = fields(mixed);
    mixed.sort();
    assert_eq!(mixed, ["campaign", "subject_ids[1]", "subject_ids[2]"]);

    let unknown = preference_links(&app, &["C-1", "C-404"], "")
        .await
        .unwrap_err();
    assert_eq!(fields(unknown), ["subject_ids[1]"]);

    let thousand: Vec<String> = (0..1000).map(|_| "C-1".to_string()).collect();
    let thousand: Vec<&str> = thousand.iter().map(String::as_str).collect();
    let most = preference_links(&app, &thousand, "").await.unwrap();
    assert_eq!(most.links.len(), 1000, "1,000 is allowed");

    assert_eq!(app.counts().await, before);
    assert_eq!(app.count("access_events").await, 0);
}
