//! What a run measures and for how long, from CONSENTD_BENCH_* variables.

use std::{path::PathBuf, time::Duration};

use crate::server::ServeProcess;

pub struct Settings {
    /// CONSENTD_BENCH_SMOKE=1: about a second per phase and tiny counts,
    /// to prove in CI that the bench runs; its figures mean nothing.
    pub smoke: bool,
    /// CONSENTD_BENCH_SECONDS: the measured time of each phase (10).
    pub measure: Duration,
    /// CONSENTD_BENCH_WARMUP_MS: before each closed-loop phase, unmeasured,
    /// while connections, pools and caches fill (1000; 200 in a smoke).
    pub warm_up: Duration,
    /// CONSENTD_BENCH_SUBJECTS: registered subjects the checks ask about
    /// (20,000), half of them with a refusal.
    pub subjects: u64,
    /// CONSENTD_BENCH_MEMORY_SUBJECTS: subjects, one refusal each, loaded
    /// by SQL into a database of their own for the memory figure
    /// (1,000,000).
    pub memory_subjects: u64,
    /// CONSENTD_BENCH_IMPORT_ROWS: lines of the import comparison
    /// (200,000: a ratio of rates needs no more, and the import bench runs
    /// 1,000,000).
    pub import_rows: usize,
    /// CONSENTD_BENCH_PROPAGATION_SAMPLES: opt-outs timed from one server
    /// to the other (200).
    pub propagation_samples: usize,
    /// CONSENTD_BENCH_PHASES: a comma-separated subset of [`PHASES`]; all
    /// when unset.
    phases: Option<Vec<String>>,
    /// CONSENTD_BENCH_HOOK: a shell command run before and after each phase
    /// that loads the server, with BENCH_EVENT (`start`/`end`), BENCH_PHASE,
    /// BENCH_SERVER_PID, BENCH_ADMIN_ADDR and BENCH_CLIENT_PID (this
    /// process) set; for profilers
    /// (`callgrind_control`) and for reading the server's /metrics.
    pub hook: Option<String>,
    /// Where the JSON and SVG go: CONSENTD_BENCH_OUT, else target/bench.
    pub out_dir: PathBuf,
}

/// Every phase, in the order they run.
pub const PHASES: &[&str] = &[
    "health",
    "check",
    "select",
    "open",
    "batch",
    "bulk",
    "record",
    "insert",
    "propagation",
    "memory",
    "import",
];

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let smoke = std::env::var("CONSENTD_BENCH_SMOKE").is_ok_and(|v| v == "1" || v == "true");
        let number = |name: &str, full: u64, tiny: u64| -> anyhow::Result<u64> {
            match std::env::var(name) {
                Ok(v) => v
                    .replace(['_', ','], "")
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name} must be a whole number, not `{v}`")),
                Err(_) => Ok(if smoke { tiny } else { full }),
            }
        };
        let seconds = number("CONSENTD_BENCH_SECONDS", 10, 1)?.max(1);
        let phases = match std::env::var("CONSENTD_BENCH_PHASES") {
            Ok(list) => {
                let phases: Vec<String> = list.split(',').map(|p| p.trim().to_string()).collect();
                if let Some(unknown) = phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    anyhow::bail!(
                        "unknown phase `{unknown}`; the phases are {}",
                        PHASES.join(", ")
                    );
                }
                Some(phases)
            }
            Err(_) => None,
        };
        let target_dir = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")));
        Ok(Self {
            smoke,
            measure: Duration::from_secs(seconds),
            warm_up: Duration::from_millis(number("CONSENTD_BENCH_WARMUP_MS", 1000, 200)?),
            subjects: number("CONSENTD_BENCH_SUBJECTS", 20_000, 200)?.max(2),
            memory_subjects: number("CONSENTD_BENCH_MEMORY_SUBJECTS", 1_000_000, 1_000)?.max(1),
            import_rows: number("CONSENTD_BENCH_IMPORT_ROWS", 200_000, 2_000)?.max(1) as usize,
            propagation_samples: number("CONSENTD_BENCH_PROPAGATION_SAMPLES", 200, 5)?.max(1)
                as usize,
            phases,
            hook: std::env::var("CONSENTD_BENCH_HOOK")
                .ok()
                .filter(|h| !h.is_empty()),
            out_dir: std::env::var("CONSENTD_BENCH_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|_| target_dir.join("bench")),
        })
    }

    pub fn runs(&self, phase: &str) -> bool {
        self.phases
            .as_ref()
            .is_none_or(|phases| phases.iter().any(|p| p == phase))
    }

    /// Runs the hook, if any, around a phase.
    pub fn hook(&self, event: &str, phase: &str, server: &ServeProcess) -> anyhow::Result<()> {
        let Some(hook) = &self.hook else {
            return Ok(());
        };
        let status = std::process::Command::new("sh")
            .args(["-c", hook])
            .env("BENCH_EVENT", event)
            .env("BENCH_PHASE", phase)
            .env("BENCH_SERVER_PID", server.pid().to_string())
            .env("BENCH_ADMIN_ADDR", &server.admin_addr)
            .env("BENCH_CLIENT_PID", std::process::id().to_string())
            .status()?;
        anyhow::ensure!(
            status.success(),
            "the hook failed at {event} of {phase}: {status}"
        );
        Ok(())
    }
}
