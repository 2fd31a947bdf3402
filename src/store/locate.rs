//! Which database to use: `--database-url`, else the default database on the
//! local server (created if missing), else a private cluster started for the
//! purpose.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

use super::{
    ConnectionSettings, Store,
    embedded::{Durability, EmbeddedPostgres},
    redact::redact,
    server::{admin_connect, ensure_database, with_database},
};
use crate::settings::DatabaseArgs;

/// The database the default setup uses when no URL is given.
pub const DEFAULT_DATABASE: &str = "consentd";

/// A connected database, and the private cluster behind it if one had to be
/// started (stopped when this is dropped).
pub struct Database {
    pub store: Store,
    /// True when the default database was used, which is always migrated.
    pub is_default: bool,
    pub embedded: Option<EmbeddedPostgres>,
    /// A hot standby of it that the change feed reads from
    /// (`--read-database-url`), once [`Database::with_standby`] found it one.
    pub standby: Option<Store>,
}

impl Database {
    /// Connects to `--database-url`, or to the default local database,
    /// creating it, or to a private cluster started for the purpose, with
    /// the bounds the database flags ask for.
    pub async fn open(args: &DatabaseArgs) -> anyhow::Result<Self> {
        Self::open_with(args, &args.connection_settings()).await
    }

    /// Like [`Database::open`], every connection set up as `settings` say.
    pub async fn open_with(
        args: &DatabaseArgs,
        settings: &ConnectionSettings,
    ) -> anyhow::Result<Self> {
        if let Some(url) = &args.database_url {
            let store = Store::connect_with(url, settings)?;
            store.ping().await?;
            tracing::info!(database = %redact(url), "using the configured PostgreSQL");
            return Ok(Self {
                store,
                is_default: false,
                embedded: None,
                standby: None,
            });
        }
        let (server_url, embedded) = match admin_connect(&args.local_server_url).await {
            Ok(_) => {
                tracing::info!(
                    server = %redact(&args.local_server_url),
                    "using the local PostgreSQL, database `{DEFAULT_DATABASE}`"
                );
                (args.local_server_url.clone(), None)
            }
            Err(e) => {
                let data_dir = args.pg_data_dir.clone().unwrap_or_else(default_data_dir);
                tracing::info!(
                    reason = format!("{e:#}"),
                    data_dir = %data_dir.display(),
                    "no local PostgreSQL answers; starting a private PostgreSQL cluster"
                );
                let cluster = EmbeddedPostgres::start(&data_dir, Durability::Durable)
                    .await
                    .context("cannot start the private PostgreSQL cluster")?;
                tracing::info!(
                    port = cluster.port(),
                    data_dir = %cluster.data_dir().display(),
                    "private PostgreSQL cluster is up on 127.0.0.1:{}, database `{DEFAULT_DATABASE}`",
                    cluster.port()
                );
                (cluster.admin_url(), Some(cluster))
            }
        };
        if ensure_database(&server_url, DEFAULT_DATABASE).await? {
            tracing::info!("created database `{DEFAULT_DATABASE}`");
        }
        let url = with_database(&server_url, DEFAULT_DATABASE)?;
        let store = Store::connect_with(&url, settings)?;
        store.ping().await?;
        Ok(Self {
            store,
            is_default: true,
            embedded,
            standby: None,
        })
    }

    /// Applies pending migrations when asked to, and always to the default
    /// database. Otherwise a database that lacks one is refused at start:
    /// served, it would fail every call on a missing table.
    pub async fn prepare_schema(&self, migrate: bool) -> anyhow::Result<()> {
        if migrate || self.is_default {
            let applied = self.store.migrate().await?;
            tracing::info!(applied, "database migrations are up to date");
            return Ok(());
        }
        let pending = self.store.pending_migrations().await?;
        if pending > 0 {
            bail!(
                "the database lacks {pending} of consentd's migrations; \
                 run `consentd migrate`, or serve with --migrate"
            );
        }
        Ok(())
    }
}

fn default_data_dir() -> PathBuf {
    crate::settings::default_state_dir().join("pgdata")
}
