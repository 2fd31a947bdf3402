//! R2 in Check: a stored value answers only for the purposes it was
//! collected for; a field with no stored value is decided by consent alone.

use consentd::grpc::pb::{self, Decision, Reason};

use crate::{
    disclosure::{client, put_request},
    helpers::spawn_app,
};

#[tokio::test]
async fn check_and_batch_check_deny_a_value_collected_for_another_purpose() {
    let app = spawn_app().await;
    app.register("C-1").await;
    client(&app)
        .put_personal_data(put_request(
            "C-1",
            "phone",
            "+86 138 0013 8000",
            &["order_delivery"],
        ))
        .await
        .unwrap();
    // (purpose, field, expected): the phone was collected for delivery only;
    // nothing is stored for email or name.
    let cases = [
        (
            "order_delivery",
            "phone",
            (Decision::Allow, Reason::Contract),
        ),
        (
            "customer_support",
            "phone",
            (Decision::Deny, Reason::NotCollectedForPurpose),
        ),
        (
            "customer_support",
            "email",
            (Decision::Allow, Reason::Contract),
        ),
        (
            "promotional_mail",
            "name",
            (Decision::Allow, Reason::NotOptedOut),
        ),
    ];
    for (purpose, field, expected) in cases {
        let check = app.check("C-1", purpose, field).await;
        assert_eq!(
            (check.decision(), check.reason()),
            expected,
            "{purpose}/{field}"
        );
    }
    let batch = app
        .client
        .clone()
        .batch_check(pb::BatchCheckRequest {
            items: cases
                .iter()
                .map(|(purpose, field, _)| pb::BatchCheckItem {
                    correlation_id: format!("{purpose}/{field}"),
                    subject_id: "C-1".into(),
                    purpose: purpose.to_string(),
                    field: field.to_string(),
                })
                .collect(),
            consistency: None,
        })
        .await
        .unwrap()
        .into_inner();
    let answers: Vec<_> = batch
        .results
        .iter()
        .map(|r| (r.decision(), r.reason()))
        .collect();
    let expected: Vec<_> = cases.iter().map(|(_, _, e)| *e).collect();
    assert_eq!(answers, expected);

    // Collected again, now for support too: support may use it.
    client(&app)
        .put_personal_data(put_request(
            "C-1",
            "phone",
            "+86 138 0013 8000",
            &["order_delivery", "customer_support"],
        ))
        .await
        .unwrap();
    let check = app.check("C-1", "customer_support", "phone").await;
    assert_eq!(
        (check.decision(), check.reason()),
        (Decision::Allow, Reason::Contract)
    );
}
