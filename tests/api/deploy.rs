//! `deploy/`: every YAML and JSON file parses, and the files agree with each
//! other and with the service (ports, service names, mounted paths, labels,
//! the policy, and the dashboard's metric names against a real /metrics).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use consentd::grpc::pb;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use tonic::transport::Channel;

use crate::{
    cli::{spawn_serve_with, terminate_and_wait},
    helpers::{fresh_database, http_get, http_request},
    unsubscribe::path_of,
};

mod callers;
mod secrets;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn yaml(relative: &str) -> Yaml {
    let text = std::fs::read_to_string(deploy().join(relative)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn json(relative: &str) -> Json {
    let text = std::fs::read_to_string(deploy().join(relative)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn s(value: &Yaml) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, got {value:?}"))
}

/// `http://host:port` or `host:port` -> (host, port).
fn host_port(address: &str) -> (String, u16) {
    let address = address.split_once("://").map_or(address, |(_, rest)| rest);
    let address = address.split('/').next().unwrap();
    let (host, port) = address
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("no port in {address}"));
    (host.to_string(), port.parse().unwrap())
}

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let mut all = Vec::new();
    files(&deploy(), &mut all);
    let mut parsed = 0;
    for path in all {
        let text = std::fs::read_to_string(&path).unwrap();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                for document in serde_yaml_ng::Deserializer::from_str(&text) {
                    serde::Deserialize::deserialize(document)
                        .map(|_: Yaml| ())
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                }
                parsed += 1;
            }
            Some("json") => {
                serde_json::from_str::<Json>(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                parsed += 1;
            }
            _ => {}
        }
    }
    assert!(parsed >= 10, "found {parsed} files");
}

