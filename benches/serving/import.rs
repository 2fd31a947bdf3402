//! `import-refusals` (COPY + set-based SQL) against a plain multi-row
//! INSERT of the same rows, on the same database server, one after the
//! other. Shared by the `import` and `serving` benches.

use std::{io::Write as _, time::Instant};

use consentd::{
    domain::{Actor, Evidence, NoticeVersion, PurposeCode},
    service::import::{ImportOptions, import_refusals},
    store::{RefusalImport, Store},
};

use crate::database::Server;

pub const BATCH: usize = 10_000;
pub const JOBS: usize = 2;
pub const INSERT_BATCH: usize = 1000;

/// Rows per second of both loaders.
pub struct ImportFigures {
    pub baseline: f64,
    pub imported: f64,
}

pub async fn compare(server: &Server, rows: usize) -> anyhow::Result<ImportFigures> {
    let path =
        std::env::temp_dir().join(format!("consentd-bench-{rows}-{}.csv", std::process::id()));
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        writeln!(file, "subject_id,source")?;
        for i in 0..rows {
            writeln!(file, "BENCH-{i:08},legacy-mailer")?;
        }
    }
    let ids: Vec<String> = (0..rows).map(|i| format!("BENCH-{i:08}")).collect();
    let spec = refusal_spec();

    // Baseline first, so a warm cache cannot favour it.
    let (db, url, store) = server.fresh("import_baseline").await?;
    let started = Instant::now();
    multi_row_insert(&url, &spec, &ids).await?;
    let baseline = rows as f64 / started.elapsed().as_secs_f64();
    check_counts(&store, rows).await?;
    drop(store);
    server.drop_db(&db).await?;

    let (db, _, store) = server.fresh("import").await?;
    let started = Instant::now();
    let file = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(&path)?);
    let options = ImportOptions {
        batch_size: BATCH,
        jobs: JOBS,
    };
    let summary = import_refusals(&store, &spec, file, std::io::sink(), options, |_| {}).await?;
    let imported = rows as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(
        summary.refused as usize == rows,
        "not every line was refused"
    );
    check_counts(&store, rows).await?;
    drop(store);
    server.drop_db(&db).await?;
    std::fs::remove_file(&path)?;
    Ok(ImportFigures { baseline, imported })
}

/// A refusal of promotional mail, as an import records it.
pub fn refusal_spec() -> RefusalImport {
    RefusalImport {
        purpose: PurposeCode::parse("promotional_mail").unwrap(),
        field: None,
        notice_version: NoticeVersion::parse("import").unwrap(),
        evidence: Evidence::parse("benchmark").unwrap(),
        actor: Actor::parse("bench").unwrap(),
    }
}

async fn check_counts(store: &Store, rows: usize) -> anyhow::Result<()> {
    let ids: Vec<consentd::domain::SubjectId> =
        vec![consentd::domain::SubjectId::parse(format!("BENCH-{:08}", rows - 1)).unwrap()];
    let refs: Vec<_> = ids.iter().collect();
    let states = store.current_state_for(&refs).await?;
    anyhow::ensure!(
        states.values().all(|s| s.choices.len() == 1),
        "the last row was refused"
    );
    Ok(())
}

/// The straightforward way: per batch, one multi-row INSERT per table with
/// bound parameters, in one transaction.
async fn multi_row_insert(url: &str, spec: &RefusalImport, ids: &[String]) -> anyhow::Result<()> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    for chunk in ids.chunks(INSERT_BATCH) {
        let tx = client.transaction().await?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = chunk
            .iter()
            .map(|id| id as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let values = |template: &str| {
            (1..=chunk.len())
                .map(|i| template.replace('#', &i.to_string()))
                .collect::<Vec<_>>()
                .join(",")
        };
        tx.execute(
            &format!(
                "INSERT INTO subjects (subject_id, kind, notice_version, channel) VALUES {} ON CONFLICT DO NOTHING",
                values("($#, 'individual', 'import', 'import')")
            ),
            &params,
        )
        .await?;
        // The history's trigger keeps consent_state, as it does for
        // import-refusals.
        tx.execute(
                &format!(
                    "INSERT INTO consent_records (subject_id, record_id, purpose, field, choice, channel,
                         notice_version, evidence, actor) VALUES {}",
                    values(&format!(
                        "($#, gen_random_uuid(), '{}', '', 'refuse', 'import', 'import', 'benchmark', 'bench')",
                        spec.purpose
                    ))
                ),
                &params,
            )
            .await?;
        tx.commit().await?;
    }
    Ok(())
}
