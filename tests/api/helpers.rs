//! `spawn_app()` gives each test its own world: a database cloned from a
//! migrated template, and the real server bound to free ports.
//!
//! PostgreSQL comes from `CONSENTD_TEST_DATABASE_URL` (a URL whose user may
//! create databases), else the local server at 127.0.0.1:5432, else a private
//! cluster started from the installed server binaries — the same fallback
//! `consentd serve` uses.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use consentd::{
    domain::ConsistencyToken,
    grpc::pb::{self, consent_service_client::ConsentServiceClient},
    policy::Policy,
    settings::{DatabaseArgs, LimitArgs, ServeArgs},
    startup::Application,
    store::{
        self, Database, Store,
        embedded::{Durability, EmbeddedPostgres},
    },
};
use tokio::sync::OnceCell;

pub use crate::{
    http_client::{HttpResponse, http_get, http_request, wait_ready},
    locks::{until_waiting_on_locks, waiting_on_locks},
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status, transport::Channel};
use tonic_types::StatusExt as _;

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The PostgreSQL server the tests use, found or started once per process.
struct TestServer {
    admin_url: String,
    /// Kept alive for the whole process; the kernel stops it when we exit.
    _embedded: Option<EmbeddedPostgres>,
}

static SERVER: OnceCell<TestServer> = OnceCell::const_new();
static TEMPLATE: OnceCell<String> = OnceCell::const_new();

async fn server() -> &'static TestServer {
    SERVER
        .get_or_init(|| async {
            let filter = if std::env::var_os("TEST_LOG").is_some() {
                "info"
            } else {
                "off"
            };
            // Kept for the whole process: the guard only flushes traces.
            std::mem::forget(consentd::telemetry::init(
                filter,
                consentd::telemetry::LogFormat::Text,
            ));
            let url = std::env::var("CONSENTD_TEST_DATABASE_URL")
                .unwrap_or_else(|_| DEFAULT_SERVER.into());
            if store::admin_connect(&url).await.is_ok() {
                return TestServer {
                    admin_url: url,
                    _embedded: None,
                };
            }
            remove_stale_clusters();
            let dir = std::env::temp_dir().join(format!("consentd-test-pg-{}", std::process::id()));
            let cluster = EmbeddedPostgres::start(&dir, Durability::Ephemeral)
                .await
                .expect("no PostgreSQL answers and the private cluster could not start");
            eprintln!(
                "tests use a private PostgreSQL cluster on port {}",
                cluster.port()
            );
            TestServer {
                admin_url: cluster.admin_url(),
                _embedded: Some(cluster),
            }
        })
        .await
}

/// Removes the data directories of private test clusters whose test process
/// has exited (the kernel stopped their server, but the files stay).
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("consentd-test-pg-")
            .and_then(|p| p.split('.').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
            let _ = std::fs::remove_file(std::env::temp_dir().join(format!("{name}.log")));
        }
    }
}

/// A migrated template database, named after the migrations so that a
/// changed migration never reuses a stale template. Built once per server,
/// under an advisory lock so parallel test processes take turns.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let admin_url = &server().await.admin_url;
            let name = format!("consentd_template_{}", store::migrations_fingerprint());
            let admin = store::admin_connect(admin_url).await.unwrap();
            admin.execute("SELECT pg_advisory_lock(4242)", &[]).await.unwrap();
            let exists = admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                .await
                .unwrap()
                .is_some();
            if !exists {
                // Built under another name and renamed at the end, so a run
                // that dies half-way never leaves a half-migrated template.
                let building = format!("{name}_building");
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", store::quote_ident(&building)))
                    .await
                    .unwrap();
                store::ensure_database(admin_url, &building).await.unwrap();
                let db = Store::connect(&store::with_database(admin_url, &building).unwrap(), 2).unwrap();
                db.migrate().await.unwrap();
                drop(db);
                admin
                    .batch_execute(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{building}';
                         ALTER DATABASE {} RENAME TO {}",
                        store::quote_ident(&building),
                        store::quote_ident(&name)
                    ))
                    .await
                    .unwrap();
            }
            admin.execute("SELECT pg_advisory_unlock(4242)", &[]).await.unwrap();
            name
        })
        .await
}

pub fn policy_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/policy.toml")
}

/// A migrated database of its own, cloned from the template.
pub struct FreshDatabase {
    pub admin_url: String,
    pub db_name: String,
    pub db_url: String,
}

pub async fn fresh_database() -> FreshDatabase {
    let template = template().await;
    let admin_url = server().await.admin_url.clone();
    let db_name = format!("consentd_test_{}", uuid::Uuid::new_v4().simple());
    let admin = store::admin_connect(&admin_url).await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE {}",
            store::quote_ident(&db_name),
            store::quote_ident(template)
        ))
        .await
        .unwrap();
    let db_url = store::with_database(&admin_url, &db_name).unwrap();
    FreshDatabase {
        admin_url,
        db_name,
        db_url,
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        drop_database(self.admin_url.clone(), self.db_name.clone());
    }
}

