//! The person's own page: `GET /p/{token}` shows every choice, `POST`
//! changes them, files a concern or downloads the data, and `/p/style.css`
//! is its one stylesheet. The rendering is in `preference_page.rs`, the
//! decisions in `service::preferences`.
//!
//! The link token is a credential: it is never logged nor put in a span,
//! and the CSRF token is an HMAC of it, so a form only works for the link
//! whose page it came from. No cookies at all.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

use super::{
    HttpState,
    pages::Lang,
    preference_page::{
        self as render, CSRF_FIELD, DOWNLOAD_FIELD, GRANT, INTENT_FIELD, Notice, PURPOSE_PREFIX,
        RECIPIENT_PREFIX, REFUSE, View,
    },
};
use crate::{
    domain::{Choice, ConcernCategory, PurposeCode, RecipientId},
    error::Error,
    keys::SubjectKey,
    policy::Policy,
    service::{
        export::SubjectExport,
        preferences::{Change, DownloadError, LinkError, PreferenceLink, Preferences, Saved},
    },
};

/// The largest form read: a few choices and a concern of at most a few
/// thousand characters.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Under its own domain tag, so a CSRF token is no other HMAC of the key.
const CSRF_DOMAIN: &str = "consentd preference page csrf\0";

pub const STYLESHEET: &str = include_str!("preferences.css");

/// What the preference routes need beside the rest of `HttpState`.
#[derive(Clone)]
pub struct PreferencePages {
    pub preferences: Preferences,
    /// For the Chinese purpose descriptions.
    pub policy: Arc<Policy>,
    /// Signs the CSRF tokens; shared by every replica, so a form served by
    /// one is accepted by another.
    pub csrf_key: SubjectKey,
    /// ExportSubject's proto-JSON, handed in by startup: http does not
    /// import grpc.
    pub render_export: fn(SubjectExport) -> anyhow::Result<String>,
}

impl PreferencePages {
    fn csrf(&self, token: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.csrf_key.derive_bytes(CSRF_DOMAIN, token.as_bytes()))
    }

    fn csrf_matches(&self, token: &str, sent: Option<&str>) -> bool {
        sent.and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .is_some_and(|tag| self.csrf_key.verify(CSRF_DOMAIN, token.as_bytes(), &tag))
    }
}

pub async fn stylesheet() -> Response {
    let mut response = STYLESHEET.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Shows the page. Changes nothing, except that a browser sending the
/// Global Privacy Control signal has it recorded on its first visit.
pub async fn show(
    State(state): State<HttpState>,
    Path(token): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let pages = &state.preferences;
    let lang = language(&uri, &headers);
    let link = match pages.preferences.open(&token) {
        Ok(link) => link,
        Err(e) => return invalid_link(e),
    };
    if headers
        .get("sec-gpc")
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"1")
    {
        match pages.preferences.honour_gpc(&link).await {
            Ok(recorded) => tracing::info!(recorded, "global privacy control honoured"),
            Err(e) => return failure(lang, e),
        }
    }
    render_page(pages, lang, &token, &link, StatusCode::OK, None, None).await
}

