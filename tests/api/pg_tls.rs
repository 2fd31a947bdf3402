//! The PostgreSQL connection over TLS, as the URL's `sslmode` asks, against
//! a private cluster run with `ssl = on` and a certificate made at run time.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use consentd::store::{self, Store, embedded::Durability};

use crate::{
    cluster::PrivateCluster,
    helpers::spawn_app_on,
    pki::{Ca, Pki},
};

/// A private cluster serving TLS with a certificate `ca` signed for
/// 127.0.0.1 and localhost.
async fn tls_cluster(ca: &Ca) -> PrivateCluster {
    let cluster = PrivateCluster::start(Durability::Ephemeral).await;
    let dir = cluster.pg.data_dir();
    let owner = std::fs::metadata(dir).unwrap();
    let pem = ca.server("postgres");
    for (name, text) in [("server.crt", &pem.cert), ("server.key", &pem.key)] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        // PostgreSQL refuses a key that others can read, or that it does not own.
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let admin = store::admin_connect(&cluster.pg.admin_url()).await.unwrap();
    // One statement per call: ALTER SYSTEM refuses a multi-statement batch.
    for statement in ["ALTER SYSTEM SET ssl = on", "SELECT pg_reload_conf()"] {
        admin.batch_execute(statement).await.unwrap();
    }
    // The reload is a signal: wait until new backends have taken it.
    for _ in 0..50 {
        let fresh = store::admin_connect(&cluster.pg.admin_url()).await.unwrap();
        let ssl: String = fresh.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if ssl == "on" {
            return cluster;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the private cluster never turned ssl on");
}

#[tokio::test]
async fn with_sslmode_require_every_connection_of_the_server_is_encrypted() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki.ca).await;
    let mut fresh = cluster.database("consentd_tls").await;
    fresh.db_url.push_str("?sslmode=require");
    let app = spawn_app_on(fresh, |args| args.allow_unsafe_durability = true).await;
    app.register("C-1").await;

    // Watched over a plaintext connection of the test's own.
    let watcher = store::admin_connect(&format!("{}?sslmode=disable", cluster.pg.admin_url()))
        .await
        .unwrap();
    let own: i32 = app
        .db
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let row = watcher
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
               FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.datname = 'consentd_tls' AND a.pid <> $1",
            &[&own],
        )
        .await
        .unwrap();
    let (encrypted, plain): (i64, i64) = (row.get(0), row.get(1));
    assert!(encrypted >= 1, "no encrypted connection of the server");
    assert_eq!(plain, 0, "the server has plaintext connections");
    assert!(
        !watcher
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[]
            )
            .await
            .unwrap()
            .get::<_, bool>(0),
        "sslmode=disable must stay plaintext, or the count above proves nothing"
    );
}

#[tokio::test]
async fn verify_full_accepts_the_servers_ca_and_refuses_any_other() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki.ca).await;
    let stranger = pki.dir.join("stranger-ca.crt");
    std::fs::write(&stranger, Ca::new("another CA").cert_pem).unwrap();
    let url = |ca: &std::path::Path| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            cluster.pg.admin_url(),
            ca.display()
        )
    };

    Store::connect(&url(&pki.ca_file()), 1)
        .unwrap()
        .ping()
        .await
        .expect("the cluster's certificate verifies against its CA");
    let refused = Store::connect(&url(&stranger), 1).unwrap().ping().await;
    assert!(refused.is_err(), "a certificate of another CA was trusted");
}
