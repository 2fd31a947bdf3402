//! Import throughput: `import-refusals` (COPY + set-based SQL) against a
//! plain multi-row INSERT of the same rows, on the same database server in
//! the same run. Prints both figures and their ratio.
//!
//! `cargo bench --bench import` (1,000,000 lines; CONSENTD_BENCH_ROWS to
//! change). It uses CONSENTD_BENCH_DATABASE_URL, else the local server at
//! 127.0.0.1:5432, else a private cluster, like the tests.

use std::{io::Write as _, time::Instant};

use consentd::{
    domain::{Actor, Evidence, NoticeVersion, PurposeCode},
    service::import::{ImportOptions, import_refusals},
    store::{
        self, RefusalImport, Store,
        embedded::{Durability, EmbeddedPostgres},
    },
};

const BATCH: usize = 10_000;
const JOBS: usize = 2;
const INSERT_BATCH: usize = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows: usize = std::env::var("CONSENTD_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut _cluster = None;
    let server = match std::env::var("CONSENTD_BENCH_DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            let local = "postgres://postgres@127.0.0.1:5432/postgres".to_string();
            if store::admin_connect(&local).await.is_ok() {
                local
            } else {
                let dir =
                    std::env::temp_dir().join(format!("consentd-bench-pg-{}", std::process::id()));
                let cluster = EmbeddedPostgres::start(&dir, Durability::Durable).await?;
                let url = cluster.admin_url();
                _cluster = Some(cluster);
                url
            }
        }
    };

    let path = std::env::temp_dir().join(format!("consentd-bench-{rows}.csv"));
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        writeln!(file, "subject_id,source")?;
        for i in 0..rows {
            writeln!(file, "BENCH-{i:08},legacy-mailer")?;
        }
    }
    let ids: Vec<String> = (0..rows).map(|i| format!("BENCH-{i:08}")).collect();
    println!(
        "{rows} lines, PostgreSQL at {}",
        server.rsplit('@').next().unwrap_or(&server)
    );

    let spec = RefusalImport {
        purpose: PurposeCode::parse("promotional_mail").unwrap(),
        field: None,
        notice_version: NoticeVersion::parse("import").unwrap(),
        evidence: Evidence::parse("benchmark").unwrap(),
        actor: Actor::parse("bench").unwrap(),
    };

    // Baseline first, so a warm cache cannot favour it.
    let (db, store) = fresh(&server, "baseline").await?;
    let started = Instant::now();
    multi_row_insert(&store::with_database(&server, &db)?, &spec, &ids).await?;
    let baseline = rows as f64 / started.elapsed().as_secs_f64();
    check_counts(&store, rows).await?;
    drop(store);
    drop_db(&server, &db).await?;

    let (db, store) = fresh(&server, "import").await?;
    let started = Instant::now();
    let file = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(&path)?);
    let options = ImportOptions {
        batch_size: BATCH,
        jobs: JOBS,
    };
    let summary = import_refusals(&store, &spec, file, std::io::sink(), options, |_| {}).await?;
    let imported = rows as f64 / started.elapsed().as_secs_f64();
    assert_eq!(summary.refused as usize, rows);
    check_counts(&store, rows).await?;
    drop(store);
    drop_db(&server, &db).await?;
    std::fs::remove_file(&path)?;

    println!("plain multi-row INSERT ({INSERT_BATCH} rows/statement): {baseline:>10.0} rows/s");
    println!("import-refusals (COPY, {BATCH} rows/batch, {JOBS} jobs): {imported:>10.0} rows/s");
    println!("ratio: {:.2}x", imported / baseline);
    Ok(())
}

async fn fresh(server: &str, name: &str) -> anyhow::Result<(String, Store)> {
    let db = format!("consentd_bench_{name}_{}", std::process::id());
    drop_db(server, &db).await?;
    store::ensure_database(server, &db).await?;
    let store = Store::connect(&store::with_database(server, &db)?, 4)?;
    store.migrate().await?;
    Ok((db, store))
}

async fn drop_db(server: &str, db: &str) -> anyhow::Result<()> {
    let admin = store::admin_connect(server).await?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            store::quote_ident(db)
        ))
        .await?;
    Ok(())
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
        let appended = tx
            .query(
                &format!(
                    "INSERT INTO consent_records (subject_id, record_id, purpose, field, choice, channel,
                         notice_version, evidence, actor) VALUES {}
                     RETURNING subject_id, record_id, sequence, recorded_at",
                    values(&format!(
                        "($#, gen_random_uuid(), '{}', '', 'refuse', 'import', 'import', 'benchmark', 'bench')",
                        spec.purpose
                    ))
                ),
                &params,
            )
            .await?;
        let mut state_params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
        let subject_ids: Vec<String> = appended.iter().map(|r| r.get(0)).collect();
        let record_ids: Vec<uuid::Uuid> = appended.iter().map(|r| r.get(1)).collect();
        let sequences: Vec<i64> = appended.iter().map(|r| r.get(2)).collect();
        let times: Vec<chrono::DateTime<chrono::Utc>> = appended.iter().map(|r| r.get(3)).collect();
        for i in 0..appended.len() {
            state_params.push(&subject_ids[i]);
            state_params.push(&record_ids[i]);
            state_params.push(&sequences[i]);
            state_params.push(&times[i]);
        }
        let rows = (0..appended.len())
            .map(|i| {
                let b = i * 4;
                format!(
                    "(${}, '{}', '', 'refuse', ${}, ${}, ${})",
                    b + 1,
                    spec.purpose,
                    b + 2,
                    b + 3,
                    b + 4
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        tx.execute(
            &format!(
                "INSERT INTO consent_state (subject_id, purpose, field, choice, record_id, sequence, recorded_at)
                 VALUES {rows}"
            ),
            &state_params,
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}
