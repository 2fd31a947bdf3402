//! A streaming-replication hot standby that the change feed reads from
//! (`--read-database-url`), and the positions in the primary's write-ahead
//! log that tell how far the standby has caught up.
//!
//! A standby knows nothing of the transactions still open on the primary:
//! its snapshots list none, and a transaction whose WAL it has not received
//! yet is "in the future" to it. So whether a gap in the sequence is settled
//! is always asked of the primary, and the standby is then waited for until
//! it has replayed the primary's WAL up to the point where that was true.

use anyhow::{Context as _, bail};
use tokio_postgres::types::PgLsn;

/// A position in the primary's write-ahead log.
pub type Lsn = PgLsn;

use super::{ConnectionSettings, Database, ServingRole, Store, redact::redact};
use crate::error::Result;

/// The transactions in flight on this server, other databases' left out
/// (see `feed::in_flight`).
const IN_PROGRESS: &str = concat!("SELECT ", super::feed::in_flight!());

/// How far behind the primary a standby may be at start: it must have the
/// serving role's grants, and one this far behind is not replicating.
const CATCH_UP_AT_START: std::time::Duration = std::time::Duration::from_secs(30);

/// What identifies a server's copy of a database: the cluster's system
/// identifier (a physical standby shares its primary's, for it is a copy of
/// the primary's files) and the database's name.
const IDENTITY: &str = "SELECT pg_is_in_recovery(),
        (SELECT system_identifier::text FROM pg_control_system()),
        current_database()::text";

impl Database {
    /// This database, with the feed reading from the standby at `url` when
    /// one is given (see [`Store::standby`]). Call after
    /// [`Database::serve_as`]: the standby is served from as `role` too.
    pub async fn with_standby(
        self,
        url: Option<&str>,
        settings: &ConnectionSettings,
        role: &ServingRole,
    ) -> anyhow::Result<Self> {
        let standby = match url {
            Some(url) => Some(self.store.standby(url, settings, role).await?),
            None => None,
        };
        Ok(Self { standby, ..self })
    }

    /// Where the change feed, and whatever follows it, reads: the standby,
    /// else the database itself.
    pub fn read_store(&self) -> &Store {
        self.standby.as_ref().unwrap_or(&self.store)
    }
}

impl Store {
    /// A pool on the standby at `url` with the primary's bounds, checked to
    /// be a hot standby of `self`'s database. Anything else is refused: the
    /// primary itself would only add connections; another server would feed
    /// WatchChanges a history that is not this one.
    /// It is checked as the URL's user, then served from as the serving
    /// role, like the primary (the standby replays the role and its grants).
    pub async fn standby(
        &self,
        url: &str,
        settings: &ConnectionSettings,
        role: &ServingRole,
    ) -> anyhow::Result<Store> {
        let standby = Store::connect_with(url, settings)?;
        let described = redact(url);
        let theirs = identity(&standby)
            .await
            .with_context(|| format!("cannot reach the --read-database-url {described}"))?;
        let ours = identity(self)
            .await
            .context("cannot read the primary's system identifier")?;
        if !theirs.0 {
            bail!(
                "refusing --read-database-url {described}: it is not a standby (it is not in \
                 recovery); point it at a streaming-replication hot standby of --database-url, \
                 or leave it unset to read from the primary"
            );
        }
        if (&theirs.1, &theirs.2) != (&ours.1, &ours.2) {
            bail!(
                "refusing --read-database-url {described}: it is a standby of another server \
                 or holds another database (system {} database `{}`, where --database-url is \
                 system {} database `{}`); it must be a streaming-replication standby of \
                 --database-url, made from it with pg_basebackup",
                theirs.1,
                theirs.2,
                ours.1,
                ours.2
            );
        }
        // The serving role and its grants were just set on the primary:
        // the standby has them once it has replayed that far.
        let lsn = self.flushed_lsn().await?;
        let deadline = std::time::Instant::now() + CATCH_UP_AT_START;
        while !standby.replayed(lsn).await? {
            if std::time::Instant::now() > deadline {
                bail!(
                    "refusing --read-database-url {described}: it has not replayed the \
                     primary's last {:?} of writes; is its replication running?",
                    CATCH_UP_AT_START
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let standby = standby.as_role(&role.name, role.password())?;
        let connected: String = standby
            .pool
            .get()
            .await
            .with_context(|| {
                format!(
                    "cannot connect to the --read-database-url {described} as the serving role `{}`",
                    role.name
                )
            })?
            .query_one("SELECT current_user::text", &[])
            .await?
            .get(0);
        if connected != role.name {
            bail!(
                "connected to the standby as `{connected}` where the serving role `{}` was asked for",
                role.name
            );
        }
        tracing::info!(standby = %described, "the change feed reads from the hot standby");
        Ok(standby)
    }

    /// The transactions in flight on this (primary) server now.
    #[tracing::instrument(name = "store.in_progress", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "in_progress"))]
    pub async fn in_progress(&self) -> Result<Vec<String>> {
        let client = self.client().await?;
        Ok(client
            .query_one(&client.prepare_cached(IN_PROGRESS).await?, &[])
            .await?
            .get(0))
    }

    /// The end of the primary's WAL that has reached its disk: a standby
    /// receives no further, and a committed write (synchronous commit,
    /// which the server insists on) lies before it once answered.
    #[tracing::instrument(name = "store.flushed_lsn", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "flushed_lsn"))]
    pub async fn flushed_lsn(&self) -> Result<PgLsn> {
        let client = self.client().await?;
        Ok(client
            .query_one(
                &client
                    .prepare_cached("SELECT pg_current_wal_flush_lsn()")
                    .await?,
                &[],
            )
            .await?
            .get(0))
    }

    /// Whether this standby has replayed the primary's WAL up to `lsn`, so
    /// that a snapshot taken now sees every commit before it.
    #[tracing::instrument(name = "store.replayed", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "replayed"))]
    pub async fn replayed(&self, lsn: PgLsn) -> Result<bool> {
        let client = self.client().await?;
        replayed_on(&*client, lsn).await
    }
}

/// Whether `store` is in recovery, its system identifier and its database.
async fn identity(store: &Store) -> anyhow::Result<(bool, String, String)> {
    let client = store.pool.get().await?;
    let row = client.query_one(IDENTITY, &[]).await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// Whether the server `client` is connected to has replayed WAL up to
/// `lsn`. NULL from PostgreSQL means not a standby (promoted), which has
/// everything it ever got.
pub(super) async fn replayed_on(
    client: &impl deadpool_postgres::GenericClient,
    lsn: PgLsn,
) -> Result<bool> {
    let replayed: Option<bool> = client
        .query_one(
            &client
                .prepare_cached("SELECT pg_last_wal_replay_lsn() >= $1")
                .await?,
            &[&lsn],
        )
        .await?
        .get(0);
    Ok(replayed.unwrap_or(true))
}
