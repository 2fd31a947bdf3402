//! The preference link's token is the person's only credential: it never
//! reaches the server's log, at any level, whatever is done with it.

use consentd::grpc::pb;

use crate::{
    cli::{spawn_serve_with, terminate_and_wait},
    helpers::{fresh_database, http_request, registration},
    unsubscribe::path_of,
};

#[tokio::test]
async fn the_page_token_never_reaches_the_log_even_at_debug() {
    let db = fresh_database().await;
    let served = spawn_serve_with(&["--database-url", &db.db_url], &[("RUST_LOG", "debug")]);
    let mut client = pb::consent_service_client::ConsentServiceClient::connect(format!(
        "http://{}",
        served.grpc_addr
    ))
    .await
    .unwrap();
    client.register_subject(registration("C-77")).await.unwrap();
    let url = client
        .create_preference_links(pb::CreatePreferenceLinksRequest {
            subject_ids: vec!["C-77".into()],
            campaign: "winter-letter".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .links
        .remove(0)
        .url;
    let path = path_of(&url);
    let token = path.rsplit('/').next().unwrap().to_string();
    assert!(token.len() > 20, "{token}");

    // Everything a browser, a mail scanner or an attacker might do with it.
    let http = served.http_addr.parse().unwrap();
    let page = http_request(http, "GET", &path, &[("sec-gpc", "1")], "").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let zh = http_request(http, "GET", &format!("{path}?lang=zh"), &[], "").await;
    assert_eq!(zh.status, 200);
    let forged = http_request(http, "GET", &format!("{path}x"), &[], "").await;
    assert_eq!(forged.status, 400);
    let refused = http_request(
        http,
        "POST",
        &path,
        &[("content-type", "application/x-www-form-urlencoded")],
        "csrf=wrong&promotional_mail=refuse",
    )
    .await;
    assert!(refused.status >= 400, "{}", refused.status);

    let lines = terminate_and_wait(served.child, &served.logs).await;
    assert!(
        lines.iter().any(|l| l.contains("DEBUG")),
        "the server logged at debug"
    );
    let prefix = &token[..16];
    let leaked: Vec<&String> = lines.iter().filter(|l| l.contains(prefix)).collect();
    assert!(leaked.is_empty(), "the token is in the log: {leaked:#?}");
}
