//! The unsubscribe pages, in English or Chinese. Small, self-contained HTML
//! with inline CSS: no scripts, no external resources.

use axum::http::{HeaderMap, header};

use crate::service::unsubscribe::LinkTarget;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    /// The preferred of English and Chinese by `Accept-Language` q-values;
    /// English when neither is asked for.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let Some(value) = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
        else {
            return Lang::En;
        };
        let mut best = (Lang::En, -1.0f32);
        for item in value.split(',') {
            let mut parts = item.trim().split(';');
            let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse().ok())
                .unwrap_or(1.0);
            let lang = if tag == "zh" || tag.starts_with("zh-") {
                Lang::Zh
            } else if tag == "en" || tag.starts_with("en-") {
                Lang::En
            } else {
                continue;
            };
            if q > best.1 {
                best = (lang, q);
            }
        }
        best.0
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    pub(super) fn pick(self, en: &'static str, zh: &'static str) -> &'static str {
        match self {
            Lang::En => en,
            Lang::Zh => zh,
        }
    }
}

pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn layout(lang: Lang, title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="{code}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>
  body {{ font-family: system-ui, -apple-system, "PingFang SC", "Microsoft YaHei", sans-serif;
         background: #f5f6f8; color: #1d2330; margin: 0; }}
  main {{ max-width: 34rem; margin: 12vh auto; background: #fff; border-radius: 12px;
         padding: 2rem 2.25rem; box-shadow: 0 2px 12px rgba(0,0,0,.08); }}
  h1 {{ font-size: 1.4rem; margin: 0 0 1rem; }}
  p {{ line-height: 1.55; }}
  .note {{ color: #555d6b; font-size: .95rem; background: #f5f6f8; padding: .75rem 1rem; border-radius: 8px; }}
  button {{ font: inherit; font-weight: 600; color: #fff; background: #c2410c; border: 0;
           border-radius: 8px; padding: .7rem 1.4rem; cursor: pointer; margin-top: .5rem; }}
  button:hover {{ background: #9a3412; }}
</style>
</head>
<body><main>
<h1>{title}</h1>
{body}
</main></body>
</html>
"#,
        code = lang.code(),
        title = escape(title),
    )
}

fn what_stops(lang: Lang, target: &LinkTarget) -> String {
    let purpose = &target.purpose;
    let description = match lang {
        Lang::Zh => purpose
            .description_zh
            .as_deref()
            .unwrap_or(&purpose.description),
        Lang::En => &purpose.description,
    };
    let scope = match (&target.claims.field, lang) {
        (None, _) => String::new(),
        (Some(field), Lang::En) => format!(
            " (only for your {})",
            escape(&field.as_str().replace('_', " "))
        ),
        (Some(field), Lang::Zh) => format!("（仅限：{}）", escape(field.as_str())),
    };
    format!("{}{scope}", escape(description))
}

fn instructions(lang: Lang, target: &LinkTarget) -> String {
    let purpose = &target.purpose;
    let text = match lang {
        Lang::Zh => purpose
            .refusal_instructions_zh
            .as_deref()
            .or(purpose.refusal_instructions.as_deref()),
        Lang::En => purpose.refusal_instructions.as_deref(),
    };
    text.map(|t| format!(r#"<p class="note">{}</p>"#, escape(t)))
        .unwrap_or_default()
}

pub fn confirm_page(lang: Lang, target: &LinkTarget) -> String {
    let title = lang.pick("Unsubscribe", "退订");
    let lead = lang.pick("You are about to stop:", "您将停止接收：");
    let button = lang.pick("Stop these messages", "停止接收");
    let body = format!(
        r#"<p>{lead}</p>
<p><strong id="purpose">{what}</strong></p>
{instructions}
<form method="post">
  <input type="hidden" name="List-Unsubscribe" value="One-Click">
  <button type="submit" id="unsubscribe">{button}</button>
</form>"#,
        what = what_stops(lang, target),
        instructions = instructions(lang, target),
    );
    layout(lang, title, &body)
}

pub fn done_page(lang: Lang, target: &LinkTarget) -> String {
    let title = lang.pick("You are unsubscribed", "您已成功退订");
    let lead = lang.pick(
        "We recorded your choice and will not send these to you again:",
        "我们已记录您的选择，今后不会再向您发送：",
    );
    let body = format!(
        r#"<p id="done">{lead}</p><p><strong>{what}</strong></p>"#,
        what = what_stops(lang, target)
    );
    layout(lang, title, &body)
}

pub fn invalid_page(lang: Lang) -> String {
    let title = lang.pick("This link is not valid", "此链接无效");
    let body = lang.pick(
        "<p>The unsubscribe link is damaged or no longer valid, so nothing was changed. \
         Please use the link from your most recent letter, or follow the instructions in it.</p>",
        "<p>该退订链接已损坏或已失效，因此未做任何更改。请使用您最近收到的信件中的链接，或按照信件中的说明操作。</p>",
    );
    layout(lang, title, body)
}

pub fn bad_body_page(lang: Lang) -> String {
    let title = lang.pick("Nothing was changed", "未做任何更改");
    let body = lang.pick(
        "<p>This address expects the one-click form <code>List-Unsubscribe=One-Click</code>.</p>",
        "<p>此地址需要一键退订表单 <code>List-Unsubscribe=One-Click</code>。</p>",
    );
    layout(lang, title, body)
}

pub fn failure_page(lang: Lang) -> String {
    let title = lang.pick("Please try again", "请稍后重试");
    let body = lang.pick(
        "<p>We could not record your choice just now. Nothing was changed; please try again in a moment.</p>",
        "<p>暂时无法记录您的选择，未做任何更改。请稍后重试。</p>",
    );
    layout(lang, title, body)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn lang(value: &str) -> Lang {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_LANGUAGE,
            HeaderValue::from_str(value).unwrap(),
        );
        Lang::from_headers(&headers)
    }

    #[test]
    fn accept_language_picks_the_preferred_of_chinese_and_english() {
        assert_eq!(lang("zh-CN,zh;q=0.9,en;q=0.8"), Lang::Zh);
        assert_eq!(lang("en-US,en;q=0.9,zh;q=0.5"), Lang::En);
        assert_eq!(lang("de-DE,zh-TW;q=0.7"), Lang::Zh);
        assert_eq!(lang("fr"), Lang::En);
        assert_eq!(lang("en;q=0.2, zh;q=0.8"), Lang::Zh);
        assert_eq!(Lang::from_headers(&HeaderMap::new()), Lang::En);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
