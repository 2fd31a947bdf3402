//! The manifests' secrets and state: every key file and the callers file
//! come from the Secret, and serve gets a writable state directory.

use std::path::Path;

use serde_yaml_ng::Value as Yaml;

use super::{deploy, s, yaml};

/// `serve`'s key-file flags and their variables, read from the command line
/// itself, so a key flag added later is held to the manifests too.
fn key_file_variables() -> Vec<String> {
    use clap::CommandFactory as _;
    let command = consentd::settings::Cli::command();
    let serve = command.find_subcommand("serve").unwrap();
    let variables: Vec<String> = serve
        .get_arguments()
        .filter(|arg| {
            arg.get_long()
                .is_some_and(|long| long.ends_with("-key-file") || long.ends_with("-keys-file"))
        })
        .map(|arg| arg.get_env().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(variables.len() >= 3, "{variables:?}");
    variables
}

/// Parses a mounted key file as serve would, so a file the server would
/// refuse (or one holding the wrong kind of key) fails here.
fn parses_as_its_kind(variable: &str, path: &Path) {
    use consentd::{
        keys::{KeyFile as _, SubjectKey},
        service::{unsubscribe::UnsubscribeKeys, vault::DataKeys},
    };
    let parsed = match variable {
        "CONSENTD_DATA_KEYS_FILE" => DataKeys::load(path).map(drop),
        "CONSENTD_UNSUBSCRIBE_KEYS_FILE" => UnsubscribeKeys::load(path).map(drop),
        "CONSENTD_SUBJECT_REF_KEY_FILE" => SubjectKey::load(path).map(drop),
        other => panic!("a new key flag ({other}): say here which kind of key it reads"),
    };
    parsed.unwrap_or_else(|e| panic!("{variable}: {e:#}"));
}

/// The consentd container of the Deployment.
fn consentd_container(pod: &Yaml) -> &Yaml {
    pod["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| s(&c["name"]) == "consentd")
        .expect("deployment.yaml has a consentd container")
}

/// The value the container gives `variable`.
fn env_value<'a>(container: &'a Yaml, variable: &str) -> &'a str {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| s(&e["name"]) == variable)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("deployment.yaml does not set {variable}"))
}

/// The volume mounted at `dir` in the container.
fn volume_at<'a>(pod: &'a Yaml, container: &Yaml, dir: &str) -> &'a Yaml {
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| s(&m["mountPath"]) == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {dir}"));
    pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap()
}

/// The key of `secret` that the file `variable` names comes from, after
/// checking that the file's directory is a volume of that Secret.
pub(in crate::deploy) fn secret_key_of(deployment: &Yaml, secret: &Yaml, variable: &str) -> String {
    let pod = &deployment["spec"]["template"]["spec"];
    let container = consentd_container(pod);
    let path = env_value(container, variable);
    let (dir, file) = path.rsplit_once('/').unwrap();
    let volume = volume_at(pod, container, dir);
    assert_eq!(
        volume["secret"]["secretName"].as_str(),
        secret["metadata"]["name"].as_str(),
        "{variable}: {dir} is the Secret"
    );
    volume["secret"]["items"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|item| s(&item["path"]) == file)
        .map(|item| s(&item["key"]).to_string())
        .unwrap_or_else(|| panic!("{variable}: the Secret volume has no {file}"))
}

/// Replicas that made their own keys could not read each other's data, so
/// every key file comes from the Secret, mounted where its variable points.
#[test]
fn the_kubernetes_deployment_sets_every_key_file_from_the_secret() {
    let deployment = yaml("k8s/deployment.yaml");
    let secret = yaml("k8s/secret.example.yaml");
    for variable in key_file_variables() {
        let key = secret_key_of(&deployment, &secret, &variable);
        assert!(
            secret["stringData"][&key].is_string(),
            "{variable}: secret.example.yaml lacks `{key}`"
        );
    }
}

/// The root filesystem is read-only and serve refuses to start without a
/// writable state directory (the checkpoint signing key lives there), so
/// the Deployment points CONSENTD_STATE_DIR at a mounted writable volume.
#[test]
fn the_kubernetes_deployment_gives_serve_a_writable_state_directory() {
    let deployment = yaml("k8s/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = consentd_container(pod);
    let dir = env_value(container, "CONSENTD_STATE_DIR");
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| s(&m["mountPath"]) == dir)
        .unwrap();
    assert_ne!(mount["readOnly"].as_bool(), Some(true), "{dir} is writable");
    let volume = volume_at(pod, container, dir);
    assert!(
        volume["emptyDir"].is_mapping() || volume["persistentVolumeClaim"].is_mapping(),
        "{dir} is a writable volume: {volume:?}"
    );
}

/// The same in compose: each key file variable points at a mounted
/// dev-secrets file that the server would accept.
#[test]
fn the_compose_stack_sets_every_key_file_to_a_mounted_dev_secret() {
    let compose = yaml("docker-compose.yml");
    let consentd = &compose["services"]["consentd"];
    let mounts: Vec<&str> = consentd["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    for variable in key_file_variables() {
        let path = consentd["environment"][variable.as_str()]
            .as_str()
            .unwrap_or_else(|| panic!("docker-compose.yml does not set {variable}"));
        let source = mounts
            .iter()
            .find_map(|m| {
                let mut parts = m.split(':');
                let source = parts.next()?;
                (parts.next()? == path).then_some(source)
            })
            .unwrap_or_else(|| panic!("{variable}: nothing is mounted at {path}"));
        assert!(source.starts_with("./dev-secrets/"), "{variable}: {source}");
        parses_as_its_kind(&variable, &deploy().join(source));
    }
}
