//! `import-refusals`: load a mailer's existing suppression list.
//!
//! The file streams through in batches, so memory does not grow with its
//! size. Each good line becomes a REFUSE (unknown subjects are registered
//! first, so the refusal holds the day they sign up); each bad line goes to
//! the reject file with its line number and reason, and changes nothing.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    hash::{Hash as _, Hasher as _},
    io::{Read, Write},
};

use tokio::sync::mpsc;

use crate::{
    domain::SubjectId,
    error::{Error, Result},
    policy::{Basis, Policy},
    store::{BatchOutcome, RefusalImport, Store},
};

/// Header names accepted in the first column of the first line.
const HEADER_NAMES: &[&str] = &["subject_id", "external_id", "customer_id", "subject", "id"];

/// Counts so far; passed to the progress callback after every batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportProgress {
    /// Lines read, header and rejects included.
    pub lines: u64,
    /// Lines refused as malformed.
    pub rejected: u64,
    /// Subjects registered because they were unknown.
    pub registered: u64,
    /// New REFUSE records.
    pub refused: u64,
    /// Good lines that needed no new record (already refused, or repeated).
    pub unchanged: u64,
}

/// Checks that a refusal of `spec`'s purpose and field means something.
pub fn validate(policy: &Policy, spec: &RefusalImport) -> Result<()> {
    let Some(purpose) = policy.purpose(&spec.purpose) else {
        return Err(Error::invalid(
            "--purpose",
            format!("`{}` is not a purpose of the policy", spec.purpose),
        ));
    };
    if purpose.basis == Basis::Contract {
        return Err(Error::invalid(
            "--purpose",
            format!(
                "`{}` has basis contract: a refusal of it has no effect",
                purpose.code
            ),
        ));
    }
    if let Some(field) = &spec.field
        && !purpose.permits(field)
    {
        return Err(Error::invalid(
            "--field",
            format!("`{field}` is not used by purpose `{}`", purpose.code),
        ));
    }
    Ok(())
}

/// Numbers lines from byte offsets. The csv crate's own line count is one
/// short for a record that follows a blank line, and a reject must name the
/// line an operator sees in an editor. A record's reported offset is where
/// the reader started, before any blank lines it skipped, so those are
/// stepped over here. Only the line breaks of the reader's look-ahead are
/// kept, so memory stays flat.
struct LineCounter<R> {
    inner: R,
    /// Bytes read so far: the offset of the next byte.
    offset: u64,
    /// Offsets of the `\r` and `\n` bytes read but not yet passed.
    breaks: RefCell<VecDeque<(u64, u8)>>,
    /// Newlines before the last record asked about.
    passed: Cell<u64>,
}

