//! Log lines leave the request path here. The thread that formats a line
//! only copies it into a bounded buffer; a thread of its own writes what
//! has gathered to the sink (stderr) in one write. A call therefore never
//! waits on the pipe or terminal behind stderr, and one slow reader costs
//! one syscall per batch instead of one per call.
//!
//! When the buffer is full (the reader has stalled, or lines come faster
//! than it reads), a new line is dropped, never waited for, and counted:
//! [`LogWriter::dropped_lines`], exposed as `consentd_log_lines_dropped_total`.
//! Memory stays bounded by the capacity, twice (the buffer filling and the
//! batch being written).

use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, atomic::AtomicU64, atomic::Ordering},
    thread::JoinHandle,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer lets lines gather after a write before it takes the
/// next batch: under load a batch then holds many lines, and the callers
/// need not wake the writer for each. Short enough that a line is on
/// stderr within milliseconds.
const GATHER: Duration = Duration::from_millis(2);

struct Shared<W> {
    pending: Mutex<Pending>,
    /// Signalled when a line arrives for a waiting writer, and at close.
    wake: Condvar,
    /// The writer thread writes through it; after close, callers do.
    sink: Mutex<W>,
    capacity: usize,
    dropped: AtomicU64,
}

struct Pending {
    lines: Vec<u8>,
    /// Set while the writer waits for lines: only then does a caller pay
    /// for waking it.
    writer_waiting: bool,
    closed: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves bytes, not a broken
    // invariant: logging goes on.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts the writer thread for `sink`. The [`LogWriter`] goes to the
/// subscriber; the [`LogGuard`] writes out what is left at close.
pub fn spawn<W: Write + Send + 'static>(sink: W, capacity: usize) -> (LogWriter<W>, LogGuard<W>) {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending {
            lines: Vec::with_capacity(capacity),
            writer_waiting: false,
            closed: false,
        }),
        wake: Condvar::new(),
        sink: Mutex::new(sink),
        capacity,
        dropped: AtomicU64::new(0),
    });
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("consentd-log".into())
            .spawn(move || write_batches(&shared))
            .expect("cannot start the log writer thread")
    };
    (
        LogWriter {
            shared: Arc::clone(&shared),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    )
}

fn write_batches<W: Write>(shared: &Shared<W>) {
    let mut batch = Vec::with_capacity(shared.capacity);
    loop {
        {
            let mut pending = lock(&shared.pending);
            while pending.lines.is_empty() && !pending.closed {
                pending.writer_waiting = true;
                pending = shared
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            pending.writer_waiting = false;
            if pending.lines.is_empty() {
                return; // closed, and everything written
            }
            std::mem::swap(&mut pending.lines, &mut batch);
        }
        let mut sink = lock(&shared.sink);
        if sink.write_all(&batch).and_then(|()| sink.flush()).is_err() {
            // Nowhere left to say it: count the lines as dropped.
            let lines = batch.iter().filter(|&&b| b == b'\n').count();
            shared.dropped.fetch_add(lines as u64, Ordering::Relaxed);
        }
        drop(sink);
        batch.clear();
        std::thread::sleep(GATHER);
    }
}

/// The subscriber's writer: every `write` is one whole formatted line.
pub struct LogWriter<W> {
    shared: Arc<Shared<W>>,
}

impl<W> LogWriter<W> {
    /// Lines dropped so far because the buffer was full or the sink failed.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl<W> Clone for LogWriter<W> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<'a, W: Write + Send + 'static> MakeWriter<'a> for LogWriter<W> {
    type Writer = &'a Self;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl<W: Write> Write for &LogWriter<W> {
    /// Takes the line whole or drops it whole, and never blocks on the sink
    /// (after close, when no thread is left to write, it writes directly).
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &self.shared;
        let mut pending = lock(&shared.pending);
        if pending.closed {
            drop(pending);
            lock(&shared.sink).write_all(line)?;
            return Ok(line.len());
        }
        if pending.lines.len() + line.len() > shared.capacity {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        pending.lines.extend_from_slice(line);
        if pending.writer_waiting {
            pending.writer_waiting = false;
            shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes out every line taken before it closes, on [`LogGuard::close`] or
/// when dropped.
pub struct LogGuard<W> {
    shared: Arc<Shared<W>>,
    thread: Option<JoinHandle<()>>,
}

impl<W> LogGuard<W> {
    /// Waits until every line taken so far is written; lines after this are
    /// written directly by the caller.
    pub fn close(mut self) {
        self.close_and_join();
    }

    fn close_and_join(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<W> Drop for LogGuard<W> {
    fn drop(&mut self) {
        self.close_and_join();
    }
}

#[cfg(test)]
#[path = "log_writer_tests.rs"]
mod tests;
