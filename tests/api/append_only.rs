//! Append-only as a boundary PostgreSQL enforces: a session connected
//! exactly as the server is (its own pool: same URL, role and settings)
//! tries every way to change or unguard the history, and each one fails.

use consentd::{
    grpc::pb::{self, Choice, disclosure_service_client::DisclosureServiceClient},
    settings::DatabaseArgs,
    startup::Application,
    store::{self, Store},
};
use tokio_postgres::error::SqlState;

use crate::{
    cli::tempdir,
    helpers::{TestApp, serve_args, spawn_app},
};

/// Every table whose rows the serving role may append or read but never
/// change, and consent_state, which only the history's trigger writes.
/// erasure_events is checked when a migration has made it.
const PROTECTED: &[&str] = &[
    "consent_records",
    "consent_state",
    "collection_records",
    "disclosures",
    "disclosure_events",
    "concerns",
    "concern_events",
    "access_events",
    "ledger_heads",
    "ledger_checkpoints",
    "ledger_checkpoint_heads",
    "erased_subjects",
    "erasure_events",
];

/// Rows in the tables the attacks aim at, through the API.
async fn some_history(app: &TestApp) {
    app.register("C-ao-1").await;
    app.record("C-ao-1", "promotional_mail", "", Choice::Refuse)
        .await;
    let mut vault = DisclosureServiceClient::new(app.channel.clone());
    vault
        .put_personal_data(pb::PutPersonalDataRequest {
            subject_id: "C-ao-1".into(),
            field: "name".into(),
            value: "Append Only".into(),
            collected_for: vec!["order_delivery".into()],
            channel: pb::Channel::Web.into(),
            notice_version: "2026-11".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    vault
        .request_disclosure(pb::RequestDisclosureRequest {
            subject_id: "C-ao-1".into(),
            recipient_id: "express-courier".into(),
            purpose: "order_delivery".into(),
            fields: vec!["name".into()],
            reference: "order-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Every way the old guard could be got round, on every protected table, as
/// `session`. Each must fail with insufficient_privilege; returns the row
/// counts before and after, which must match.
async fn attack_every_table(session: &tokio_postgres::Client) -> (Vec<i64>, Vec<i64>) {
    let mut tables = Vec::new();
    for table in PROTECTED {
        let exists: bool = session
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[table])
            .await
            .unwrap()
            .get(0);
        if exists {
            tables.push(*table);
        }
    }
    assert!(tables.len() >= PROTECTED.len() - 1, "{tables:?}");
    let before = counts(session, &tables).await;
    for table in &tables {
        let column: String = session
            .query_one(
                "SELECT attname::text FROM pg_attribute
                  WHERE attrelid = $1::text::regclass AND attnum = 1",
                &[table],
            )
            .await
            .unwrap()
            .get(0);
        let has_subject: bool = session
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute
                                 WHERE attrelid = $1::text::regclass AND attname = 'subject_id')",
                &[table],
            )
            .await
            .unwrap()
            .get(0);
        let triggers: Vec<String> = session
            .query(
                "SELECT tgname::text FROM pg_trigger
                  WHERE tgrelid = $1::text::regclass AND NOT tgisinternal",
                &[table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let t = store::quote_ident(table);
        let c = store::quote_ident(&column);
        let mut attacks = vec![
            format!("UPDATE {t} SET {c} = {c}"),
            format!("DELETE FROM {t}"),
            format!("TRUNCATE {t}"),
            format!("TRUNCATE {t} CASCADE"),
            format!("ALTER TABLE {t} DISABLE TRIGGER ALL"),
            format!("ALTER TABLE {t} DISABLE TRIGGER USER"),
            format!("DROP TABLE {t} CASCADE"),
            // The old trick: the setting that once opened the guard.
            format!(
                "SET LOCAL consentd.erasure = 'on'; UPDATE {t} SET {c} = {c}; \
                 SELECT set_config('consentd.erasure', 'on', true); DELETE FROM {t}"
            ),
        ];
        if has_subject {
            attacks.push(format!(
                "SET LOCAL consentd.erasure = 'on'; UPDATE {t} SET subject_id = 'someone-else'"
            ));
        }
        for trigger in &triggers {
            attacks.push(format!(
                "ALTER TABLE {t} DISABLE TRIGGER {}",
                store::quote_ident(trigger)
            ));
        }
        if *table == "consent_state" {
            attacks.push(
                "INSERT INTO consent_state (subject_id, purpose, field, choice, record_id, sequence, recorded_at)
                 SELECT subject_id, 'promotional_mail', 'email', 'grant', gen_random_uuid(), 1, now()
                   FROM subjects LIMIT 1"
                    .into(),
            );
        }
        for attack in attacks {
            // In a transaction, as the old trick was, and rolled back so a
            // failure of one attack cannot hide the next.
            let result = session
                .batch_execute(&format!("BEGIN; {attack}; COMMIT"))
                .await;
            let _ = session.batch_execute("ROLLBACK").await;
            let error = result.expect_err(&format!("`{attack}` must fail"));
            assert_eq!(
                error.code(),
                Some(&SqlState::INSUFFICIENT_PRIVILEGE),
                "`{attack}`: {error:?}"
            );
        }
    }
    // The serving role may not change its own privileges or become another.
    for attack in [
        "SET ROLE postgres",
        "SELECT consentd_grant_serving(current_user)",
    ] {
        let error = session.batch_execute(attack).await.expect_err(attack);
        assert_eq!(
            error.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "`{attack}`: {error:?}"
        );
    }
    let after = counts(session, &tables).await;
    (before, after)
}

/// Rows in each of `tables`, as `session` sees them.
async fn counts(session: &tokio_postgres::Client, tables: &[&str]) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in tables {
        let sql = format!("SELECT count(*) FROM {}", store::quote_ident(table));
        counts.push(session.query_one(&sql, &[]).await.unwrap().get(0));
    }
    counts
}

/// Connected as the server is: a connection from its own pool.
async fn as_the_server(store: &Store) -> deadpool_postgres::Object {
    store.connection().await.unwrap()
}

#[tokio::test]
async fn the_server_role_cannot_change_or_unguard_any_history_table_given_a_server_url() {
    let app = spawn_app().await;
    some_history(&app).await;
    let owner_counts_before: Vec<i64> = {
        let mut counts = Vec::new();
        for table in [
            "consent_records",
            "consent_state",
            "disclosures",
            "collection_records",
        ] {
            counts.push(app.count(table).await);
        }
        counts
    };
    assert!(
        owner_counts_before.iter().all(|n| *n > 0),
        "{owner_counts_before:?}"
    );

    let session = as_the_server(&app.store).await;
    let role: String = session
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, "consentd_serving");
    let (before, after) = attack_every_table(&session).await;
    assert_eq!(before, after, "row counts");
    // The erasure function is open to it, but cannot be made to move a
    // history to a name of its choosing.
    let error = session
        .execute(
            "SELECT consentd_erase_subject('C-ao-1', '\\x00', 'C-someone-else', 'x')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(&SqlState::INVALID_PARAMETER_VALUE),
        "{error:?}"
    );
    assert_eq!(app.count("subjects WHERE subject_id = 'C-ao-1'").await, 1);

    let mut owner_counts_after = Vec::new();
    for table in [
        "consent_records",
        "consent_state",
        "disclosures",
        "collection_records",
    ] {
        owner_counts_after.push(app.count(table).await);
    }
    assert_eq!(owner_counts_before, owner_counts_after);
    // And the server still works through its proper paths.
    app.record("C-ao-1", "promotional_mail", "", Choice::Grant)
        .await;
    assert_eq!(
        app.check("C-ao-1", "promotional_mail", "email")
            .await
            .decision(),
        pb::Decision::Allow
    );
}

#[tokio::test]
async fn the_default_local_database_is_served_as_the_serving_role_not_the_superuser() {
    // The default setup: no --database-url, nothing answers on the local
    // server URL, so serve starts its private cluster, whose URL is the
    // superuser's.
    let dir = tempdir();
    let mut args = serve_args(DatabaseArgs {
        database_url: None,
        pg_data_dir: Some(dir.join("pgdata")),
        local_server_url: "postgres://postgres@127.0.0.1:1/postgres".into(),
        max_connections: 4,
        db_connect_timeout_ms: 2000,
        db_pool_wait_timeout_ms: 5000,
    })
    .await;
    args.allow_unsafe_durability = false;
    let app = Application::build(&args).await.unwrap();
    let session = as_the_server(app.store()).await;
    let (role, superuser): (String, bool) = {
        let row = session
            .query_one(
                "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(role, "consentd_serving");
    assert!(!superuser);
    // Something in the history, written the way the server writes.
    session
        .batch_execute(
            "INSERT INTO subjects (subject_id, kind, notice_version, channel)
                 VALUES ('C-embedded', 'individual', 'n', 'web');
             INSERT INTO consent_records (subject_id, record_id, purpose, choice, channel,
                                          notice_version, actor)
                 VALUES ('C-embedded', gen_random_uuid(), 'promotional_mail', 'refuse', 'web',
                         'n', 'test')",
        )
        .await
        .unwrap();
    let (before, after) = attack_every_table(&session).await;
    assert_eq!(before, after, "row counts");
    assert!(before.iter().any(|n| *n > 0));
}

#[tokio::test]
async fn a_serving_role_that_could_act_as_the_owner_is_refused_at_start() {
    // The owner itself.
    let refused = try_spawn_with_role("postgres").await;
    assert!(refused.contains("the serving role itself"), "{refused}");

    // A plain role that is a member of the owner, so it could SET ROLE to it.
    let member = format!(
        "consentd_t_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let admin = store::admin_connect(&crate::helpers::fresh_database().await.admin_url)
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {member} LOGIN; GRANT postgres TO {member}"
        ))
        .await
        .unwrap();
    let refused = try_spawn_with_role(&member).await;
    admin
        .batch_execute(&format!("DROP OWNED BY {member}; DROP ROLE {member}"))
        .await
        .unwrap();
    assert!(refused.contains("member of the owner"), "{refused}");
}

/// The error `serve` stops with when given `role`.
async fn try_spawn_with_role(role: &str) -> String {
    let fresh = crate::helpers::fresh_database().await;
    let mut args = serve_args(DatabaseArgs {
        database_url: Some(fresh.db_url.clone()),
        pg_data_dir: None,
        local_server_url: fresh.admin_url.clone(),
        max_connections: 2,
        db_connect_timeout_ms: 2000,
        db_pool_wait_timeout_ms: 5000,
    })
    .await;
    args.serving_role = role.into();
    let policy = std::sync::Arc::new(consentd::policy::Policy::load(&args.policy).unwrap());
    let database = store::Database::open(&args.database).await.unwrap();
    match Application::with_database(&args, database, policy).await {
        Ok(_) => panic!("serving as {role} was allowed"),
        Err(e) => format!("{e:#}"),
    }
}
