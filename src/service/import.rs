//! `import-refusals`: load a mailer's existing suppression list.
//!
//! The file streams through in batches, so memory does not grow with its
//! size. Each good line becomes a REFUSE (unknown subjects are registered
//! first, so the refusal holds the day they sign up); each bad line goes to
//! the reject file with its line number and reason, and changes nothing.

use std::{
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
        .from_reader(input);
    let mut rejects = csv::Writer::from_writer(rejects);
    rejects
        .write_record(["line", "reason", "content"])
        .map_err(|e| Error::Internal(e.into()))?;
    let mut progress = ImportProgress::default();
    let batch_size = options.batch_size.max(1);
    let mut workers = Workers::start(store, spec, options.jobs.max(1));
    let mut partitions: Vec<Vec<SubjectId>> = vec![Vec::with_capacity(batch_size); workers.len()];
    let mut first = true;

    for item in reader.byte_records() {
        progress.lines += 1;
        let record = match item {
            Ok(record) => record,
            Err(e) => {
                let line = e.position().map_or(progress.lines, |p| p.line());
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
        let line = record.position().map_or(progress.lines, |p| p.line());
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
