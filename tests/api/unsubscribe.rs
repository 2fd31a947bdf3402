//! One-click unsubscribe: links, the HTTP pages, and what a click records.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use consentd::grpc::pb::{self, Choice, Decision, Reason};
use tokio_stream::StreamExt as _;

use crate::helpers::{TestApp, http_request, spawn_app, spawn_app_with, violated_fields};

const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

pub async fn links(
    app: &TestApp,
    subjects: &[&str],
    field: &str,
) -> pb::CreateUnsubscribeLinksResponse {
    app.client
        .clone()
        .create_unsubscribe_links(pb::CreateUnsubscribeLinksRequest {
            purpose: "promotional_mail".into(),
            field: field.into(),
            campaign: "spring-sale".into(),
            subject_ids: subjects.iter().map(|s| s.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The path part of a link (`/u/TOKEN`).
pub fn path_of(url: &str) -> String {
    let after_scheme = url.split_once("://").unwrap().1;
    after_scheme[after_scheme.find('/').unwrap()..].to_string()
}

#[tokio::test]
async fn links_carry_ready_headers_instructions_and_no_external_id() {
    let app = spawn_app().await;
    app.register("C-1042").await;
    app.register("C-7").await;
    let response = links(&app, &["C-1042", "C-7"], "").await;
    assert_eq!(response.links.len(), 2);
    assert!(
        response.refusal_instructions.contains("unsubscribe link"),
        "{}",
        response.refusal_instructions
    );
    let link = &response.links[0];
    assert_eq!(link.subject_id, "C-1042");
    assert_eq!(
        link.url,
        format!("http://{}/u/{}", app.http_addr, link.token)
    );
    assert_eq!(link.list_unsubscribe, format!("<{}>", link.url));
    assert_eq!(link.list_unsubscribe_post, ONE_CLICK);
    let decoded = URL_SAFE_NO_PAD.decode(&link.token).unwrap();
    assert!(
        !decoded.windows(6).any(|w| w == b"C-1042"),
        "the token hides the external id"
    );
    assert_ne!(response.links[0].token, response.links[1].token);
}

#[tokio::test]
async fn one_click_refuses_at_once_and_a_second_click_adds_nothing() {
    let app = spawn_app().await;
    app.register("C-1042").await;
    let link = links(&app, &["C-1042"], "").await.links.remove(0);
    let mut feed = app
        .client
        .clone()
        .watch_changes(pb::WatchChangesRequest {
            after: 0,
            purposes: vec![],
        })
        .await
        .unwrap()
        .into_inner();

    let response = http_request(app.http_addr, "POST", &path_of(&link.url), &[], ONE_CLICK).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.header("location").is_none(), "no redirect");
    assert!(
        response.body.contains("You are unsubscribed"),
        "{}",
        response.body
    );

    let answer = app.check("C-1042", "promotional_mail", "email").await;
    assert_eq!(
        (answer.decision(), answer.reason()),
        (Decision::Deny, Reason::OptedOut)
    );

    let record = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_record()
        .unwrap();
    assert_eq!(record.record_id, answer.record_id);
    assert_eq!(record.choice(), Choice::Refuse);
    assert_eq!(record.channel(), pb::Channel::EmailLink);
    assert_eq!(record.evidence, "unsubscribe link, campaign: spring-sale");
    assert_eq!(record.actor, "unsubscribe-link");

    let again = http_request(app.http_addr, "POST", &path_of(&link.url), &[], ONE_CLICK).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        app.count("consent_records").await,
        1,
        "a second click adds nothing"
    );
}

#[tokio::test]
async fn a_field_link_refuses_only_that_field() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let link = links(&app, &["C-1"], "email").await.links.remove(0);
    let response = http_request(app.http_addr, "POST", &path_of(&link.url), &[], ONE_CLICK).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        app.check("C-1", "promotional_mail", "email")
            .await
            .decision(),
        Decision::Deny
    );
    assert_eq!(
        app.check("C-1", "promotional_mail", "postal_address")
            .await
            .decision(),
        Decision::Allow
    );
}

#[tokio::test]
async fn the_page_changes_nothing_and_speaks_english_or_chinese() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let link = links(&app, &["C-1"], "").await.links.remove(0);
    let path = path_of(&link.url);

    let english = http_request(
        app.http_addr,
        "GET",
        &path,
        &[("Accept-Language", "en-GB,en;q=0.9")],
        "",
    )
    .await;
    assert_eq!(english.status, 200);
    assert_eq!(english.header("content-language"), Some("en"));
    assert_eq!(english.header("cache-control"), Some("no-store"));
    assert!(
        english.body.contains("You are about to stop"),
        "{}",
        english.body
    );
    assert!(english.body.contains("Promotional letters and emails"));
    assert!(
        english
            .body
            .contains(r#"name="List-Unsubscribe" value="One-Click""#)
    );
    assert!(
        !english.body.contains("C-1"),
        "the page shows no external id"
    );

    let chinese = http_request(
        app.http_addr,
        "GET",
        &path,
        &[("Accept-Language", "zh-CN,zh;q=0.9,en;q=0.5")],
        "",
    )
    .await;
    assert_eq!(chinese.header("content-language"), Some("zh-CN"));
    assert!(chinese.body.contains("您将停止接收"), "{}", chinese.body);
    assert!(chinese.body.contains("促销信件"));

    assert_eq!(
        app.count("consent_records").await,
        0,
        "GET never changes anything"
    );
    assert_eq!(
        app.check("C-1", "promotional_mail", "email")
            .await
            .decision(),
        Decision::Allow
    );
}

