//! A private PostgreSQL cluster, started from the machine's installed server
//! binaries when no database answers. It lets `consentd serve` and the tests
//! run on a machine with PostgreSQL installed but not running.
//!
//! initdb refuses to run as root, so when consentd runs as root the cluster
//! runs as the unprivileged `postgres` system user.

use std::{
    fs,
    io::{self, Read as _, Seek as _},
    net::{Ipv4Addr, TcpListener},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, User, geteuid},
};

/// How the cluster should trade durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Normal settings, for data that matters.
    Durable,
    /// fsync off: for throw-away test clusters only.
    Ephemeral,
}

/// A running private cluster. Stopped on `stop` or drop; if this process
/// dies first, the kernel stops it too (parent-death signal).
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    port: u16,
    durability: Durability,
    child: Mutex<Option<Child>>,
}

impl EmbeddedPostgres {
    /// Initialises `data_dir` on first use, starts the server on a free
    /// loopback port and waits until it accepts connections.
    pub async fn start(data_dir: &Path, durability: Durability) -> anyhow::Result<Self> {
        let data_dir = data_dir.to_path_buf();
        let (port, child) = tokio::task::spawn_blocking({
            let data_dir = data_dir.clone();
            move || launch(&data_dir, durability, None)
        })
        .await??;
        let cluster = Self {
            data_dir,
            port,
            durability,
            child: Mutex::new(Some(child)),
        };
        cluster.wait_until_ready(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// A URL for the `postgres` database, as the `postgres` superuser.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The postmaster's process id, while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.child
            .lock()
            .expect("child lock")
            .as_ref()
            .map(Child::id)
    }

    /// Starts the server again on the same port, after it stopped or died,
    /// so that URLs handed out before still reach it. After a crash the
    /// old server's backends can hold its shared memory for a moment, and
    /// PostgreSQL refuses to start until they are gone: that is retried.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let child = tokio::task::spawn_blocking({
                let (data_dir, durability, port) =
                    (self.data_dir.clone(), self.durability, self.port);
                move || launch(&data_dir, durability, Some(port))
            })
            .await??
            .1;
            *self.child.lock().expect("child lock") = Some(child);
            match self.wait_until_ready(Duration::from_secs(60)).await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "the restarted PostgreSQL exited; retrying");
                    self.stop();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn wait_until_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if super::server::admin_connect(&self.admin_url())
                .await
                .is_ok()
            {
                return Ok(());
            }
            let exited = self
                .child
                .lock()
                .expect("child lock")
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                bail!(
                    "the private PostgreSQL exited ({status}) before accepting connections; its log ends:\n{}",
                    log_tail(&log_path(&self.data_dir))
                );
            }
            if started.elapsed() > limit {
                bail!(
                    "the private PostgreSQL did not accept connections within {limit:?}; its log ends:\n{}",
                    log_tail(&log_path(&self.data_dir))
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fast shutdown: ends sessions, checkpoints and exits.
    pub fn stop(&self) {
        let Some(mut child) = self.child.lock().expect("child lock").take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the server binaries (initdb, postgres) are: `CONSENTD_PG_BINDIR`,
/// else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("CONSENTD_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_server(&dir) {
            return Ok(dir);
        }
        bail!(
            "CONSENTD_PG_BINDIR={} holds no initdb and postgres",
            dir.display()
        );
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, dir)| dir).context(
        "no PostgreSQL server binaries found (looked at CONSENTD_PG_BINDIR, pg_config --bindir \
         and /usr/lib/postgresql/*/bin); install them with `apt-get install -y postgresql`",
    )
}

fn log_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(io::SeekFrom::Start(len.saturating_sub(2000)));
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// Creates and initialises the data directory if needed and starts the
/// server process, on `port` or a free one. Blocking.
fn launch(
    data_dir: &Path,
    durability: Durability,
    port: Option<u16>,
) -> anyhow::Result<(u16, Child)> {
    let bin_dir = find_bin_dir()?;
    let owner = if geteuid().is_root() {
        Some(
            User::from_name("postgres")?
                .context("consentd runs as root, and initdb refuses root; no `postgres` user exists to run the private cluster as")?,
        )
    } else {
        None
    };
    fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    if let Some(user) = &owner {
        std::os::unix::fs::chown(data_dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .with_context(|| format!("cannot hand {} to the postgres user", data_dir.display()))?;
    }
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))?;

    let as_owner = |program: &str| {
        let mut cmd = Command::new(bin_dir.join(program));
        // The cluster's user may not be able to enter our working directory.
        cmd.current_dir(data_dir);
        if let Some(user) = &owner {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        cmd
    };

    if !data_dir.join("PG_VERSION").exists() {
        let out = as_owner("initdb")
            .arg("-D")
            .arg(data_dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .context("cannot run initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed in {}: {}{}",
                data_dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // A restart keeps the log, which says why the last run ended.
    let (port, log) = match port {
        Some(port) => (
            port,
            fs::File::options()
                .create(true)
                .append(true)
                .open(log_path(data_dir))?,
        ),
        None => (
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port(),
            fs::File::create(log_path(data_dir))?,
        ),
    };
    let mut cmd = as_owner("postgres");
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "unix_socket_directories="])
        .args(["-c", "max_connections=200"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if durability == Durability::Ephemeral {
        cmd.args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]);
    }
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGINT).map_err(io::Error::from));
    }
    let child = spawn_outliving(cmd).context("cannot start postgres")?;
    Ok((port, child))
}

/// Spawns from a thread that lives as long as the process. The parent-death
/// signal fires when the spawning *thread* ends, so spawning from a runtime
/// worker (or a test's thread) would stop the cluster early.
fn spawn_outliving(mut cmd: Command) -> io::Result<Child> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("embedded-postgres".into())
        .spawn(move || {
            let _ = tx.send(cmd.spawn());
            loop {
                std::thread::park();
            }
        })?;
    rx.recv()
        .map_err(|_| io::Error::other("the spawning thread died"))?
}
