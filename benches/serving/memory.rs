//! Memory per subject (issue 12's target: ≤ 64 bytes with one choice):
//! a server started on a database of `n` subjects, each with one refusal,
//! against a server started on the same database while it was empty. The
//! subjects go in by plain SQL (`INSERT … SELECT generate_series`; the
//! feed numbers and `consent_state` come from the triggers), so the
//! figure is the page load's, not the feed's.

use std::{path::Path, time::Duration};

use anyhow::Context as _;

use crate::{database, server::ServeProcess};

pub struct Memory {
    pub subjects: u64,
    /// RSS of a loaded server on the empty database, and on the full one.
    pub empty_rss: u64,
    pub full_rss: u64,
    /// `consentd_state_bytes` of the loaded server on the full database.
    pub state_bytes: u64,
    /// From the server's start to /readyz on the full database.
    pub load_seconds: f64,
}

impl Memory {
    pub fn rss_per_subject(&self) -> f64 {
        self.full_rss.saturating_sub(self.empty_rss) as f64 / self.subjects as f64
    }

    pub fn state_per_subject(&self) -> f64 {
        self.state_bytes as f64 / self.subjects as f64
    }
}

/// Lets allocator arenas and the load's last pages settle before RSS is
/// read.
const SETTLE: Duration = Duration::from_secs(1);

pub async fn measure(
    postgres: &database::Server,
    n: u64,
    state_dir: &Path,
    extra: &[&str],
) -> anyhow::Result<Memory> {
    let (db, db_url, store) = postgres.fresh("memory").await?;
    let measured = async {
        let empty = ServeProcess::start(&db_url, state_dir, extra)?;
        tokio::time::sleep(SETTLE).await;
        let empty_rss = empty.rss_bytes()?;
        empty.stop()?;

        let client = consentd::store::admin_connect(&db_url).await?;
        let n = i64::try_from(n)?;
        client
            .execute(
                "INSERT INTO subjects (subject_id, kind, notice_version, channel)
                 SELECT 'MEM-' || lpad(i::text, 8, '0'), 'individual', '2026-11', 'import'
                   FROM generate_series(0, $1::bigint - 1) AS i",
                &[&n],
            )
            .await
            .context("loading subjects")?;
        client
            .execute(
                "INSERT INTO consent_records (subject_id, record_id, purpose, field, choice,
                                              channel, notice_version, evidence, actor)
                 SELECT 'MEM-' || lpad(i::text, 8, '0'), gen_random_uuid(), 'promotional_mail',
                        '', 'refuse', 'import', '2026-11', '', 'bench'
                   FROM generate_series(0, $1::bigint - 1) AS i ORDER BY i",
                &[&n],
            )
            .await
            .context("loading choices")?;
        client.batch_execute("VACUUM ANALYZE").await?;

        let started = std::time::Instant::now();
        let full = ServeProcess::start(&db_url, state_dir, extra)?;
        let load_seconds = started.elapsed().as_secs_f64();
        tokio::time::sleep(SETTLE).await;
        let full_rss = full.rss_bytes()?;
        let state_bytes = full.metric("consentd_state_bytes")? as u64;
        let subjects = full.metric("consentd_state_subjects")? as u64;
        anyhow::ensure!(
            subjects == n as u64,
            "the server loaded {subjects} subjects, not {n}"
        );
        full.stop()?;
        anyhow::Ok(Memory {
            subjects: n as u64,
            empty_rss,
            full_rss,
            state_bytes,
            load_seconds,
        })
    }
    .await;
    drop(store);
    postgres.drop_db(&db).await?;
    measured
}
