//! The default server keeps its keys across a restart: with no key flags it
//! creates them once in its state directory and reads them at every start.

use std::os::unix::fs::PermissionsExt as _;

use consentd::grpc::pb::{
    self, Decision, Reason, consent_service_client::ConsentServiceClient,
    disclosure_service_client::DisclosureServiceClient,
    subject_rights_service_client::SubjectRightsServiceClient,
};
use tonic::transport::Channel;

use crate::{
    cli::{Served, spawn_serve_with, tempdir, terminate_and_wait},
    helpers::{as_actor, fresh_database, http_request},
    unsubscribe::path_of,
};

const STATE_FILES: [&str; 3] = ["data.keys", "unsubscribe.keys", "subject-ref.key"];

/// `consentd serve` with no key flag, on `database_url` and `state_dir`.
fn serve_default(database_url: &str, state_dir: &std::path::Path) -> Served {
    spawn_serve_with(
        &[
            "--database-url",
            database_url,
            "--state-dir",
            state_dir.to_str().unwrap(),
        ],
        &[],
    )
}

async fn channel(served: &Served) -> Channel {
    Channel::from_shared(format!("http://{}", served.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn register(client: &mut ConsentServiceClient<Channel>, subject: &str) {
    client
        .register_subject(pb::RegisterSubjectRequest {
            subject_id: subject.into(),
            kind: pb::SubjectKind::Individual.into(),
            notice_version: "2026-11".into(),
            channel: pb::Channel::Web.into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
}

async fn check(client: &mut ConsentServiceClient<Channel>, subject: &str) -> pb::CheckResponse {
    client
        .check(pb::CheckRequest {
            subject_id: subject.into(),
            purpose: "promotional_mail".into(),
            field: "email".into(),
            consistency: None,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Log lines that name `file` under `state_dir`.
fn naming<'a>(lines: &'a [String], state_dir: &std::path::Path, file: &str) -> Vec<&'a str> {
    let path = state_dir.join(file).display().to_string();
    lines
        .iter()
        .filter(|l| l.contains(&path))
        .map(String::as_str)
        .collect()
}

#[tokio::test]
async fn the_default_server_reads_its_data_links_and_erasures_again_after_a_restart() {
    let db = fresh_database().await;
    let dir = tempdir();
    let state_dir = dir.join("state");

    let first = serve_default(&db.db_url, &state_dir);
    for file in STATE_FILES {
        let named = naming(&first.started, &state_dir, file);
        assert!(
            named.iter().any(|l| l.contains("created")),
            "the log names the new {file}:\n{}",
            first.started.join("\n")
        );
        let mode = std::fs::metadata(state_dir.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let mode = std::fs::metadata(&state_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the state directory");

    let channel_1 = channel(&first).await;
    let mut client = ConsentServiceClient::new(channel_1.clone());
    for subject in ["C-kept", "C-linked", "C-erased"] {
        register(&mut client, subject).await;
    }
    DisclosureServiceClient::new(channel_1.clone())
        .put_personal_data(pb::PutPersonalDataRequest {
            subject_id: "C-kept".into(),
            field: "name".into(),
            value: "Zhang Wei Kept".into(),
            collected_for: vec!["order_delivery".into()],
            channel: pb::Channel::Web.into(),
            notice_version: "2026-11".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let link = client
        .create_unsubscribe_links(pb::CreateUnsubscribeLinksRequest {
            purpose: "promotional_mail".into(),
            campaign: "before-restart".into(),
            subject_ids: vec!["C-linked".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .links
        .remove(0);
    SubjectRightsServiceClient::new(channel_1.clone())
        .erase_subject(as_actor(
            "privacy-officer",
            pb::EraseSubjectRequest {
                subject_id: "C-erased".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    drop((client, channel_1));
    terminate_and_wait(first.child, &first.logs).await;

    let second = serve_default(&db.db_url, &state_dir);
    for file in STATE_FILES {
        let named = naming(&second.started, &state_dir, file);
        assert!(
            !named.is_empty() && named.iter().all(|l| !l.contains("created")),
            "the restart reads {file} again, and says so:\n{}",
            second.started.join("\n")
        );
    }
    let channel_2 = channel(&second).await;
    let export = SubjectRightsServiceClient::new(channel_2.clone())
        .export_subject(pb::ExportSubjectRequest {
            subject_id: "C-kept".into(),
        })
        .await
        .expect("the value stored before the restart decrypts")
        .into_inner();
    let values: Vec<_> = export
        .personal_data
        .iter()
        .map(|d| (d.field.as_str(), d.value.as_str()))
        .collect();
    assert_eq!(values, [("name", "Zhang Wei Kept")]);

    let mut client = ConsentServiceClient::new(channel_2);
    assert_eq!(
        check(&mut client, "C-linked").await.decision(),
        Decision::Allow
    );
    let clicked = http_request(
        second.http_addr.parse().unwrap(),
        "POST",
        &path_of(&link.url),
        &[],
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(clicked.status, 200, "the old link works: {}", clicked.body);
    let answer = check(&mut client, "C-linked").await;
    assert_eq!(
        (answer.decision(), answer.reason()),
        (Decision::Deny, Reason::OptedOut),
        "the click recorded the refusal"
    );

    let answer = check(&mut client, "C-erased").await;
    assert_eq!(
        (answer.decision(), answer.reason()),
        (Decision::Deny, Reason::SubjectErased),
        "the erased id is still recognised"
    );
    drop(client);
    terminate_and_wait(second.child, &second.logs).await;
}
