//! The body of an RFC 8058 one-click POST: `List-Unsubscribe=One-Click`.
//!
//! §3.1 says mail providers SHOULD send it as `multipart/form-data` and MAY
//! send it as `application/x-www-form-urlencoded`, so both are read. Bodies
//! are small; the router caps their size before they get here.

/// The largest one-click body read. The real one is under 300 bytes even as
/// multipart; the cap keeps a stranger from making us buffer more.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

const NAME: &str = "List-Unsubscribe";
const VALUE: &str = "One-Click";

/// Whether the body asks for a one-click unsubscribe, in either encoding.
pub fn is_one_click(content_type: Option<&str>, body: &[u8]) -> bool {
    match content_type.and_then(multipart_boundary) {
        Some(boundary) => multipart_says_one_click(&boundary, body),
        // Senders that set no type, or the urlencoded one, send pairs.
        None => std::str::from_utf8(body).is_ok_and(|body| {
            body.split('&')
                .any(|pair| pair.trim() == format!("{NAME}={VALUE}"))
        }),
    }
}

/// The boundary of a `multipart/form-data` content type, unquoted.
fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

/// RFC 7578: parts between `--boundary` lines, each with headers, a blank
/// line and its content.
fn multipart_says_one_click(boundary: &str, body: &[u8]) -> bool {
    let Ok(body) = std::str::from_utf8(body) else {
        return false;
    };
    let delimiter = format!("--{boundary}");
    let mut parts = body.split(delimiter.as_str());
    parts.next(); // the preamble
    for part in parts {
        if part.starts_with("--") {
            break; // the closing delimiter
        }
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let Some((headers, content)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let content = content.strip_suffix("\r\n").unwrap_or(content);
        if part_name(headers) == Some(NAME) && content.trim() == VALUE {
            return true;
        }
    }
    false
}

/// The `name` of a form-data part, from its Content-Disposition header.
fn part_name(headers: &str) -> Option<&str> {
    let disposition = headers.split("\r\n").find_map(|line| {
        let (header, value) = line.split_once(':')?;
        header
            .trim()
            .eq_ignore_ascii_case("content-disposition")
            .then_some(value)
    })?;
    let mut params = disposition.split(';');
    if !params.next()?.trim().eq_ignore_ascii_case("form-data") {
        return None;
    }
    params.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        (name.trim() == "name").then(|| value.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn multipart(boundary: &str, name: &str, value: &str) -> String {
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n--{boundary}--\r\n"
        )
    }

    #[test]
    fn both_encodings_of_the_rfc_are_one_click() {
        let urlencoded = Some("application/x-www-form-urlencoded");
        assert!(is_one_click(urlencoded, b"List-Unsubscribe=One-Click"));
        assert!(is_one_click(None, b"a=b&List-Unsubscribe=One-Click"));
        let body = multipart("xYz-1", NAME, VALUE);
        assert!(is_one_click(
            Some("multipart/form-data; boundary=xYz-1"),
            body.as_bytes()
        ));
        assert!(is_one_click(
            Some("Multipart/Form-Data; boundary=\"xYz-1\""),
            body.as_bytes()
        ));
    }

    #[test]
    fn a_body_that_is_neither_is_not_one_click() {
        let form = Some("multipart/form-data; boundary=b");
        for body in [
            multipart("b", NAME, "Nope"),
            multipart("b", "Other", VALUE),
            multipart("other", NAME, VALUE),
            format!("{NAME}={VALUE}"),
            String::new(),
        ] {
            assert!(!is_one_click(form, body.as_bytes()), "{body:?}");
        }
        assert!(!is_one_click(None, b"unsubscribe=yes"));
        assert!(!is_one_click(Some("multipart/form-data"), b"x"));
        assert!(!is_one_click(None, &[0xff, 0xfe]));
    }
}
