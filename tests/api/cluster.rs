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

/// A streaming-replication hot standby of a [`PrivateCluster`], made the
/// way an operator makes one: `pg_basebackup -R` from the primary, then
/// started on its own port. Stopped when dropped, and removed.
pub struct PrivateStandby {
    pub pg: EmbeddedPostgres,
    _dir: TempDir,
}

/// The role the standby streams as: replication and nothing else.
const REPLICATOR: &str = "replicator";

impl PrivateCluster {
    /// Makes and starts a hot standby of this cluster: a replication role
    /// and its pg_hba line on the primary, a base backup that writes the
    /// standby's connection back to it (`-R`), and a server on its own
    /// port that replays the primary's WAL and answers read-only queries.
    pub async fn standby(&self) -> PrivateStandby {
        let admin = store::admin_connect(&self.pg.admin_url()).await.unwrap();
        let wal_level: String = admin.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
        assert_ne!(wal_level, "minimal", "a standby needs wal_level replica");
        let exists = admin
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&REPLICATOR])
            .await
            .unwrap()
            .is_some();
        if !exists {
            admin
                .batch_execute(&format!("CREATE ROLE {REPLICATOR} REPLICATION LOGIN"))
                .await
                .unwrap();
        }
        let hba = self.pg.data_dir().join("pg_hba.conf");
        let mut lines = std::fs::read_to_string(&hba).unwrap();
        lines.push_str(&format!(
            "\nhost replication {REPLICATOR} 127.0.0.1/32 trust\n"
        ));
        std::fs::write(&hba, lines).unwrap();
        admin
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();

        let dir = tempdir();
        let data = dir.join("standby");
        let port = self.pg.port().to_string();
        let bin = store::embedded::find_bin_dir().unwrap();
        tokio::task::spawn_blocking({
            let data = data.clone();
            move || {
                let mut cmd = std::process::Command::new(bin.join("pg_basebackup"));
                cmd.args(["-h", "127.0.0.1", "-p", &port, "-U", REPLICATOR, "-R", "-X"])
                    .args(["stream", "--checkpoint=fast", "--no-sync", "-D"])
                    .arg(&data);
                // The server refuses a data directory of another user, so
                // as root the copy is made as the cluster's user.
                if nix::unistd::geteuid().is_root() {
                    use std::os::unix::process::CommandExt as _;
                    let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
                    std::fs::create_dir_all(&data).unwrap();
                    std::os::unix::fs::chown(&data, Some(user.uid.as_raw()), None).unwrap();
                    cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
                }
                let out = cmd.output().expect("pg_basebackup runs");
                assert!(
                    out.status.success(),
                    "pg_basebackup failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        })
        .await
        .unwrap();
        assert!(
            data.join("standby.signal").exists(),
            "-R makes the copy a standby"
        );
        // Its data directory exists, so this starts it rather than initdb.
        let pg = EmbeddedPostgres::start(&data, Durability::Durable)
            .await
            .expect("the standby starts");
        PrivateStandby { pg, _dir: dir }
    }
}

impl PrivateStandby {
    /// A URL for database `name` on the standby, as the superuser.
    pub fn url(&self, name: &str) -> String {
        store::with_database(&self.pg.admin_url(), name).unwrap()
    }
}
