//! Which PostgreSQL server a benchmark uses, and its throw-away databases.
//! Shared by the `serving` and `import` benches.

use consentd::store::{
    self, Store,
    embedded::{Durability, EmbeddedPostgres},
};

/// The PostgreSQL server a run uses: CONSENTD_BENCH_DATABASE_URL, else the
/// local server at 127.0.0.1:5432, else a private durable cluster, as the
/// tests choose. The cluster lives as long as this value.
pub struct Server {
    pub admin_url: String,
    _cluster: Option<EmbeddedPostgres>,
}

impl Server {
    pub async fn pick() -> anyhow::Result<Self> {
        if let Ok(url) = std::env::var("CONSENTD_BENCH_DATABASE_URL") {
            return Ok(Self {
                admin_url: url,
                _cluster: None,
            });
        }
        let local = "postgres://postgres@127.0.0.1:5432/postgres".to_string();
        if store::admin_connect(&local).await.is_ok() {
            return Ok(Self {
                admin_url: local,
                _cluster: None,
            });
        }
        let dir = std::env::temp_dir().join(format!("consentd-bench-pg-{}", std::process::id()));
        // Durable: the write baselines mean nothing on a cluster that skips
        // its WAL flushes.
        let cluster = EmbeddedPostgres::start(&dir, Durability::Durable).await?;
        Ok(Self {
            admin_url: cluster.admin_url(),
            _cluster: Some(cluster),
        })
    }

    /// Where the server listens, without credentials.
    pub fn host(&self) -> &str {
        self.admin_url.rsplit('@').next().unwrap_or(&self.admin_url)
    }

    /// An empty, migrated database named for this process, and its URL.
    pub async fn fresh(&self, name: &str) -> anyhow::Result<(String, String, Store)> {
        let db = format!("consentd_bench_{name}_{}", std::process::id());
        self.drop_db(&db).await?;
        store::ensure_database(&self.admin_url, &db).await?;
        let url = store::with_database(&self.admin_url, &db)?;
        let store = Store::connect(&url, 4)?;
        store.migrate().await?;
        Ok((db, url, store))
    }

    pub async fn drop_db(&self, db: &str) -> anyhow::Result<()> {
        let admin = store::admin_connect(&self.admin_url).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                store::quote_ident(db)
            ))
            .await?;
        Ok(())
    }
}
