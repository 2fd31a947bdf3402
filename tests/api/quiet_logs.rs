//! Subject ids never reach the log, whatever RUST_LOG asks for: the
//! database driver prints every statement's parameters at debug, so its
//! verbose levels stay off (R8).

use consentd::grpc::pb::{self, consent_service_client::ConsentServiceClient};

use crate::{
    cli::{spawn_serve_with, terminate_and_wait},
    helpers::{fresh_database, record_request, registration},
};

#[tokio::test]
async fn sql_parameters_stay_out_of_the_log_at_every_level() {
    let db = fresh_database().await;
    for level in ["debug", "trace", "tokio_postgres=trace,deadpool=trace,info"] {
        let subject = format!("C-quiet-{}", uuid::Uuid::new_v4().simple());
        let served = spawn_serve_with(&["--database-url", &db.db_url], &[("RUST_LOG", level)]);
        let mut client = ConsentServiceClient::connect(format!("http://{}", served.grpc_addr))
            .await
            .unwrap();
        client
            .register_subject(registration(&subject))
            .await
            .unwrap();
        client
            .record_consent(record_request(
                &subject,
                "promotional_mail",
                "email",
                pb::Choice::Refuse,
            ))
            .await
            .unwrap();
        let answer = client
            .check(pb::CheckRequest {
                subject_id: subject.clone(),
                purpose: "promotional_mail".into(),
                field: "email".into(),
                consistency: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.decision(), pb::Decision::Deny);
        drop(client);

        let mut lines = served.started.clone();
        lines.extend(terminate_and_wait(served.child, &served.logs).await);
        if level != "tokio_postgres=trace,deadpool=trace,info" {
            let verbose = if level == "debug" { "DEBUG" } else { "TRACE" };
            assert!(
                lines.iter().any(|l| l.contains(verbose)),
                "the server logged at {level}"
            );
        }
        let leaked: Vec<&String> = lines.iter().filter(|l| l.contains(&subject)).collect();
        assert!(
            leaked.is_empty(),
            "RUST_LOG={level}: the subject id is in the log: {leaked:#?}"
        );
    }
}
