//! The command line. Every setting can also come from a `CONSENTD_*`
//! environment variable, so containers configure it without flags.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

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
    /// Apply the embedded database migrations, then exit.
    Migrate(DatabaseArgs),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
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
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address for gRPC. Port 0 picks a free port; the bound address is logged.
    #[arg(long, env = "CONSENTD_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Address for the HTTP endpoints (/healthz, /readyz). Port 0 picks a free port.
    #[arg(long, env = "CONSENTD_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

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
    /// verify, so keys rotate by adding a new first line. Without it a
    /// random key is made at start and links die with the process.
    #[arg(long, env = "CONSENTD_UNSUBSCRIBE_KEYS_FILE")]
    pub unsubscribe_keys_file: Option<PathBuf>,

    /// File holding the key (one base64 line, 32 bytes or more) that turns
    /// subject ids into the stable pseudonyms traces carry
    /// (`consent.subject_ref`). Without it a random key is made at start, so
    /// refs change at every restart.
    #[arg(long, env = "CONSENTD_SUBJECT_REF_KEY_FILE")]
    pub subject_ref_key_file: Option<PathBuf>,
    /// File of data keys that encrypt personal data at rest (AES-256-GCM),
    /// one `key-id=base64-key` line per 32-byte key. The first encrypts new
    /// values; all decrypt, so keys rotate by adding a new first line and
    /// running `consentd keys rotate`. Without it a random key is made at
    /// start and stored values are unreadable after a restart.
    #[arg(long, env = "CONSENTD_DATA_KEYS_FILE")]
    pub data_keys_file: Option<PathBuf>,

    /// After the drain, how long in-flight calls and open connections get
    /// to finish before the server exits anyway.
    #[arg(long, env = "CONSENTD_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 30)]
    pub shutdown_timeout_seconds: u64,

    /// Where the server keeps its own files: the checkpoint signing key,
    /// created there (mode 0600) on first start and reused after. Defaults to
    /// $XDG_DATA_HOME/consentd, or /var/lib/consentd when running as root.
    #[arg(long, env = "CONSENTD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// How often the server signs a checkpoint of the history's chain heads
    /// (only when something changed; one more at shutdown).
    #[arg(long, env = "CONSENTD_CHECKPOINT_INTERVAL_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub checkpoint_interval_seconds: u64,
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

    /// `--state-dir`, or its default.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/consentd");
        }
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share"))
            })
            .unwrap_or_else(|| PathBuf::from("."))
            .join("consentd")
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults_match_the_documented_ones() {
        let cli = Cli::try_parse_from(["consentd", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(args.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(args.policy, PathBuf::from("deploy/policy.toml"));
    }
}
