//! The preference page as HTML, from what `service::preferences` says about
//! one person. Pure functions: no IO, every text escaped, no script at all,
//! and every input has a `<label for>` so screen readers and keyboards reach
//! it. Styling is in `preferences.css`, served from `/p/style.css`.

use chrono::{DateTime, Utc};

use super::{
    pages::{Lang, escape},
    preference_text::{self, Strings},
};
use crate::{
    domain::ConcernCategory,
    policy::{Basis, Policy},
    service::{
        concern::ConcernView,
        preferences::{DisclosureLine, PreferencePage, PurposeView, RecipientView},
    },
};

/// The form fields the page sends and `preferences.rs` reads back.
pub const CSRF_FIELD: &str = "csrf";
pub const INTENT_FIELD: &str = "intent";
pub const DOWNLOAD_FIELD: &str = "download";
pub const PURPOSE_PREFIX: &str = "purpose.";
pub const RECIPIENT_PREFIX: &str = "recipient.";
pub const GRANT: &str = "grant";
pub const REFUSE: &str = "refuse";

/// What a POST did, told at the top of the page it answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Saved,
    Unchanged,
    ConcernFiled,
    ConcernInvalid,
    DownloadExpired,
}

/// Everything one rendering needs.
pub struct View<'a> {
    pub lang: Lang,
    pub page: &'a PreferencePage,
    /// For the Chinese purpose descriptions, which the page values lack.
    pub policy: &'a Policy,
    pub csrf: &'a str,
    pub notice: Option<Notice>,
    /// Shown only in answer to a POST: the confirmation a download needs.
    pub download_token: Option<&'a str>,
}

pub fn preference_page(view: &View) -> String {
    let s = view.lang.strings();
    let notice = view.notice.map(|n| notice(s, n)).unwrap_or_default();
    let body = format!(
        r#"<p>{intro}</p>
<p class="meta">{version_label}: {version}</p>
{notice}{purposes}{disclosures}{concern}{data}"#,
        intro = escape(s.intro),
        version_label = escape(s.policy_version),
        version = escape(&view.page.policy_version),
        purposes = choices_form(view),
        disclosures = disclosures(s, &view.page.disclosures),
        concern = concern_section(view),
        data = data_section(view),
    );
    layout(view.lang, s.title, &body)
}

/// The page for a form that was not ours or is too old (CSRF), and for a
/// service failure.
pub fn message_page(lang: Lang, title: &str, text: &str) -> String {
    let s = lang.strings();
    let body = format!(
        r#"<p id="message">{text}</p><p><a href="?lang={lang}">{back}</a></p>"#,
        text = escape(text),
        lang = switch_code(lang),
        back = escape(s.back),
    );
    layout(lang, title, &body)
}

/// The 400 page for a forged, altered or expired link, in both languages.
pub fn invalid_link_page(expired: bool) -> String {
    let parts = preference_text::invalid_link(expired);
    let sections: String = parts
        .iter()
        .map(|(lang, title, text)| {
            format!(
                r#"<section lang="{code}"><h1>{title}</h1><p>{text}</p></section>"#,
                code = lang.code(),
                title = escape(title),
                text = escape(text),
            )
        })
        .collect();
    let title = format!("{} / {}", parts[0].1, parts[1].1);
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
{head}
<title>{title}</title>
</head>
<body><main id="invalid">
{sections}
</main></body>
</html>
"#,
        head = HEAD,
        title = escape(&title),
    )
}

const HEAD: &str = r#"<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<link rel="stylesheet" href="/p/style.css">"#;

fn layout(lang: Lang, title: &str, body: &str) -> String {
    let s = lang.strings();
    format!(
        r#"<!doctype html>
<html lang="{code}">
<head>
{HEAD}
<title>{title}</title>
</head>
<body>
<nav class="lang" aria-label="{language}">
<a href="?lang=en" hreflang="en" lang="en" id="lang-en"{en_current}>English</a>
<a href="?lang=zh" hreflang="zh" lang="zh-CN" id="lang-zh"{zh_current}>中文</a>
</nav>
<main>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"#,
        code = lang.code(),
        title = escape(title),
        language = escape(s.language),
        en_current = current(lang == Lang::En),
        zh_current = current(lang == Lang::Zh),
    )
}

fn current(yes: bool) -> &'static str {
    if yes { r#" aria-current="page""# } else { "" }
}

fn switch_code(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "en",
        Lang::Zh => "zh",
    }
}

fn notice(s: &Strings, notice: Notice) -> String {
    // An id per kind, so a browser test knows which answer it is reading.
    let (class, id, text) = match notice {
        Notice::Saved => ("ok", "saved", s.saved),
        Notice::Unchanged => ("ok", "unchanged", s.unchanged),
        Notice::ConcernFiled => ("ok", "concern-filed", s.concern_filed),
        Notice::ConcernInvalid => ("warn", "concern-invalid", s.concern_invalid),
        Notice::DownloadExpired => ("warn", "download-expired", s.download_expired),
    };
    format!(
        r#"<p class="notice {class}" id="notice-{id}" role="status">{}</p>
"#,
        escape(text)
    )
}

