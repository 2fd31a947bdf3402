//! PostgreSQL: the only module with SQL in it. It owns the choice of database,
//! the connection pool, the embedded migrations, the private fallback cluster
//! and one function per query, named after what it does. It knows nothing of gRPC or of the policy.

mod access;
mod cancel;
mod concern;
mod connection;
mod consent;
mod consent_batch;
mod disclosure;
mod durability;
pub mod embedded;
mod erasure;
mod export;
mod feed;
mod idempotency;
mod import;
mod ledger;
mod locate;
mod personal_data;
mod probe;
mod read_through;
mod redact;
mod replica;
mod roles;
mod rows;
mod server;
mod state;
mod tls;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use sha2::{Digest as _, Sha256};
use tokio_postgres_rustls::MakeRustlsConnect;

pub use access::AccessEvent;
pub use cancel::{CancelOnDrop, cancel_queries_on_drop};
pub use concern::{ConcernFilter, ConcernPage, MAX_CONTACT_CHARS, MAX_TEXT_CHARS};
pub use connection::ConnectionSettings;
pub use consent::{HistoryPage, Registered};
pub use disclosure::{Appended, DisclosureEvent, DisclosureFilter, DisclosurePage, NewDisclosure};
pub use durability::DurabilitySettings;
pub use erasure::Erased;
pub use export::{CollectionRecord, EXPORTED_TABLES, StoredField};
pub use feed::FeedRead;
pub use idempotency::RequestDigest;
pub use import::{BatchOutcome, RefusalImport};
pub use locate::{DEFAULT_DATABASE, Database};
pub use personal_data::SealedRow;
pub use probe::DatabaseProbe;
pub use read_through::DecisionInputs;
pub use redact::redact;
pub use replica::Lsn;
pub use roles::{ServingRole, parse_role_name};
pub use server::{admin_connect, ensure_database, quote_ident, with_database};

mod migrations {
    refinery::embed_migrations!("src/store/migrations");
}

/// A handle on the database, cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// For connections outside the pool (the change-feed LISTEN).
    config: tokio_postgres::Config,
    /// TLS as the URL's `sslmode` asks, for those connections too.
    tls: MakeRustlsConnect,
    /// Keys the idempotency digests; writes with a request id need it.
    request_key: Option<crate::keys::SubjectKey>,
    /// The bounds its pool was built with, for a pool as another role.
    settings: ConnectionSettings,
}

impl Store {
    /// Builds a pool for `url` with the default bounds and no statement
    /// timeout. Connections are opened lazily; call [`Store::ping`] to find
    /// out at start whether the database answers.
    pub fn connect(url: &str, max_connections: usize) -> anyhow::Result<Self> {
        Self::connect_with(url, &ConnectionSettings::new(max_connections))
    }

    /// Builds a pool for `url`, every connection set up as `settings` say.
    pub fn connect_with(url: &str, settings: &ConnectionSettings) -> anyhow::Result<Self> {
        let (mut config, tls) = tls::connect_config(url)?;
        settings.apply(&mut config);
        Self::with_config(config, tls, settings.clone())
    }

    /// A pool on `config`, which `settings` were applied to already.
    fn with_config(
        config: tokio_postgres::Config,
        tls: MakeRustlsConnect,
        settings: ConnectionSettings,
    ) -> anyhow::Result<Self> {
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.max_connections)
            .timeouts(settings.timeouts())
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .context("cannot build the database pool")?;
        Ok(Self {
            pool,
            config,
            tls,
            request_key: None,
            settings,
        })
    }

    /// A pooled connection whose query is cancelled if its call is
    /// abandoned ([`cancel_queries_on_drop`]).
    async fn client(&self) -> Result<cancel::PooledClient, deadpool_postgres::PoolError> {
        let object = self.pool.get().await?;
        Ok(cancel::PooledClient::new(object, &self.tls))
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
        let client = self.pool.get().await.context("cannot connect to migrate")?;
        // A schema change takes as long as the data needs, and so does the
        // wait for another replica's migrations: this connection lifts the
        // statement timeout, and leaves the pool (closing when done), so
        // that no call ever runs without it.
        let mut client = deadpool_postgres::Object::take(client);
        client.batch_execute("SET statement_timeout = 0").await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let report = migrations::migrations::runner()
            .run_async(&mut *client)
            .await
            .context("migration failed");
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await?;
        Ok(report?.applied_migrations().len())
    }

    /// How many of the embedded migrations the database has not applied.
    #[tracing::instrument(name = "store.pending_migrations", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "pending_migrations"))]
    pub async fn pending_migrations(&self) -> anyhow::Result<usize> {
        let mut client = self
            .pool
            .get()
            .await
            .context("cannot connect to read the schema version")?;
        let runner = migrations::migrations::runner();
        // refinery creates its history table on the first run; reading it
        // before then is an error, not an empty history.
        let has_history: bool = client
            .query_one(
                "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
        let applied = if has_history {
            runner
                .get_applied_migrations_async(&mut **client)
                .await
                .context("cannot read the applied migrations")?
        } else {
            Vec::new()
        };
        Ok(runner
            .get_migrations()
            .iter()
            .filter(|m| !applied.iter().any(|a| a.version() == m.version()))
            .count())
    }

    /// This store, keying idempotency digests with `key`.
    pub fn with_request_key(self, key: crate::keys::SubjectKey) -> Self {
        Self {
            request_key: Some(key),
            ..self
        }
    }

    /// A connection from this store's own pool: the server's role, its
    /// settings, its TLS. For tests and tools that must act exactly as the
    /// server does; the server's own code goes through the functions here.
    pub async fn connection(
        &self,
    ) -> Result<deadpool_postgres::Object, deadpool_postgres::PoolError> {
        self.pool.get().await
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
