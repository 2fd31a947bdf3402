//! Waiting for a race to be set up: a test that holds a row lock polls until
//! the writers it started are seen waiting on it.

use std::time::Duration;

/// Backends of `db`'s database waiting on a lock.
pub async fn waiting_on_locks(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Returns once at least `n` backends of `db`'s database wait on a lock; a
/// hang guard, not a timing, panics after 30 s.
pub async fn until_waiting_on_locks(db: &tokio_postgres::Client, n: i64) {
    let waiting = async {
        while waiting_on_locks(db).await < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .unwrap_or_else(|_| panic!("{n} backends never waited on locks"));
}