/// Dropping a database needs async IO, and Drop is sync: use a short-lived
/// thread with its own runtime.
fn drop_database(admin_url: String, db_name: String) {
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            if let Ok(admin) = store::admin_connect(&admin_url).await {
                let _ = admin
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        store::quote_ident(&db_name)
                    ))
                    .await;
            }
        });
    })
    .join();
}

pub struct TestApp {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Probes and /metrics.
    pub admin_addr: SocketAddr,
    pub client: ConsentServiceClient<Channel>,
    pub channel: Channel,
    /// A direct connection to the test's database, to look behind the API.
    pub db: tokio_postgres::Client,
    /// The server's own store: connections as the server makes them.
    pub store: Store,
    /// Dropped (and so the database with it) when the test ends.
    _database: FreshDatabase,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Unsubscribe keys the tests sign with, in a file as an operator would
/// provide them. The first line signs.
pub fn test_keys_file() -> PathBuf {
    // Written once per process: tests start servers in parallel, and a
    // rewrite while another server reads it would be seen half-written.
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("consentd-test-keys-{}", std::process::id()));
        std::fs::write(
            &path,
            "# test keys\nk2=ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=\nk1=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
        )
        .unwrap();
        path
    })
    .clone()
}

/// Data keys the tests encrypt personal data with, as an operator would
/// provide them.
pub fn test_data_keys_file() -> PathBuf {
    // Once per process, for the same reason as `test_keys_file`.
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("consentd-test-data-keys-{}", std::process::id()));
        std::fs::write(
            &path,
            "# test data keys\nd1=dmF1bHQtdGVzdC1rZXktMDEyMzQ1Njc4OWFiY2RlZiE=\n",
        )
        .unwrap();
        path
    })
    .clone()
}

/// One state directory per test process, for the keys of servers given no
/// key file (never the real one of the user running the tests).
pub fn test_state_dir() -> PathBuf {
    std::env::temp_dir().join(format!("consentd-test-state-{}", std::process::id()))
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like `spawn_app`, with a chance to change the serve settings.
pub async fn spawn_app_with(configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    spawn_app_on(fresh_database().await, configure).await
}

/// The serve settings every test starts from, on `database`: free
/// loopback ports, the test keys and policy.
pub async fn serve_args(database: DatabaseArgs) -> ServeArgs {
    ServeArgs {
        database,
        serving_role: "consentd_serving".into(),
        serving_password_file: None,
        read_database_url: None,
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        policy: policy_path(),
        migrate: false,
        drain_seconds: 0,
        shutdown_timeout_seconds: 10,
        feed_poll_interval_ms: 1000,
        max_watch_streams: 10_000,
        public_url: None,
        unsubscribe_keys_file: Some(test_keys_file()),
        subject_ref_key_file: None,
        data_keys_file: Some(test_data_keys_file()),
        state_dir: Some(test_state_dir()),
        // The fallback test cluster runs with fsync off, for speed.
        allow_unsafe_durability: server().await._embedded.is_some(),
        checkpoint_interval_seconds: 60,
        tls_cert: None,
        tls_key: None,
        tls_client_ca: None,
        callers: None,
        insecure_no_auth: false,
        preference_link_days: 30,
        db_statement_timeout_ms: 5000,
        max_message_bytes: 4_194_304,
        limits: LimitArgs {
            max_concurrent_calls: 256,
            rate_limit_per_caller: 1000,
            rate_limit_burst: 2000,
            default_deadline_ms: 30_000,
            http2_keepalive_interval_seconds: 60,
            http2_keepalive_timeout_seconds: 20,
            max_concurrent_streams: 1024,
            http_header_timeout_seconds: 10,
            http_max_body_bytes: 65_536,
            unsubscribe_rate_limit_per_address: 120,
        },
    }
}

/// Like `spawn_app_with`, on a database the test made itself (on a
/// PostgreSQL server of its own, say).
pub async fn spawn_app_on(fresh: FreshDatabase, configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    let (admin_url, db_url) = (fresh.admin_url.clone(), fresh.db_url.clone());
    let mut args = serve_args(DatabaseArgs {
        database_url: Some(db_url.clone()),
        pg_data_dir: None,
        local_server_url: admin_url.clone(),
        max_connections: 8,
        db_connect_timeout_ms: 2000,
        db_pool_wait_timeout_ms: 5000,
    })
    .await;
    configure(&mut args);
    let policy = Arc::new(Policy::load(&args.policy).unwrap());
    let database = Database::open_with(&args.database, &args.connection_settings())
        .await
        .unwrap();
    let app = Application::with_database(&args, database, policy)
        .await
        .unwrap();
    let store = app.store().clone();
    let (grpc_addr, http_addr, admin_addr) = (app.grpc_addr(), app.http_addr(), app.admin_addr());
    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));

    let endpoint = Channel::from_shared(format!("http://{grpc_addr}")).unwrap();
    // A TLS server refuses this plaintext channel: TLS tests make their own.
    let channel = if args.tls_cert.is_some() {
        endpoint.connect_lazy()
    } else {
        endpoint.connect().await.unwrap()
    };
    let db = store::admin_connect(&db_url).await.unwrap();
    wait_ready(admin_addr).await;
    TestApp {
        grpc_addr,
        http_addr,
        admin_addr,
        client: ConsentServiceClient::new(channel.clone()),
        channel,
        db,
        store,
        _database: fresh,
        stop,
        server: Some(server),
    }
}

