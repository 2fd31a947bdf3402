//! Erasure that keeps the proof and still honours opt-outs.

use consentd::grpc::pb::{
    self, Choice, Decision, Reason, disclosure_service_client::DisclosureServiceClient,
    subject_rights_service_client::SubjectRightsServiceClient,
};
use consentd::store;
use tonic::Code;

use crate::helpers::{TestApp, as_actor, spawn_app, violated_fields};

const ID: &str = "C-1042-erase-me";
const CONTACT: &str = "zhang@example.com";
const VALUES: [(&str, &str); 2] = [
    ("name", "Zhang Wei Unique"),
    ("postal_address", "9 Fuxing Road Unique"),
];

async fn erase(app: &TestApp, subject: &str) -> Result<pb::EraseSubjectResponse, tonic::Status> {
    SubjectRightsServiceClient::new(app.channel.clone())
        .erase_subject(as_actor(
            "privacy-officer",
            pb::EraseSubjectRequest {
                subject_id: subject.into(),
                request_id: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// A subject who refused promotions, granted partner offers, has personal
/// data, a disclosure and a concern.
async fn a_subject_with_history(app: &TestApp) {
    app.register(ID).await;
    app.record(ID, "promotional_mail", "", Choice::Refuse).await;
    app.record(ID, "partner_offers", "", Choice::Grant).await;
    let mut vault = DisclosureServiceClient::new(app.channel.clone());
    for (field, value) in VALUES {
        vault
            .put_personal_data(pb::PutPersonalDataRequest {
                subject_id: ID.into(),
                field: field.into(),
                value: value.into(),
                collected_for: vec!["order_delivery".into()],
                channel: pb::Channel::Web.into(),
                notice_version: "2026-11".into(),
                request_id: String::new(),
            })
            .await
            .unwrap();
    }
    vault
        .request_disclosure(pb::RequestDisclosureRequest {
            subject_id: ID.into(),
            recipient_id: "express-courier".into(),
            purpose: "order_delivery".into(),
            fields: vec!["name".into(), "postal_address".into()],
            reference: "order-7781".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    pb::concern_service_client::ConcernServiceClient::new(app.channel.clone())
        .file_concern(pb::FileConcernRequest {
            subject_id: ID.into(),
            contact: CONTACT.into(),
            category: pb::ConcernCategory::Misuse.into(),
            description: "please erase me".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Every row of every table in the schema, as text.
async fn every_row(app: &TestApp) -> String {
    let tables: Vec<String> = app
        .db
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut all = String::new();
    for table in tables {
        for row in app
            .db
            .query(&format!("SELECT t::text FROM {table} t"), &[])
            .await
            .unwrap()
        {
            all.push_str(row.get::<_, &str>(0));
            all.push('\n');
        }
    }
    all
}

/// `schema.table.column` of every column, of every table in every schema
/// but the system ones, that holds `needle`: as text in any column cast to
/// text, and as bytes in bytea columns.
async fn columns_holding(app: &TestApp, needle: &[u8]) -> Vec<String> {
    let columns = app
        .db
        .query(
            "SELECT c.table_schema::text, c.table_name::text, c.column_name::text, c.data_type::text
               FROM information_schema.columns c
               JOIN information_schema.tables t USING (table_schema, table_name)
              WHERE t.table_type = 'BASE TABLE'
                AND c.table_schema NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .unwrap();
    assert!(columns.len() > 20, "the scan sees the schema");
    let text = std::str::from_utf8(needle).ok();
    let mut holding = Vec::new();
    for column in columns {
        let (schema, table, name, kind): (String, String, String, String) =
            (column.get(0), column.get(1), column.get(2), column.get(3));
        let from = format!(
            "{}.{}",
            store::quote_ident(&schema),
            store::quote_ident(&table)
        );
        let name_q = store::quote_ident(&name);
        let hits: i64 = if kind == "bytea" {
            let sql =
                format!("SELECT count(*) FROM {from} WHERE position($1::bytea IN {name_q}) > 0");
            app.db.query_one(&sql, &[&needle]).await.unwrap().get(0)
        } else if let Some(text) = text {
            let sql = format!(
                "SELECT count(*) FROM {from} WHERE position($1::text IN {name_q}::text) > 0"
            );
            app.db.query_one(&sql, &[&text]).await.unwrap().get(0)
        } else {
            0
        };
        if hits > 0 {
            holding.push(format!("{schema}.{table}.{name}"));
        }
    }
    holding
}

/// The test database as `pg_dump` writes it: what a backup would keep.
fn pg_dump(app: &TestApp) -> String {
    let bindir = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let program = bindir.map_or_else(|| "pg_dump".into(), |dir| format!("{dir}/pg_dump"));
    let out = std::process::Command::new(&program)
        .args(["--no-owner", "--dbname", app.db_url()])
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} cannot run (install PostgreSQL's client tools): {e}")
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn after_erasure_no_value_or_id_is_left_but_the_proof_is() {
    let app = spawn_app().await;
    a_subject_with_history(&app).await;
    let before = every_row(&app).await;
    assert!(before.contains(ID), "the setup stores the id");
    // What could really remain: the id and the contact in any column, and
    // the ciphertexts, which still open under the data keys.
    let ciphertexts: Vec<Vec<u8>> = app
        .db
        .query("SELECT ciphertext FROM personal_data", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ciphertexts.len(), VALUES.len());
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let dump = pg_dump(&app);
    assert!(
        dump.contains(ID) && dump.contains(CONTACT),
        "the dump sees the data"
    );
    assert!(
        dump.contains(&hex(&ciphertexts[0])),
        "the dump shows bytea as hex"
    );
    let holding = columns_holding(&app, ID.as_bytes()).await;
    for table in ["subjects", "consent_records", "disclosures", "concerns"] {
        assert!(
            holding.contains(&format!("public.{table}.subject_id")),
            "the scan finds the id in {table}: {holding:?}"
        );
    }
    let (records, disclosures) = (
        app.count("consent_records").await,
        app.count("disclosures").await,
    );

    let erased = erase(&app, ID).await.unwrap();
    assert!(!erased.already_erased);
    assert!(erased.pseudonym.starts_with("erased-"));

    let after = every_row(&app).await;
    assert!(
        !after.contains(ID),
        "the external id is gone from every table"
    );
    assert!(!after.contains(CONTACT), "the concern contact is gone");
    assert_eq!(app.count("personal_data").await, 0);
    // The values were encrypted anyway; the ciphertexts are gone too.
    for (_, value) in VALUES {
        assert!(!after.contains(value));
    }
    for needle in [ID, CONTACT] {
        assert_eq!(
            columns_holding(&app, needle.as_bytes()).await,
            Vec::<String>::new(),
            "{needle} is left"
        );
    }
    for ciphertext in &ciphertexts {
        assert_eq!(
            columns_holding(&app, ciphertext).await,
            Vec::<String>::new(),
            "a ciphertext is left"
        );
    }
    let dump = pg_dump(&app);
    assert!(!dump.contains(ID), "the id is in a dump");
    assert!(!dump.contains(CONTACT), "the contact is in a dump");
    for ciphertext in &ciphertexts {
        assert!(
            !dump.contains(&hex(ciphertext)),
            "a ciphertext is in a dump"
        );
    }
    // The proof stays, under the pseudonym.
    assert_eq!(app.count("consent_records").await, records);
    assert_eq!(app.count("disclosures").await, disclosures);
    let kept: i64 = app
        .db
        .query_one(
            "SELECT count(*) FROM consent_records WHERE subject_id = $1",
            &[&erased.pseudonym],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, records);
    let recorded: String = app
        .db
        .query_one("SELECT erased_by FROM erased_subjects", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, "privacy-officer", "the erasure is recorded");

    // The history itself is still append-only.
    let error = app
        .db
        .batch_execute("UPDATE consent_records SET subject_id = 'x'")
        .await
        .unwrap_err();
    assert!(
        error
            .as_db_error()
            .unwrap()
            .message()
            .contains("append-only")
    );
}

#[tokio::test]
async fn an_erased_subject_is_denied_for_every_purpose_until_it_registers_again() {
    let app = spawn_app().await;
    a_subject_with_history(&app).await;
    erase(&app, ID).await.unwrap();
    for (purpose, field) in [
        ("promotional_mail", "email"),
        ("order_delivery", "name"),
        ("partner_offers", "email"),
    ] {
        let answer = app.check(ID, purpose, field).await;
        assert_eq!(
            (answer.decision(), answer.reason()),
            (Decision::Deny, Reason::SubjectErased),
            "{purpose}"
        );
    }
    // An id that never existed is still just unknown.
    assert_eq!(
        app.check("C-never", "promotional_mail", "email")
            .await
            .reason(),
        Reason::SubjectUnknown
    );
}

#[tokio::test]
async fn a_refusal_outlives_erasure_when_the_same_id_registers_again() {
    let app = spawn_app().await;
    a_subject_with_history(&app).await;
    erase(&app, ID).await.unwrap();
    app.register(ID).await;

    let promo = app.check(ID, "promotional_mail", "email").await;
    assert_eq!(
        (promo.decision(), promo.reason()),
        (Decision::Deny, Reason::OptedOut)
    );
    // A grant is not carried over: the person must give it again.
    let partner = app.check(ID, "partner_offers", "email").await;
    assert_eq!(
        (partner.decision(), partner.reason()),
        (Decision::Deny, Reason::NoConsent)
    );
    let history = app
        .client
        .clone()
        .list_consent_history(pb::ListConsentHistoryRequest {
            subject_id: ID.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].evidence, "refusal kept from before erasure");
    assert_eq!(history[0].record_id, promo.record_id);
}

#[tokio::test]
async fn erasure_is_idempotent() {
    let app = spawn_app().await;
    a_subject_with_history(&app).await;
    let first = erase(&app, ID).await.unwrap();
    let rows = every_row(&app).await;
    let again = erase(&app, ID).await.unwrap();
    assert!(again.already_erased);
    assert_eq!(again.pseudonym, first.pseudonym);
    assert_eq!(
        every_row(&app).await,
        rows,
        "a second erasure changes nothing"
    );
}

#[tokio::test]
async fn erasing_an_unknown_or_malformed_subject_is_refused_and_writes_nothing() {
    let app = spawn_app().await;
    app.register("C-1").await;
    let rows = every_row(&app).await;
    assert_eq!(
        erase(&app, "C-404").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        violated_fields(&erase(&app, "").await.unwrap_err()),
        ["subject_id"]
    );
    assert_eq!(every_row(&app).await, rows);
}
