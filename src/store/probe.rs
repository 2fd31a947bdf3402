//! Whether the database answers, asked on a connection of its own.
//!
//! Outside the pool on purpose: a pool busy with slow calls says the
//! server is loaded, not that the database is gone, and a probe queued
//! behind those calls would take this replica out of rotation for it.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::Store;

/// One connection, opened on first use and again after it fails.
pub struct DatabaseProbe {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    client: Option<Client>,
}

impl Store {
    /// A probe that connects as this store's pool does (same URL, role,
    /// TLS and bounds).
    pub fn probe(&self) -> DatabaseProbe {
        DatabaseProbe {
            config: self.config.clone(),
            tls: self.tls.clone(),
            client: None,
        }
    }
}

impl DatabaseProbe {
    /// Ok when the database answers `SELECT 1` within `limit`, connecting
    /// first if needed; otherwise why not. A failed connection is dropped,
    /// so the next call starts afresh.
    pub async fn check(&mut self, limit: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(limit, self.answer()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.client = None;
                Err(e.into())
            }
            Err(_) => {
                self.client = None;
                Err(anyhow::anyhow!("no answer within {limit:?}"))
            }
        }
    }

    async fn answer(&mut self) -> Result<(), tokio_postgres::Error> {
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => {
                let (client, connection) = self.config.connect(self.tls.clone()).await?;
                // Ends when the client is dropped or the server goes away;
                // the next check then sees the client closed.
                tokio::spawn(connection);
                client
            }
        };
        client.simple_query("SELECT 1").await?;
        self.client = Some(client);
        Ok(())
    }
}
