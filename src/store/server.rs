//! The PostgreSQL server as a whole, rather than one database on it:
//! administrative connections, creating a database, and naming one in a URL.

use std::time::Duration;

use anyhow::Context as _;

/// Creates database `name` on the server behind `admin_url` unless it exists.
pub async fn ensure_database(admin_url: &str, name: &str) -> anyhow::Result<bool> {
    let client = admin_connect(admin_url).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    match client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
        .await
    {
        Ok(()) => Ok(true),
        // Another process created it between our look and our create.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| format!("cannot create database {name}")),
    }
}

/// One plain connection for administrative statements (CREATE DATABASE
/// cannot run inside a pool's transaction-friendly setup).
pub async fn admin_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (config, tls) = super::tls::connect_config(url)?;
    let (client, connection) = tokio::time::timeout(Duration::from_secs(5), config.connect(tls))
        .await
        .context("timed out connecting to PostgreSQL")?
        .context("cannot connect to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "admin connection closed");
        }
    });
    Ok(client)
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Replaces the database name in a URL (`postgres://h/db` -> `postgres://h/other`).
pub fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base
        .find("://")
        .context("database URL must look like postgres://host/db")?
        + 3;
    let path_start = base[scheme_end..].find('/').map(|i| scheme_end + i);
    let authority = &base[..path_start.unwrap_or(base.len())];
    let mut out = format!("{authority}/{database}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_swaps_only_the_database_name() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/consentd", "other").unwrap(),
            "postgres://postgres@127.0.0.1:5432/other"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x").unwrap(),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h", "x").unwrap(),
            "postgres://h/x"
        );
        assert!(with_database("host=localhost", "x").is_err());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
