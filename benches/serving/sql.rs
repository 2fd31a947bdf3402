//! What PostgreSQL alone does for the same work, from the same client
//! process: the floors that Check and RecordConsent are held against.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use consentd::store;
use tokio_postgres::{Client, Statement};

use crate::{
    calls::subject,
    load::{Summary, closed_loop},
};

/// One plain connection, as the server's own pool makes them.
async fn connect(url: &str) -> anyhow::Result<Client> {
    store::admin_connect(url).await
}

/// Clients, each with one statement prepared on its own connection.
async fn prepared(
    url: &str,
    connections: usize,
    sql: &str,
) -> anyhow::Result<Arc<Vec<(Client, Statement)>>> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = connect(url).await?;
        let statement = client.prepare(sql).await?;
        clients.push((client, statement));
    }
    Ok(Arc::new(clients))
}

/// A prepared primary-key lookup of a registered subject, `in_flight`
/// at once over `connections` (tokio-postgres pipelines the queries that
/// share a connection).
pub async fn select_by_key(
    url: &str,
    connections: usize,
    in_flight: usize,
    subjects: u64,
    warm_up: Duration,
    measure: Duration,
) -> anyhow::Result<Summary> {
    let clients = prepared(
        url,
        connections,
        "SELECT subject_id, kind, notice_version FROM subjects WHERE subject_id = $1",
    )
    .await?;
    Ok(closed_loop(in_flight, warm_up, measure, move |worker, k| {
        let clients = clients.clone();
        async move {
            let (client, statement) = &clients[worker % clients.len()];
            let id = subject((worker as u64 * 7919 + k * 104_729) % subjects);
            client
                .query_one(statement, &[&id])
                .await
                .context("the subject is not there")?;
            Ok(1)
        }
    })
    .await)
}

/// Autocommitted single-row INSERTs, one writer per connection, each
/// commit flushed to the WAL as the database is configured (the server
/// refuses to run on a cluster that does not flush).
pub async fn durable_inserts(
    url: &str,
    writers: usize,
    warm_up: Duration,
    measure: Duration,
) -> anyhow::Result<Summary> {
    // A row about as wide as a consent record, with a key like its own.
    connect(url)
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS bench_raw_writes (
                 record_id   uuid        PRIMARY KEY,
                 subject_id  text        NOT NULL,
                 purpose     text        NOT NULL,
                 choice      text        NOT NULL,
                 evidence    text        NOT NULL,
                 recorded_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let clients = prepared(
        url,
        writers,
        "INSERT INTO bench_raw_writes (record_id, subject_id, purpose, choice, evidence)
         VALUES ($1, $2, 'promotional_mail', 'refuse', 'serving bench')",
    )
    .await?;
    Ok(closed_loop(writers, warm_up, measure, move |worker, k| {
        let clients = clients.clone();
        async move {
            let (client, statement) = &clients[worker];
            let id = subject(k);
            client
                .execute(statement, &[&uuid::Uuid::new_v4(), &id])
                .await?;
            Ok(1)
        }
    })
    .await)
}

/// `synchronous_commit` and `fsync`, to print beside the write figures.
pub async fn durability(url: &str) -> anyhow::Result<String> {
    let client = connect(url).await?;
    let mut settings = Vec::new();
    for name in ["synchronous_commit", "fsync", "max_connections"] {
        let value: String = client.query_one(&format!("SHOW {name}"), &[]).await?.get(0);
        settings.push(format!("{name}={value}"));
    }
    Ok(settings.join(" "))
}

pub async fn version(url: &str) -> anyhow::Result<String> {
    let client = connect(url).await?;
    Ok(client.query_one("SHOW server_version", &[]).await?.get(0))
}
