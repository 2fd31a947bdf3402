//! `import-refusals`: load a mailer's existing suppression list.
//!
//! The file streams through in batches, so memory does not grow with its
//! size. Each good line becomes a REFUSE (unknown subjects are registered
//! first, so the refusal holds the day they sign up); each bad line goes to
//! the reject file with its line number and reason, and changes nothing.

use std::io::{Read, Write};

use crate::{
    domain::SubjectId,
    error::{Error, Result},
    policy::{Basis, Policy},
    store::{RefusalImport, Store},
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

/// Streams `input` (named `source` in reject messages) into the store in
/// batches of `batch_size`, writing rejected lines as CSV (`line,reason,content`)
/// to `rejects`.
pub async fn import_refusals(
    store: &Store,
    spec: &RefusalImport,
    input: impl Read,
    rejects: impl Write,
    batch_size: usize,
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
    let mut batch: Vec<SubjectId> = Vec::with_capacity(batch_size);
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
        match SubjectId::parse(text) {
            Ok(id) => batch.push(id),
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
        }
        if batch.len() >= batch_size {
            flush(store, spec, &mut batch, &mut progress).await?;
            rejects.flush().map_err(|e| Error::Internal(e.into()))?;
            on_progress(&progress);
        }
    }
    flush(store, spec, &mut batch, &mut progress).await?;
    rejects.flush().map_err(|e| Error::Internal(e.into()))?;
    on_progress(&progress);
    Ok(progress)
}

async fn flush(
    store: &Store,
    spec: &RefusalImport,
    batch: &mut Vec<SubjectId>,
    progress: &mut ImportProgress,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let outcome = store.import_refusals(spec, batch).await?;
    progress.registered += outcome.registered;
    progress.refused += outcome.refused;
    progress.unchanged += batch.len() as u64 - outcome.refused;
    batch.clear();
    Ok(())
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
