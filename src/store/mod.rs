//! PostgreSQL: the only module with SQL in it. It owns the connection pool,
//! the embedded migrations, the private fallback cluster and one function per
//! query, named after what it does. It knows nothing of gRPC or of the policy.

mod concern;
mod consent;
mod disclosure;
pub mod embedded;
mod erasure;
mod export;
mod feed;
mod idempotency;
mod import;
mod ledger;

use std::{str::FromStr, time::Duration};

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Timeouts};
use sha2::{Digest as _, Sha256};
use tokio_postgres::NoTls;

pub use concern::{ConcernFilter, ConcernPage, MAX_CONTACT_CHARS, MAX_TEXT_CHARS};
pub use consent::HistoryPage;
pub use disclosure::{DisclosureEvent, DisclosureFilter, DisclosurePage, NewDisclosure, SealedRow};
pub use erasure::Erased;
pub use export::{CollectionRecord, EXPORTED_TABLES, StoredField};
pub use feed::FeedRead;
pub use idempotency::RequestDigest;
pub use import::{BatchOutcome, RefusalImport};

mod migrations {
    refinery::embed_migrations!("src/store/migrations");
}

/// A handle on the database, cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// For connections outside the pool (the change-feed LISTEN).
    config: tokio_postgres::Config,
}

impl Store {
    /// Builds a pool for `url`. Connections are opened lazily; call
    /// [`Store::ping`] to find out at start whether the database answers.
    pub fn connect(url: &str, max_connections: usize) -> anyhow::Result<Self> {
        let config = tokio_postgres::Config::from_str(url).context("invalid database URL")?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .timeouts(Timeouts {
                wait: Some(Duration::from_secs(10)),
                create: Some(Duration::from_secs(10)),
                recycle: Some(Duration::from_secs(5)),
            })
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .context("cannot build the database pool")?;
        Ok(Self { pool, config })
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        let client = self
            .pool
            .get()
            .await
            .context("cannot connect to the database")?;
        client
            .simple_query("SELECT 1")
            .await
            .context("the database did not answer")?;
        Ok(())
    }

    /// Applies the embedded migrations that have not run yet. An advisory
    /// lock makes concurrent starts of several replicas take turns.
    #[tracing::instrument(name = "store.migrate", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "migrate"))]
    pub async fn migrate(&self) -> anyhow::Result<usize> {
        const MIGRATION_LOCK: i64 = 0x636f_6e73_656e_7464; // "consentd"
        let mut client = self.pool.get().await.context("cannot connect to migrate")?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let report = migrations::migrations::runner()
            .run_async(&mut **client)
            .await
            .context("migration failed");
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await?;
        Ok(report?.applied_migrations().len())
    }

    /// The pool's state, for health and metrics.
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }
}

/// A digest of every embedded migration. Test databases are cloned from a
/// template named after it, so a changed migration never reuses a stale one.
pub fn migrations_fingerprint() -> String {
    let mut hash = Sha256::new();
    for migration in migrations::migrations::runner().get_migrations() {
        hash.update(migration.name());
        hash.update(migration.checksum().to_le_bytes());
    }
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

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
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(url, NoTls))
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
