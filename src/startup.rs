//! Builds the server from settings and runs it until told to stop.
//!
//! `Application::build` binds the listeners (so port 0 resolves before
//! anything is served), connects and migrates the database, and loads the
//! policy. `run_until_stopped` serves until the given future completes, then
//! shuts down gracefully: health turns NOT_SERVING, listeners close, and
//! in-flight calls finish.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::{
    grpc::{ConcernGrpc, ConsentGrpc, DisclosureGrpc, SubjectRightsGrpc, pb},
    http::{self, HttpState},
    policy::Policy,
    service::{
        ConsentService, DisclosureService,
        concern::ConcernService,
        erasure::Eraser,
        export::Exporter,
        ledger::Checkpointer,
        unsubscribe::{UnsubscribeKeys, Unsubscribes},
        vault::DataKeys,
    },
    settings::{DatabaseArgs, ServeArgs},
    store::{
        self, Store,
        embedded::{Durability, EmbeddedPostgres},
    },
    telemetry::SubjectRefs,
};

/// The database the default setup uses when no URL is given.
pub const DEFAULT_DATABASE: &str = "consentd";

/// A connected database, and the private cluster behind it if one had to be
/// started (stopped when this is dropped).
pub struct Database {
    pub store: Store,
    /// True when the default database was used, which is always migrated.
    pub is_default: bool,
    pub embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Connects to `--database-url`, or to the default local database,
    /// creating it, or to a private cluster started for the purpose.
    pub async fn open(args: &DatabaseArgs) -> anyhow::Result<Self> {
        if let Some(url) = &args.database_url {
            let store = Store::connect(url, args.max_connections)?;
            store.ping().await?;
            tracing::info!(database = %redact(url), "using the configured PostgreSQL");
            return Ok(Self {
                store,
                is_default: false,
                embedded: None,
            });
        }
        let (server_url, embedded) = match store::admin_connect(&args.local_server_url).await {
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
        if store::ensure_database(&server_url, DEFAULT_DATABASE).await? {
            tracing::info!("created database `{DEFAULT_DATABASE}`");
        }
        let url = store::with_database(&server_url, DEFAULT_DATABASE)?;
        let store = Store::connect(&url, args.max_connections)?;
        store.ping().await?;
        Ok(Self {
            store,
            is_default: true,
            embedded,
        })
    }
}

fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/consentd/pgdata");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("consentd/pgdata")
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A built server, ready to run.
pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    database: Database,
    policy: Arc<Policy>,
    drain: Duration,
    shutdown_timeout: Duration,
    unsubscribe_keys: Arc<UnsubscribeKeys>,
    subject_refs: SubjectRefs,
    /// Encrypt personal data at rest (R8).
    data_keys: Arc<DataKeys>,
    public_url: String,
    /// Signs checkpoints of the history's chain heads, now and then and at
    /// shutdown.
    checkpointer: Checkpointer,
}

impl Application {
    pub async fn build(args: &ServeArgs) -> anyhow::Result<Self> {
        let policy = Arc::new(Policy::load(&args.policy)?);
        tracing::info!(
            policy = %args.policy.display(),
            version = policy.version(),
            purposes = policy.purposes().count(),
            "policy loaded"
        );
        let database = Database::open(&args.database).await?;
        if args.migrate || database.is_default {
            let applied = database.store.migrate().await?;
            tracing::info!(applied, "database migrations are up to date");
        }
        Self::with_database(args, database, policy).await
    }

