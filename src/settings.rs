//! The command line. Every setting can also come from a `CONSENTD_*`
//! environment variable, so containers configure it without flags.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::store::ConnectionSettings;

mod limits;

pub use limits::LimitArgs;

#[derive(Debug, Parser)]
#[command(
    name = "consentd",
    version,
    about = "Consent and disclosure decisions for personal data, served over gRPC",
    long_about = "consentd answers \"may field F of subject S be used for purpose P?\" from a \
                  written privacy policy and from what each person chose, and keeps every \
                  choice in an append-only history in PostgreSQL."
)]
pub struct Cli {
    /// Log lines as human-readable text or as JSON objects.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "CONSENTD_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: crate::telemetry::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (ConsentService, health, reflection) and the HTTP endpoints.
    Serve(ServeArgs),
    /// Check serve's settings without serving: load the policy, print every
    /// setting as serve would use it (JSON, connection strings redacted),
    /// and exit non-zero on a problem.
    CheckConfig(ServeArgs),
    /// Apply the embedded database migrations, then exit.
    Migrate(DatabaseArgs),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Work with callers files: who may call, and what.
    #[command(subcommand)]
    Callers(CallersCommand),
    /// Load an existing suppression list: one REFUSE per subject id.
    ///
    /// FILE is CSV: the subject's external id in the first column, extra
    /// columns ignored, and an optional header line (subject_id, external_id,
    /// customer_id, subject or id). Unknown subjects are registered with no
    /// personal data, so the refusal holds when they sign up. Subjects that
    /// already refused get no new record, so a file can be loaded twice and
    /// an interrupted run can simply be run again. Malformed lines are
    /// written, with their line number and reason, to the reject file.
    ImportRefusals(ImportArgs),
    /// Work with the data keys that encrypt personal data at rest.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Write everything held about one subject as JSON (the right of access):
    /// the subject, its personal data decrypted, collection records, consent
    /// history, current choices, disclosures and concerns.
    ExportSubject(ExportArgs),
    /// Walk every chain of the tamper-evident history and every signed
    /// checkpoint. Prints "N records, M checkpoints, intact", or the first
    /// broken link with its record id and exits 1.
    Verify(DatabaseArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The subject's external id.
    pub subject_id: String,

    /// Write the JSON here instead of to standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,

    /// The data keys file, to decrypt the subject's personal data.
    #[arg(long, env = "CONSENTD_DATA_KEYS_FILE")]
    pub data_keys_file: PathBuf,

    /// The policy file (for the concern deadlines shown in the export).
    #[arg(long, env = "CONSENTD_POLICY", default_value = "deploy/policy.toml")]
    pub policy: PathBuf,

    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-encrypt every stored value under the first key of the data keys
    /// file, in batches, while servers keep running. Put the new key first
    /// and keep the old ones listed (so running servers still read old
    /// values) until this finishes; then the old keys can be removed.
    Rotate(RotateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// The data keys file (`key-id=base64-key` lines, 32-byte keys).
    #[arg(long, env = "CONSENTD_DATA_KEYS_FILE")]
    pub data_keys_file: PathBuf,

    /// Values re-encrypted per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_size: u64,

    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The purpose the people on the list refused (opt_out or consent).
    #[arg(long)]
    pub purpose: String,

    /// Refuse only this field of the purpose (e.g. email); default: all.
    #[arg(long)]
    pub field: Option<String>,

    /// The CSV file to load.
    pub file: PathBuf,

    /// Where rejected lines go (CSV: line,reason,content). Default: FILE.rejects.csv.
    #[arg(long)]
    pub reject_file: Option<PathBuf>,

    /// The notice version recorded with each refusal.
    #[arg(long, default_value = "import")]
    pub notice_version: String,

    /// The evidence recorded with each refusal. Default: "import of FILE-NAME".
    #[arg(long)]
    pub evidence: Option<String>,

    /// Who is recorded as having made the records.
    #[arg(long, default_value = "import", env = "CONSENTD_ACTOR")]
    pub actor: String,

    /// Lines per transaction.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch_size: u64,

    /// Batches loaded at once, each on its own connection.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=32))]
    pub jobs: u64,

    /// The policy file that declares the purpose.
    #[arg(long, env = "CONSENTD_POLICY", default_value = "deploy/policy.toml")]
    pub policy: PathBuf,

    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and print what it declares; exit 1 on any problem.
    Check {
        /// The policy file to validate.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CallersCommand {
    /// Validate a callers file against the methods this server serves and
    /// print who may call what; exit 1 on any problem.
    Check {
        /// The callers file to validate.
        file: PathBuf,
        /// Also check its purposes and recipients against this policy file.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Print a new random bearer token and the `token_sha256` line that
    /// lets it in.
    Token,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/consentd. When absent,
    /// consentd uses postgres://postgres@127.0.0.1:5432/consentd (creating the
    /// database), and if nothing answers there it starts a private cluster
    /// from the installed PostgreSQL server binaries under --pg-data-dir.
    #[arg(long, env = "CONSENTD_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Data directory of the private PostgreSQL cluster (used only when no
    /// --database-url is given and nothing answers on 127.0.0.1:5432).
    /// Defaults to $XDG_DATA_HOME/consentd/pgdata, or /var/lib/consentd/pgdata
    /// when running as root.
    #[arg(long, env = "CONSENTD_PG_DATA_DIR")]
    pub pg_data_dir: Option<PathBuf>,

    /// Where to look for a running PostgreSQL when no --database-url is
    /// given. consentd creates the `consentd` database there.
    #[arg(
        long,
        env = "CONSENTD_LOCAL_SERVER_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub local_server_url: String,

    /// Most database connections this process opens.
    #[arg(long, env = "CONSENTD_MAX_CONNECTIONS", default_value_t = 16)]
    pub max_connections: usize,

    /// How long opening one database connection (TCP, TLS, login) may take
    /// before the call that needed it fails. A `connect_timeout` in the URL
    /// wins.
    #[arg(long, env = "CONSENTD_DB_CONNECT_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub db_connect_timeout_ms: u64,

    /// How long a call waits for a free pooled database connection before
    /// it is answered UNAVAILABLE.
    #[arg(long, env = "CONSENTD_DB_POOL_WAIT_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub db_pool_wait_timeout_ms: u64,
}

impl DatabaseArgs {
    /// The connection bounds these flags ask for, without a statement
    /// timeout: only `serve` sets one ([`ServeArgs::connection_settings`]).
    pub fn connection_settings(&self) -> ConnectionSettings {
        ConnectionSettings {
            max_connections: self.max_connections,
            connect_timeout: Duration::from_millis(self.db_connect_timeout_ms),
            pool_wait: Duration::from_millis(self.db_pool_wait_timeout_ms),
            statement_timeout: None,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// The PostgreSQL role the server serves as. The user of --database-url
    /// owns the tables and runs the migrations; the server then connects
    /// again as this role, which owns nothing and may only append to and
    /// read the histories. consentd creates it (LOGIN, no other attribute)
    /// when missing and the owner may, and sets its privileges at every
    /// start; it refuses to start when the role could do more.
    #[arg(long, env = "CONSENTD_SERVING_ROLE", default_value = "consentd_serving", value_parser = crate::store::parse_role_name)]
    pub serving_role: String,

    /// File holding the serving role's password (one line), for servers
    /// that ask for one. Without it the serving role connects without a
    /// password (trust, peer or certificate authentication).
    #[arg(long, env = "CONSENTD_SERVING_PASSWORD_FILE")]
    pub serving_password_file: Option<PathBuf>,

    /// A streaming-replication hot standby of --database-url (made with
    /// `pg_basebackup -R`) that the change feed (WatchChanges) reads from,
    /// to take reads off the primary. Writes, LISTEN and everything else
    /// stay on the primary. Checked at start: a server that is not in
    /// recovery, or is a copy of another cluster or database, is refused.
    /// Connects with the primary's bounds and TLS rules, as --serving-role.
    /// Unset: everything reads from the primary.
    #[arg(long, env = "CONSENTD_READ_DATABASE_URL")]
    pub read_database_url: Option<String>,

    /// Address for gRPC. Port 0 picks a free port; the bound address is logged.
    #[arg(long, env = "CONSENTD_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Address for the public HTTP side: the unsubscribe pages (/u/…) and
    /// nothing else. Port 0 picks a free port.
    #[arg(long, env = "CONSENTD_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Address for the admin HTTP side: /healthz, /readyz and /metrics.
    /// Loopback by default, since it needs no credentials; port 0 picks a
    /// free port, and the log names it.
    #[arg(long, env = "CONSENTD_ADMIN_ADDR", default_value = "127.0.0.1:8081")]
    pub admin_addr: SocketAddr,

    /// The policy file; the server refuses to start if it has any problem.
    #[arg(long, env = "CONSENTD_POLICY", default_value = "deploy/policy.toml")]
    pub policy: PathBuf,

    /// Apply pending migrations at start. Always done for the default local
    /// database; with --database-url only when asked.
    #[arg(long, env = "CONSENTD_MIGRATE")]
    pub migrate: bool,

    /// On SIGINT/SIGTERM, report NOT_SERVING for this long before closing the
    /// listeners, so load balancers stop routing first. In-flight calls
    /// always finish.
    #[arg(long, env = "CONSENTD_DRAIN_SECONDS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub drain_seconds: u64,

    /// The address people reach the HTTP side at, used to build unsubscribe
    /// links (e.g. https://consent.example.com). Defaults to http://HTTP_ADDR.
    #[arg(long, env = "CONSENTD_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// File of unsubscribe-token signing keys, one `key-id=base64-key` per
    /// line (keys of 32 bytes or more). The first signs new links; all
    /// verify, so keys rotate by adding a new first line. Without it the
    /// keys are `unsubscribe.keys` in --state-dir, created on first start.
    #[arg(long, env = "CONSENTD_UNSUBSCRIBE_KEYS_FILE")]
    pub unsubscribe_keys_file: Option<PathBuf>,

    /// File holding the key (one base64 line, 32 bytes or more) that turns
    /// subject ids into the stable pseudonyms traces carry
    /// (`consent.subject_ref`) and erased ids into keyed hashes. Without it
    /// the key is `subject-ref.key` in --state-dir, created on first start.
    #[arg(long, env = "CONSENTD_SUBJECT_REF_KEY_FILE")]
    pub subject_ref_key_file: Option<PathBuf>,
    /// File of data keys that encrypt personal data at rest (AES-256-GCM),
    /// one `key-id=base64-key` line per 32-byte key. The first encrypts new
    /// values; all decrypt, so keys rotate by adding a new first line and
    /// running `consentd keys rotate`. Without it the keys are `data.keys`
    /// in --state-dir, created on first start.
    #[arg(long, env = "CONSENTD_DATA_KEYS_FILE")]
    pub data_keys_file: Option<PathBuf>,

    /// After the drain, how long in-flight calls and open connections get
    /// to finish before the server exits anyway.
    #[arg(long, env = "CONSENTD_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 30)]
    pub shutdown_timeout_seconds: u64,

    /// How often the change feed's reader re-reads the history when no
    /// NOTIFY woke it: a safety net for a lost notification, not the normal
    /// path.
    #[arg(long, env = "CONSENTD_FEED_POLL_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub feed_poll_interval_ms: u64,

    /// The most WatchChanges streams served at once; one more is refused
    /// with RESOURCE_EXHAUSTED. All of them share one database reader.
    #[arg(long, env = "CONSENTD_MAX_WATCH_STREAMS", default_value_t = 10_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_watch_streams: usize,

    /// Where the server keeps its own files: every key no key file is given
    /// for and the checkpoint signing key, created there (mode 0600) on first start and reused after.
    /// Defaults to $XDG_DATA_HOME/consentd, or /var/lib/consentd when running
    /// as root.
    #[arg(long, env = "CONSENTD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve even when PostgreSQL can lose commits it has acknowledged
    /// (`synchronous_commit = off` or `fsync = off`). Without it such a
    /// database is refused at start. For throw-away test clusters only.
    #[arg(long, env = "CONSENTD_ALLOW_UNSAFE_DURABILITY")]
    pub allow_unsafe_durability: bool,

    /// How often the server signs a checkpoint of the history's chain heads
    /// (only when something changed; one more at shutdown).
    #[arg(long, env = "CONSENTD_CHECKPOINT_INTERVAL_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub checkpoint_interval_seconds: u64,

    /// PEM certificate chain: with --tls-key, gRPC and the public HTTP
    /// listener serve TLS only. Reloaded on SIGHUP or when the file changes.
    #[arg(long, env = "CONSENTD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "CONSENTD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: gRPC clients must present a certificate one of
    /// them signed (mTLS). Needs --tls-cert and --tls-key.
    #[arg(long, env = "CONSENTD_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// The callers file (TOML): every system and person that may call, how
    /// each authenticates, and what each may do. Without it every call is
    /// anonymous, which the server allows only on loopback addresses.
    #[arg(long, env = "CONSENTD_CALLERS")]
    pub callers: Option<PathBuf>,

    /// Serve without a callers file on a non-loopback address: anyone who
    /// can reach the port may do anything, as anyone. For a network that is
    /// closed by other means only.
    #[arg(long, env = "CONSENTD_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// PostgreSQL cancels any statement of the server's that runs longer
    /// (`statement_timeout`, set when each connection opens); the call is
    /// answered UNAVAILABLE and wrote nothing. A `statement_timeout` in the
    /// URL's `options` wins. Migrations run without it.
    #[arg(long, env = "CONSENTD_DB_STATEMENT_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub db_statement_timeout_ms: u64,

    /// How many days a link to the person's own page (`/p/...`, from
    /// CreatePreferenceLinks) stays valid.
    #[arg(long, env = "CONSENTD_PREFERENCE_LINK_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub preference_link_days: u32,

    /// The largest gRPC message, in bytes, received or sent. A request over
    /// it is refused with RESOURCE_EXHAUSTED before it is buffered; methods
    /// that carry a list take at most the largest request their list's
    /// limit allows, which is less.
    #[arg(long, env = "CONSENTD_MAX_MESSAGE_BYTES", default_value_t = 4_194_304, value_parser = clap::value_parser!(u64).range(1024..=268_435_456))]
    pub max_message_bytes: u64,

    #[command(flatten)]
    pub limits: LimitArgs,
}

impl ServeArgs {
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_seconds)
    }

    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_secs(self.checkpoint_interval_seconds)
    }

    pub fn feed_poll_interval(&self) -> Duration {
        Duration::from_millis(self.feed_poll_interval_ms)
    }

    /// The database flags' bounds, with serve's statement timeout.
    pub fn connection_settings(&self) -> ConnectionSettings {
        ConnectionSettings {
            statement_timeout: Some(Duration::from_millis(self.db_statement_timeout_ms)),
            ..self.database.connection_settings()
        }
    }

    pub fn max_message_bytes(&self) -> usize {
        usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX)
    }

    /// Every serve setting as the server will use it, by flag, as text
    /// (`None` where nothing is set). `consentd check-config` prints them,
    /// with connection strings redacted; a flag missing here fails the
    /// tests that hold it to the README table.
    pub fn settings(
        &self,
        log_format: crate::telemetry::LogFormat,
    ) -> Vec<(&'static str, Option<String>)> {
        use clap::ValueEnum as _;
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let db = &self.database;
        let log_format = log_format
            .to_possible_value()
            .map(|value| value.get_name().to_string());
        let mut settings = vec![
            ("--database-url", db.database_url.clone()),
            ("--local-server-url", Some(db.local_server_url.clone())),
            ("--pg-data-dir", path(&db.pg_data_dir)),
            ("--grpc-addr", Some(self.grpc_addr.to_string())),
            ("--http-addr", Some(self.http_addr.to_string())),
            ("--admin-addr", Some(self.admin_addr.to_string())),
            ("--policy", Some(self.policy.display().to_string())),
            ("--migrate", Some(self.migrate.to_string())),
            ("--max-connections", Some(db.max_connections.to_string())),
            (
                "--db-connect-timeout-ms",
                Some(db.db_connect_timeout_ms.to_string()),
            ),
            (
                "--db-pool-wait-timeout-ms",
                Some(db.db_pool_wait_timeout_ms.to_string()),
            ),
            (
                "--db-statement-timeout-ms",
                Some(self.db_statement_timeout_ms.to_string()),
            ),
            ("--serving-role", Some(self.serving_role.clone())),
            ("--serving-password-file", path(&self.serving_password_file)),
            ("--read-database-url", self.read_database_url.clone()),
            ("--drain-seconds", Some(self.drain_seconds.to_string())),
            ("--public-url", self.public_url.clone()),
            ("--unsubscribe-keys-file", path(&self.unsubscribe_keys_file)),
            ("--subject-ref-key-file", path(&self.subject_ref_key_file)),
            ("--data-keys-file", path(&self.data_keys_file)),
            (
                "--shutdown-timeout-seconds",
                Some(self.shutdown_timeout_seconds.to_string()),
            ),
            (
                "--feed-poll-interval-ms",
                Some(self.feed_poll_interval_ms.to_string()),
            ),
            (
                "--max-watch-streams",
                Some(self.max_watch_streams.to_string()),
            ),
            ("--state-dir", path(&self.state_dir)),
            (
                "--allow-unsafe-durability",
                Some(self.allow_unsafe_durability.to_string()),
            ),
            (
                "--checkpoint-interval-seconds",
                Some(self.checkpoint_interval_seconds.to_string()),
            ),
            ("--tls-cert", path(&self.tls_cert)),
            ("--tls-key", path(&self.tls_key)),
            ("--tls-client-ca", path(&self.tls_client_ca)),
            ("--callers", path(&self.callers)),
            (
                "--insecure-no-auth",
                Some(self.insecure_no_auth.to_string()),
            ),
            (
                "--preference-link-days",
                Some(self.preference_link_days.to_string()),
            ),
            (
                "--max-message-bytes",
                Some(self.max_message_bytes.to_string()),
            ),
            ("--log-format", log_format),
        ];
        settings.extend(self.limits.settings());
        settings
    }

    /// `--state-dir`, or its default.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(default_state_dir)
    }
}

/// Where consentd keeps its files when not told: $XDG_DATA_HOME/consentd
/// (~/.local/share/consentd), or /var/lib/consentd as root. The private
/// cluster's default data directory is `pgdata` inside it.
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/consentd");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("consentd")
}

#[cfg(test)]
mod tests;
