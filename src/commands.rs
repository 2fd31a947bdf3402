//! The one-shot subcommands (`migrate`, `check-config`, `policy check`,
//! `callers check`, `callers token`, `import-refusals`, `keys rotate`,
//! `export-subject`, `verify`):
//! what they print and how they report progress. `serve` lives in `startup`.

use std::{
    fs::File,
    io::{BufReader, BufWriter, IsTerminal as _, Read},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};

mod callers;

pub use callers::{check_callers, new_token};

use crate::{
    domain::{Actor, Evidence, FieldName, NoticeVersion, PurposeCode, SubjectId},
    error::Error,
    keys::KeyFile as _,
    policy::Policy,
    service::{
        export::{Exporter, SubjectExport},
        import::{self, ImportOptions, ImportProgress},
        ledger,
        vault::{self, DataKeys},
    },
    settings::{DatabaseArgs, ExportArgs, ImportArgs, RotateArgs, ServeArgs},
    store::{Database, RefusalImport, redact},
    telemetry::LogFormat,
};

pub async fn migrate(args: &DatabaseArgs) -> anyhow::Result<()> {
    let database = Database::open(args).await?;
    let applied = database.store.migrate().await?;
    println!("applied {applied} migration(s); the database is up to date");
    Ok(())
}

/// `consentd check-config`: serve's settings as serve would use them, and
/// whether its policy file loads. Key files are read by `serve` itself.
pub fn check_config(args: &ServeArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let settings: serde_json::Map<String, serde_json::Value> = args
        .settings(log_format)
        .into_iter()
        .map(|(flag, value)| {
            let value = match (flag, value) {
                ("--database-url" | "--local-server-url" | "--read-database-url", Some(url)) => {
                    Some(redact(&url))
                }
                (_, value) => value,
            };
            (flag.to_string(), value.into())
        })
        .collect();
    println!("{}", serde_json::to_string_pretty(&settings)?);
    Policy::load(&args.policy)?;
    Ok(())
}

/// Walks the tamper-evident history (`consentd verify`).
pub async fn verify(args: &DatabaseArgs) -> anyhow::Result<()> {
    let database = Database::open(args).await?;
    if database.is_default {
        database.store.migrate().await?;
    }
    match ledger::verify(&database.store).await? {
        Ok(intact) => {
            println!(
                "{} records, {} checkpoints, intact",
                intact.records, intact.checkpoints
            );
            Ok(())
        }
        Err(broken) => {
            println!("{broken}");
            Err(anyhow!("the history is not intact"))
        }
    }
}

pub fn check_policy(file: &Path) -> anyhow::Result<()> {
    let policy = Policy::load(file)?;
    println!(
        "{}: OK, policy version {}",
        file.display(),
        policy.version()
    );
    for purpose in policy.purposes() {
        let fields: Vec<_> = purpose.fields.iter().map(ToString::to_string).collect();
        println!(
            "  purpose {} ({:?}): {}",
            purpose.code,
            purpose.basis,
            fields.join(", ")
        );
    }
    for recipient in policy.recipients() {
        println!(
            "  recipient {} ({}): {}",
            recipient.id,
            recipient.category.as_str(),
            recipient.name
        );
    }
    Ok(())
}

pub async fn import_refusals(args: &ImportArgs) -> anyhow::Result<()> {
    let policy = Policy::load(&args.policy)?;
    let spec = import_spec(args).map_err(|e| anyhow!(e))?;
    import::validate(&policy, &spec).map_err(flag_error)?;

    let file =
        File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let reject_path = args.reject_file.clone().unwrap_or_else(|| {
        let mut name = args.file.clone().into_os_string();
        name.push(".rejects.csv");
        PathBuf::from(name)
    });
    let rejects = File::create(&reject_path)
        .with_context(|| format!("cannot create {}", reject_path.display()))?;

    let database = Database::open(&args.database).await?;
    if database.is_default {
        database.store.migrate().await?;
    }
    let read = Arc::new(AtomicU64::new(0));
    let input = CountingReader {
        inner: BufReader::with_capacity(1 << 16, file),
        read: read.clone(),
    };
    // Every refusal this import finds already in force is at or before the
    // head now, so the token is never older than it.
    let (since, _) = database.store.feed_head().await?;
    let mut report = ProgressReport::new(total_bytes);
    let summary = import::import_refusals(
        &database.store,
        &spec,
        input,
        BufWriter::new(rejects),
        ImportOptions {
            batch_size: args.batch_size as usize,
            jobs: args.jobs as usize,
        },
        |progress| report.update(progress, read.load(Ordering::Relaxed)),
    )
    .await
    .map_err(flag_error)?;
    report.finish(&summary);

    eprintln!(
        "{}: {} line(s) read; {} refusal(s) recorded, {} unchanged (already refused or repeated), \
         {} subject(s) registered, {} line(s) rejected",
        args.file.display(),
        summary.lines,
        summary.refused,
        summary.unchanged,
        summary.registered,
        summary.rejected
    );
    // On stdout, the one line a script reads: pass it to Check's
    // `consistency` to see the imported refusals on any server at once.
    let token = database.store.import_position(&spec, since).await?;
    println!("consistency token: {}", token.encode());
    if summary.rejected > 0 {
        eprintln!("rejected lines are listed in {}:", reject_path.display());
        print_first_rejects(&args.file, &reject_path, 5);
    } else {
        let _ = std::fs::remove_file(&reject_path);
    }
    Ok(())
}