    /// Builds around an open database; tests use it with a fresh database.
    pub async fn with_database(
        args: &ServeArgs,
        database: Database,
        policy: Arc<Policy>,
    ) -> anyhow::Result<Self> {
        let grpc_listener = TcpListener::bind(args.grpc_addr)
            .await
            .with_context(|| format!("cannot bind the gRPC address {}", args.grpc_addr))?;
        let http_listener = TcpListener::bind(args.http_addr)
            .await
            .with_context(|| format!("cannot bind the HTTP address {}", args.http_addr))?;
        let unsubscribe_keys = match &args.unsubscribe_keys_file {
            Some(path) => UnsubscribeKeys::load(path)?,
            None => {
                tracing::warn!(
                    "no --unsubscribe-keys-file: signing unsubscribe links with a random key; \
                     links stop working when this process stops"
                );
                UnsubscribeKeys::ephemeral()
            }
        };
        let subject_refs = match &args.subject_ref_key_file {
            Some(path) => SubjectRefs::load(path)?,
            None => {
                tracing::warn!(
                    "no --subject-ref-key-file: subject pseudonyms use a random key; trace refs \
                     change, and erased ids are no longer recognised, after this process stops"
                );
                SubjectRefs::ephemeral()
            }
        };
        let data_keys = match &args.data_keys_file {
            Some(path) => DataKeys::load(path)?,
            None => {
                tracing::warn!(
                    "no --data-keys-file: encrypting personal data with a random key; \
                     every value stored now is UNREADABLE after this process stops"
                );
                DataKeys::ephemeral()
            }
        };
        let checkpoint_key = match crate::ledger::key::load_or_create(&args.state_dir()) {
            Ok((key, path)) => {
                tracing::info!(key = %path.display(), "ledger checkpoints are signed with the key in {}", path.display());
                key
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot keep a checkpoint signing key in the state directory (set --state-dir \
                     to a writable directory); signing with a random key for this process"
                );
                crate::ledger::key::ephemeral()
            }
        };
        let checkpointer = Checkpointer::new(
            database.store.clone(),
            checkpoint_key,
            args.checkpoint_interval(),
        );
        let http_addr = http_listener.local_addr()?;
        let public_url = args
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{http_addr}"));
        Ok(Self {
            grpc_listener,
            http_listener,
            database,
            policy,
            drain: args.drain(),
            shutdown_timeout: args.shutdown_timeout(),
            unsubscribe_keys: Arc::new(unsubscribe_keys),
            subject_refs,
            data_keys: Arc::new(data_keys),
            public_url,
            checkpointer,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn store(&self) -> &Store {
        &self.database.store
    }

    /// Serves until `shutdown` completes, then stops gracefully.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let grpc_addr = self.grpc_addr();
        let http_addr = self.http_addr();
        let Self {
            grpc_listener,
            http_listener,
            database,
            policy,
            drain,
            shutdown_timeout,
            unsubscribe_keys,
            subject_refs,
            data_keys,
            public_url,
            checkpointer,
        } = self;
        // Install the recorder before anything records.
        crate::metrics::handle();
        let store = database.store.clone();

        let (health, health_service) = tonic_health::server::health_reporter();
        report_health(&health, ServingStatus::Serving).await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build the reflection service")?;
        let stop = CancellationToken::new();
        let wake = store.spawn_change_listener(stop.clone());
        let checkpoints = tokio::spawn(checkpointer.clone().run(stop.clone()));
        let unsubscribes =
            Unsubscribes::new(store.clone(), policy.clone(), unsubscribe_keys, &public_url);
        let concerns =
            ConcernGrpc::new(ConcernService::new(store.clone(), policy.clone())).into_server();
        let concern_deadlines = policy.concern_deadlines();
        let rights = SubjectRightsGrpc::new(
            Exporter::new(store.clone(), data_keys.clone()),
            Eraser::new(store.clone(), subject_refs.clone()),
            policy.concern_deadlines(),
        )
        .into_server();
        let disclosure = DisclosureGrpc::new(
            DisclosureService::new(store.clone(), policy.clone(), data_keys),
            subject_refs.clone(),
        )
        .into_server();
        let consent = ConsentGrpc::new(
            ConsentService::new(
                store.clone(),
                policy,
                wake,
                stop.clone(),
                subject_refs.clone(),
            ),
            unsubscribes.clone(),
            subject_refs,
        )
        .into_server();

        let grpc = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(consent)
            .add_service(concerns)
            .add_service(disclosure)
            .add_service(rights)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(grpc_listener),
                stop.clone().cancelled_owned(),
            );
        let http = axum::serve(
            http_listener,
            http::router(HttpState {
                store,
                unsubscribes,
                concern_deadlines,
            }),
        )
        .with_graceful_shutdown(stop.clone().cancelled_owned());
        tracing::info!(%grpc_addr, %http_addr, "consentd is serving gRPC on {grpc_addr} and HTTP on {http_addr}");

        let mut grpc = tokio::spawn(grpc);
        let mut http = tokio::spawn(async move { http.await });
        tokio::select! {
            () = shutdown => {}
            result = &mut grpc => return Err(anyhow::anyhow!("gRPC server stopped: {:?}", result)),
            result = &mut http => return Err(anyhow::anyhow!("HTTP server stopped: {:?}", result)),
        }

        tracing::info!(drain = ?drain, "shutting down: reporting NOT_SERVING, then finishing in-flight calls");
        report_health(&health, ServingStatus::NotServing).await;
        tokio::time::sleep(drain).await;
        stop.cancel();
        let finished = tokio::time::timeout(shutdown_timeout, async {
            grpc.await?.context("gRPC server failed")?;
            http.await?.context("HTTP server failed")
        })
        .await;
        match finished {
            Ok(result) => result?,
            Err(_) => tracing::warn!(
                timeout = ?shutdown_timeout,
                "connections still open after the shutdown timeout; stopping anyway"
            ),
        }
        // The last checkpoint covers every call that finished above.
        let _ = checkpoints.await;
        if let Err(e) = checkpointer.checkpoint().await {
            tracing::warn!(error = %e, "the shutdown checkpoint failed");
        }
        if let Some(cluster) = database.embedded {
            tracing::info!("stopping the private PostgreSQL cluster");
            tokio::task::spawn_blocking(move || cluster.stop()).await?;
        }
        tracing::info!("consentd stopped");
        Ok(())
    }
}

/// Sets the health of the server as a whole ("") and of every service.
async fn report_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    use tonic::server::NamedService;
    for service in [
        "",
        pb::consent_service_server::ConsentServiceServer::<ConsentGrpc>::NAME,
        pb::concern_service_server::ConcernServiceServer::<ConcernGrpc>::NAME,
        pb::disclosure_service_server::DisclosureServiceServer::<DisclosureGrpc>::NAME,
        pb::subject_rights_service_server::SubjectRightsServiceServer::<SubjectRightsGrpc>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = term => tracing::info!("received SIGTERM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
