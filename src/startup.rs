//! Builds the server from settings and runs it until told to stop.
//!
//! `Application::build` binds the listeners (so port 0 resolves before
//! anything is served), connects and migrates the database, and loads the
//! policy. `run_until_stopped` serves until the given future completes, then
//! shuts down gracefully: health turns NOT_SERVING, listeners close, open
//! health watches and change streams end, and in-flight calls finish.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::{
    StreamExt as _,
    wrappers::{ReceiverStream, TcpListenerStream},
};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

use crate::{
    grpc::{
        self, Authenticator, ConcernGrpc, ConsentGrpc, DisclosureGrpc, LimitLayer, SizeCapped,
        SubjectRightsGrpc, follow_readiness, health_server, pb, report_health,
    },
    http::{self, AddressLimit, HttpLimits, HttpState, PreferencePages},
    keys::{KeyFile as _, SubjectKey},
    policy::{Callers, Known, Policy, rate::Rate},
    service::{
        ConsentService, DisclosureService,
        concern::ConcernService,
        erasure::{Eraser, ErasureRefs},
        export::Exporter,
        feed::FeedHub,
        ledger::Checkpointer,
        preferences::Preferences,
        readiness::{PROBE_INTERVAL, Readiness},
        unsubscribe::{UnsubscribeKeys, Unsubscribes},
        vault::DataKeys,
    },
    settings::{LimitArgs, ServeArgs},
    state::DecisionState,
    store::{Database, ServingRole, Store},
    telemetry::SubjectRefs,
    tls::{self, Tls, TlsFiles, TlsListener},
};

/// A built server, ready to run.
pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    /// Probes and metrics, apart from the public side.
    admin_listener: TcpListener,
    database: Database,
    policy: Arc<Policy>,
    drain: Duration,
    shutdown_timeout: Duration,
    /// How often the change feed's reader re-reads without a NOTIFY.
    feed_poll_interval: Duration,
    /// The most WatchChanges streams open at once.
    max_watch_streams: usize,
    unsubscribe_keys: Arc<UnsubscribeKeys>,
    /// Derives trace refs and erasure hashes, each under its own tag.
    subject_key: SubjectKey,
    /// Encrypt personal data at rest (R8).
    data_keys: Arc<DataKeys>,
    public_url: String,
    /// How long links to the person's own page stay valid.
    preference_link_days: u32,
    /// Signs checkpoints of the history's chain heads, now and then and at
    /// shutdown.
    checkpointer: Checkpointer,
    /// TLS for gRPC and the public HTTP listener; `None` serves plaintext.
    tls: Option<Tls>,
    /// Who may call and what each may do; `None` serves everyone as
    /// anonymous (loopback only, unless told otherwise).
    callers: Option<Arc<Callers>>,
    /// The largest gRPC message received or sent (`--max-message-bytes`).
    max_message_bytes: usize,
    /// What every call and request is held to.
    limits: LimitArgs,
}

impl Application {
    pub async fn build(args: &ServeArgs) -> anyhow::Result<Self> {
        check_exposure(args)?;
        let policy = Arc::new(Policy::load(&args.policy)?);
        tracing::info!(
            policy = %args.policy.display(),
            version = policy.version(),
            purposes = policy.purposes().count(),
            "policy loaded"
        );
        let database = Database::open_with(&args.database, &args.connection_settings()).await?;
        database.prepare_schema(args.migrate).await?;
        Self::with_database(args, database, policy).await
    }

