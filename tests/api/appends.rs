//! Appends to the consent history that are not one row per statement: a
//! multi-row INSERT (consent_state follows once per statement, V12) and the
//! bulk refusal function the import calls (chained set-wise, V12). Both must
//! leave what row-by-row appends leave: the newest choice per key, and a
//! chain that `consentd verify` (the real binary) holds intact.

use consentd::grpc::pb::{Choice, Decision};

use crate::helpers::{TestApp, spawn_app};

/// `consentd verify` on the test's database: whether it passed, and all it
/// printed.
async fn verify(app: &TestApp) -> (bool, String) {
    let (ok, out, err) = crate::ledger::verify(app).await;
    (ok, format!("{out}{err}"))
}

/// One batch of `consentd_import_refusals` (promotional mail, every field)
/// on `db`, as whatever role it is set to: (registered, refused).
pub(crate) async fn import_refusals(db: &tokio_postgres::Client, ids: &[&str]) -> (i64, i64) {
    let row = db
        .query_one(
            "SELECT registered, refused FROM consentd_import_refusals(
                 $1, 'promotional_mail', '', 'import', 'list.csv', 'import')",
            &[&ids],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

pub(crate) async fn chain_positions(app: &TestApp, subject: &str) -> Vec<i64> {
    app.db
        .query(
            "SELECT chain_seq FROM consent_records WHERE subject_id = $1 ORDER BY sequence",
            &[&subject],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn one_multi_row_insert_leaves_the_newest_choice_per_key_and_a_chain_that_verifies() {
    let app = spawn_app().await;
    for subject in ["A-1", "B-2"] {
        app.register(subject).await;
    }
    app.record("A-1", "promotional_mail", "", Choice::Grant)
        .await;
    // One statement: for A-1's key a refusal then a grant (the grant is the
    // newer), for B-2 a grant then a refusal, and a key of its own for B-2.
    app.db
        .batch_execute(
            "INSERT INTO consent_records (subject_id, record_id, purpose, field, choice, channel,
                 notice_version, actor)
             VALUES ('A-1', gen_random_uuid(), 'promotional_mail', '', 'refuse', 'api', 'v', 'sql'),
                    ('B-2', gen_random_uuid(), 'promotional_mail', '', 'grant', 'api', 'v', 'sql'),
                    ('A-1', gen_random_uuid(), 'promotional_mail', '', 'grant', 'api', 'v', 'sql'),
                    ('B-2', gen_random_uuid(), 'promotional_mail', '', 'refuse', 'api', 'v', 'sql'),
                    ('B-2', gen_random_uuid(), 'partner_offers', '', 'grant', 'api', 'v', 'sql')",
        )
        .await
        .unwrap();

    let state: Vec<(String, String, String, bool)> = app
        .db
        .query(
            "SELECT s.subject_id, s.purpose, s.choice,
                    s.sequence = (SELECT max(r.sequence) FROM consent_records r
                                   WHERE r.subject_id = s.subject_id AND r.purpose = s.purpose
                                     AND r.field = s.field)
               FROM consent_state s ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let expect = |s: &str, p: &str, c: &str| (s.to_string(), p.to_string(), c.to_string(), true);
    assert_eq!(
        state,
        [
            expect("A-1", "promotional_mail", "grant"),
            expect("B-2", "partner_offers", "grant"),
            expect("B-2", "promotional_mail", "refuse"),
        ]
    );
    // Written by SQL behind the server's back: ask for an answer that fresh.
    let fresh = app.position_now().await;
    let b = app
        .check_with("B-2", "promotional_mail", "email", fresh)
        .await;
    assert_eq!(b.decision(), Decision::Deny);

    assert_eq!(chain_positions(&app, "A-1").await, [1, 2, 3]);
    assert_eq!(chain_positions(&app, "B-2").await, [1, 2, 3]);
    let (ok, out) = verify(&app).await;
    assert!(ok, "{out}");
}

#[tokio::test]
async fn the_bulk_refusal_function_chains_after_earlier_appends_and_verifies() {
    let app = spawn_app().await;
    app.register("A-1").await;
    app.record("A-1", "promotional_mail", "", Choice::Grant)
        .await;
    app.record("A-1", "partner_offers", "", Choice::Refuse)
        .await;
    // As the serving role, which the grants (V12) allow to import.
    app.db
        .batch_execute("SET ROLE consentd_serving")
        .await
        .unwrap();
    assert_eq!(
        import_refusals(&app.db, &["A-1", "N-1", "N-2", "N-1"]).await,
        (2, 3)
    );
    assert_eq!(
        import_refusals(&app.db, &["A-1", "N-1", "N-2", "N-3"]).await,
        (1, 1)
    );
    app.db.batch_execute("RESET ROLE").await.unwrap();

    assert_eq!(chain_positions(&app, "A-1").await, [1, 2, 3]);
    let fresh = app.position_now().await;
    for subject in ["A-1", "N-1", "N-2", "N-3"] {
        let answer = app
            .check_with(subject, "promotional_mail", "email", fresh.clone())
            .await;
        assert_eq!(answer.decision(), Decision::Deny, "{subject}");
    }
    let heads: i64 = app
        .db
        .query_one(
            "SELECT count(*) FROM ledger_heads h JOIN subjects s USING (subject_key)
              WHERE h.length = (SELECT max(chain_seq) FROM consent_records r
                                 WHERE r.subject_id = s.subject_id)
                AND h.head = (SELECT hash FROM consent_records r
                               WHERE r.subject_id = s.subject_id ORDER BY chain_seq DESC LIMIT 1)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(heads, 4, "every head is its chain's last record");
    let (ok, out) = verify(&app).await;
    assert!(ok, "{out}");
    // An API append after the import chains on from the head it left.
    app.record("N-1", "promotional_mail", "", Choice::Grant)
        .await;
    assert_eq!(chain_positions(&app, "N-1").await, [1, 2]);
    let (ok, out) = verify(&app).await;
    assert!(ok, "{out}");
}

#[tokio::test]
async fn a_session_that_turns_on_the_bulk_switch_itself_is_still_chained_row_by_row() {
    let app = spawn_app().await;
    app.register("A-1").await;
    app.db
        .batch_execute(
            "SET ROLE consentd_serving;
             SET consentd.bulk_append = 'on';
             INSERT INTO consent_records (subject_id, record_id, purpose, choice, channel,
                 notice_version, actor, chain_seq, text_digest, hash)
             VALUES ('A-1', gen_random_uuid(), 'promotional_mail', 'refuse', 'api', 'v', 'sql',
                     7, '\\x00', '\\x00');
             RESET consentd.bulk_append;
             RESET ROLE;",
        )
        .await
        .unwrap();
    let (position, forged): (i64, bool) = app
        .db
        .query_one(
            "SELECT chain_seq, hash = '\\x00'::bytea FROM consent_records WHERE subject_id = 'A-1'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((position, forged), (1, false));
    let (ok, out) = verify(&app).await;
    assert!(ok, "{out}");
}

/// The subjects' feed-number trigger stands aside for the import function
/// alone (V14): a session that turns the switch on itself still has its
/// registration numbered by the trigger, whatever number it names, and a
/// record for an id nobody registered is refused without a foreign key.
#[tokio::test]
async fn a_session_that_turns_on_the_bulk_switch_itself_cannot_number_a_registration_or_skip_the_subject()
 {
    let app = spawn_app().await;
    app.register("A-0").await;
    app.db
        .batch_execute(
            "SET ROLE consentd_serving;
             SET consentd.bulk_append = 'on';
             INSERT INTO subjects (subject_id, kind, notice_version, channel, sequence)
             VALUES ('A-1', 'individual', 'v', 'api', 1);
             RESET consentd.bulk_append;
             RESET ROLE;",
        )
        .await
        .unwrap();
    let sequences: Vec<i64> = app
        .db
        .query("SELECT sequence FROM subjects ORDER BY subject_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let [before, sequence] = sequences[..] else {
        panic!("{sequences:?}")
    };
    assert!(sequence > before, "{sequence} was drawn, not named");

    let refused = app
        .db
        .batch_execute(
            "SET ROLE consentd_serving;
             INSERT INTO consent_records (subject_id, record_id, purpose, choice, channel,
                 notice_version, actor)
             VALUES ('nobody', gen_random_uuid(), 'promotional_mail', 'refuse', 'api', 'v', 'sql');",
        )
        .await
        .unwrap_err();
    app.db.batch_execute("RESET ROLE").await.unwrap();
    let message = refused.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message.is_some_and(|m| m.contains("not registered")),
        "{refused:?}"
    );
    assert_eq!(app.count("consent_records").await, 0);
    assert_eq!(app.count("ledger_heads").await, 0);
}

/// Without the foreign key (V14), only the owner's bulk path can append a
/// record for an id nobody registered: the set-wise functions never do, the
/// row trigger refuses it for everyone else. `consentd verify` names such a
/// record, so a history that lost its subject does not pass unseen.
#[tokio::test]
async fn verify_names_a_record_whose_subject_nobody_registered() {
    let app = spawn_app().await;
    app.register("A-1").await;
    app.record("A-1", "promotional_mail", "", Choice::Refuse)
        .await;
    let (ok, out) = verify(&app).await;
    assert!(ok, "{out}");
    // As the owner with the bulk switch on: the row trigger stands aside.
    let orphan = uuid::Uuid::new_v4();
    app.db
        .batch_execute(&format!(
            "BEGIN;
             SET LOCAL consentd.bulk_append = 'on';
             INSERT INTO consent_records (subject_id, record_id, purpose, choice, channel,
                 notice_version, actor, chain_seq, text_digest, hash, ledger_version, text_erased)
             VALUES ('nobody', '{orphan}', 'promotional_mail', 'refuse', 'api', 'v', 'sql',
                     1, '\\x00', '\\x00', 2, false);
             COMMIT;"
        ))
        .await
        .unwrap();
    let (ok, out) = verify(&app).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("consent record {orphan}: no subject owns it")),
        "{out}"
    );
}
