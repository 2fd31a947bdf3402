//! Which database `consentd serve` uses, whether it migrates it, and what
//! its log says about it. Each test runs the real binary and reads its real
//! log (stderr at `RUST_LOG=info`).

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    str::FromStr as _,
    sync::mpsc,
    time::Duration,
};

use consentd::store::{
    self,
    embedded::{Durability, EmbeddedPostgres},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio_postgres::config::Host;

use crate::{
    cli::tempdir,
    helpers::{FreshDatabase, fresh_database, policy_path, test_state_dir},
};

/// What one run of `consentd serve` wrote, and whether it got as far as
/// serving (it is then stopped with SIGTERM).
struct ServeRun {
    served: bool,
    log: Vec<String>,
}

impl ServeRun {
    fn text(&self) -> String {
        self.log.join("\n")
    }
}

/// Runs `consentd serve` with `args` until it serves (then stops it) or
/// exits, and returns every line it logged, from the first.
async fn serve(args: &[&str]) -> ServeRun {
    let mut child = Command::new(env!("CARGO_BIN_EXE_consentd"))
        .arg("serve")
        .args(args)
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .arg("--policy")
        .arg(policy_path())
        .env("RUST_LOG", "info")
        .env("CONSENTD_STATE_DIR", test_state_dir())
        .env_remove("CONSENTD_DATABASE_URL")
        .env_remove("CONSENTD_MIGRATE")
        .env_remove("CONSENTD_LOCAL_SERVER_URL")
        .env_remove("CONSENTD_PG_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let served = tokio::task::spawn_blocking(move || {
        // The reader ends when serve exits; a serving line means it runs.
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(90)) {
            let serving = line.contains("is serving gRPC on");
            log.push(line);
            if serving {
                kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
                while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
                    log.push(line);
                }
                child.wait().unwrap();
                return (true, log);
            }
        }
        let _ = child.kill();
        child.wait().unwrap();
        (false, log)
    })
    .await
    .unwrap();
    ServeRun {
        served: served.0,
        log: served.1,
    }
}

/// A fresh database with nothing in it: no tables, no migration history.
async fn empty_database() -> FreshDatabase {
    let db = fresh_database().await;
    let client = store::admin_connect(&db.db_url).await.unwrap();
    client
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        .await
        .unwrap();
    db
}

