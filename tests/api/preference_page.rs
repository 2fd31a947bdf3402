//! The preference page over real HTTP: what GET, POST and the headers do,
//! and what bad links and forged forms are refused with.

use consentd::grpc::pb::{self, Decision, Reason};

use crate::{
    helpers::{HttpResponse, TestApp, http_request, spawn_app},
    unsubscribe::path_of,
};

/// The page's path (`/p/TOKEN`) for one registered subject.
pub async fn preference_link(app: &TestApp, subject: &str) -> String {
    let response = app
        .client
        .clone()
        .create_preference_links(pb::CreatePreferenceLinksRequest {
            subject_ids: vec![subject.into()],
            campaign: "autumn-letter".into(),
        })
        .await
        .unwrap()
        .into_inner();
    path_of(&response.links[0].url)
}

async fn get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(app.http_addr, "GET", path, headers, "").await
}

async fn post(app: &TestApp, path: &str, body: &str) -> HttpResponse {
    http_request(app.http_addr, "POST", path, &[], body).await
}

/// The CSRF token the page's forms carry.
pub fn csrf_of(html: &str) -> String {
    let after = html
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .expect("a csrf field");
    after[..after.find('"').unwrap()].to_string()
}

async fn csrf(app: &TestApp, path: &str) -> String {
    csrf_of(&get(app, path, &[]).await.body)
}

#[tokio::test]
async fn opening_the_page_shows_every_choice_and_changes_nothing() {
    let app = spawn_app().await;
    app.register("C-1042").await;
    let path = preference_link(&app, "C-1042").await;
    let before = app.counts().await;

    let page = get(&app, &path, &[("Accept-Language", "en")]).await;

    assert_eq!(page.status, 200);
    for text in [
        "Promotional letters and emails",
        "Offers from selected partner companies",
        "Needed to deliver your orders",
        "Changwei Travel Partners Ltd.",
        "dpo@travel-partner.example",
    ] {
        assert!(page.body.contains(text), "{text}");
    }
    assert!(
        !page.body.contains("C-1042"),
        "the page never shows the external id"
    );
    assert_eq!(app.counts().await, before, "GET changes nothing");
    assert_eq!(app.count("consent_records").await, 0);
}

#[tokio::test]
async fn the_language_follows_accept_language_and_the_switch_wins() {
    let app = spawn_app().await;
    app.register("C-1042").await;
    let path = preference_link(&app, "C-1042").await;

    let zh = get(&app, &path, &[("Accept-Language", "zh-CN,zh;q=0.9")]).await;
    assert!(zh.body.contains("您的隐私选择"));
    assert_eq!(zh.header("content-language"), Some("zh-CN"));
    let switched = get(
        &app,
        &format!("{path}?lang=en"),
        &[("Accept-Language", "zh-CN")],
    )
    .await;
    assert!(switched.body.contains("Your privacy choices"));
    assert_eq!(switched.header("content-language"), Some("en"));
}