/// Every form of the page posts here; `intent` says which.
pub async fn post(
    State(state): State<HttpState>,
    Path(token): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pages = &state.preferences;
    let lang = language(&uri, &headers);
    let link = match pages.preferences.open(&token) {
        Ok(link) => link,
        Err(e) => return invalid_link(e),
    };
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| {
        form.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if !pages.csrf_matches(&token, field(CSRF_FIELD)) {
        tracing::info!("preference form refused: missing or wrong csrf token");
        let s = lang.strings();
        return page_response(
            StatusCode::FORBIDDEN,
            lang,
            render::message_page(lang, s.refused_title, s.refused_body),
        );
    }
    let download_token = pages.preferences.download_token(&link);
    // The feed position of the choices saved, if any were.
    let mut written_at = None;
    let notice = match field(INTENT_FIELD) {
        Some("choices") => match changes(&form) {
            Some(changes) => match save(pages, &link, &changes).await {
                Ok(saved) if saved.written == 0 => Notice::Unchanged,
                Ok(saved) => {
                    written_at = saved.token;
                    Notice::Saved
                }
                Err(e) => return failure(lang, e),
            },
            None => return bad_form(lang),
        },
        Some("concern") => {
            let category = field("category").and_then(ConcernCategory::from_stored);
            let (Some(category), Some(description), Some(contact)) =
                (category, field("description"), field("contact_preference"))
            else {
                return bad_form(lang);
            };
            let filed = pages
                .preferences
                .file_concern(&link, category, description.into(), contact.into())
                .await;
            match filed {
                Ok(_) => Notice::ConcernFiled,
                Err(Error::InvalidArgument(_)) => {
                    return render_page(
                        pages,
                        lang,
                        &token,
                        &link,
                        StatusCode::BAD_REQUEST,
                        Some(Notice::ConcernInvalid),
                        Some(&download_token),
                    )
                    .await;
                }
                Err(e) => return failure(lang, e),
            }
        }
        Some("confirm") => {
            let status = StatusCode::OK;
            return render_page(
                pages,
                lang,
                &token,
                &link,
                status,
                None,
                Some(&download_token),
            )
            .await;
        }
        Some("download") => {
            return download(pages, lang, &token, &link, field(DOWNLOAD_FIELD)).await;
        }
        _ => return bad_form(lang),
    };
    let shown = Some(download_token.as_str());
    let mut response = render_page(
        pages,
        lang,
        &token,
        &link,
        StatusCode::OK,
        Some(notice),
        shown,
    )
    .await;
    if let Some(at) = written_at {
        super::with_consistency_token(&mut response, at);
    }
    response
}

/// The choices a form submits; `None` when one names no valid purpose or
/// recipient or carries no valid choice.
fn changes(form: &[(String, String)]) -> Option<Vec<Change>> {
    let mut changes = vec![];
    for (name, value) in form {
        let choice = || match value.as_str() {
            GRANT => Some(Choice::Grant),
            REFUSE => Some(Choice::Refuse),
            _ => None,
        };
        if let Some(code) = name.strip_prefix(PURPOSE_PREFIX) {
            changes.push(Change::Purpose(PurposeCode::parse(code).ok()?, choice()?));
        } else if let Some(id) = name.strip_prefix(RECIPIENT_PREFIX) {
            changes.push(Change::Recipient(RecipientId::parse(id).ok()?, choice()?));
        }
    }
    Some(changes)
}

/// Records the changes and counts, by purpose only, the ones that differ
/// from what the page showed.
async fn save(
    pages: &PreferencePages,
    link: &PreferenceLink,
    changes: &[Change],
) -> crate::error::Result<Saved> {
    let before = pages.preferences.page(link).await?;
    let saved = pages.preferences.change(link, changes).await?;
    let written = saved.written;
    if written > 0 {
        for change in changes {
            if let Change::Purpose(code, choice) = change
                && let Some(shown) = before.purposes.iter().find(|p| &p.code == code)
                && shown.allowed != (*choice == Choice::Grant)
            {
                metrics::counter!(crate::metrics::PREFERENCE_CHANGES, "purpose" => code.to_string())
                    .increment(1);
            }
        }
    }
    tracing::info!(written, "preference choices saved");
    Ok(saved)
}

async fn download(
    pages: &PreferencePages,
    lang: Lang,
    token: &str,
    link: &PreferenceLink,
    download_token: Option<&str>,
) -> Response {
    let export = match pages
        .preferences
        .download(download_token.unwrap_or(""))
        .await
    {
        // A confirmation from another person's page is no confirmation here.
        Ok(export) if export.subject.subject_id == link.subject_id => export,
        Ok(_) => return invalid_link(LinkError::Forged),
        Err(DownloadError::Link(e)) => {
            tracing::info!(reason = %e, "data download refused");
            let status = StatusCode::BAD_REQUEST;
            let notice = Some(Notice::DownloadExpired);
            return render_page(pages, lang, token, link, status, notice, None).await;
        }
        Err(DownloadError::Service(e)) => return failure(lang, e),
    };
    let json = match (pages.render_export)(export) {
        Ok(json) => json,
        Err(e) => return failure(lang, Error::Internal(e)),
    };
    tracing::info!("data downloaded from the preference page");
    let mut response = json.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static(r#"attachment; filename="my-data.json""#),
    );
    secure(headers);
    response
}

async fn render_page(
    pages: &PreferencePages,
    lang: Lang,
    token: &str,
    link: &PreferenceLink,
    status: StatusCode,
    notice: Option<Notice>,
    download_token: Option<&str>,
) -> Response {
    let page = match pages.preferences.page(link).await {
        Ok(page) => page,
        Err(e) => return failure(lang, e),
    };
    let html = render::preference_page(&View {
        lang,
        page: &page,
        policy: &pages.policy,
        csrf: &pages.csrf(token),
        notice,
        download_token,
    });
    page_response(status, lang, html)
}

/// `?lang=` from the switch wins over `Accept-Language`.
fn language(uri: &Uri, headers: &HeaderMap) -> Lang {
    let asked = uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes()).find_map(|(name, value)| match (&*name, &*value) {
            ("lang", "zh") => Some(Lang::Zh),
            ("lang", "en") => Some(Lang::En),
            _ => None,
        })
    });
    asked.unwrap_or_else(|| Lang::from_headers(headers))
}

fn invalid_link(error: LinkError) -> Response {
    tracing::info!(reason = %error, "preference link refused");
    let expired = error == LinkError::Expired;
    page_response(
        StatusCode::BAD_REQUEST,
        Lang::En,
        render::invalid_link_page(expired),
    )
}

fn bad_form(lang: Lang) -> Response {
    let s = lang.strings();
    page_response(
        StatusCode::BAD_REQUEST,
        lang,
        render::message_page(lang, s.refused_title, s.refused_body),
    )
}

fn failure(lang: Lang, error: Error) -> Response {
    // An erased subject's link still verifies, but there is no page left.
    if let Error::NotFound { .. } = error {
        return invalid_link(LinkError::Forged);
    }
    error.log();
    let s = lang.strings();
    page_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        lang,
        render::message_page(lang, s.failure_title, s.failure_body),
    )
}

fn page_response(status: StatusCode, lang: Lang, body: String) -> Response {
    let mut response = super::html(status, lang, body);
    secure(response.headers_mut());
    response
}

/// The stylesheet is the page's only resource; no script may run, even one
/// injected past the escaping, and no other site may frame or receive it.
fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}
