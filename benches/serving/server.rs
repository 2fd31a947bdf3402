//! A real `consentd serve` process: the build's own binary, on free
//! loopback ports, against the bench's database.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// How long a server may take to say it serves and then to be ready; long,
/// since under valgrind it runs some fifty times slower.
const START_TIMEOUT: Duration = Duration::from_secs(600);

pub struct ServeProcess {
    child: Child,
    pub grpc_addr: String,
    pub admin_addr: String,
}

impl ServeProcess {
    /// Starts `consentd serve` and waits until `/readyz` answers 200, so
    /// that a server which loads state at start is measured once loaded.
    ///
    /// `extra` are the flags that lift the server's own limits for a load
    /// test; CONSENTD_BENCH_SERVE_ARGS adds more (split on white space),
    /// and CONSENTD_BENCH_SERVER_WRAPPER runs the server under a command
    /// such as `valgrind --tool=callgrind`.
    pub fn start(db_url: &str, state_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let wrapper = std::env::var("CONSENTD_BENCH_SERVER_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(env!("CARGO_BIN_EXE_consentd"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_consentd")),
        };
        let more = std::env::var("CONSENTD_BENCH_SERVE_ARGS").unwrap_or_default();
        let mut child = command
            .arg("serve")
            .args(["--database-url", db_url])
            .args(["--grpc-addr", "127.0.0.1:0"])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .arg("--policy")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/policy.toml"))
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
            .args(more.split_whitespace())
            // The server's defaults: info logs (CONSENTD_BENCH_SERVER_LOG to
            // compare another level), no trace export.
            .env(
                "RUST_LOG",
                std::env::var("CONSENTD_BENCH_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start consentd serve")?;

        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        // Keep the pipe drained so the server never blocks on its logs.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let (grpc_addr, admin_addr) = loop {
            let Ok(line) = rx.recv_timeout(START_TIMEOUT) else {
                let _ = child.kill();
                let _ = child.wait();
                bail!("consentd serve never said it serves:\n{}", seen.join("\n"));
            };
            if let Some((_, rest)) = line.split_once("serving gRPC on ") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                break (words[0].to_string(), words[8].to_string());
            }
            seen.push(line);
        };
        std::thread::spawn(move || rx.into_iter().for_each(drop));
        let server = Self {
            child,
            grpc_addr,
            admin_addr,
        };
        server.wait_ready()?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if http_status(&self.admin_addr, "/readyz").ok() == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("consentd serve on {} never became ready", self.grpc_addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory in bytes, from /proc/<pid>/status.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<pid>/status")?;
        Ok(kib * 1024)
    }

    /// The value of an unlabelled metric on `/metrics`.
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let body = http_body(&self.admin_addr, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {name} on /metrics"))
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("consentd serve exited with {status}");
        }
        Ok(())
    }
}

impl Drop for ServeProcess {
    /// A bench that fails half-way must not leave servers behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The status code of a plain HTTP/1.1 GET.
fn http_status(addr: &str, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let line = std::str::from_utf8(&head)?;
    line.get(9..12)
        .and_then(|code| code.parse().ok())
        .context("not an HTTP status line")
}

/// The body of a plain GET. HTTP/1.0, so the body comes whole rather than
/// chunked, and the server closes the connection after it.
fn http_body(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (_, body) = raw
        .split_once("\r\n\r\n")
        .context("no end of the HTTP head")?;
    Ok(body.to_string())
}
