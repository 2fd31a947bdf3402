//! A PostgreSQL cluster owned by one test, for tests that crash or restart
//! the database itself (the shared test server must never be touched).

use consentd::store::{
    self, Store,
    embedded::{Durability, EmbeddedPostgres},
};

use crate::{
    cli::{TempDir, tempdir},
    helpers::FreshDatabase,
};

pub struct PrivateCluster {
    pub pg: EmbeddedPostgres,
    /// Holds the data directory; removed after the server is stopped.
    _dir: TempDir,
}

impl PrivateCluster {
    /// initdb into a temporary directory and start on a free loopback port,
    /// as `consentd serve` starts its fallback cluster.
    pub async fn start(durability: Durability) -> Self {
        let dir = tempdir();
        let pg = EmbeddedPostgres::start(&dir.join("pgdata"), durability)
            .await
            .expect("the private PostgreSQL cluster starts");
        Self { pg, _dir: dir }
    }

    /// A migrated database on this cluster.
    pub async fn database(&self, name: &str) -> FreshDatabase {
        let admin_url = self.pg.admin_url();
        store::ensure_database(&admin_url, name).await.unwrap();
        let db_url = store::with_database(&admin_url, name).unwrap();
        Store::connect(&db_url, 1).unwrap().migrate().await.unwrap();
        FreshDatabase {
            admin_url,
            db_name: name.to_string(),
            db_url,
        }
    }
}