impl TestApp {
    /// Rows in `table` of this test's database.
    pub async fn count(&self, table: &str) -> i64 {
        self.db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Rows in every table the API writes, to prove a refused call wrote nothing.
    pub async fn counts(&self) -> [i64; 4] {
        [
            self.count("subjects").await,
            self.count("consent_records").await,
            self.count("consent_state").await,
            self.count("idempotency_keys").await,
        ]
    }

    pub fn db_url(&self) -> &str {
        &self._database.db_url
    }

    /// Backends of the test's database waiting on a lock.
    pub async fn waiting_on_locks(&self) -> i64 {
        waiting_on_locks(&self.db).await
    }

    /// See [`until_waiting_on_locks`].
    pub async fn until_waiting_on_locks(&self, n: i64) {
        until_waiting_on_locks(&self.db, n).await
    }

    /// A second connection to the test's database, for transactions the
    /// test controls.
    pub async fn connect_db(&self) -> tokio_postgres::Client {
        store::admin_connect(&self._database.db_url).await.unwrap()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        match self.server.take() {
            Some(handle) => handle.await?,
            None => Ok(()),
        }
    }

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub async fn register(&self, subject_id: &str) -> pb::Subject {
        self.client
            .clone()
            .register_subject(registration(subject_id))
            .await
            .expect("register_subject")
            .into_inner()
            .subject
            .expect("a subject")
    }

    pub async fn record(
        &self,
        subject_id: &str,
        purpose: &str,
        field: &str,
        choice: pb::Choice,
    ) -> pb::ConsentRecord {
        self.client
            .clone()
            .record_consent(record_request(subject_id, purpose, field, choice))
            .await
            .expect("record_consent")
            .into_inner()
            .record
            .expect("a record")
    }

    pub async fn check(&self, subject_id: &str, purpose: &str, field: &str) -> pb::CheckResponse {
        self.check_with(subject_id, purpose, field, None).await
    }

    pub async fn check_with(
        &self,
        subject_id: &str,
        purpose: &str,
        field: &str,
        consistency: Option<pb::Consistency>,
    ) -> pb::CheckResponse {
        self.client
            .clone()
            .check(pb::CheckRequest {
                consistency,
                ..check_request(subject_id, purpose, field)
            })
            .await
            .expect("check")
            .into_inner()
    }

    /// For a test that changed rows behind the service's back: a token for
    /// everything in the database now, after waking the servers' feed.
    pub async fn position_now(&self) -> Option<pb::Consistency> {
        let head: i64 = self
            .db
            .query_one(
                "SELECT greatest(
                   (SELECT coalesce(max(sequence), 0) FROM consent_records),
                   (SELECT coalesce(max(sequence), 0) FROM erasure_events),
                   (SELECT coalesce(max(sequence), 0) FROM subjects),
                   (SELECT coalesce(max(sequence), 0) FROM personal_data))",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        self.db
            .batch_execute("NOTIFY consent_changes")
            .await
            .unwrap();
        at_least_as_fresh(&ConsistencyToken::at(head).encode())
    }
}

/// Read through to the primary database.
pub fn fully_consistent() -> Option<pb::Consistency> {
    Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
    })
}

/// At least as fresh as `token`.
pub fn at_least_as_fresh(token: &str) -> Option<pb::Consistency> {
    Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(
            token.to_string(),
        )),
    })
}

/// An individual registered through the web under notice 2026-11.
pub fn registration(subject_id: &str) -> pb::RegisterSubjectRequest {
    pb::RegisterSubjectRequest {
        subject_id: subject_id.into(),
        kind: pb::SubjectKind::Individual.into(),
        notice_version: "2026-11".into(),
        channel: pb::Channel::Web.into(),
        request_id: String::new(),
    }
}

pub fn record_request(
    subject_id: &str,
    purpose: &str,
    field: &str,
    choice: pb::Choice,
) -> pb::RecordConsentRequest {
    pb::RecordConsentRequest {
        subject_id: subject_id.into(),
        purpose: purpose.into(),
        field: field.into(),
        choice: choice.into(),
        channel: pb::Channel::Web.into(),
        notice_version: "2026-11".into(),
        evidence: "form-17".into(),
        request_id: String::new(),
        recipient: String::new(),
    }
}

/// A request carrying `x-actor`.
pub fn as_actor<T>(actor: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-actor", actor.parse().unwrap());
    request
}

/// Asserts INVALID_ARGUMENT and returns the violated field names.
pub fn violated_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let bad_request = details
        .bad_request()
        .expect("a google.rpc.BadRequest detail");
    assert!(!bad_request.field_violations.is_empty());
    bad_request
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A Check of `field` of `subject_id` for `purpose`, at the default
/// consistency.
pub fn check_request(subject_id: &str, purpose: &str, field: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        subject_id: subject_id.into(),
        purpose: purpose.into(),
        field: field.into(),
        consistency: None,
    }
}
