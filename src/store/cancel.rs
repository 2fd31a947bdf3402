//! Cancelling the query of a call that was given up on.
//!
//! Dropping a tokio-postgres future does not stop its query: the server
//! runs it to the end (or waits on its lock for ever), holding the backend,
//! and the pooled connection's next user queues behind it. So a call runs
//! inside [`cancel_queries_on_drop`], which marks the call abandoned when it
//! is dropped unfinished (its deadline passed, its client went away), and
//! every store function takes its connection as a [`PooledClient`]: when it
//! is dropped in an abandoned call, it sends PostgreSQL a cancel request for
//! whatever that connection runs, and keeps the connection out of the pool.

use std::{
    future::Future,
    ops::{Deref, DerefMut},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use deadpool_postgres::Object;
use tokio::task::futures::TaskLocalFuture;
use tokio_postgres_rustls::MakeRustlsConnect;

tokio::task_local! {
    /// Set while a call runs inside [`cancel_queries_on_drop`].
    static CALL: Abandoned;
}

/// Whether the call a connection serves was dropped before it finished.
#[derive(Clone, Default)]
struct Abandoned(Arc<AtomicBool>);

/// Runs `call` so that, if it is dropped before it completes, the queries
/// its store functions are running are cancelled on the server.
pub fn cancel_queries_on_drop<F: Future>(call: F) -> CancelOnDrop<F> {
    let abandoned = Abandoned::default();
    CancelOnDrop {
        call: Box::pin(CALL.scope(abandoned.clone(), call)),
        abandoned,
        done: false,
    }
}

/// The future of [`cancel_queries_on_drop`].
pub struct CancelOnDrop<F: Future> {
    call: Pin<Box<TaskLocalFuture<Abandoned, F>>>,
    abandoned: Abandoned,
    done: bool,
}

impl<F: Future> Future for CancelOnDrop<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let output = ready!(self.call.as_mut().poll(cx));
        self.done = true;
        Poll::Ready(output)
    }
}

impl<F: Future> Drop for CancelOnDrop<F> {
    fn drop(&mut self) {
        // Runs before `call` (a field) is dropped, so the clients dropped
        // with it already see the mark.
        if !self.done {
            self.abandoned.0.store(true, Ordering::Release);
        }
    }
}

/// A pooled connection that cancels its query if its call is abandoned.
pub struct PooledClient {
    object: Option<Object>,
    /// The call's mark and the TLS the cancel request needs; `None` outside
    /// [`cancel_queries_on_drop`] (background tasks), which are never
    /// abandoned half-way.
    cancel: Option<(Abandoned, MakeRustlsConnect)>,
}

impl PooledClient {
    pub(super) fn new(object: Object, tls: &MakeRustlsConnect) -> Self {
        let cancel = CALL.try_with(Clone::clone).ok().map(|a| (a, tls.clone()));
        Self {
            object: Some(object),
            cancel,
        }
    }
}

impl Deref for PooledClient {
    type Target = Object;

    fn deref(&self) -> &Object {
        self.object.as_ref().expect("present until dropped")
    }
}

impl DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut Object {
        self.object.as_mut().expect("present until dropped")
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        let Some((abandoned, tls)) = self.cancel.take() else {
            return;
        };
        if !abandoned.0.load(Ordering::Acquire) {
            return;
        }
        let (Some(object), Ok(runtime)) =
            (self.object.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        // Out of the pool for good: it may still be running the query, and
        // a late cancel must not hit the next user's.
        let client = Object::take(object);
        let token = client.cancel_token();
        runtime.spawn(async move {
            match token.cancel_query(tls).await {
                Ok(()) => tracing::info!("cancelled the database query of an abandoned call"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot cancel the query of an abandoned call")
                }
            }
            // Closed only now, so the backend was told while we still held it.
            drop(client);
        });
    }
}
