use std::path::Path;

use chrono::TimeZone as _;
use uuid::Uuid;

use super::*;
use crate::{
    domain::{Actor, Concern, FieldName, NewConcern, PurposeCode, RecipientId, Text},
    service::preferences::{PurposeView, RecipientView},
};

fn policy() -> Policy {
    Policy::parse(
        Path::new("deploy/policy.toml"),
        include_str!("../../deploy/policy.toml"),
    )
    .unwrap()
}

fn purpose(code: &str, basis: Basis, allowed: bool, from_gpc: bool) -> PurposeView {
    PurposeView {
        code: PurposeCode::parse(code).unwrap(),
        description: format!("What {code} is for"),
        basis,
        allowed,
        from_gpc,
        changeable: basis != Basis::Contract,
    }
}

fn concern() -> ConcernView {
    let filed_at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let concern = Concern {
        concern_id: Uuid::nil(),
        filed_at,
        content: NewConcern {
            subject_id: None,
            contact: Text::parse("me@example.com", 200).unwrap(),
            category: ConcernCategory::WrongData,
            description: Text::parse("my address is old", 200).unwrap(),
            links: vec![],
            actor: Actor::anonymous(),
            request_id: None,
        },
        events: vec![],
    };
    ConcernView::new(concern, policy().concern_deadlines(), filed_at)
}

fn page() -> PreferencePage {
    PreferencePage {
        policy_version: "2026-01".into(),
        purposes: vec![
            purpose("order_delivery", Basis::Contract, true, false),
            purpose("promotional_mail", Basis::OptOut, false, true),
            purpose("partner_offers", Basis::Consent, false, false),
        ],
        recipients: vec![RecipientView {
            id: RecipientId::parse("travel-partner").unwrap(),
            name: "Travel Partners".into(),
            contact: "dpo@travel-partner.example".into(),
            permitted: true,
        }],
        disclosures: vec![DisclosureLine {
            at: Utc.with_ymd_and_hms(2026, 2, 3, 4, 5, 0).unwrap(),
            recipient_name: "SF Express".into(),
            fields: vec![
                FieldName::parse("name").unwrap(),
                FieldName::parse("postal_address").unwrap(),
            ],
            basis: "contract".into(),
        }],
        concerns: vec![concern()],
    }
}

fn render(lang: Lang, page: &PreferencePage, download_token: Option<&str>) -> String {
    preference_page(&View {
        lang,
        page,
        policy: &policy(),
        csrf: "CSRF-TOKEN",
        notice: None,
        download_token,
    })
}

