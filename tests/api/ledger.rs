//! The tamper-evident history: `consentd verify` (the real binary) finds
//! every change made to the history behind the server's back.

use std::time::Duration;

use consentd::grpc::pb::{
    self, Choice, LegalBasis, disclosure_service_client::DisclosureServiceClient,
    subject_rights_service_client::SubjectRightsServiceClient,
};
use uuid::Uuid;

use crate::helpers::{TestApp, as_actor, spawn_app, spawn_app_with};

const BIN: &str = env!("CARGO_BIN_EXE_consentd");

/// Runs `consentd verify` on the test's database: (exit success, stdout,
/// stderr).
pub(crate) async fn verify(app: &TestApp) -> (bool, String, String) {
    verify_url(app.db_url()).await
}

/// `consentd verify` on the database at `url`: whether it passed, and its
/// output.
pub(crate) async fn verify_url(url: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new(BIN)
        .args(["verify", "--database-url", url])
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The ids of the history rows the tamper cases aim at.
struct History {
    /// Subject A's three consent records, in chain order.
    records: [Uuid; 3],
    /// Subject B's disclosure, then its approval (the last link of B).
    disclosure: Uuid,
}

/// Subject A: three consent records. Subject B: personal data, a legal
/// disclosure and its approval.
async fn a_history(app: &TestApp) -> History {
    app.register("A-1").await;
    app.register("B-2").await;
    app.record("A-1", "promotional_mail", "", Choice::Refuse)
        .await;
    app.record("A-1", "partner_offers", "email", Choice::Grant)
        .await;
    app.record("A-1", "promotional_mail", "", Choice::Grant)
        .await;
    let mut vault = DisclosureServiceClient::new(app.channel.clone());
    vault
        .put_personal_data(pb::PutPersonalDataRequest {
            subject_id: "B-2".into(),
            field: "name".into(),
            value: "Li Lei".into(),
            collected_for: vec!["order_delivery".into()],
            channel: pb::Channel::Web.into(),
            notice_version: "2026-11".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let pending = vault
        .request_disclosure(as_actor(
            "officer-li",
            pb::RequestDisclosureRequest {
                subject_id: "B-2".into(),
                recipient_id: "public-security".into(),
                fields: vec!["name".into()],
                legal_basis: LegalBasis::LegalProcess.into(),
                reference: "case 2026-0042".into(),
                justification: "Notice of assistance in an investigation".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    vault
        .approve_disclosure(as_actor(
            "legal-zhang",
            pb::ApproveDisclosureRequest {
                disclosure_id: pending.disclosure_id.clone(),
            },
        ))
        .await
        .unwrap();
    let records: Vec<Uuid> = app
        .db
        .query(
            "SELECT record_id FROM consent_records WHERE subject_id = 'A-1' ORDER BY chain_seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    History {
        records: records.try_into().unwrap(),
        disclosure: pending.disclosure_id.parse().unwrap(),
    }
}

async fn erase(app: &TestApp, subject: &str) {
    SubjectRightsServiceClient::new(app.channel.clone())
        .erase_subject(as_actor(
            "privacy-officer",
            pb::EraseSubjectRequest {
                subject_id: subject.into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
}

async fn history_rows(app: &TestApp) -> i64 {
    app.count("consent_records").await
        + app.count("disclosures").await
        + app.count("disclosure_events").await
}

#[tokio::test]
async fn a_clean_history_with_an_erasure_in_it_verifies_intact() {
    let mut app = spawn_app_with(|args| args.checkpoint_interval_seconds = 1).await;
    a_history(&app).await;
    // A checkpoint from before the erasure, written by the periodic task.
    let rows = history_rows(&app).await;
    let mut waited = Duration::ZERO;
    while app
        .db
        .query_opt(
            "SELECT 1 FROM ledger_checkpoints WHERE records = $1",
            &[&rows],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(waited < Duration::from_secs(10), "no periodic checkpoint");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    app.record("A-1", "promotional_mail", "", Choice::Refuse)
        .await;
    erase(&app, "A-1").await;
    // The same id again: its refusal is carried into a new chain.
    app.register("A-1").await;
    app.record("A-1", "partner_offers", "", Choice::Grant).await;
    app.shutdown().await.unwrap();

    let (ok, out, err) = verify(&app).await;
    let rows = history_rows(&app).await;
    let carried: i64 = app
        .db
        .query_one(
            "SELECT count(*) FROM consent_records WHERE actor = 'erasure-suppression'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(carried, 1, "the refusal was carried into the new chain");
    let checkpoints = app.count("ledger_checkpoints").await;
    assert!(checkpoints >= 2, "one periodic, one at shutdown");
    assert!(ok, "{out}{err}");
    assert_eq!(
        out.trim(),
        format!("{rows} records, {checkpoints} checkpoints, intact")
    );
    let last: i64 = app
        .db
        .query_one(
            "SELECT records FROM ledger_checkpoints ORDER BY checkpoint_id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, rows, "the shutdown checkpoint covers every row");
}

/// One change to a fresh history, made as the superuser with every trigger
/// off, and the record `verify` must name.
struct Tamper {
    what: &'static str,
    sql: fn(&History) -> String,
    names: fn(&History) -> String,
}

fn record(id: Uuid) -> String {
    format!("consent record {id}")
}

/// The third record of A, rewritten with its hash and A's head recomputed
/// exactly as the trigger would: only the signed checkpoint can tell.
fn rewrite_last_record_and_its_hashes(h: &History) -> String {
    format!(
        "UPDATE consent_records SET choice = 'refuse' WHERE record_id = '{last}';
         UPDATE consent_records r
            SET hash = sha256(p.hash || ledger_consent_record_encoding(r))
           FROM consent_records p
          WHERE r.record_id = '{last}' AND p.record_id = '{before}';
         UPDATE ledger_heads SET head = (SELECT hash FROM consent_records WHERE record_id = '{last}')
          WHERE length = 3;",
        last = h.records[2],
        before = h.records[1]
    )
}

const TAMPERS: &[Tamper] = &[
    Tamper {
        what: "a record's choice is edited",
        sql: |h| {
            format!(
                "UPDATE consent_records SET choice = 'grant' WHERE record_id = '{}'",
                h.records[0]
            )
        },
        names: |h| record(h.records[0]),
    },
    Tamper {
        what: "a record's evidence is edited",
        sql: |h| {
            format!(
                "UPDATE consent_records SET evidence = 'forged' WHERE record_id = '{}'",
                h.records[1]
            )
        },
        names: |h| record(h.records[1]),
    },
    Tamper {
        what: "a disclosure's fields are edited",
        sql: |h| {
            format!(
                "UPDATE disclosures SET fields = ARRAY['phone'] WHERE disclosure_id = '{}'",
                h.disclosure
            )
        },
        names: |h| format!("disclosure {}", h.disclosure),
    },
    Tamper {
        what: "an approval's actor is edited",
        sql: |h| {
            format!(
                "UPDATE disclosure_events SET actor = 'officer-li' WHERE disclosure_id = '{}'",
                h.disclosure
            )
        },
        names: |h| format!("disclosure event {} (approved)", h.disclosure),
    },
    Tamper {
        what: "a record is moved to another subject",
        sql: |h| {
            format!(
                "UPDATE consent_records SET subject_id = 'B-2' WHERE record_id = '{}'",
                h.records[2]
            )
        },
        names: |h| record(h.records[2]),
    },
    Tamper {
        what: "a record in the middle is deleted",
        sql: |h| {
            format!(
                "DELETE FROM consent_records WHERE record_id = '{}'",
                h.records[1]
            )
        },
        names: |h| record(h.records[2]),
    },
    Tamper {
        what: "the last link of a chain is deleted",
        sql: |h| {
            format!(
                "DELETE FROM disclosure_events WHERE disclosure_id = '{}'",
                h.disclosure
            )
        },
        names: |h| format!("disclosure {}", h.disclosure),
    },
    Tamper {
        what: "the last record is deleted and its chain's head rewound",
        sql: |h| {
            format!(
                "DELETE FROM consent_records WHERE record_id = '{}';
                 UPDATE ledger_heads SET length = 2, head = (SELECT hash FROM consent_records WHERE record_id = '{}')
                  WHERE length = 3;",
                h.records[2], h.records[1]
            )
        },
        names: |h| record(h.records[1]),
    },
    Tamper {
        what: "the last record is rewritten with every hash recomputed",
        sql: rewrite_last_record_and_its_hashes,
        names: |h| record(h.records[2]),
    },
    Tamper {
        what: "a record is inserted in the middle",
        sql: |h| {
            format!(
                "INSERT INTO consent_records (subject_id, record_id, purpose, choice, channel,
                     notice_version, actor, chain_seq, text_digest, hash)
                 SELECT 'A-1', '{NEW_ID}', 'promotional_mail', 'grant', 'web', '2026-11', 'crm',
                        2, sha256(ledger_text('')), hash
                   FROM consent_records WHERE record_id = '{}'",
                h.records[1]
            )
        },
        names: |_| record(NEW_ID),
    },
    Tamper {
        what: "a record is appended behind the trigger's back",
        sql: |_| {
            format!(
                "INSERT INTO consent_records (subject_id, record_id, purpose, choice, channel,
                     notice_version, actor, chain_seq, text_digest, hash)
                 VALUES ('A-1', '{NEW_ID}', 'promotional_mail', 'grant', 'web', '2026-11', 'crm',
                         4, sha256(ledger_text('')), sha256('x'::bytea))"
            )
        },
        names: |_| record(NEW_ID),
    },
    Tamper {
        what: "two records swap places",
        sql: |h| {
            format!(
                "UPDATE consent_records SET chain_seq = 3 - chain_seq
                  WHERE record_id IN ('{}', '{}')",
                h.records[0], h.records[1]
            )
        },
        names: |h| record(h.records[1]),
    },
    Tamper {
        what: "two records swap their times",
        sql: |h| {
            format!(
                "UPDATE consent_records r SET recorded_at = o.recorded_at
                   FROM consent_records o
                  WHERE (r.record_id, o.record_id) IN (('{a}', '{b}'), ('{b}', '{a}'))",
                a = h.records[1],
                b = h.records[2]
            )
        },
        names: |h| record(h.records[1]),
    },
];

const NEW_ID: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0bad);

#[tokio::test]
async fn verify_catches_every_single_change_to_the_history_and_names_the_record() {
    let mut missed = Vec::new();
    for tamper in TAMPERS {
        let mut app = spawn_app().await;
        let history = a_history(&app).await;
        // Stopping writes the checkpoint the tail cases rely on.
        app.shutdown().await.unwrap();
        let (ok, out, err) = verify(&app).await;
        assert!(ok, "{}: intact before the change:\n{out}{err}", tamper.what);

        // The superuser, with the append-only guards (and the chain trigger)
        // off for this session.
        app.db
            .batch_execute(&format!(
                "BEGIN; SET LOCAL session_replication_role = replica; {}; COMMIT;",
                (tamper.sql)(&history)
            ))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", tamper.what));

        let (ok, out, _) = verify(&app).await;
        let named = (tamper.names)(&history);
        if ok || !out.contains(&format!("broken link at {named}:")) {
            missed.push(format!(
                "{}: expected a broken link at {named}, got:\n{out}",
                tamper.what
            ));
        }
    }
    assert!(missed.is_empty(), "{}", missed.join("\n\n"));
}

#[tokio::test]
async fn export_carries_the_chain_head_that_verify_holds_the_history_to() {
    let app = spawn_app().await;
    a_history(&app).await;
    let export = |subject: &'static str| {
        let channel = app.channel.clone();
        async move {
            SubjectRightsServiceClient::new(channel)
                .export_subject(pb::ExportSubjectRequest {
                    subject_id: subject.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .chain_head
                .expect("a chain head")
        }
    };
    let head = export("A-1").await;
    assert_eq!(head.length, 3);
    let last: Vec<u8> = app
        .db
        .query_one(
            "SELECT hash FROM consent_records WHERE subject_id = 'A-1' AND chain_seq = 3",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let hex: String = last.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(head.hash, hex);
    assert_eq!(
        export("B-2").await.length,
        2,
        "a disclosure and its approval"
    );

    // The head a person kept stays a link of their history as it grows.
    app.record("A-1", "partner_offers", "email", Choice::Refuse)
        .await;
    let later = export("A-1").await;
    assert_eq!(later.length, 4);
    assert_ne!(later.hash, head.hash);
}

#[tokio::test]
async fn concurrent_appends_for_one_subject_chain_one_after_another() {
    let app = spawn_app().await;
    app.register("A-1").await;
    let writes = (0..24).map(|i| {
        let mut client = app.client.clone();
        let choice = if i % 2 == 0 {
            Choice::Grant
        } else {
            Choice::Refuse
        };
        async move {
            client
                .record_consent(crate::helpers::record_request(
                    "A-1",
                    "promotional_mail",
                    "",
                    choice,
                ))
                .await
                .unwrap();
        }
    });
    let mut writers = tokio::task::JoinSet::new();
    for write in writes {
        writers.spawn(write);
    }
    // Writers that do not go through the API's subject lock (as a bulk
    // import does), each holding its transaction open a moment after its
    // append, so that appends overlap.
    for _ in 0..12 {
        let mut db = app.connect_db().await;
        writers.spawn(async move {
            let tx = db.transaction().await.unwrap();
            tx.batch_execute(
                "INSERT INTO consent_records (subject_id, record_id, purpose, choice, channel,
                     notice_version, actor)
                 VALUES ('A-1', gen_random_uuid(), 'partner_offers', 'grant', 'import', 'v', 'sql');
                 SELECT pg_sleep(0.05);",
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let positions: Vec<i64> = app
        .db
        .query(
            "SELECT chain_seq FROM consent_records WHERE subject_id = 'A-1' ORDER BY chain_seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(positions, (1..=36).collect::<Vec<i64>>());
    let (ok, out, err) = verify(&app).await;
    assert!(ok, "{out}{err}");
}

#[tokio::test]
async fn an_append_waits_only_for_appends_to_the_same_subject() {
    let app = spawn_app().await;
    for subject in ["A-1", "B-2"] {
        app.register(subject).await;
    }
    // An open transaction that appended to A holds A's chain head.
    let mut holder = app.connect_db().await;
    let held = holder.transaction().await.unwrap();
    held.execute(
        "INSERT INTO consent_records (subject_id, record_id, purpose, choice, channel,
             notice_version, actor)
         VALUES ('A-1', gen_random_uuid(), 'promotional_mail', 'refuse', 'web', '2026-11', 'crm')",
        &[],
    )
    .await
    .unwrap();

    let other = tokio::time::timeout(
        Duration::from_secs(5),
        app.record("B-2", "promotional_mail", "", Choice::Refuse),
    )
    .await;
    assert!(other.is_ok(), "an append for B waited for A's transaction");
    let same = tokio::time::timeout(
        Duration::from_millis(500),
        app.record("A-1", "partner_offers", "", Choice::Grant),
    )
    .await;
    assert!(same.is_err(), "an append for A went past A's open append");
    held.commit().await.unwrap();
    let (ok, out, err) = verify(&app).await;
    assert!(ok, "{out}{err}");
}
