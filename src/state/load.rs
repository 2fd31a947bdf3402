//! The first load of the decision state, then following the feed.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{Inner, table::Tables};
use crate::{error::Result, service::feed::FeedHub, store::Store};

/// Subjects per page of the first load.
const PAGE: i64 = 10_000;
/// Suppression-list hashes per page.
const HASH_PAGE: i64 = 10_000;
/// After a failed load or a broken subscription.
const RETRY: Duration = Duration::from_millis(500);

pub(super) async fn run(inner: Arc<Inner>, store: Store, feed: FeedHub, stop: CancellationToken) {
    keep_large_allocations_mapped();
    let Some(head) = first_load(&inner, &store, &feed, &stop).await else {
        return;
    };
    tracing::info!(sequence = head, "decision state loaded");
    follow(&inner, &feed, &stop).await;
}

/// Loads everything up to the feed's settled head, retrying until it works
/// or `stop`. `None` when stopped first.
async fn first_load(
    inner: &Inner,
    store: &Store,
    feed: &FeedHub,
    stop: &CancellationToken,
) -> Option<i64> {
    loop {
        // The feed's head: every sequence at or below it is settled, so
        // pages read below it see all there will ever be there.
        let head = loop {
            if let Some(head) = feed.head() {
                break head;
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        };
        let started = std::time::Instant::now();
        let loaded = tokio::select! {
            () = stop.cancelled() => return None,
            loaded = load(store, head) => loaded,
        };
        match loaded {
            Ok(tables) => {
                let mut held = inner.tables.write().unwrap_or_else(|p| p.into_inner());
                *held = tables;
                inner.applied.send_replace(head);
                // The load is applied up to `head`: with no event after it,
                // this is the position memory answers at.
                metrics::gauge!(crate::metrics::STATE_APPLIED).set(head as f64);
                metrics::gauge!(crate::metrics::STATE_SUBJECTS).set(held.subjects() as f64);
                metrics::gauge!(crate::metrics::STATE_BYTES).set(held.allocated_bytes() as f64);
                tracing::info!(
                    subjects = held.subjects(),
                    bytes = held.allocated_bytes(),
                    millis = started.elapsed().as_millis() as u64,
                    "decision state load finished"
                );
                drop(held);
                release_freed_memory();
                inner.ready.send_replace(true);
                return Some(head);
            }
            Err(e) => {
                tracing::warn!(error = %e, "decision state load failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

/// The state as of `upto`, read in pages.
async fn load(store: &Store, upto: i64) -> Result<Tables> {
    let mut tables = Tables::default();
    let size = store.state_size(upto).await?;
    tables.reserve(size.subjects, size.id_bytes, size.choices);
    let mut after = 0;
    loop {
        let page = store.state_subjects(after, upto, PAGE).await?;
        let (Some(first), Some(last)) = (page.first().map(|s| s.0), page.last().map(|s| s.0))
        else {
            break;
        };
        for (sequence, id) in &page {
            tables.register(*sequence, id);
        }
        // Each subject's choices arrive oldest first; `choose` keeps the
        // newest at the head.
        for c in store.state_choices(first, last, upto).await? {
            if let Some(slot) = tables.slot_of_registration(c.subject) {
                tables.choose(slot, &c.purpose, c.field.as_deref(), c.choice, c.record_id);
            }
        }
        for f in store.state_fields(first, last, upto).await? {
            if let Some(slot) = tables.slot_of_registration(f.subject) {
                let purposes: Vec<&str> = f.collected_for.iter().map(String::as_str).collect();
                tables.store_field(slot, &f.field, &purposes, f.checked_at);
            }
        }
        after = last;
    }
    let mut after = Vec::new();
    loop {
        let hashes = store.erased_hashes(&after, HASH_PAGE).await?;
        let Some(last) = hashes.last().cloned() else {
            break;
        };
        for hash in hashes {
            tables.add_erased(hash);
        }
        after = last;
    }
    Ok(tables)
}

/// Applies the feed after the loaded position until `stop`. A broken or
/// lagging subscription resumes from what was applied, so nothing is
/// skipped or applied twice.
async fn follow(inner: &Inner, feed: &FeedHub, stop: &CancellationToken) {
    loop {
        let mut events = feed.subscribe(*inner.applied.borrow());
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = events.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    inner.apply(std::slice::from_ref(&event));
                    metrics::gauge!(crate::metrics::STATE_APPLIED).set(event.sequence() as f64);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "decision state lost the feed; resuming");
                    break;
                }
                None => return,
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// glibc serves a large allocation (128 KiB and up) from its own mapping,
/// returned to the kernel when freed, but raises that threshold to the size
/// of every such block freed. The load frees a page of rows each round
/// (hundreds of KiB), so without this its later pages come from the worker
/// threads' heaps, and the live allocations left among them keep some
/// 2 MiB per thread resident after the trim (measured: 61-63.5 B of RSS a
/// subject against 59.7 B with the threshold held). Setting the threshold
/// holds it where it starts.
fn keep_large_allocations_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes how later allocations are served.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// The load's pages are freed by now, but glibc keeps freed heap pages
/// mapped: hand them back, so the process's resident memory is what the
/// state holds rather than its high-water mark during the load.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the heap to the
    // kernel; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}