/// The `id`s of every visible form control.
fn control_ids(html: &str) -> Vec<String> {
    let mut ids = vec![];
    for tag in ["<input ", "<select ", "<textarea "] {
        for (at, _) in html.match_indices(tag) {
            let element = &html[at..at + html[at..].find('>').unwrap()];
            if element.contains(r#"type="hidden""#) {
                continue;
            }
            let id = element
                .split(r#"id=""#)
                .nth(1)
                .unwrap_or_else(|| panic!("a control without an id: {element}"));
            ids.push(id[..id.find('"').unwrap()].to_string());
        }
    }
    ids
}

#[test]
fn the_page_speaks_english_or_chinese_with_a_switch_to_the_other() {
    let page = page();
    let en = render(Lang::En, &page, None);
    let zh = render(Lang::Zh, &page, None);
    assert!(en.contains(r#"<html lang="en">"#) && en.contains("Your privacy choices"));
    assert!(zh.contains(r#"<html lang="zh-CN">"#) && zh.contains("您的隐私选择"));
    assert!(
        zh.contains("关于我们自己产品的促销信件"),
        "the policy's Chinese description"
    );
    assert!(
        !zh.contains("Save my choices"),
        "no English left in the Chinese page"
    );
    for html in [&en, &zh] {
        assert!(html.contains(r#"href="?lang=en""#) && html.contains(r#"href="?lang=zh""#));
    }
}

#[test]
fn every_control_has_a_label_tied_to_it() {
    let html = render(Lang::En, &page(), Some("DOWNLOAD"));
    let ids = control_ids(&html);
    // Two radios for each of two purposes and one partner, and the concern form.
    assert_eq!(ids.len(), 9, "{ids:?}");
    for id in ids {
        assert_eq!(
            html.matches(&format!(r#"<label for="{id}">"#)).count(),
            1,
            "no label for {id}"
        );
    }
}

#[test]
fn contract_purposes_are_explained_but_cannot_be_changed() {
    let html = render(Lang::En, &page(), None);
    assert!(!html.contains("purpose.order_delivery"));
    assert!(html.contains(r#"<div class="choice fixed" id="purpose-order_delivery">"#));
    assert!(html.contains("Needed to deliver your orders"));
    assert!(html.contains(r#"name="purpose.promotional_mail""#));
    assert!(html.contains(r#"name="purpose.partner_offers""#));
    assert!(html.contains(r#"name="recipient.travel-partner""#));
}

#[test]
fn the_current_choices_are_checked_and_the_gpc_ones_say_so() {
    let html = render(Lang::En, &page(), None);
    assert!(html.contains(r#"id="p-promotional_mail-refuse" value="refuse" checked>"#));
    assert!(html.contains(r#"id="p-partner_offers-refuse" value="refuse" checked>"#));
    assert!(html.contains(r#"id="r-travel-partner-grant" value="grant" checked>"#));
    assert_eq!(html.matches("Global Privacy Control").count(), 1);
}

#[test]
fn disclosures_list_field_names_and_concerns_their_status_and_deadline() {
    let html = render(Lang::En, &page(), None);
    assert!(html.contains(
        "<tr><td>2026-02-03 04:05 UTC</td><td>SF Express</td><td>name, postal_address</td><td>contract</td></tr>"
    ));
    // Filed 1 March, to be resolved within 15 days.
    assert!(html.contains(
        "<td>My data is wrong</td><td class=\"status\">Received</td><td>2026-03-16 09:00 UTC</td>"
    ));
}

#[test]
fn every_form_carries_the_csrf_token_and_the_download_needs_its_confirmation() {
    for token in [None, Some("DOWNLOAD")] {
        let html = render(Lang::Zh, &page(), token);
        let forms = html.matches("<form ").count();
        assert_eq!(forms, 3);
        assert_eq!(
            html.matches(r#"<input type="hidden" name="csrf" value="CSRF-TOKEN">"#)
                .count(),
            forms
        );
        assert_eq!(
            html.contains(r#"name="download" value="DOWNLOAD""#),
            token.is_some()
        );
        assert_eq!(html.contains(r#"value="confirm""#), token.is_none());
    }
}

#[test]
fn no_page_has_a_script_inline_style_or_outside_asset() {
    for html in [
        render(Lang::En, &page(), Some("D")),
        render(Lang::Zh, &page(), None),
        invalid_link_page(true),
        message_page(Lang::En, "t", "x"),
    ] {
        let lower = html.to_ascii_lowercase();
        for banned in [
            "<script",
            "javascript:",
            " onclick",
            " onload",
            "<style",
            " style=",
            "http",
        ] {
            assert!(!lower.contains(banned), "{banned} in {html}");
        }
        assert!(html.contains(r#"<link rel="stylesheet" href="/p/style.css">"#));
    }
}

#[test]
fn every_text_from_outside_is_escaped() {
    let evil = r#"<script>alert("x")</script>&"#;
    let mut page = page();
    page.policy_version = evil.into();
    page.purposes[1].description = evil.into();
    page.recipients[0].name = evil.into();
    page.recipients[0].contact = evil.into();
    page.disclosures[0].recipient_name = evil.into();
    page.disclosures[0].basis = evil.into();
    let html = preference_page(&View {
        lang: Lang::En,
        page: &page,
        policy: &policy(),
        csrf: evil,
        notice: Some(Notice::Saved),
        download_token: Some(evil),
    });
    assert!(!html.contains("<script"));
    assert_eq!(
        html.matches("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;")
            .count(),
        10
    );
}

#[test]
fn a_bad_link_is_explained_in_both_languages() {
    let expired = invalid_link_page(true);
    assert!(expired.contains("This link has expired") && expired.contains("此链接已过期"));
    let forged = invalid_link_page(false);
    assert!(forged.contains("This link is not valid") && forged.contains("此链接无效"));
    for html in [expired, forged] {
        assert!(html.contains("Nothing was changed") && html.contains("未做任何更改"));
        assert!(html.contains(r#"<section lang="zh-CN">"#));
    }
}

/// WCAG 2 relative luminance of `#rrggbb`.
fn luminance(hex: &str) -> f64 {
    let channel = |i: usize| {
        let c = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) / 255.0;
        if c <= 0.03928 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5)
}

fn contrast(a: &str, b: &str) -> f64 {
    let (a, b) = (luminance(a), luminance(b));
    (a.max(b) + 0.05) / (a.min(b) + 0.05)
}

/// Every text colour of the stylesheet meets WCAG AA (4.5:1): against its
/// own rule's background where it sets one, else against both backgrounds
/// text sits on (the page and the white card).
#[test]
fn every_text_colour_of_the_stylesheet_has_aa_contrast() {
    let css = include_str!("preferences.css");
    let value = |rule: &str, property: &str| {
        rule.split(';')
            .filter_map(|d| d.split_once(':'))
            .find(|(name, _)| name.trim() == property)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| v.starts_with('#') && v.len() == 7)
    };
    let mut checked = 0;
    for rule in css
        .split('}')
        .filter_map(|r| r.split_once('{').map(|(_, body)| body))
    {
        let Some(text) = value(rule, "color") else {
            continue;
        };
        let backgrounds = match value(rule, "background") {
            Some(own) => vec![own],
            None => vec!["#f5f6f8".to_string(), "#ffffff".to_string()],
        };
        for background in backgrounds {
            let ratio = contrast(&text, &background);
            assert!(
                ratio >= 4.5,
                "{text} on {background}: {ratio:.2}:1 in {rule}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} colour pairs found");
}
