//! Accepting TLS connections: TCP accepts on one task, each handshake on a
//! task of its own, finished connections handed over through a channel.
//! gRPC reads the channel as tonic's incoming stream; the HTTP side reads
//! it through [`TlsListener`].

use std::{net::SocketAddr, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;

/// A client gets this long to finish its handshake; past it the socket is
/// closed, so half-open connections cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts on `listener` until `stop`, taking a fresh acceptor (the
/// configuration in force) for each connection. Failed handshakes (a
/// plaintext client, no or a bad client certificate) are logged and dropped.
pub fn accept(
    listener: TcpListener,
    acceptor: impl Fn() -> TlsAcceptor + Send + 'static,
    stop: CancellationToken,
) -> mpsc::Receiver<TlsStream<TcpStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (socket, peer) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, say: wait rather than spin.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let handshake = acceptor().accept(socket);
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(stream).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The public HTTP listener over TLS, for `axum::serve`.
pub struct TlsListener {
    connections: mpsc::Receiver<TlsStream<TcpStream>>,
    local_addr: SocketAddr,
}

impl TlsListener {
    pub fn new(connections: mpsc::Receiver<TlsStream<TcpStream>>, local_addr: SocketAddr) -> Self {
        Self {
            connections,
            local_addr,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some(stream) = self.connections.recv().await else {
                // Accepting has stopped: the server is shutting down and
                // its graceful shutdown ends this wait.
                return std::future::pending().await;
            };
            if let Ok(peer) = stream.get_ref().0.peer_addr() {
                return (stream, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