impl<R> LineCounter<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            breaks: RefCell::new(VecDeque::new()),
            passed: Cell::new(0),
        }
    }

    /// The 1-based line where the record read from `offset` starts.
    /// Offsets must not go back.
    fn line_at(&self, offset: u64) -> u64 {
        let mut breaks = self.breaks.borrow_mut();
        let mut start = offset;
        while let Some(&(at, byte)) = breaks.front() {
            if at > start {
                break;
            }
            if at == start {
                // A blank line the reader skipped: the record starts after it.
                start += 1;
            }
            if byte == b'\n' {
                self.passed.set(self.passed.get() + 1);
            }
            breaks.pop_front();
        }
        self.passed.get() + 1
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let breaks = self.breaks.get_mut();
        for (i, &byte) in buf[..n].iter().enumerate() {
            if byte == b'\n' || byte == b'\r' {
                breaks.push_back((self.offset + i as u64, byte));
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// How an import runs.
#[derive(Debug, Clone, Copy)]
pub struct ImportOptions {
    /// Subject ids per transaction.
    pub batch_size: usize,
    /// Transactions in flight at once. Each subject id always goes to the
    /// same worker, so two batches never race over one subject.
    pub jobs: usize,
}

/// Streams `input` into the store, writing rejected lines as CSV
/// (`line,reason,content`) to `rejects`, and calling `on_progress` after
/// every batch.
pub async fn import_refusals(
    store: &Store,
    spec: &RefusalImport,
    input: impl Read,
    rejects: impl Write,
    options: ImportOptions,
    mut on_progress: impl FnMut(&ImportProgress),
) -> Result<ImportProgress> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(LineCounter::new(input));
    let mut rejects = csv::Writer::from_writer(rejects);
    rejects
        .write_record(["line", "reason", "content"])
        .map_err(|e| Error::Internal(e.into()))?;
    let mut progress = ImportProgress::default();
    let batch_size = options.batch_size.max(1);
    let mut workers = Workers::start(store, spec, options.jobs.max(1));
    let mut partitions: Vec<Vec<SubjectId>> = vec![Vec::with_capacity(batch_size); workers.len()];
    let mut first = true;

    let mut record = csv::ByteRecord::new();
    loop {
        let item = reader.read_byte_record(&mut record);
        if matches!(item, Ok(false)) {
            break;
        }
        progress.lines += 1;
        let read = progress.lines;
        let line_of = |position: Option<&csv::Position>| {
            position.map_or(read, |p| reader.get_ref().line_at(p.byte()))
        };
        match item {
            Ok(_) => {}
            Err(e) => {
                let line = line_of(e.position());
                reject(
                    &mut rejects,
                    &mut progress,
                    line,
                    &format!("unreadable CSV: {e}"),
                    b"",
                )?;
                continue;
            }
        };
        let line = line_of(record.position());
        let raw = record.get(0).unwrap_or_default();
        let is_first = std::mem::take(&mut first);
        let Ok(text) = std::str::from_utf8(raw) else {
            reject(
                &mut rejects,
                &mut progress,
                line,
                "the subject id is not valid UTF-8",
                raw,
            )?;
            continue;
        };
        if is_first && HEADER_NAMES.contains(&text.trim().to_ascii_lowercase().as_str()) {
            continue;
        }
        let id = match SubjectId::parse(text) {
            Ok(id) => id,
            Err(why) => {
                reject(
                    &mut rejects,
                    &mut progress,
                    line,
                    &format!("subject id {why}"),
                    raw,
                )?;
                continue;
            }
        };
        let worker = workers.worker_for(&id);
        partitions[worker].push(id);
        if partitions[worker].len() >= batch_size {
            let batch = std::mem::replace(&mut partitions[worker], Vec::with_capacity(batch_size));
            workers.send(worker, batch, &mut progress).await?;
            rejects.flush().map_err(|e| Error::Internal(e.into()))?;
            on_progress(&progress);
        }
    }
    for (worker, batch) in partitions.into_iter().enumerate() {
        if !batch.is_empty() {
            workers.send(worker, batch, &mut progress).await?;
        }
    }
    workers.finish(&mut progress).await?;
    rejects.flush().map_err(|e| Error::Internal(e.into()))?;
    on_progress(&progress);
    Ok(progress)
}

/// Batches in flight: one task per job, each with its own connection.
struct Workers {
    inboxes: Vec<mpsc::Sender<Vec<SubjectId>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    done: mpsc::UnboundedReceiver<Result<(usize, BatchOutcome)>>,
}

impl Workers {
    fn start(store: &Store, spec: &RefusalImport, jobs: usize) -> Self {
        let (done_tx, done) = mpsc::unbounded_channel();
        let mut inboxes = Vec::with_capacity(jobs);
        let mut tasks = Vec::with_capacity(jobs);
        for _ in 0..jobs {
            // Capacity 1: the reader stays at most one batch ahead of each
            // worker, so memory does not grow with the file.
            let (tx, mut rx) = mpsc::channel::<Vec<SubjectId>>(1);
            let (store, spec, done_tx) = (store.clone(), spec.clone(), done_tx.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(batch) = rx.recv().await {
                    let result = store
                        .import_refusals(&spec, &batch)
                        .await
                        .map(|o| (batch.len(), o));
                    let failed = result.is_err();
                    if done_tx.send(result).is_err() || failed {
                        break;
                    }
                }
            }));
            inboxes.push(tx);
        }
        Self {
            inboxes,
            tasks,
            done,
        }
    }

    fn len(&self) -> usize {
        self.inboxes.len()
    }

    fn worker_for(&self, id: &SubjectId) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        (hasher.finish() % self.inboxes.len() as u64) as usize
    }

    async fn send(
        &mut self,
        worker: usize,
        batch: Vec<SubjectId>,
        progress: &mut ImportProgress,
    ) -> Result<()> {
        let sent = self.inboxes[worker].send(batch).await;
        self.collect(progress)?;
        // A worker stops early only after reporting its error, collected above.
        sent.map_err(|_| Error::Internal(anyhow::anyhow!("an import worker stopped")))
    }

    /// Adds finished batches to `progress`; fails on the first failed batch.
    fn collect(&mut self, progress: &mut ImportProgress) -> Result<()> {
        while let Ok(result) = self.done.try_recv() {
            let (rows, outcome) = result?;
            progress.registered += outcome.registered;
            progress.refused += outcome.refused;
            progress.unchanged += rows as u64 - outcome.refused;
        }
        Ok(())
    }

    async fn finish(mut self, progress: &mut ImportProgress) -> Result<()> {
        self.inboxes.clear();
        for task in std::mem::take(&mut self.tasks) {
            task.await.map_err(|e| Error::Internal(e.into()))?;
        }
        self.collect(progress)
    }
}

fn reject(
    rejects: &mut csv::Writer<impl Write>,
    progress: &mut ImportProgress,
    line: u64,
    reason: &str,
    raw: &[u8],
) -> Result<()> {
    progress.rejected += 1;
    rejects
        .write_record([line.to_string().as_bytes(), reason.as_bytes(), raw])
        .map_err(|e| Error::Internal(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of_records(text: &str) -> Vec<(String, u64)> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(LineCounter::new(text.as_bytes()));
        let mut record = csv::ByteRecord::new();
        let mut found = Vec::new();
        while reader.read_byte_record(&mut record).unwrap() {
            let line = reader.get_ref().line_at(record.position().unwrap().byte());
            found.push((String::from_utf8_lossy(&record[0]).into_owned(), line));
        }
        found
    }

    #[test]
    fn a_record_after_blank_lines_gets_the_line_an_editor_shows() {
        let found = lines_of_records("C-1\n\nbad id\r\n\n\n\"C-2\nstill C-2\"\nC-3");
        assert_eq!(
            found,
            [
                ("C-1".to_string(), 1),
                ("bad id".to_string(), 3),
                ("C-2\nstill C-2".to_string(), 6),
                ("C-3".to_string(), 8),
            ]
        );
    }
}