#[test]
fn the_compose_stack_is_wired_consistently() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().unwrap();
    let has = |name: &str| services.contains_key(name);
    for name in [
        "postgres",
        "consentd",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
    ] {
        assert!(has(name), "service {name}");
    }
    for (name, service) in services {
        if let Some(depends) = service["depends_on"].as_sequence() {
            depends
                .iter()
                .for_each(|d| assert!(has(s(d)), "{name:?} depends on {d:?}"));
        }
        if let Some(depends) = service["depends_on"].as_mapping() {
            depends
                .keys()
                .for_each(|d| assert!(has(s(d)), "{name:?} depends on {d:?}"));
        }
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = s(volume).split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(
                    deploy().join(source).exists(),
                    "{name:?} mounts missing {source}"
                );
            }
        }
    }

    let consentd = &compose["services"]["consentd"];
    let env = &consentd["environment"];
    let grpc_port = host_port(s(&env["CONSENTD_GRPC_ADDR"])).1;
    let http_port = host_port(s(&env["CONSENTD_HTTP_ADDR"])).1;
    let admin_port = host_port(s(&env["CONSENTD_ADMIN_ADDR"])).1;
    assert_ne!(
        admin_port, http_port,
        "metrics stay off the public listener"
    );
    let published: Vec<&str> = consentd["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert!(
        published
            .iter()
            .any(|p| p.ends_with(&format!(":{grpc_port}"))),
        "{published:?}"
    );
    assert!(
        published
            .iter()
            .any(|p| p.ends_with(&format!(":{http_port}"))),
        "{published:?}"
    );
    assert!(s(&env["CONSENTD_DATABASE_URL"]).contains("@postgres:5432/"));

    // The policy the container reads is the mounted one.
    let policy_mount = consentd["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .find(|v| v.starts_with("./policy.toml"))
        .unwrap();
    assert_eq!(
        policy_mount.split(':').nth(1),
        Some(s(&env["CONSENTD_POLICY"]))
    );

    // Traces: consentd -> collector (OTLP gRPC) -> jaeger.
    let (collector_host, collector_port) = host_port(s(&env["OTEL_EXPORTER_OTLP_ENDPOINT"]));
    assert!(has(&collector_host));
    let collector = yaml("otel-collector.yaml");
    let receiver = s(&collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]);
    assert_eq!(host_port(receiver).1, collector_port);
    let pipeline_exporters: Vec<&str> = collector["service"]["pipelines"]["traces"]["exporters"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    for exporter in &pipeline_exporters {
        assert!(
            collector["exporters"].get(*exporter).is_some(),
            "exporter {exporter} is defined"
        );
    }
    let jaeger = s(&collector["exporters"]["otlp/jaeger"]["endpoint"]);
    assert!(has(&host_port(jaeger).0), "{jaeger}");

    // Metrics: prometheus scrapes consentd's admin port.
    let prometheus = yaml("prometheus.yml");
    let target = s(&prometheus["scrape_configs"][0]["static_configs"][0]["targets"][0]);
    assert_eq!(host_port(target), ("consentd".to_string(), admin_port));
    assert_eq!(
        s(&prometheus["scrape_configs"][0]["metrics_path"]),
        "/metrics"
    );

    // Grafana: the datasource points at prometheus, the dashboard uses it.
    let datasources = yaml("grafana/provisioning/datasources/prometheus.yml");
    let datasource = &datasources["datasources"][0];
    assert!(has(&host_port(s(&datasource["url"])).0));
    let uid = s(&datasource["uid"]);
    let dashboard = json("grafana/dashboards/consentd.json");
    let mut uids = BTreeSet::new();
    collect_datasource_uids(&dashboard, &mut uids);
    assert!(
        !uids.is_empty() && uids.iter().all(|u| u == uid),
        "{uids:?} vs {uid}"
    );
    let provider = yaml("grafana/provisioning/dashboards/consentd.yml");
    let dashboards_path = s(&provider["providers"][0]["options"]["path"]);
    let grafana_mounts: Vec<&str> = compose["services"]["grafana"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert!(
        grafana_mounts
            .iter()
            .any(|m| m.starts_with("./grafana/dashboards:") && m.contains(dashboards_path)),
        "{grafana_mounts:?}"
    );
}

fn collect_exprs(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            if let Some(expr) = map.get("expr").and_then(Json::as_str) {
                out.push(expr.to_string());
            }
            map.values().for_each(|v| collect_exprs(v, out));
        }
        Json::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

fn collect_datasource_uids(value: &Json, out: &mut BTreeSet<String>) {
    match value {
        Json::Object(map) => {
            // Grafana's own annotation source ("-- Grafana --") is built in.
            if let Some(uid) = map
                .get("datasource")
                .and_then(|d| d.get("uid"))
                .and_then(Json::as_str)
                && !uid.starts_with("-- ")
            {
                out.insert(uid.to_string());
            }
            map.values().for_each(|v| collect_datasource_uids(v, out));
        }
        Json::Array(items) => items.iter().for_each(|v| collect_datasource_uids(v, out)),
        _ => {}
    }
}

#[test]
fn the_kubernetes_manifests_agree_with_each_other_and_with_the_policy() {
    let deployment = yaml("k8s/deployment.yaml");
    let service = yaml("k8s/service.yaml");
    let pdb = yaml("k8s/pdb.yaml");
    let configmap = yaml("k8s/configmap.yaml");
    let pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    let selects = |selector: &Yaml, what: &str| {
        for (key, value) in selector.as_mapping().unwrap() {
            assert_eq!(pod_labels.get(key), Some(value), "{what} selects {key:?}");
        }
    };
    selects(&service["spec"]["selector"], "the Service");
    selects(
        &pdb["spec"]["selector"]["matchLabels"],
        "the PodDisruptionBudget",
    );
    selects(
        &deployment["spec"]["selector"]["matchLabels"],
        "the Deployment",
    );

    let container = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| s(&c["name"]) == "consentd")
        .unwrap();
    let ports: Vec<(&str, u64)> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (s(&p["name"]), p["containerPort"].as_u64().unwrap()))
        .collect();
    for port in service["spec"]["ports"].as_sequence().unwrap() {
        let target = s(&port["targetPort"]);
        assert!(
            ports.iter().any(|(name, _)| *name == target),
            "Service targets {target}"
        );
    }
    let grpc_port = ports.iter().find(|(n, _)| *n == "grpc").unwrap().1;
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            container[probe]["grpc"]["port"].as_u64(),
            Some(grpc_port),
            "{probe} uses gRPC health"
        );
    }
    // Prometheus scrapes the admin port, which CONSENTD_ADMIN_ADDR binds.
    let admin_port = ports.iter().find(|(n, _)| *n == "admin").unwrap().1;
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        s(&annotations["prometheus.io/port"]),
        admin_port.to_string()
    );
    let admin_env = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| s(&e["name"]) == "CONSENTD_ADMIN_ADDR")
        .expect("the Deployment sets CONSENTD_ADMIN_ADDR");
    assert_eq!(host_port(s(&admin_env["value"])).1, admin_port as u16);
    assert!(
        container["resources"]["limits"]["memory"].is_string(),
        "resource limits are set"
    );

    let configmap_name = s(&configmap["metadata"]["name"]);
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"].as_str() == Some(configmap_name))
    );

    // The ConfigMap carries exactly the policy the repository validates.
    let shipped = std::fs::read_to_string(deploy().join("policy.toml")).unwrap();
    assert_eq!(
        s(&configmap["data"]["policy.toml"]).trim_end(),
        shipped.trim_end(),
        "k8s/configmap.yaml drifted from policy.toml"
    );
}

