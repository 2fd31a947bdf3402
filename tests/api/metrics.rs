//! Metrics of a real `consentd serve` process, read from its /metrics.

use std::collections::HashMap;

use consentd::grpc::pb::{
    self, consent_service_client::ConsentServiceClient,
    disclosure_service_client::DisclosureServiceClient,
};

use crate::{
    cli::{spawn_serve_with, terminate_and_wait},
    helpers::{fresh_database, http_get},
    unsubscribe::path_of,
};

/// (metric name, sorted labels) -> value.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// Parses Prometheus text.
fn samples(text: &str) -> Samples {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels: Vec<(String, String)> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        labels.sort();
        out.insert((name.to_string(), labels), value.parse().unwrap());
    }
    out
}

fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    samples.get(&(name.to_string(), labels)).copied()
}

#[tokio::test]
async fn metrics_count_decisions_latency_unsubscribes_and_the_pool() {
    let db = fresh_database().await;
    let served = spawn_serve_with(&["--database-url", &db.db_url], &[]);
    let http: std::net::SocketAddr = served.http_addr.parse().unwrap();
    let admin: std::net::SocketAddr = served.admin_addr.parse().unwrap();
    let mut client = ConsentServiceClient::connect(format!("http://{}", served.grpc_addr))
        .await
        .unwrap();
    for id in ["C-1", "C-2"] {
        client
            .register_subject(pb::RegisterSubjectRequest {
                subject_id: id.into(),
                kind: pb::SubjectKind::Individual.into(),
                notice_version: "v".into(),
                channel: pb::Channel::Web.into(),
                request_id: String::new(),
            })
            .await
            .unwrap();
    }
    let check = |subject: &str| pb::CheckRequest {
        subject_id: subject.into(),
        purpose: "promotional_mail".into(),
        field: "email".into(),
        consistency: None,
    };
    client.check(check("C-1")).await.unwrap();
    client.check(check("C-2")).await.unwrap();
    client.check(check("C-404")).await.unwrap();
    client
        .check(pb::CheckRequest {
            purpose: "nope".into(),
            ..check("C-1")
        })
        .await
        .unwrap_err();
    let links = client
        .create_unsubscribe_links(pb::CreateUnsubscribeLinksRequest {
            purpose: "promotional_mail".into(),
            subject_ids: vec!["C-1".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let response = crate::helpers::http_request(
        http,
        "POST",
        &path_of(&links.links[0].url),
        &[],
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(response.status, 200);
    client.check(check("C-1")).await.unwrap();

    let mut disclosures = DisclosureServiceClient::connect(format!("http://{}", served.grpc_addr))
        .await
        .unwrap();
    disclosures
        .put_personal_data(pb::PutPersonalDataRequest {
            subject_id: "C-2".into(),
            field: "name".into(),
            value: "Li Lei".into(),
            collected_for: vec!["order_delivery".into()],
            channel: pb::Channel::Web.into(),
            notice_version: "v".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let courier = pb::RequestDisclosureRequest {
        subject_id: "C-2".into(),
        recipient_id: "express-courier".into(),
        purpose: "order_delivery".into(),
        fields: vec!["name".into(), "phone".into()],
        reference: "order-1".into(),
        ..Default::default()
    };
    disclosures.request_disclosure(courier).await.unwrap();
    let emergency = pb::RequestDisclosureRequest {
        subject_id: "C-2".into(),
        recipient_id: "public-security".into(),
        fields: vec!["name".into()],
        legal_basis: pb::LegalBasis::EmergencySafety.into(),
        reference: "case 1".into(),
        justification: "a person is in danger".into(),
        ..Default::default()
    };
    disclosures.request_disclosure(emergency).await.unwrap();
    drop(disclosures);

    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let m = samples(&body);
    let decisions = "consentd_decisions_total";
    let allow = [
        ("purpose", "promotional_mail"),
        ("decision", "allow"),
        ("reason", "not_opted_out"),
    ];
    assert_eq!(get(&m, decisions, &allow), Some(2.0), "{body}");
    let unknown = [
        ("purpose", "promotional_mail"),
        ("decision", "deny"),
        ("reason", "subject_unknown"),
    ];
    assert_eq!(get(&m, decisions, &unknown), Some(1.0));
    let opted_out = [
        ("purpose", "promotional_mail"),
        ("decision", "deny"),
        ("reason", "opted_out"),
    ];
    assert_eq!(get(&m, decisions, &opted_out), Some(1.0));
    assert_eq!(
        get(
            &m,
            "consentd_unsubscribes_total",
            &[("purpose", "promotional_mail")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            &m,
            "consentd_rpc_duration_seconds_count",
            &[("method", "Check"), ("status", "OK")]
        ),
        Some(4.0)
    );
    assert_eq!(
        get(
            &m,
            "consentd_rpc_duration_seconds_count",
            &[("method", "Check"), ("status", "InvalidArgument")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            &m,
            "consentd_rpc_duration_seconds_bucket",
            &[("method", "Check"), ("status", "OK"), ("le", "+Inf")]
        ),
        Some(4.0)
    );
    assert!(
        get(&m, "consentd_db_pool_connections", &[("state", "idle")]).is_some_and(|v| v >= 1.0)
    );
    assert_eq!(
        get(&m, "consentd_db_pool_connections", &[("state", "in_use")]),
        Some(0.0)
    );
    assert_eq!(get(&m, "consentd_db_pool_waiting", &[]), Some(0.0));
    let disclosed = "consentd_disclosures_total";
    assert_eq!(
        get(
            &m,
            disclosed,
            &[("basis", "purpose"), ("status", "partial")]
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        get(
            &m,
            disclosed,
            &[("basis", "emergency_safety"), ("status", "released")]
        ),
        Some(1.0)
    );
    assert_eq!(get(&m, "consentd_disclosure_reviews_open", &[]), Some(1.0));
    assert_eq!(
        get(&m, "consentd_disclosure_reviews_overdue", &[]),
        Some(0.0)
    );
    assert_eq!(get(&m, "consentd_concerns_overdue", &[]), Some(0.0));
    assert!(
        !body.contains("C-1") && !body.contains("Li Lei"),
        "no subject or value in metrics"
    );
    drop(client);
    terminate_and_wait(served.child, &served.logs).await;
}

/// A server started on a database that already holds subjects reports the
/// state it loaded: `consentd_state_applied_sequence` is the position its
/// memory answers at (what a client may wait for before trusting
/// `minimize_latency`), so it must cover the load, not only later events.
#[tokio::test]
async fn a_server_started_on_existing_data_reports_the_state_it_loaded() {
    let db = fresh_database().await;
    let client = consentd::store::admin_connect(&db.db_url).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO subjects (subject_id, kind, notice_version, channel)
             VALUES ('C-1', 'individual', 'v', 'api'), ('C-2', 'individual', 'v', 'api');
             INSERT INTO consent_records (subject_id, record_id, purpose, choice, channel,
                                          notice_version, actor)
             VALUES ('C-1', gen_random_uuid(), 'promotional_mail', 'refuse', 'api', 'v', 'sql')",
        )
        .await
        .unwrap();
    let head: i64 = client
        .query_one(
            "SELECT greatest((SELECT max(sequence) FROM consent_records),
                             (SELECT max(sequence) FROM subjects))",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // Ready once loaded; nothing is written after it starts.
    let served = spawn_serve_with(&["--database-url", &db.db_url], &[]);
    let admin: std::net::SocketAddr = served.admin_addr.parse().unwrap();
    let (status, _) = http_get(admin, "/readyz").await;
    assert_eq!(status, 200);
    let (_, body) = http_get(admin, "/metrics").await;
    let m = samples(&body);
    assert_eq!(get(&m, "consentd_state_subjects", &[]), Some(2.0), "{body}");
    let applied = get(&m, "consentd_state_applied_sequence", &[]).unwrap_or(0.0);
    assert!(
        applied >= head as f64,
        "applied {applied} < {head}:\n{body}"
    );
    assert!(get(&m, "consentd_state_bytes", &[]).unwrap_or(0.0) > 0.0);
    terminate_and_wait(served.child, &served.logs).await;
}

/// Calls a limit refused are counted by which limit: a real process with
/// a rate of 1/s (burst 2) and room for one call at a time.
#[tokio::test]
async fn calls_refused_by_a_limit_are_counted_by_reason() {
    let db = fresh_database().await;
    let served = spawn_serve_with(
        &[
            "--database-url",
            &db.db_url,
            "--rate-limit-per-caller",
            "1",
            "--rate-limit-burst",
            "2",
            "--max-concurrent-calls",
            "1",
        ],
        &[],
    );
    let admin: std::net::SocketAddr = served.admin_addr.parse().unwrap();
    let client = ConsentServiceClient::connect(format!("http://{}", served.grpc_addr))
        .await
        .unwrap();
    let check = || crate::helpers::check_request("C-1", "promotional_mail", "email");

    // Shed: one registration holds the only place while the test holds a
    // lock it needs; the next call is refused at once.
    let db_client = consentd::store::admin_connect(&db.db_url).await.unwrap();
    db_client
        .batch_execute("BEGIN; LOCK TABLE subjects IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut holder = client.clone();
    let held = tokio::spawn(async move {
        let registration = crate::helpers::registration("C-held");
        holder.register_subject(registration).await
    });
    crate::helpers::until_waiting_on_locks(&db_client, 1).await;
    let shed = client.clone().check(check()).await.unwrap_err();
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    db_client.batch_execute("COMMIT").await.unwrap();
    held.await.unwrap().expect("the held call completes");

    // Rate limited: the held call and the shed one took the burst.
    let mut refused = 0;
    for _ in 0..5 {
        match client.clone().check(check()).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "over a rate of 1/s");

    let (_, body) = http_get(admin, "/metrics").await;
    let m = samples(&body);
    let limited = |reason| get(&m, "consentd_calls_limited_total", &[("reason", reason)]);
    assert_eq!(limited("overloaded"), Some(1.0), "{body}");
    assert_eq!(limited("rate_limited"), Some(refused as f64), "{body}");
    terminate_and_wait(served.child, &served.logs).await;
}
