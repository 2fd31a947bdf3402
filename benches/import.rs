//! Import throughput: `import-refusals` (COPY + set-based SQL) against a
//! plain multi-row INSERT of the same rows, on the same database server in
//! the same run. Prints both figures and their ratio. The `serving` bench
//! runs the same comparison as one of its rows.
//!
//! `cargo bench --bench import` (1,000,000 lines; CONSENTD_BENCH_ROWS to
//! change). It uses CONSENTD_BENCH_DATABASE_URL, else the local server at
//! 127.0.0.1:5432, else a private cluster, like the tests.

#[path = "serving/database.rs"]
mod database;
#[path = "serving/import.rs"]
mod import;

use import::{BATCH, INSERT_BATCH, JOBS};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows: usize = std::env::var("CONSENTD_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let server = database::Server::pick().await?;
    println!("{rows} lines, PostgreSQL at {}", server.host());
    let figures = import::compare(&server, rows).await?;
    println!(
        "plain multi-row INSERT ({INSERT_BATCH} rows/statement): {:>10.0} rows/s",
        figures.baseline
    );
    println!(
        "import-refusals (COPY, {BATCH} rows/batch, {JOBS} jobs): {:>10.0} rows/s",
        figures.imported
    );
    println!("ratio: {:.2}x", figures.imported / figures.baseline);
    Ok(())
}
