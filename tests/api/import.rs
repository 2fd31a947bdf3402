//! `consentd import-refusals` as an operator runs it.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use consentd::grpc::pb::{Decision, Reason};

use crate::helpers::{at_least_as_fresh, policy_path, spawn_app};

const BIN: &str = env!("CARGO_BIN_EXE_consentd");

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn import(db_url: &str, file: &std::path::Path, extra: &[&str]) -> Run {
    let mut command = Command::new(BIN);
    command
        .arg("import-refusals")
        .args(["--database-url", db_url]);
    if !extra.contains(&"--purpose") {
        command.args(["--purpose", "promotional_mail"]);
    }
    let out = command
        .arg("--policy")
        .arg(policy_path())
        .args(extra)
        .arg(file)
        .output()
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tempdir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("consentd-import-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_suppression_list_becomes_refusals_and_registers_unknown_subjects() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let dir = tempdir();
    let file = write(
        &dir,
        "list.csv",
        "subject_id,email_hash,reason\nC-1,ab12,bounced\nC-new,cd34,complaint\n\"C-quoted,1\",x,y\n",
    );

    let run = import(app.db_url(), &file, &[]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("4 line(s) read; 3 refusal(s) recorded, 0 unchanged"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("2 subject(s) registered, 0 line(s) rejected"),
        "{}",
        run.stderr
    );

    for subject in ["C-1", "C-new", "C-quoted,1"] {
        let answer = app
            .check_with(subject, "promotional_mail", "email", printed_token(&run))
            .await;
        assert_eq!(
            (answer.decision(), answer.reason()),
            (Decision::Deny, Reason::OptedOut),
            "{subject}"
        );
    }
    let channels: Vec<String> = app
        .db
        .query(
            "SELECT DISTINCT channel || '/' || actor || '/' || evidence FROM consent_records",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(channels, ["import/import/import of list.csv"]);
    let registered: String = app
        .db
        .query_one(
            "SELECT channel FROM subjects WHERE subject_id = 'C-new'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(registered, "import");
    assert!(
        !dir.join("list.csv.rejects.csv").exists(),
        "no reject file when nothing was rejected"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn bad_lines_are_rejected_with_their_line_and_reason_and_change_nothing() {
    let app = spawn_app().await;
    let dir = tempdir();
    let long = "x".repeat(129);
    let file = write(
        &dir,
        "list.csv",
        &format!("C-1\n,no id\n  C-2\n{long}\nC-3\n"),
    );

    let run = import(app.db_url(), &file, &[]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains("2 refusal(s) recorded"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("3 line(s) rejected"), "{}", run.stderr);
    let shown = format!("{}:2: subject id must not be empty", file.display());
    assert!(run.stderr.contains(&shown), "{}", run.stderr);
    assert!(run.stderr.contains(&format!(
        "{}:3: subject id must not start or end with white space",
        file.display()
    )));
    assert!(run.stderr.contains(&format!(
        "{}:4: subject id must be at most 128 characters",
        file.display()
    )));

    let rejects = std::fs::read_to_string(dir.join("list.csv.rejects.csv")).unwrap();
    let lines: Vec<&str> = rejects.lines().collect();
    assert_eq!(lines[0], "line,reason,content");
    assert_eq!(lines[1], "2,subject id must not be empty,");
    assert!(lines[2].starts_with("3,subject id must not start or end with white space,  C-2"));
    assert_eq!(lines.len(), 4);

    assert_eq!(
        app.count("subjects").await,
        2,
        "only the good lines registered"
    );
    assert_eq!(app.count("consent_records").await, 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn importing_twice_or_after_an_interruption_imports_nothing_twice() {
    let app = spawn_app().await;
    let dir = tempdir();
    let total = 60_000;
    let ids: Vec<String> = (0..total).map(|i| format!("C-{i}")).collect();
    let full = write(&dir, "full.csv", &(ids.join("\n") + "\n"));

    // A real run, killed while it loads: some batches are committed, one
    // may be half-way through its transaction.
    let mut child = Command::new(BIN)
        .arg("import-refusals")
        .args([
            "--database-url",
            app.db_url(),
            "--purpose",
            "promotional_mail",
        ])
        .args(["--batch-size", "200", "--jobs", "2", "--policy"])
        .arg(policy_path())
        .arg(&full)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.count("consent_records").await == 0 {
        assert!(Instant::now() < deadline, "the import never wrote a row");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended early"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Its backends may still be finishing a COMMIT it sent before dying.
    loop {
        let busy: i64 = app
            .db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()
                    AND state IS DISTINCT FROM 'idle'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if busy == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed import's backends linger"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let interrupted = app.count("consent_records").await;
    assert!(
        interrupted > 0 && interrupted < total,
        "killed mid-run: {interrupted} of {total} rows in"
    );
    assert_eq!(
        app.count("consent_state").await,
        interrupted,
        "whole batches only"
    );
    assert_eq!(app.count("subjects").await, interrupted);

    let run = import(app.db_url(), &full, &["--batch-size", "200"]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "{} refusal(s) recorded, {interrupted} unchanged",
            total - interrupted
        )),
        "{}",
        run.stderr
    );
    let run = import(app.db_url(), &full, &["--batch-size", "200"]);
    assert!(
        run.stderr
            .contains(&format!("0 refusal(s) recorded, {total} unchanged")),
        "{}",
        run.stderr
    );

    // Every id refused exactly once, and nothing else.
    let rows = app
        .db
        .query(
            "SELECT subject_id, count(*) FILTER (WHERE choice = 'refuse'), count(*)
               FROM consent_records GROUP BY subject_id",
            &[],
        )
        .await
        .unwrap();
    let mut refused: Vec<String> = Vec::new();
    for row in &rows {
        let (id, refusals, all): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!((refusals, all), (1, 1), "{id}");
        refused.push(id);
    }
    refused.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(refused, expected);
    assert_eq!(app.count("consent_records").await, total);
    assert_eq!(app.count("consent_state").await, total);
    assert_eq!(app.count("subjects").await, total);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_subject_who_granted_again_after_refusing_is_refused_again_by_a_new_list() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let dir = tempdir();
    let file = write(&dir, "list.csv", "C-1\n");
    assert!(import(app.db_url(), &file, &[]).ok);
    app.record(
        "C-1",
        "promotional_mail",
        "",
        consentd::grpc::pb::Choice::Grant,
    )
    .await;
    let run = import(app.db_url(), &file, &[]);
    assert!(
        run.stderr.contains("1 refusal(s) recorded"),
        "{}",
        run.stderr
    );
    assert_eq!(
        app.check_with("C-1", "promotional_mail", "email", printed_token(&run))
            .await
            .decision(),
        Decision::Deny
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The token the import printed, as a check's consistency: the import
/// wrote behind the server's back.
fn printed_token(run: &Run) -> Option<consentd::grpc::pb::Consistency> {
    let token = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("consistency token: "))
        .expect("the import prints its token");
    at_least_as_fresh(token)
}

#[tokio::test]
async fn bad_flags_name_the_flag_and_write_nothing() {
    let app = spawn_app().await;
    let dir = tempdir();
    let file = write(&dir, "list.csv", "C-1\n");
    for (args, message) in [
        (
            vec!["--purpose", "order_delivery"],
            "--purpose: `order_delivery` has basis contract",
        ),
        (
            vec!["--purpose", "nope"],
            "--purpose: `nope` is not a purpose of the policy",
        ),
        (
            vec!["--field", "phone"],
            "--field: `phone` is not used by purpose `promotional_mail`",
        ),
        (
            vec!["--field", "Not A Field"],
            "--field must start with a lower-case letter",
        ),
    ] {
        let run = import(app.db_url(), &file, &args);
        assert!(!run.ok, "{args:?}");
        assert!(run.stderr.contains(message), "{args:?}: {}", run.stderr);
    }
    let run = import(app.db_url(), &dir.join("missing.csv"), &[]);
    assert!(!run.ok);
    assert!(run.stderr.contains("cannot open"), "{}", run.stderr);
    assert_eq!(app.counts().await, [0, 0, 0, 0]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_bad_line_after_a_blank_line_is_reported_at_its_own_line() {
    let app = spawn_app().await;
    let dir = tempdir();
    let file = write(&dir, "list.csv", "C-1\n\n,no id\nC-2\n\n\n  C-3\n");

    let run = import(app.db_url(), &file, &[]);
    assert!(run.ok, "{}", run.stderr);
    for (line, reason) in [
        (3, "subject id must not be empty"),
        (7, "subject id must not start or end with white space"),
    ] {
        let shown = format!("{}:{line}: {reason}", file.display());
        assert!(run.stderr.contains(&shown), "{shown} in {}", run.stderr);
    }
    let rejects = std::fs::read_to_string(dir.join("list.csv.rejects.csv")).unwrap();
    let lines: Vec<&str> = rejects.lines().collect();
    assert_eq!(lines[1], "3,subject id must not be empty,");
    assert!(lines[2].starts_with("7,"), "{}", lines[2]);
    assert_eq!(lines.len(), 3);
    assert_eq!(app.count("consent_records").await, 2);
    std::fs::remove_dir_all(dir).unwrap();
}