/// The hidden fields every form carries: whose page, which action.
fn hidden(view: &View, intent: &str) -> String {
    format!(
        r#"<input type="hidden" name="{CSRF_FIELD}" value="{csrf}">
<input type="hidden" name="{INTENT_FIELD}" value="{intent}">
"#,
        csrf = escape(view.csrf),
    )
}

fn choices_form(view: &View) -> String {
    let s = view.lang.strings();
    let purposes: String = view
        .page
        .purposes
        .iter()
        .map(|p| purpose(view, p))
        .collect();
    let recipients = if view.page.recipients.is_empty() {
        format!("<p>{}</p>", escape(s.no_partners))
    } else {
        view.page
            .recipients
            .iter()
            .map(|r| recipient(s, r))
            .collect()
    };
    format!(
        r#"<form method="post" id="choices">
{hidden}<section aria-labelledby="purposes-title">
<h2 id="purposes-title">{purposes_title}</h2>
{purposes}</section>
<section aria-labelledby="partners-title">
<h2 id="partners-title">{partners_title}</h2>
<p>{partners_intro}</p>
{recipients}</section>
<button type="submit" id="save">{save}</button>
</form>
"#,
        hidden = hidden(view, "choices"),
        purposes_title = escape(s.purposes),
        partners_title = escape(s.partners),
        partners_intro = escape(s.partners_intro),
        save = escape(s.save),
    )
}

fn purpose(view: &View, p: &PurposeView) -> String {
    let s = view.lang.strings();
    let description = match view.lang {
        Lang::Zh => view
            .policy
            .purpose(&p.code)
            .and_then(|d| d.description_zh.as_deref())
            .unwrap_or(&p.description),
        Lang::En => &p.description,
    };
    let code = p.code.as_str();
    if !p.changeable || p.basis == Basis::Contract {
        // Nothing to choose, so no inputs: the person sees why instead.
        return format!(
            r#"<div class="choice fixed" id="purpose-{code}">
<h3>{description}</h3>
<p class="basis">{basis}</p>
</div>
"#,
            code = escape(code),
            description = escape(description),
            basis = escape(s.basis_contract),
        );
    }
    let gpc = if p.from_gpc {
        format!(r#"<p class="gpc">{}</p>"#, escape(s.from_gpc))
    } else {
        String::new()
    };
    let name = format!("{PURPOSE_PREFIX}{code}");
    format!(
        r#"<fieldset class="choice" id="purpose-{code}">
<legend>{description}</legend>
<p class="basis">{basis}</p>
<p class="now">{currently}: <strong>{now}</strong></p>
{gpc}{radios}</fieldset>
"#,
        code = escape(code),
        description = escape(description),
        basis = escape(s.basis(p.basis)),
        currently = escape(s.currently),
        now = escape(if p.allowed { s.allowed } else { s.not_allowed }),
        radios = radios(
            &name,
            &format!("p-{code}"),
            p.allowed,
            s.allowed,
            s.not_allowed
        ),
    )
}

fn recipient(s: &Strings, r: &RecipientView) -> String {
    let id = r.id.as_str();
    let name = format!("{RECIPIENT_PREFIX}{id}");
    format!(
        r#"<fieldset class="choice" id="recipient-{id}">
<legend>{name_text}</legend>
<p class="basis">{contact_label}: {contact}</p>
<p class="now">{currently}: <strong>{now}</strong></p>
{radios}</fieldset>
"#,
        id = escape(id),
        name_text = escape(&r.name),
        contact_label = escape(s.contact),
        contact = escape(&r.contact),
        currently = escape(s.currently),
        now = escape(if r.permitted {
            s.permitted
        } else {
            s.not_permitted
        }),
        radios = radios(
            &name,
            &format!("r-{id}"),
            r.permitted,
            s.permitted,
            s.not_permitted
        ),
    )
}

/// A grant/refuse pair of radio buttons, each with its own label.
fn radios(name: &str, id: &str, on: bool, yes: &str, no: &str) -> String {
    let checked = |b: bool| if b { " checked" } else { "" };
    format!(
        r#"<div class="radios">
<input type="radio" name="{name}" id="{id}-{GRANT}" value="{GRANT}"{on}><label for="{id}-{GRANT}">{yes}</label>
<input type="radio" name="{name}" id="{id}-{REFUSE}" value="{REFUSE}"{off}><label for="{id}-{REFUSE}">{no}</label>
</div>
"#,
        name = escape(name),
        id = escape(id),
        on = checked(on),
        off = checked(!on),
        yes = escape(yes),
        no = escape(no),
    )
}

fn disclosures(s: &Strings, lines: &[DisclosureLine]) -> String {
    let table = if lines.is_empty() {
        format!("<p>{}</p>", escape(s.no_disclosures))
    } else {
        let rows: String = lines
            .iter()
            .map(|line| {
                let fields: Vec<_> = line.fields.iter().map(|f| escape(f.as_str())).collect();
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                    time(line.at),
                    escape(&line.recipient_name),
                    fields.join(", "),
                    escape(&line.basis),
                )
            })
            .collect();
        format!(
            r#"<div class="scroll"><table id="disclosures">
<thead><tr><th scope="col">{}</th><th scope="col">{}</th><th scope="col">{}</th><th scope="col">{}</th></tr></thead>
<tbody>
{rows}</tbody>
</table></div>"#,
            escape(s.when),
            escape(s.to_whom),
            escape(s.which_fields),
            escape(s.on_what_basis),
        )
    };
    format!(
        r#"<section aria-labelledby="disclosures-title">
<h2 id="disclosures-title">{title}</h2>
<p>{intro}</p>
{table}
</section>
"#,
        title = escape(s.disclosures),
        intro = escape(s.disclosures_intro),
    )
}