#[tokio::test]
async fn the_page_sends_its_privacy_headers_and_no_cookie() {
    let app = spawn_app().await;
    app.register("C-1042").await;
    let path = preference_link(&app, "C-1042").await;

    for response in [
        get(&app, &path, &[]).await,
        get(&app, "/p/not-a-token", &[]).await,
        post(&app, &path, "intent=choices").await,
    ] {
        let csp = response.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"));
        assert_eq!(response.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(response.header("cache-control"), Some("no-store"));
        assert_eq!(response.header("set-cookie"), None);
        assert!(!response.body.contains("<script"));
    }
    let css = get(&app, "/p/style.css", &[]).await;
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert!(css.body.contains("max-width"));
}

#[tokio::test]
async fn a_forged_or_altered_link_gets_a_400_in_both_languages_and_writes_nothing() {
    let app = spawn_app().await;
    app.register("C-1042").await;
    let path = preference_link(&app, "C-1042").await;
    let token = path.strip_prefix("/p/").unwrap();
    let csrf = csrf(&app, &path).await;
    // Flip one character in the middle of the token.
    let mut altered: Vec<char> = token.chars().collect();
    let middle = altered.len() / 2;
    altered[middle] = if altered[middle] == 'A' { 'B' } else { 'A' };
    let altered: String = altered.into_iter().collect();
    let before = app.counts().await;

    for bad in [
        format!("/p/{altered}"),
        "/p/forged".into(),
        format!("{path}x"),
    ] {
        for response in [
            get(&app, &bad, &[("Sec-GPC", "1")]).await,
            post(
                &app,
                &bad,
                &format!("csrf={csrf}&intent=choices&purpose.promotional_mail=refuse"),
            )
            .await,
        ] {
            assert_eq!(response.status, 400, "{bad}");
            assert!(response.body.contains("This link is not valid"), "{bad}");
            assert!(response.body.contains("此链接无效"), "{bad}");
        }
    }
    assert_eq!(app.counts().await, before, "nothing was written");
    assert_eq!(app.count("consent_records").await, 0);
}

#[tokio::test]
async fn a_post_without_or_with_a_wrong_csrf_token_is_refused_and_writes_nothing() {
    let app = spawn_app().await;
    app.register("C-1042").await;
    app.register("C-7").await;
    let path = preference_link(&app, "C-1042").await;
    // A real token, but for another person's link.
    let other = csrf(&app, &preference_link(&app, "C-7").await).await;
    let change = "intent=choices&purpose.promotional_mail=refuse";

    for body in [
        change.to_string(),
        format!("csrf=&{change}"),
        format!("csrf=bm90LWEtbWFj&{change}"),
        format!("csrf={other}&{change}"),
    ] {
        let response = post(&app, &path, &body).await;
        assert_eq!(response.status, 403, "{body}");
        assert!(response.body.contains("Nothing was changed"), "{body}");
    }
    assert_eq!(app.count("consent_records").await, 0);
    assert_eq!(app.count("concerns").await, 0);
}

#[tokio::test]
async fn a_saved_choice_reaches_check_at_once_and_a_second_identical_post_adds_nothing() {
    let app = spawn_app().await;
    app.register("C-1042").await;
    let path = preference_link(&app, "C-1042").await;
    let form = format!(
        "csrf={}&intent=choices&purpose.promotional_mail=refuse&purpose.partner_offers=refuse&recipient.travel-partner=refuse",
        csrf(&app, &path).await
    );

    let first = post(&app, &path, &form).await;
    assert_eq!(first.status, 200);
    assert!(first.body.contains("Your choices are saved."));
    assert_eq!(
        app.count("consent_records").await,
        1,
        "only the changed one"
    );
    let answer = app.check("C-1042", "promotional_mail", "email").await;
    assert_eq!(
        (answer.decision(), answer.reason()),
        (Decision::Deny, Reason::OptedOut)
    );

    let second = post(&app, &path, &form).await;
    assert_eq!(second.status, 200);
    assert!(second.body.contains("Nothing changed"));
    assert_eq!(
        app.count("consent_records").await,
        1,
        "the second POST adds nothing"
    );
}

#[tokio::test]
async fn sec_gpc_on_the_first_visit_refuses_opt_out_purposes_and_the_page_says_so() {
    let app = spawn_app().await;
    app.register("C-1042").await;
    let path = preference_link(&app, "C-1042").await;
    let gpc = [("Sec-GPC", "1"), ("Accept-Language", "en")];

    let page = get(&app, &path, &gpc).await;

    assert_eq!(page.status, 200);
    assert!(page.body.contains("Global Privacy Control"));
    assert!(
        page.body
            .contains(r#"id="p-promotional_mail-refuse" value="refuse" checked>"#)
    );
    assert_eq!(app.count("consent_records").await, 1, "one opt-out purpose");
    let answer = app.check("C-1042", "promotional_mail", "email").await;
    assert_eq!(answer.decision(), Decision::Deny);

    get(&app, &path, &gpc).await;
    assert_eq!(
        app.count("consent_records").await,
        1,
        "only the first visit"
    );
    // An explicit choice made later wins over the signal.
    let form = format!(
        "csrf={}&intent=choices&purpose.promotional_mail=grant",
        csrf_of(&page.body)
    );
    assert_eq!(post(&app, &path, &form).await.status, 200);
    get(&app, &path, &gpc).await;
    let answer = app.check("C-1042", "promotional_mail", "email").await;
    assert_eq!(answer.decision(), Decision::Allow);
}

#[tokio::test]
async fn a_concern_is_filed_with_its_deadline_and_the_download_needs_a_fresh_confirmation() {
    let app = spawn_app().await;
    app.register("C-1042").await;
    let path = preference_link(&app, "C-1042").await;
    let csrf = csrf(&app, &path).await;

    let filed = post(
        &app,
        &path,
        &format!("csrf={csrf}&intent=concern&category=wrong_data&description=My+address+is+old&contact_preference=email"),
    )
    .await;
    assert_eq!(filed.status, 200);
    assert!(filed.body.contains("Your concern was filed."));
    assert!(filed.body.contains(r#"<td class="status">Received</td>"#));
    assert_eq!(app.count("concerns").await, 1);

    let refused = post(
        &app,
        &path,
        &format!("csrf={csrf}&intent=download&download=old"),
    )
    .await;
    assert_eq!(refused.status, 400);
    assert!(
        refused
            .body
            .contains("has expired. Nothing was downloaded.")
    );
    let confirmed = post(&app, &path, &format!("csrf={csrf}&intent=confirm")).await;
    let download = confirmed
        .body
        .split(r#"name="download" value=""#)
        .nth(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        .expect("a download token after the confirmation");
    let json = post(
        &app,
        &path,
        &format!("csrf={csrf}&intent=download&download={download}"),
    )
    .await;
    assert_eq!(json.status, 200);
    assert_eq!(
        json.header("content-disposition"),
        Some(r#"attachment; filename="my-data.json""#)
    );
    let export: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(export["subject"]["subjectId"], "C-1042");
    assert_eq!(export["concerns"].as_array().unwrap().len(), 1);
}
