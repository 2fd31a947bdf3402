//! TLS for the gRPC and public HTTP listeners, with rustls.
//!
//! The certificate, key and client CA files are read into one pair of
//! rustls server configs (gRPC speaks h2, the HTTP side http/1.1). Each new
//! connection takes the pair in force when it arrives, so a reload (on
//! SIGHUP, or when a file changes) reaches new connections without a
//! restart, and open ones keep the certificate they were made with.
//! Handshakes run in their own tasks (see `incoming`): a client that never
//! finishes one holds nobody else up. The connections handed to tonic are
//! rustls streams, so `Request::peer_certs` carries the client certificate
//! that `--tls-client-ca` verified (`grpc::cert_subject` reads its subject).

mod incoming;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        crypto::{CryptoProvider, ring},
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
        server::WebPkiClientVerifier,
    },
};
use tokio_util::sync::CancellationToken;

pub use incoming::{TlsListener, accept};

/// How often the files are checked for a change. Short enough that a
/// renewed certificate is served within seconds, long enough to cost nothing.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The PEM files TLS is served from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, gRPC clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The TLS settings as given: none at all is plaintext; a certificate
    /// without its key (or the reverse), or a client CA without either, is
    /// refused, since serving plaintext then is surely not what was meant.
    pub fn from_settings(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> anyhow::Result<Option<Self>> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                client_ca: client_ca.map(Path::to_path_buf),
            })),
            (Some(_), None) => anyhow::bail!(
                "--tls-cert is set but --tls-key is not: TLS needs both (CONSENTD_TLS_CERT and CONSENTD_TLS_KEY)"
            ),
            (None, Some(_)) => anyhow::bail!(
                "--tls-key is set but --tls-cert is not: TLS needs both (CONSENTD_TLS_CERT and CONSENTD_TLS_KEY)"
            ),
            (None, None) if client_ca.is_some() => anyhow::bail!(
                "--tls-client-ca needs --tls-cert and --tls-key: client certificates are only asked for over TLS"
            ),
            (None, None) => Ok(None),
        }
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    /// What the files look like now, to notice a change.
    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.paths()
            .map(|path| {
                let meta = std::fs::metadata(path).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect()
    }

    fn load(&self) -> anyhow::Result<Configs> {
        let provider = Arc::new(ring::default_provider());
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .with_context(|| format!("cannot read the certificate {}", self.cert.display()))?;
        anyhow::ensure!(
            !chain.is_empty(),
            "{} holds no PEM certificate",
            self.cert.display()
        );
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("cannot read the private key {}", self.key.display()))?;
        let verifier = self
            .client_ca
            .as_deref()
            .map(|ca| client_verifier(ca, &provider))
            .transpose()?;
        let config = |alpn: &[u8]| -> anyhow::Result<Arc<ServerConfig>> {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?;
            let builder = match &verifier {
                Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
                None => builder.with_no_client_auth(),
            };
            let mut config = builder
                .with_single_cert(chain.clone(), key.clone_key())
                .with_context(|| {
                    format!(
                        "{} and {} do not make a usable certificate and key",
                        self.cert.display(),
                        self.key.display()
                    )
                })?;
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(Configs {
            grpc: config(b"h2")?,
            // The public listener speaks HTTP/1.1 only.
            http: config(b"http/1.1")?,
        })
    }
}

/// Requires a client certificate signed by one of the CAs in `path`.
fn client_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Arc<dyn tokio_rustls::rustls::server::danger::ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read the client CA {}", path.display()))?
    {
        let cert = cert.with_context(|| format!("bad PEM in the client CA {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("bad CA certificate in {}", path.display()))?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "{} holds no PEM certificate",
        path.display()
    );
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .with_context(|| format!("cannot verify clients against {}", path.display()))
}

struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// The TLS configuration in force, shared by the listeners and swapped
/// whole when the files change. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    files: Arc<TlsFiles>,
    current: Arc<RwLock<Configs>>,
}

impl Tls {
    /// Reads the files; any problem stops the start.
    pub fn load(files: TlsFiles) -> anyhow::Result<Self> {
        let configs = files.load()?;
        Ok(Self {
            files: Arc::new(files),
            current: Arc::new(RwLock::new(configs)),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    pub fn grpc_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.read().grpc.clone())
    }

    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.read().http.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Configs> {
        // A poisoned lock still holds a whole config: swaps replace it in one move.
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the files again. On any problem the configuration in force
    /// stays, so a half-written renewal never takes the service down.
    pub fn reload(&self) -> anyhow::Result<()> {
        let configs = self.files.load()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = configs;
        Ok(())
    }

    /// Reloads on SIGHUP, and when a file's modification time or size
    /// changes (checked every `poll`), until `stop`.
    pub fn spawn_reloader(&self, poll: Duration, stop: CancellationToken) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                    .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading TLS files on change only"))
                    .ok();
            let sighup = async |hangup: &mut Option<tokio::signal::unix::Signal>| match hangup {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            };
            let mut seen = tls.files.stamp();
            let mut ticks = tokio::time::interval(poll);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let cause = tokio::select! {
                    () = stop.cancelled() => return,
                    _ = sighup(&mut hangup) => "SIGHUP",
                    _ = ticks.tick() => {
                        let now = tls.files.stamp();
                        if now == seen {
                            continue;
                        }
                        // Remembered even when the load fails, so a broken
                        // file is reported once, not at every tick.
                        seen = now;
                        "a changed file"
                    }
                };
                match tls.reload() {
                    Ok(()) => {
                        tracing::info!(cause, cert = %tls.files.cert.display(), "TLS files reloaded")
                    }
                    Err(e) => tracing::warn!(
                        cause,
                        error = format!("{e:#}"),
                        "TLS files not reloaded; serving the previous certificate"
                    ),
                }
            }
        });
    }
}