pub async fn rotate_keys(args: &RotateArgs) -> anyhow::Result<()> {
    let keys = DataKeys::load(&args.data_keys_file)?;
    let database = Database::open(&args.database).await?;
    if database.is_default {
        database.store.migrate().await?;
    }
    let rotated = vault::rotate(&database.store, &keys, args.batch_size as usize, |n| {
        eprintln!("keys rotate: {n} value(s) re-encrypted so far");
    })
    .await?;
    println!(
        "re-encrypted {rotated} value(s) under key `{}`; every stored value now uses it",
        keys.current()
    );
    Ok(())
}

/// `render` turns the export into the JSON the ExportSubject RPC answers
/// with; `main` passes the gRPC layer's, so the two cannot drift.
pub async fn export_subject(
    args: &ExportArgs,
    render: impl FnOnce(SubjectExport) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let subject_id =
        SubjectId::parse(args.subject_id.clone()).map_err(|e| anyhow!("SUBJECT_ID {e}"))?;
    let policy = Policy::load(&args.policy)?;
    let keys = DataKeys::load(&args.data_keys_file)?;
    let database = Database::open(&args.database).await?;
    let export = Exporter::new(
        database.store.clone(),
        Arc::new(keys),
        policy.concern_deadlines(),
    )
    .export(&subject_id)
    .await
    .map_err(|e| match e {
        Error::NotFound { .. } => anyhow!("no subject is registered under that id"),
        other => anyhow!(other),
    })?;
    let json = render(export)?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, json + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => println!("{json}"),
    }
    Ok(())
}

fn import_spec(args: &ImportArgs) -> Result<RefusalImport, String> {
    fn at(flag: &'static str) -> impl Fn(String) -> String {
        move |why| format!("{flag} {why}")
    }
    let file_name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(RefusalImport {
        purpose: PurposeCode::parse(args.purpose.clone()).map_err(at("--purpose"))?,
        field: args
            .field
            .clone()
            .map(FieldName::parse)
            .transpose()
            .map_err(at("--field"))?,
        notice_version: NoticeVersion::parse(args.notice_version.clone())
            .map_err(at("--notice-version"))?,
        evidence: Evidence::parse(
            args.evidence
                .clone()
                .unwrap_or_else(|| format!("import of {file_name}")),
        )
        .map_err(at("--evidence"))?,
        actor: Actor::parse(args.actor.clone()).map_err(at("--actor"))?,
    })
}

/// Turns a validation error about a flag into a one-line message.
fn flag_error(error: Error) -> anyhow::Error {
    match error {
        Error::InvalidArgument(violations) => anyhow!(
            "{}",
            violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        other => anyhow!(other),
    }
}

fn print_first_rejects(file: &Path, reject_path: &Path, limit: usize) {
    let Ok(mut reader) = csv::Reader::from_path(reject_path) else {
        return;
    };
    for record in reader.records().flatten().take(limit) {
        eprintln!("  {}:{}: {}", file.display(), &record[0], &record[1]);
    }
}

/// Counts bytes read, for the progress bar's position and ETA.
struct CountingReader<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A progress bar with rows/s and ETA on a terminal; plain periodic lines
/// otherwise (logs, CI).
struct ProgressReport {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Instant,
    total_bytes: u64,
}

impl ProgressReport {
    const LINE_EVERY: Duration = Duration::from_secs(5);

    fn new(total_bytes: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total_bytes);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {percent:>3}%  {msg}  ETA {eta}")
                    .expect("a valid template"),
            );
            bar
        });
        Self {
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
            total_bytes,
        }
    }

    fn rate(&self, progress: &ImportProgress) -> f64 {
        progress.lines as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    fn update(&mut self, progress: &ImportProgress, bytes: u64) {
        let rate = self.rate(progress);
        match &self.bar {
            Some(bar) => {
                bar.set_position(bytes);
                bar.set_message(format!("{} lines, {rate:.0} rows/s", progress.lines));
            }
            None if self.last_line.elapsed() >= Self::LINE_EVERY => {
                self.last_line = Instant::now();
                let percent = (bytes * 100).checked_div(self.total_bytes).unwrap_or(0);
                eprintln!(
                    "import: {} lines ({percent}%), {rate:.0} rows/s, {} refused, {} rejected",
                    progress.lines, progress.refused, progress.rejected
                );
            }
            None => {}
        }
    }

    fn finish(&self, progress: &ImportProgress) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "import: done in {:.1}s, {:.0} rows/s",
            self.started.elapsed().as_secs_f64(),
            self.rate(progress)
        );
    }
}
