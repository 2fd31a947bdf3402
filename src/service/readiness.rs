//! Whether this server should be sent calls: it is not shutting down, its
//! decision state is loaded, and its database answers. gRPC health and `/readyz` both report it, so load
//! balancers move traffic to replicas that can serve it while the database
//! is unreachable, and back when it answers again.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{state::DecisionState, store::Store};

/// How often the database is asked whether it answers.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one probe may take before the database counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the server reports to load balancers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Serving, and the database answered the last probe.
    Yes,
    /// The decision state is still loading into memory.
    Loading,
    /// The last probe got no answer from the database.
    DatabaseUnreachable,
    /// Draining for shutdown: final, whatever the database does.
    ShuttingDown,
}

impl Ready {
    pub fn is_ready(self) -> bool {
        self == Ready::Yes
    }
}

/// The server's readiness, shared by the prober, health and `/readyz`.
/// Cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    state: Arc<watch::Sender<Ready>>,
    loaded: Arc<AtomicBool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// Marks the state loaded once `state` is.
    pub fn ready_once_loaded(&self, state: DecisionState) {
        let readiness = self.clone();
        tokio::spawn(async move {
            state.loaded().await;
            readiness.state_loaded();
        });
    }

    /// Loading: the server starts only after the database answered, and is
    /// ready once [`Self::state_loaded`].
    pub fn new() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(Ready::Loading)),
            loaded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The decision state is in memory: ready, unless the database is
    /// unreachable or the server is shutting down.
    pub fn state_loaded(&self) {
        self.loaded.store(true, Ordering::SeqCst);
        self.state.send_if_modified(|state| {
            let was = *state;
            if was == Ready::Loading {
                *state = Ready::Yes;
            }
            *state != was
        });
    }

    pub fn current(&self) -> Ready {
        *self.state.borrow()
    }

    /// Sees every change from now on.
    pub fn subscribe(&self) -> watch::Receiver<Ready> {
        self.state.subscribe()
    }

    /// Not ready from now on, for good: a shutdown is never undone.
    pub fn shut_down(&self) {
        self.state.send_replace(Ready::ShuttingDown);
    }

    /// Records a probe's outcome; true when that changed the state. Never
    /// leaves [`Ready::ShuttingDown`], so a probe that lands during the
    /// drain cannot report the server ready again.
    pub fn database_answered(&self, answered: bool) -> bool {
        self.state.send_if_modified(|state| {
            let next = match (*state, answered) {
                (Ready::ShuttingDown, _) => Ready::ShuttingDown,
                (_, false) => Ready::DatabaseUnreachable,
                (_, true) if !self.loaded.load(Ordering::SeqCst) => Ready::Loading,
                (_, true) => Ready::Yes,
            };
            std::mem::replace(state, next) != next
        })
    }

    /// Probes the database every `interval` until `stop`, and records each
    /// outcome. The changes are logged; a steady state is not.
    pub async fn probe_database(self, store: Store, interval: Duration, stop: CancellationToken) {
        let mut probe = store.probe();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = probe.check(PROBE_TIMEOUT) => outcome,
            };
            let answered = outcome.is_ok();
            if !self.database_answered(answered) {
                continue;
            }
            match outcome {
                Ok(()) => tracing::info!("the database answers again: reporting SERVING"),
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "the database does not answer: reporting NOT_SERVING until it does"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_move_readiness_both_ways_and_report_only_changes() {
        let readiness = Readiness::new();
        readiness.state_loaded();
        assert!(readiness.current().is_ready());
        assert!(!readiness.database_answered(true), "no change");
        assert!(readiness.database_answered(false));
        assert_eq!(readiness.current(), Ready::DatabaseUnreachable);
        assert!(!readiness.database_answered(false), "no change");
        assert!(readiness.database_answered(true));
        assert!(readiness.current().is_ready());
    }

    #[test]
    fn not_ready_until_the_state_is_loaded_whatever_the_database_says() {
        let readiness = Readiness::new();
        assert_eq!(readiness.current(), Ready::Loading);
        assert!(!readiness.database_answered(true), "still loading");
        assert!(readiness.database_answered(false));
        assert_eq!(readiness.current(), Ready::DatabaseUnreachable);
        assert!(readiness.database_answered(true));
        assert_eq!(readiness.current(), Ready::Loading);
        readiness.state_loaded();
        assert!(readiness.current().is_ready());
        // Loaded while the database is down: ready once it answers.
        let readiness = Readiness::new();
        readiness.database_answered(false);
        readiness.state_loaded();
        assert_eq!(readiness.current(), Ready::DatabaseUnreachable);
        readiness.database_answered(true);
        assert!(readiness.current().is_ready());
    }

    #[test]
    fn a_shutdown_is_final_whatever_the_probes_say() {
        for database_up in [true, false] {
            let readiness = Readiness::new();
            readiness.database_answered(database_up);
            readiness.shut_down();
            assert!(!readiness.database_answered(true));
            assert!(!readiness.database_answered(false));
            assert_eq!(readiness.current(), Ready::ShuttingDown);
        }
    }
}