    /// Builds around an open database; tests use it with a fresh database.
    pub async fn with_database(
        args: &ServeArgs,
        database: Database,
        policy: Arc<Policy>,
    ) -> anyhow::Result<Self> {
        // From here on the server holds only the serving role's connections:
        // the owner's, which could rewrite the history, close.
        let serving =
            ServingRole::from_settings(&args.serving_role, args.serving_password_file.as_deref())?;
        let database = (database.serve_as(&serving).await?)
            .with_standby(
                args.read_database_url.as_deref(),
                &args.connection_settings(),
                &serving,
            )
            .await?;
        check_durability(&database.store, args.allow_unsafe_durability).await?;
        let tls = TlsFiles::from_settings(
            args.tls_cert.as_deref(),
            args.tls_key.as_deref(),
            args.tls_client_ca.as_deref(),
        )?
        .map(Tls::load)
        .transpose()?;
        let callers = match &args.callers {
            None => None,
            Some(path) => {
                let rpcs = grpc::served_rpcs();
                let known = Known {
                    policy: Some(&policy),
                    rpcs: Some(&rpcs),
                };
                let callers = Callers::load_with(path, known)?;
                tracing::info!(
                    callers = %path.display(),
                    count = callers.iter().count(),
                    "callers loaded: every call must authenticate"
                );
                Some(Arc::new(callers))
            }
        };
        let grpc_listener = TcpListener::bind(args.grpc_addr)
            .await
            .with_context(|| format!("cannot bind the gRPC address {}", args.grpc_addr))?;
        let http_listener = TcpListener::bind(args.http_addr)
            .await
            .with_context(|| format!("cannot bind the HTTP address {}", args.http_addr))?;
        let admin_listener = TcpListener::bind(args.admin_addr)
            .await
            .with_context(|| format!("cannot bind the admin address {}", args.admin_addr))?;
        // Keys made afresh at each start would strand what was stored under
        // the old ones, so a key without a file lives in the state directory.
        let state_dir = args.state_dir();
        let unsubscribe_keys =
            UnsubscribeKeys::load_or_create(args.unsubscribe_keys_file.as_deref(), &state_dir)?;
        let subject_key =
            SubjectKey::load_or_create(args.subject_ref_key_file.as_deref(), &state_dir)?;
        let data_keys = DataKeys::load_or_create(args.data_keys_file.as_deref(), &state_dir)?;
        let database = Database {
            store: database.store.with_request_key(subject_key.clone()),
            ..database
        };
        // Like the other keys: refuse to start rather than sign with a key
        // that dies with the process.
        let (checkpoint_key, key_path) = crate::ledger::key::load_or_create(&state_dir).context(
            "cannot keep the checkpoint signing key in the state directory (--state-dir)",
        )?;
        tracing::info!(key = %key_path.display(), "ledger checkpoints are signed with the key in {}", key_path.display());
        let checkpointer = Checkpointer::new(
            database.store.clone(),
            checkpoint_key,
            args.checkpoint_interval(),
        );
        let http_addr = http_listener.local_addr()?;
        let public_url = args.public_url.clone().unwrap_or_else(|| {
            let scheme = if tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{http_addr}")
        });
        Ok(Self {
            grpc_listener,
            http_listener,
            admin_listener,
            database,
            policy,
            drain: args.drain(),
            shutdown_timeout: args.shutdown_timeout(),
            feed_poll_interval: args.feed_poll_interval(),
            max_watch_streams: args.max_watch_streams,
            unsubscribe_keys: Arc::new(unsubscribe_keys),
            subject_key,
            data_keys: Arc::new(data_keys),
            public_url,
            preference_link_days: args.preference_link_days,
            checkpointer,
            tls,
            callers,
            max_message_bytes: args.max_message_bytes(),
            limits: args.limits.clone(),
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

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn store(&self) -> &Store {
        &self.database.store
    }

    /// Where the change feed reads (`--read-database-url`, else [`Self::store`]).
    pub fn read_store(&self) -> &Store {
        self.database.read_store()
    }

    /// Serves until `shutdown` completes, then stops gracefully.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let grpc_addr = self.grpc_addr();
        let http_addr = self.http_addr();
        let admin_addr = self.admin_addr();
        let Self {
            grpc_listener,
            http_listener,
            admin_listener,
            database,
            policy,
            drain,
            shutdown_timeout,
            feed_poll_interval,
            max_watch_streams,
            unsubscribe_keys,
            subject_key,
            data_keys,
            public_url,
            preference_link_days,
            checkpointer,
            tls,
            callers,
            max_message_bytes,
            limits,
        } = self;
        let auth = Authenticator::new(
            callers,
            Rate::per_second(limits.rate_limit_per_caller, limits.rate_limit_burst),
        );
        let subject_refs = SubjectRefs::new(subject_key.clone());
        let csrf_key = subject_key.clone();
        let erasure_refs = ErasureRefs::new(subject_key);
        // Install the recorder before anything records.
        crate::metrics::handle();
        let store = database.store.clone();
        // Reads that may lag the primary by a standby's replay; `primary`
        // is set when they do.
        let (read_store, primary) = (
            database.read_store().clone(),
            database.standby.as_ref().map(|_| store.clone()),
        );

        let stop = CancellationToken::new();
        let health = tonic_health::server::HealthReporter::new();
        report_health(&health, ServingStatus::Serving).await;
        let readiness = Readiness::new();
        tokio::spawn(
            readiness
                .clone()
                .probe_database(store.clone(), PROBE_INTERVAL, stop.clone()),
        );
        let health_follower = tokio::spawn(follow_readiness(health.clone(), readiness.subscribe()));
        // Its Watch streams end at `stop`, or they would hold the drain open.
        let health_service = health_server(health.clone(), stop.clone())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build the reflection service")?
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        // Any caller may discover the API; probes, which carry no
        // credentials, get health only.
        let reflection = InterceptedService::new(reflection, auth.clone());
        let wake = store.spawn_change_listener(stop.clone());
        // LISTEN stays on the primary: a standby hears no NOTIFY.
        let feed = FeedHub::start(
            read_store.clone(),
            primary,
            wake,
            feed_poll_interval,
            stop.clone(),
        );
        // Loaded from the same database the feed reads; not ready for
        // traffic until it is in memory.
        let state =
            DecisionState::start(read_store, feed.clone(), erasure_refs.clone(), stop.clone());
        readiness.ready_once_loaded(state.clone());
        let checkpoints = tokio::spawn(checkpointer.clone().run(stop.clone()));
        let exporter = Exporter::new(store.clone(), data_keys.clone(), policy.concern_deadlines());
        let preferences = Preferences::new(
            store.clone(),
            policy.clone(),
            unsubscribe_keys.clone(),
            exporter.clone(),
            &public_url,
            preference_link_days,
        )
        .settling(state.clone());
        let preference_pages = PreferencePages {
            preferences: preferences.clone(),
            policy: policy.clone(),
            csrf_key,
            render_export: crate::grpc::export_json,
        };
        let unsubscribes =
            Unsubscribes::new(store.clone(), policy.clone(), unsubscribe_keys, &public_url)
                .settling(state.clone());
        let concerns =
            ConcernGrpc::new(ConcernService::new(store.clone(), policy.clone())).into_server();
        let concern_deadlines = policy.concern_deadlines();
        let rights = SubjectRightsGrpc::new(
            exporter,
            Eraser::new(store.clone(), erasure_refs.clone()).settling(state.clone()),
        )
        .into_server();
        let disclosure = DisclosureGrpc::new(
            DisclosureService::new(store.clone(), policy.clone(), data_keys)
                .settling(state.clone()),
            subject_refs.clone(),
        )
        .into_server();
        // Ends once the gRPC service (its one user) is dropped at shutdown
        // and the records already queued have committed.
        let (records, record_writer) = crate::service::record_writer::start(
            store.clone(),
            crate::service::record_writer::LIMITS,
        );
        let consent = ConsentGrpc::new(
            ConsentService::new(
                store.clone(),
                policy,
                feed,
                max_watch_streams,
                erasure_refs,
                state,
                records,
            ),
            unsubscribes.clone(),
            preferences,
            subject_refs,
        )
        .ending_streams_at(stop.clone())
        .into_server();

        // Each request is held to its method's size cap as it arrives (a
        // list-carrying method's is smaller); tonic's own cap, one per
        // service, stays as the backstop and caps what is sent.
        macro_rules! served {
            ($server:expr) => {
                SizeCapped::new(
                    InterceptedService::new(
                        $server
                            .max_decoding_message_size(max_message_bytes)
                            .max_encoding_message_size(max_message_bytes),
                        auth.clone(),
                    ),
                    max_message_bytes,
                )
            };
        }
        let grpc = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(limits.http2_keepalive_interval()))
            .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout()))
            .max_concurrent_streams(Some(limits.max_concurrent_streams))
            .layer(LimitLayer::new(
                limits.max_concurrent_calls as usize,
                limits.default_deadline(),
            ))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(served!(consent))
            .add_service(served!(concerns))
            .add_service(served!(disclosure))
            .add_service(served!(rights));
        let grpc: BoxedServer<tonic::transport::Error> = match &tls {
            Some(tls) => {
                let acceptor = tls.clone();
                let incoming = tls::accept(
                    grpc_listener,
                    move || acceptor.grpc_acceptor(),
                    stop.clone(),
                );
                Box::pin(grpc.serve_with_incoming_shutdown(
                    ReceiverStream::new(incoming).map(Ok::<_, std::io::Error>),
                    stop.clone().cancelled_owned(),
                ))
            }
            None => Box::pin(grpc.serve_with_incoming_shutdown(
                TcpListenerStream::new(grpc_listener),
                stop.clone().cancelled_owned(),
            )),
        };
        let http_state = HttpState {
            store,
            unsubscribes,
            concern_deadlines,
            preferences: preference_pages,
            readiness: readiness.clone(),
            link_limit: AddressLimit::per_minute(limits.unsubscribe_rate_limit_per_address),
        };
        let http_limits = HttpLimits {
            header_timeout: limits.http_header_timeout(),
            max_body_bytes: usize::try_from(limits.http_max_body_bytes).unwrap_or(usize::MAX),
        };
        let admin = http::serve(
            admin_listener,
            http::admin_router(http_state.clone()),
            http_limits,
            stop.clone(),
        );
        let public = http::public_router(http_state);
        let http: Pin<Box<dyn Future<Output = ()> + Send>> = match &tls {
            Some(tls) => {
                let acceptor = tls.clone();
                let incoming = tls::accept(
                    http_listener,
                    move || acceptor.http_acceptor(),
                    stop.clone(),
                );
                let listener = TlsListener::new(incoming, http_addr);
                Box::pin(http::serve(listener, public, http_limits, stop.clone()))
            }
            None => Box::pin(http::serve(
                http_listener,
                public,
                http_limits,
                stop.clone(),
            )),
        };
        if let Some(tls) = &tls {
            tls.spawn_reloader(tls::POLL_INTERVAL, stop.clone());
        }
        let tls_mode = match &tls {
            None => "off",
            Some(tls) if tls.files().client_ca.is_some() => "mtls",
            Some(_) => "on",
        };
        tracing::info!(%grpc_addr, %http_addr, %admin_addr, tls = tls_mode, "consentd is serving gRPC on {grpc_addr} and HTTP on {http_addr} and admin on {admin_addr}");