async fn public_tables(db_url: &str) -> Vec<String> {
    let client = store::admin_connect(db_url).await.unwrap();
    client
        .query(
            "SELECT table_name::text FROM information_schema.tables
              WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn applied_migrations(db_url: &str) -> i64 {
    let client = store::admin_connect(db_url).await.unwrap();
    client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0)
}

fn embedded_migrations() -> i64 {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/migrations"))
        .unwrap()
        .count() as i64
}

#[tokio::test]
async fn passwords_in_every_connection_string_form_stay_out_of_the_serve_log() {
    let db = fresh_database().await;
    let server = tokio_postgres::Config::from_str(&db.admin_url).unwrap();
    let Host::Tcp(host) = &server.get_hosts()[0] else {
        panic!("the test server is reached over TCP: {}", db.admin_url);
    };
    let port = server.get_ports()[0];
    let user = server.get_user().unwrap();
    let name = &db.db_name;
    // The server trusts local connections, so any password connects. Each
    // form carries its own token; the log must hold none of them in any
    // spelling (raw, percent-decoded, unescaped).
    let token = |form: &str| format!("Pw{form}{}", uuid::Uuid::new_v4().simple());
    let forms: Vec<(String, String)> = [
        ("url", "postgres://{user}:{t}@{host}:{port}/{name}"),
        ("urlscheme", "postgresql://{user}:{t}@{host}:{port}/{name}"),
        (
            "urlencoded",
            "postgres://{user}:p%40{t}@{host}:{port}/{name}",
        ),
        (
            "query",
            "postgres://{user}@{host}:{port}/{name}?password={t}",
        ),
        (
            "querylast",
            "postgresql://{host}:{port}/{name}?user={user}&password={t}&application_name=x",
        ),
        (
            "keyvalue",
            "host={host} port={port} user={user} password={t} dbname={name}",
        ),
        (
            "quoted",
            "host={host} port={port} user={user} password = 'two words {t}' dbname={name}",
        ),
        (
            "escaped",
            "host={host} port={port} user={user} password=a\\ {t} dbname={name}",
        ),
    ]
    .into_iter()
    .map(|(form, template)| {
        let t = token(form);
        let conn = template
            .replace("{user}", user)
            .replace("{t}", &t)
            .replace("{host}", host)
            .replace("{port}", &port.to_string())
            .replace("{name}", name);
        (t, conn)
    })
    .collect();

    for (token, conn) in &forms {
        let run = serve(&["--database-url", conn]).await;
        assert!(
            run.served,
            "serve did not start with {conn}:\n{}",
            run.text()
        );
        let text = run.text();
        assert!(
            !text.contains(token),
            "the log shows the password of {conn}:\n{text}"
        );
        assert!(
            run.log
                .iter()
                .any(|l| l.contains("using the configured PostgreSQL") && l.contains(name)),
            "the log does not name the database of {conn}:\n{text}"
        );
    }

    // A database that does not answer: the error path must not show it either.
    let (down, down_url) = (token("down"), token("downurl"));
    for (token, conn) in [
        (
            &down,
            format!("host={host} port=1 user={user} password={down} dbname={name}"),
        ),
        (
            &down_url,
            format!("postgres://{user}:{down_url}@{host}:1/{name}"),
        ),
    ] {
        let run = serve(&["--database-url", &conn]).await;
        assert!(
            !run.served,
            "serve started on a closed port:\n{}",
            run.text()
        );
        assert!(
            run.text().contains("cannot connect to the database"),
            "{}",
            run.text()
        );
        assert!(
            !run.text().contains(token.as_str()),
            "the failure shows the password of {conn}:\n{}",
            run.text()
        );
    }
}

#[tokio::test]
async fn serve_without_migrate_refuses_an_empty_database_and_creates_no_table() {
    let db = empty_database().await;
    let run = serve(&["--database-url", &db.db_url]).await;
    assert!(
        !run.served,
        "serve ran on an unmigrated database:\n{}",
        run.text()
    );
    let text = run.text();
    assert!(
        text.contains(&format!(
            "lacks {} of consentd's migrations",
            embedded_migrations()
        )) && text.contains("--migrate"),
        "serve did not say why it refused:\n{text}"
    );
    assert_eq!(public_tables(&db.db_url).await, Vec::<String>::new());
}

#[tokio::test]
async fn serve_with_migrate_brings_an_empty_database_up_to_date() {
    let db = empty_database().await;
    let run = serve(&["--database-url", &db.db_url, "--migrate"]).await;
    assert!(run.served, "{}", run.text());
    assert_eq!(applied_migrations(&db.db_url).await, embedded_migrations());
    assert!(
        public_tables(&db.db_url)
            .await
            .contains(&"consent_records".to_string())
    );
}

#[tokio::test]
async fn serve_refuses_a_database_that_can_lose_acknowledged_commits_unless_told_to_allow_it() {
    let db = fresh_database().await;
    let admin = store::admin_connect(&db.admin_url).await.unwrap();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} SET synchronous_commit = off",
            store::quote_ident(&db.db_name)
        ))
        .await
        .unwrap();

    let refused = serve(&["--database-url", &db.db_url]).await;
    assert!(
        !refused.served,
        "served with synchronous_commit off:\n{}",
        refused.text()
    );
    let text = refused.text();
    assert!(
        text.contains("synchronous_commit is off") && text.contains("--allow-unsafe-durability"),
        "serve did not say why it refused, and how to override:\n{text}"
    );

    let allowed = serve(&["--database-url", &db.db_url, "--allow-unsafe-durability"]).await;
    assert!(allowed.served, "{}", allowed.text());
    assert!(
        allowed.text().contains("can lose acknowledged writes"),
        "the override is not logged:\n{}",
        allowed.text()
    );
}

/// The default setup, on a PostgreSQL server of the test's own, so a
/// developer's real `consentd` database is never touched.
#[tokio::test]
async fn without_a_database_url_serve_creates_and_migrates_consentd_on_the_local_server() {
    let dir = tempdir();
    let local = EmbeddedPostgres::start(&dir.join("local"), Durability::Ephemeral)
        .await
        .unwrap();
    let admin_url = local.admin_url();
    let run = serve(&[
        // The test's own cluster is ephemeral: fsync off.
        "--allow-unsafe-durability",
        "--local-server-url",
        &admin_url,
        // Where a private cluster would go if the local server were ignored.
        "--pg-data-dir",
        dir.join("private").to_str().unwrap(),
    ])
    .await;
    assert!(run.served, "{}", run.text());
    let text = run.text();
    assert!(
        text.contains("using the local PostgreSQL, database `consentd`"),
        "{text}"
    );
    assert!(
        !dir.join("private").exists(),
        "a private cluster started:\n{text}"
    );

    let admin = store::admin_connect(&admin_url).await.unwrap();
    let databases: Vec<String> = admin
        .query("SELECT datname::text FROM pg_database", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(databases.contains(&"consentd".to_string()), "{databases:?}");
    let url = store::with_database(&admin_url, "consentd").unwrap();
    assert_eq!(applied_migrations(&url).await, embedded_migrations());
    drop(admin);
    local.stop();
}