#[tokio::test]
async fn forged_altered_or_malformed_tokens_get_a_clear_400_and_record_nothing() {
    let app = spawn_app().await;
    app.register("C-1").await;
    app.register("C-2").await;
    let link = links(&app, &["C-1"], "").await.links.remove(0);
    let mut bytes = URL_SAFE_NO_PAD.decode(&link.token).unwrap();
    bytes[10] ^= 0x01; // inside the subject key: would point elsewhere
    let altered = URL_SAFE_NO_PAD.encode(&bytes);
    // Naming a key id the server does not have.
    let mut bytes = URL_SAFE_NO_PAD.decode(&link.token).unwrap();
    assert_eq!(&bytes[..4], &[1, 2, b'k', b'2'], "version 1, key id k2");
    bytes[3] = b'9';
    let unknown_key = URL_SAFE_NO_PAD.encode(&bytes);
    for token in [
        altered.as_str(),
        unknown_key.as_str(),
        "not-a-token",
        "AAAA",
    ] {
        for method in ["GET", "POST"] {
            let response = http_request(
                app.http_addr,
                method,
                &format!("/u/{token}"),
                &[],
                ONE_CLICK,
            )
            .await;
            assert_eq!(response.status, 400, "{method} {token}");
            assert!(
                response.body.contains("This link is not valid"),
                "{}",
                response.body
            );
        }
    }
    assert_eq!(app.count("consent_records").await, 0);
}

#[tokio::test]
async fn a_post_without_the_one_click_body_changes_nothing() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let link = links(&app, &["C-1"], "").await.links.remove(0);
    let response = http_request(
        app.http_addr,
        "POST",
        &path_of(&link.url),
        &[],
        "unsubscribe=yes",
    )
    .await;
    assert_eq!(response.status, 400);
    assert_eq!(app.count("consent_records").await, 0);
}

#[tokio::test]
async fn bad_link_requests_are_refused_field_by_field() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let request = |purpose: &str, field: &str, campaign: &str, subjects: Vec<String>| {
        pb::CreateUnsubscribeLinksRequest {
            purpose: purpose.into(),
            field: field.into(),
            campaign: campaign.into(),
            subject_ids: subjects,
        }
    };
    let one = || vec!["C-1".to_string()];
    let cases = [
        (request("order_delivery", "", "c", one()), vec!["purpose"]),
        (request("nope", "", "c", one()), vec!["purpose"]),
        (
            request("promotional_mail", "phone", "c", one()),
            vec!["field"],
        ),
        (
            request("promotional_mail", "", &"c".repeat(129), one()),
            vec!["campaign"],
        ),
        (
            request("promotional_mail", "", "c", vec![]),
            vec!["subject_ids"],
        ),
        (
            request("promotional_mail", "", "c", vec!["C-1".into(); 1001]),
            vec!["subject_ids"],
        ),
        (
            request(
                "promotional_mail",
                "",
                "c",
                vec!["C-1".into(), "C-404".into()],
            ),
            vec!["subject_ids[1]"],
        ),
        (
            request(
                "promotional_mail",
                "",
                "c",
                vec!["C-1".into(), String::new()],
            ),
            vec!["subject_ids[1]"],
        ),
    ];
    for (request, expected) in cases {
        let status = app
            .client
            .clone()
            .create_unsubscribe_links(request.clone())
            .await
            .unwrap_err();
        assert_eq!(
            violated_fields(&status),
            expected,
            "{:?}",
            (&request.purpose, &request.field)
        );
    }
}

/// Runs the real `curl` with `args` and the URL; returns the HTTP status.
async fn curl(args: &[&str], url: &str) -> u16 {
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--output", "/dev/null"])
        .args(["--write-out", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("these tests run the real `curl`: apt-get install curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().parse().unwrap()
}

/// RFC 8058 §3.1: mail providers SHOULD post multipart/form-data (curl -F)
/// and MAY post urlencoded form data (curl -d). Both record the refusal.
#[tokio::test]
async fn one_click_accepts_multipart_and_urlencoded_bodies_from_a_real_client() {
    let app = spawn_app().await;
    for (subject, flag) in [("C-1", "-F"), ("C-2", "-d")] {
        app.register(subject).await;
        let link = links(&app, &[subject], "").await.links.remove(0);
        assert_eq!(curl(&[flag, ONE_CLICK], &link.url).await, 200, "{flag}");
        assert_eq!(
            app.check(subject, "promotional_mail", "email")
                .await
                .decision(),
            Decision::Deny,
            "{flag}"
        );
    }
    let refusals: i64 = app
        .db
        .query_one(
            "SELECT count(*) FROM consent_records WHERE choice = 'refuse' AND channel = 'email_link'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(refusals, 2, "one refusal per encoding");
}

#[tokio::test]
async fn a_real_client_posting_any_other_body_gets_400_and_records_nothing() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let link = links(&app, &["C-1"], "").await.links.remove(0);
    for args in [
        ["-F", "List-Unsubscribe=Yes"],
        ["-F", "Unsubscribe=One-Click"],
        ["-d", "unsubscribe=yes"],
        ["--data-binary", "One-Click"],
    ] {
        assert_eq!(curl(&args, &link.url).await, 400, "{args:?}");
    }
    assert_eq!(app.count("consent_records").await, 0);
}

#[tokio::test]
async fn links_start_with_the_public_url() {
    let app = spawn_app_with(|args| {
        args.public_url = Some("https://consent.example.com/".into());
    })
    .await;
    app.register("C-1").await;
    let link = links(&app, &["C-1"], "").await.links.remove(0);
    assert_eq!(
        link.url,
        format!("https://consent.example.com/u/{}", link.token)
    );
}