        let mut grpc = tokio::spawn(grpc);
        let mut http = tokio::spawn(http);
        let mut admin = tokio::spawn(admin);
        tokio::select! {
            () = shutdown => {}
            result = &mut grpc => return Err(anyhow::anyhow!("gRPC server stopped: {:?}", result)),
            result = &mut http => return Err(anyhow::anyhow!("HTTP server stopped: {:?}", result)),
            result = &mut admin => return Err(anyhow::anyhow!("admin server stopped: {:?}", result)),
        }

        tracing::info!(drain = ?drain, "shutting down: reporting NOT_SERVING, then finishing in-flight calls");
        readiness.shut_down();
        // Health has said NOT_SERVING once the follower ends.
        let _ = health_follower.await;
        tokio::time::sleep(drain).await;
        stop.cancel();
        let finished = tokio::time::timeout(shutdown_timeout, async {
            grpc.await?.context("gRPC server failed")?;
            http.await.context("HTTP server failed")?;
            admin.await.context("admin server failed")
        })
        .await;
        match finished {
            Ok(result) => result?,
            Err(_) => tracing::warn!(
                timeout = ?shutdown_timeout,
                "connections still open after the shutdown timeout; stopping anyway"
            ),
        }
        // Queued records are answered before the database may go away.
        if tokio::time::timeout(shutdown_timeout, record_writer)
            .await
            .is_err()
        {
            tracing::warn!("consent records still being written at shutdown");
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

/// A listener's serving future, whichever transport it runs over.
type BoxedServer<E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send>>;

/// Refuses a database that can lose commits it acknowledged: every write
/// consentd answers must survive a crash of PostgreSQL.
async fn check_durability(store: &Store, allow_unsafe: bool) -> anyhow::Result<()> {
    let problems = store
        .durability_settings()
        .await
        .context("cannot read the database's durability settings")?
        .problems();
    if problems.is_empty() {
        return Ok(());
    }
    let problems = problems.join("; ");
    if allow_unsafe {
        tracing::warn!(
            problems,
            "serving a database that can lose acknowledged writes, as --allow-unsafe-durability asks"
        );
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve: {problems}. Fix the PostgreSQL settings, or pass \
         --allow-unsafe-durability (CONSENTD_ALLOW_UNSAFE_DURABILITY=true) for a throw-away test database"
    )
}

/// Without a callers file every call is anonymous and may do anything, as
/// anyone: tolerable only where no other machine can connect, or where the
/// operator says the network is closed by other means.
fn check_exposure(args: &ServeArgs) -> anyhow::Result<()> {
    if args.callers.is_some() {
        return Ok(());
    }
    let exposed: Vec<String> = [
        ("--grpc-addr", args.grpc_addr),
        ("--http-addr", args.http_addr),
    ]
    .into_iter()
    .filter(|(_, addr)| !addr.ip().is_loopback())
    .map(|(flag, addr)| format!("{flag} {addr}"))
    .collect();
    if exposed.is_empty() {
        tracing::warn!(
            "NO AUTHENTICATION: no --callers file, so every call is anonymous, may do anything \
             and names its own actor in x-actor. Served on loopback only; give --callers \
             (CONSENTD_CALLERS) before anything else can reach this server"
        );
        return Ok(());
    }
    let exposed = exposed.join(", ");
    if args.insecure_no_auth {
        tracing::warn!(
            exposed,
            "NO AUTHENTICATION on a non-loopback address, as --insecure-no-auth asks: anyone who \
             can reach {exposed} may read and change any person's data, as anyone"
        );
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve {exposed} without authentication: with no --callers file anyone who \
         can reach the port could read and change any person's data, as anyone. Give \
         --callers FILE (CONSENTD_CALLERS), bind to a loopback address, or pass \
         --insecure-no-auth (CONSENTD_INSECURE_NO_AUTH=true) if the network is closed by other means"
    )
}

/// A future that completes on SIGINT or SIGTERM. The handlers are
/// installed when this is called, not when the future is first polled: a
/// SIGTERM that arrives between "serving" and the first poll would
/// otherwise kill the process without a drain.
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
        }
    })
}