/// Metric names in deploy/'s queries: the dashboard's `expr` fields and the
/// alert rules' `expr` values.
#[test]
fn the_kubelet_waits_for_the_pre_stop_hook_the_drain_and_in_flight_calls_before_killing() {
    let deployment = yaml("k8s/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = pod["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| s(&c["name"]) == "consentd")
        .unwrap();
    let env = |name: &str| -> u64 {
        container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| s(&e["name"]) == name)
            .map(|e| s(&e["value"]).parse().unwrap())
            .unwrap_or_else(|| panic!("{name} is set"))
    };
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop sleep, so endpoints update before SIGTERM");
    let drain = env("CONSENTD_DRAIN_SECONDS");
    let shutdown = env("CONSENTD_SHUTDOWN_TIMEOUT_SECONDS");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > pre_stop + drain + shutdown,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {drain} + shutdown {shutdown}"
    );
    // Readiness must fail within the drain, or the pod still gets calls
    // when its listeners close.
    let readiness = &container["readinessProbe"];
    let to_unready = readiness["periodSeconds"].as_u64().unwrap()
        * readiness["failureThreshold"].as_u64().unwrap()
        + readiness["timeoutSeconds"].as_u64().unwrap();
    assert!(
        to_unready <= drain,
        "readiness takes {to_unready} s to fail, longer than the {drain} s drain"
    );
}

fn metrics_deploy_queries() -> BTreeSet<String> {
    let mut expressions = Vec::new();
    collect_exprs(&json("grafana/dashboards/consentd.json"), &mut expressions);
    for group in yaml("prometheus-alerts.yml")["groups"]
        .as_sequence()
        .unwrap()
    {
        for rule in group["rules"].as_sequence().unwrap() {
            expressions.push(s(&rule["expr"]).to_string());
        }
    }
    let mut used = BTreeSet::new();
    for expr in &expressions {
        for (i, _) in expr.match_indices("consentd_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
    }
    used
}

/// Metric names in a /metrics answer.
async fn exposed_metrics(http: SocketAddr) -> BTreeSet<String> {
    let (_, body) = http_get(http, "/metrics").await;
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Its own `consentd serve` process, so no other test's metrics (they share
/// one recorder per process) can stand in for the ones this one causes.
#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_use_is_exposed_by_metrics() {
    let used = metrics_deploy_queries();
    assert!(used.len() >= 5, "{used:?}");

    let db = fresh_database().await;
    let served = spawn_serve_with(&["--database-url", &db.db_url], &[]);
    let http: SocketAddr = served.http_addr.parse().unwrap();
    let admin: SocketAddr = served.admin_addr.parse().unwrap();
    let channel = Channel::from_shared(format!("http://{}", served.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::consent_service_client::ConsentServiceClient::new(channel.clone());
    client
        .register_subject(crate::helpers::registration("C-1"))
        .await
        .unwrap();
    client
        .check(pb::CheckRequest {
            subject_id: "C-1".into(),
            purpose: "promotional_mail".into(),
            field: "email".into(),
            consistency: None,
        })
        .await
        .unwrap();
    let link = client
        .create_unsubscribe_links(pb::CreateUnsubscribeLinksRequest {
            purpose: "promotional_mail".into(),
            subject_ids: vec!["C-1".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .links
        .remove(0);
    let unsubscribed = http_request(
        http,
        "POST",
        &path_of(&link.url),
        &[],
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(unsubscribed.status, 200);
    let stream = client
        .watch_changes(pb::WatchChangesRequest {
            after: 0,
            purposes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    pb::disclosure_service_client::DisclosureServiceClient::new(channel)
        .request_disclosure(pb::RequestDisclosureRequest {
            subject_id: "C-1".into(),
            recipient_id: "express-courier".into(),
            purpose: "order_delivery".into(),
            fields: vec!["name".into()],
            reference: "order-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Some gauges are set by background tasks: wait until they are there,
    // or until a deadline that only a missing metric reaches.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut exposed = exposed_metrics(admin).await;
    while !used.is_subset(&exposed) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        exposed = exposed_metrics(admin).await;
    }
    for name in &used {
        assert!(
            exposed.contains(name),
            "deploy/ queries {name}, which /metrics does not expose:\n{exposed:?}"
        );
    }
    drop(stream);
    terminate_and_wait(served.child, &served.logs).await;
}
