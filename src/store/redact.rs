//! What the log may show of a connection string: everything but the
//! password, in each form tokio-postgres accepts (its `Config::from_str`):
//!
//! - URLs, `postgres://` or `postgresql://`, with the password in the user
//!   info (`user:secret@host`) or in a query parameter (`?password=secret`);
//! - key=value strings (`host=h password=secret`), values plain, with
//!   backslash escapes, or single-quoted (`password='a b'`).
//!
//! The parsing below follows tokio-postgres's own, so that what it takes for
//! the password is what is masked.

/// Stands in for a password.
const MASK: &str = "***";

/// Shown instead of a string tokio-postgres would refuse: where its parts
/// start and end is unknown, so no part of it is safe to show.
const UNREADABLE: &str = "(a connection string that does not parse; not shown)";

/// The connection string with every password replaced by `***`.
pub fn redact(conn: &str) -> String {
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = conn.strip_prefix(scheme) {
            return format!("{scheme}{}", redact_url(rest));
        }
    }
    redact_key_values(conn).unwrap_or_else(|| UNREADABLE.to_string())
}

/// tokio-postgres reads the user info up to the first `@` (a password may
/// hold `/` or `?`), and the query from the first `?` after it.
fn redact_url(rest: &str) -> String {
    let (user_info, rest) = match rest.split_once('@') {
        Some((user_info, rest)) => (Some(user_info), rest),
        None => (None, rest),
    };
    let mut out = String::with_capacity(rest.len() + 16);
    if let Some(user_info) = user_info {
        match user_info.split_once(':') {
            Some((user, _password)) => out.push_str(&format!("{user}:{MASK}@")),
            None => out.push_str(&format!("{user_info}@")),
        }
    }
    let Some((location, query)) = rest.split_once('?') else {
        out.push_str(rest);
        return out;
    };
    out.push_str(location);
    out.push('?');
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _value)) if is_password(&percent_decode(key)) => format!("{key}={MASK}"),
            _ => param.to_string(),
        })
        .collect();
    out.push_str(&params.join("&"));
    out
}

/// Rebuilt from the parsed pairs rather than edited in place: text that
/// tokio-postgres skips (it stops at a stray `=`) never reaches the log.
fn redact_key_values(conn: &str) -> Option<String> {
    let pairs = KeyValues::new(conn).collect::<Option<Vec<_>>>()?;
    let shown: Vec<String> = pairs
        .into_iter()
        .map(|(key, value)| {
            if is_password(key.as_bytes()) {
                format!("{key}={MASK}")
            } else {
                format!("{key}={}", quote(&value))
            }
        })
        .collect();
    Some(shown.join(" "))
}

fn is_password(key: &[u8]) -> bool {
    key == b"password"
}

/// A value as the key=value grammar reads it back.
fn quote(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_string();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The `key = value` pairs of a key=value string; `None` for a pair that
/// tokio-postgres would refuse.
struct KeyValues<'a> {
    rest: &'a str,
}

impl<'a> KeyValues<'a> {
    fn new(conn: &'a str) -> Self {
        Self { rest: conn }
    }

    fn skip_whitespace(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn value(&mut self) -> Option<String> {
        let quoted = self.rest.starts_with('\'');
        if quoted {
            self.rest = &self.rest[1..];
        }
        let mut value = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\'' if quoted => {
                    self.rest = &self.rest[i + 1..];
                    return Some(value);
                }
                c if c.is_whitespace() && !quoted => {
                    self.rest = &self.rest[i..];
                    return (!value.is_empty()).then_some(value);
                }
                '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
                c => value.push(c),
            }
        }
        self.rest = "";
        // An unterminated quote, or nothing after `=`.
        (!quoted && !value.is_empty()).then_some(value)
    }
}

impl Iterator for KeyValues<'_> {
    type Item = Option<(String, String)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.skip_whitespace();
        let end = self
            .rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let key = self.rest[..end].to_string();
        self.rest = &self.rest[end..];
        self.skip_whitespace();
        let Some(rest) = self.rest.strip_prefix('=') else {
            self.rest = "";
            return Some(None);
        };
        self.rest = rest;
        self.skip_whitespace();
        let value = self.value();
        if value.is_none() {
            self.rest = "";
        }
        Some(value.map(|value| (key, value)))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use tokio_postgres::Config;

    use super::*;

    /// Each form tokio-postgres accepts, the password it reads from it, and
    /// what the log shows.
    const FORMS: &[(&str, &str, &str)] = &[
        (
            "postgres://u:s3cret@h:5432/db",
            "s3cret",
            "postgres://u:***@h:5432/db",
        ),
        (
            "postgresql://u:s3cret@h/db",
            "s3cret",
            "postgresql://u:***@h/db",
        ),
        (
            "postgres://u:p%40ss/w?rd@h1:1,h2:2/db?sslmode=disable",
            "p@ss/w?rd",
            "postgres://u:***@h1:1,h2:2/db?sslmode=disable",
        ),
        (
            "postgres://u@h/db?password=s3cret&application_name=app",
            "s3cret",
            "postgres://u@h/db?password=***&application_name=app",
        ),
        (
            "postgresql://h/db?user=u&pass%77ord=s%33cret",
            "s3cret",
            "postgresql://h/db?user=u&pass%77ord=***",
        ),
        (
            "host=h port=5432 user=u password=s3cret dbname=db",
            "s3cret",
            "host=h port=5432 user=u password=*** dbname=db",
        ),
        (
            "host=h password = 'a b\\'c' dbname='my db'",
            "a b'c",
            "host=h password=*** dbname='my db'",
        ),
        (
            "password=s3\\ cret dbname=db",
            "s3 cret",
            "password=*** dbname=db",
        ),
        // tokio-postgres stops at the stray `=` and ignores what follows.
        ("dbname=db =s3cret", "", "dbname=db"),
    ];

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn every_form_tokio_postgres_reads_shows_all_but_its_password() {
        for (conn, password, shown) in FORMS {
            let config = Config::from_str(conn).unwrap();
            let read = config.get_password().map(String::from_utf8_lossy);
            assert_eq!(read.as_deref().unwrap_or(""), *password, "{conn}");
            assert_eq!(redact(conn), *shown, "{conn}");
        }
    }

    #[test]
    fn a_redacted_string_still_names_the_same_server_user_and_database() {
        for (conn, _, _) in FORMS {
            let before = Config::from_str(conn).unwrap();
            let after = Config::from_str(&redact(conn)).unwrap();
            assert_eq!(after.get_hosts(), before.get_hosts(), "{conn}");
            assert_eq!(after.get_ports(), before.get_ports(), "{conn}");
            assert_eq!(after.get_user(), before.get_user(), "{conn}");
            assert_eq!(after.get_dbname(), before.get_dbname(), "{conn}");
        }
    }

    #[test]
    fn a_string_tokio_postgres_refuses_is_not_shown_at_all() {
        for conn in [
            "host=h password='s3cret",
            "host=h password s3cret",
            "host=h password=",
        ] {
            assert!(Config::from_str(conn).is_err(), "{conn}");
            assert_eq!(redact(conn), UNREADABLE, "{conn}");
        }
    }
}