fn concern_section(view: &View) -> String {
    let s = view.lang.strings();
    let options: String = ConcernCategory::ALL
        .iter()
        .map(|c| {
            format!(
                r#"<option value="{}">{}</option>"#,
                c.as_str(),
                escape(preference_text::category(view.lang, *c))
            )
        })
        .collect();
    let filed = if view.page.concerns.is_empty() {
        String::new()
    } else {
        concerns(view.lang, &view.page.concerns)
    };
    format!(
        r#"<section aria-labelledby="concern-title">
<h2 id="concern-title">{title}</h2>
<p>{intro}</p>
<form method="post" id="concern">
{hidden}<label for="concern-category">{category}</label>
<select id="concern-category" name="category">{options}</select>
<label for="concern-description">{description}</label>
<textarea id="concern-description" name="description" rows="4" maxlength="4000" required></textarea>
<label for="concern-contact">{contact}</label>
<input type="text" id="concern-contact" name="contact_preference" maxlength="200" required aria-describedby="concern-contact-hint">
<p class="hint" id="concern-contact-hint">{hint}</p>
<button type="submit" id="file-concern">{file}</button>
</form>
{filed}</section>
"#,
        title = escape(s.concern),
        intro = escape(s.concern_intro),
        hidden = hidden(view, "concern"),
        category = escape(s.category),
        description = escape(s.description),
        contact = escape(s.contact_preference),
        hint = escape(s.contact_hint),
        file = escape(s.file_concern),
    )
}

fn concerns(lang: Lang, concerns: &[ConcernView]) -> String {
    let s = lang.strings();
    let rows: String = concerns
        .iter()
        .map(|c| {
            format!(
                "<tr><td>{}</td><td>{}</td><td class=\"status\">{}</td><td>{}</td></tr>\n",
                time(c.concern.filed_at),
                escape(preference_text::category(lang, c.concern.content.category)),
                escape(preference_text::status(lang, c.status)),
                time(c.resolve_by),
            )
        })
        .collect();
    format!(
        r#"<h3>{title}</h3>
<div class="scroll"><table id="concerns">
<thead><tr><th scope="col">{filed}</th><th scope="col">{category}</th><th scope="col">{status}</th><th scope="col">{by}</th></tr></thead>
<tbody>
{rows}</tbody>
</table></div>
"#,
        title = escape(s.your_concerns),
        filed = escape(s.filed),
        category = escape(s.category),
        status = escape(s.status),
        by = escape(s.answer_by),
    )
}

fn data_section(view: &View) -> String {
    let s = view.lang.strings();
    let form = match view.download_token {
        Some(token) => format!(
            r#"<p id="download-ready">{ready}</p>
<form method="post" id="download">
{hidden}<input type="hidden" name="{DOWNLOAD_FIELD}" value="{token}">
<button type="submit" id="download-button">{download}</button>
</form>"#,
            ready = escape(s.download_ready),
            hidden = hidden(view, "download"),
            token = escape(token),
            download = escape(s.download),
        ),
        None => format!(
            r#"<form method="post" id="confirm-download">
{hidden}<button type="submit" id="confirm-download-button">{confirm}</button>
</form>"#,
            hidden = hidden(view, "confirm"),
            confirm = escape(s.confirm_download),
        ),
    };
    format!(
        r#"<section aria-labelledby="data-title">
<h2 id="data-title">{title}</h2>
<p>{intro}</p>
{form}
</section>
"#,
        title = escape(s.data),
        intro = escape(s.data_intro),
    )
}

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

#[cfg(test)]
#[path = "preference_page_tests.rs"]
mod tests;
