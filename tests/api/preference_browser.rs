//! The preference page in a real headless Chromium at a phone's width:
//! switch the language, refuse promotional mail, permit a partner, file a
//! concern and download the data, all by clicking and typing, and see the
//! choices in gRPC Check at once. Screenshots of both languages go to
//! `target/screenshots/`.
//!
//! Like `browser.rs`, it fails without Chromium unless built with
//! CONSENTD_SKIP_BROWSER=1, which marks it ignored instead.

use std::{path::PathBuf, time::Duration};

use consentd::grpc::pb::{Decision, Reason};
use serde_json::json;

use crate::{
    browser::{Driver, require_browser},
    helpers::spawn_app,
    preference_page::preference_link,
};

/// The narrowest phone the page is made for.
const PHONE_WIDTH: u32 = 360;

fn screenshots() -> PathBuf {
    // CARGO_TARGET_TMPDIR is target/tmp.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn type_into(driver: &Driver, css: &str, text: &str) {
    let element = driver.element(css).await;
    driver
        .call(
            "POST",
            &driver.url(&format!("/element/{element}/value")),
            Some(json!({ "text": text })),
        )
        .await;
}

#[tokio::test]
#[cfg_attr(
    skip_browser,
    ignore = "CONSENTD_SKIP_BROWSER=1: the preference page was NOT tested in a browser"
)]
async fn a_person_changes_choices_files_a_concern_and_downloads_the_data_in_a_real_browser() {
    require_browser();
    let app = spawn_app().await;
    app.register("C-1042").await;
    let url = format!(
        "http://{}{}",
        app.http_addr,
        preference_link(&app, "C-1042").await
    );
    let shots = screenshots();
    let driver = Driver::start("en-US").await;
    driver
        .call(
            "POST",
            &driver.url("/window/rect"),
            Some(json!({"width": PHONE_WIDTH, "height": 2400})),
        )
        .await;

    driver.open(&url).await;
    assert!(driver.text("h1").await.contains("Your privacy choices"));
    assert_eq!(
        app.count("consent_records").await,
        0,
        "opening changes nothing"
    );
    driver.screenshot(&shots.join("preferences-en.png")).await;

    // Each wait names something only the next page has: a click that
    // navigates returns before that page is there.
    driver.click("#lang-zh").await;
    assert!(
        driver
            .text(r#"html[lang="zh-CN"] h1"#)
            .await
            .contains("您的隐私选择")
    );
    assert!(
        driver
            .text("#purpose-promotional_mail")
            .await
            .contains("促销")
    );
    driver.screenshot(&shots.join("preferences-zh.png")).await;
    driver.click("#lang-en").await;
    assert!(
        driver
            .text(r#"html[lang="en"] h1"#)
            .await
            .contains("Your privacy choices")
    );

    // Labels are tied to their inputs: clicking the words picks the choice.
    driver
        .click(r#"label[for="p-promotional_mail-refuse"]"#)
        .await;
    driver.click(r#"label[for="p-partner_offers-grant"]"#).await;
    driver.click(r#"label[for="r-travel-partner-grant"]"#).await;
    driver.click("#save").await;
    assert!(
        driver
            .text("#notice-saved")
            .await
            .contains("Your choices are saved.")
    );

    let mail = app.check("C-1042", "promotional_mail", "email").await;
    assert_eq!(
        (mail.decision(), mail.reason()),
        (Decision::Deny, Reason::OptedOut)
    );
    let partner = app.check("C-1042", "partner_offers", "name").await;
    assert_eq!(partner.decision(), Decision::Allow);
    assert!(
        driver
            .text("#recipient-travel-partner")
            .await
            .contains("Now: Permitted")
    );

    driver
        .click(r#"#concern-category option[value="wrong_data"]"#)
        .await;
    type_into(
        &driver,
        "#concern-description",
        "My address is out of date.",
    )
    .await;
    type_into(&driver, "#concern-contact", "email me").await;
    driver.click("#file-concern").await;
    assert!(
        driver
            .text("#notice-concern-filed")
            .await
            .contains("Your concern was filed.")
    );
    assert!(driver.text("#concerns").await.contains("My data is wrong"));
    assert_eq!(app.count("concerns").await, 1);

    // Opened afresh, the page offers no download until it is confirmed.
    driver.open(&url).await;
    driver.click("#confirm-download-button").await;
    driver.click("#download-button").await;
    let file = driver.downloads().join("my-data.json");
    for _ in 0..100 {
        if file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let export: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("the download arrived")).unwrap();
    assert_eq!(export["subject"]["subjectId"], "C-1042");
    let history = export["consentHistory"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
    assert!(
        history
            .iter()
            .any(|r| r["recipient"] == "travel-partner" && r["choice"] == "CHOICE_GRANT"),
        "{history:?}"
    );
    driver.call("DELETE", &driver.url(""), None).await;
}

/// The page works by keyboard alone: keys, not clicks, pick a choice and
/// press the save button, and the choice reaches Check.
#[tokio::test]
#[cfg_attr(
    skip_browser,
    ignore = "CONSENTD_SKIP_BROWSER=1: the preference page was NOT tested in a browser"
)]
async fn the_page_works_by_keyboard_alone() {
    require_browser();
    let app = spawn_app().await;
    app.register("C-2048").await;
    let url = format!(
        "http://{}{}",
        app.http_addr,
        preference_link(&app, "C-2048").await
    );
    let driver = Driver::start("en-US").await;
    driver.open(&url).await;

    // WebDriver key presses go to the focused element: Space selects a
    // radio, Enter presses a button.
    type_into(&driver, "#p-promotional_mail-refuse", " ").await;
    type_into(&driver, "#save", "\u{E007}").await;
    assert!(
        driver
            .text("#notice-saved")
            .await
            .contains("Your choices are saved.")
    );
    let mail = app.check("C-2048", "promotional_mail", "email").await;
    assert_eq!(
        (mail.decision(), mail.reason()),
        (Decision::Deny, Reason::OptedOut)
    );
}
