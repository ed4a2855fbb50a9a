//! A deployment's own chart values (`--values FILE`): what a deployment
//! repository installs on its cluster, installed here under hubtrust's.
//!
//! helm merges values files in order, maps key by key, anything else
//! (a string, a list) replaced whole by the later file. hubtrust's values
//! come last, because the checks need them (the TLS wiring, the images by
//! digest, the test log-in), so at every key both set, the deployment's
//! value is not what runs. [`replaced_by`] names each such key, so that a
//! run never claims to have checked a setting it replaced, and
//! [`weakened`] fails the run where the replaced setting is one the checks
//! judge: a deployment that turns internal TLS off must not pass because
//! hubtrust's values turned it back on. A list both set keeps the
//! deployment's items before hubtrust's ([`keep_their_lists`]), so that
//! its own volumes and flags still run.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{HarnessError, Result};

/// One values file of the deployment's, read and checked to be a mapping.
#[derive(Debug, Clone)]
pub struct UserValues {
    pub path: PathBuf,
    pub values: Value,
}

/// What is wrong with one of the deployment's own files, naming it.
pub(super) fn invalid(path: &Path) -> impl Fn(String) -> HarnessError + '_ {
    move |message| HarnessError::DeploymentConfigInvalid {
        path: path.to_path_buf(),
        message,
    }
}

/// One of the deployment's own files, read; `fix` says what to pass.
pub(super) fn read_theirs(path: &Path, fix: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| invalid(path)(format!("{e} (fix: {fix})")))
}

impl UserValues {
    pub fn load(path: &Path) -> Result<Self> {
        let invalid = invalid(path);
        let text = read_theirs(path, "pass the chart values file your deployment installs")?;
        let values: Value = serde_yaml_ng::from_str(&text).map_err(|e| {
            invalid(format!("it is not YAML helm can read: {e} (fix: `helm lint --values {}` names the problem too)", path.display()))
        })?;
        match values {
            Value::Object(_) => Ok(UserValues {
                path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
                values,
            }),
            // An empty file: helm installs nothing from it either.
            Value::Null => Ok(UserValues {
                path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
                values: Value::Object(Default::default()),
            }),
            other => Err(invalid(format!(
                "chart values are a mapping of keys, and this file holds {} (fix: start it with the chart's top-level keys, `hub:`, `proxy:`, `singleuser:`)",
                kind_of(&other)
            ))),
        }
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The keys, dotted (`hub.config.JupyterHub.authenticator_class`), at which
/// `ours`, installed after `theirs`, replaces what `theirs` sets: where
/// both set a key and the two are not both mappings (helm merges those key
/// by key). Keys only `theirs` sets are installed as written.
pub fn replaced_by(theirs: &Value, ours: &Value) -> Vec<String> {
    let mut replaced = Vec::new();
    collect_replaced(theirs, ours, &mut String::new(), &mut replaced);
    replaced
}

fn collect_replaced(theirs: &Value, ours: &Value, at: &mut String, replaced: &mut Vec<String>) {
    let (Value::Object(theirs), Value::Object(ours)) = (theirs, ours) else {
        return;
    };
    for (key, their_value) in theirs {
        let Some(our_value) = ours.get(key) else {
            continue;
        };
        let len = at.len();
        if !at.is_empty() {
            at.push('.');
        }
        at.push_str(key);
        let kept = match (their_value, our_value) {
            (Value::Array(theirs), Value::Array(ours)) => theirs.iter().all(|t| ours.contains(t)),
            _ => their_value == our_value,
        };
        if their_value.is_object() && our_value.is_object() {
            collect_replaced(their_value, our_value, at, replaced);
        } else if !kept {
            replaced.push(at.clone());
        }
        at.truncate(len);
    }
}

/// The chart's components whose image `replaced` (from [`replaced_by`])
/// says hubtrust's values replaced, each with the images list's table
/// that takes it instead: a deployment's own lab image is the one its
/// users' tools run in, and the checks should judge it.
pub fn images_replaced(replaced: &[String]) -> Vec<(&'static str, &'static str)> {
    [
        ("singleuser.image.", "your lab image", "[lab]"),
        (
            "singleuser.profileList",
            "the lab image of your default profile",
            "[lab]",
        ),
        ("hub.image.", "your hub image", "[hub]"),
        ("proxy.chp.image.", "your proxy image", "[proxy]"),
    ]
    .into_iter()
    .filter(|(prefix, _, _)| replaced.iter().any(|key| key.starts_with(prefix)))
    .map(|(_, what, table)| (what, table))
    .collect()
}

/// Where `ours` and `theirs` both set a list, `ours` becomes theirs
/// followed by each of ours they lack: helm would replace theirs whole.
/// An item of theirs named (`name:`) as one of ours but set otherwise
/// gives way to ours: two volumes, variables or init containers of one
/// name are refused by the API server, and ours is the one the checks
/// need. An empty list of ours stays empty, replacing theirs: hubtrust
/// says `[]` only where the checks need none (the profiles). [`replaced_by`]
/// then names the list.
pub fn keep_their_lists(ours: &mut Value, theirs: &Value) {
    let (Value::Object(ours), Value::Object(theirs)) = (ours, theirs) else {
        return;
    };
    for (key, their_value) in theirs {
        let Some(our_value) = ours.get_mut(key) else {
            continue;
        };
        match (our_value, their_value) {
            (Value::Array(our_items), Value::Array(_)) if our_items.is_empty() => {}
            (Value::Array(our_items), Value::Array(their_items)) => {
                let name =
                    |item: &Value| item.get("name").and_then(Value::as_str).map(str::to_owned);
                let our_names: Vec<String> = our_items.iter().filter_map(name).collect();
                let mut kept: Vec<Value> = their_items
                    .iter()
                    .filter(|item| {
                        our_items.contains(item)
                            || !name(item).is_some_and(|n| our_names.contains(&n))
                    })
                    .cloned()
                    .collect();
                let ours_after: Vec<Value> = our_items
                    .drain(..)
                    .filter(|item| !kept.contains(item))
                    .collect();
                kept.extend(ours_after);
                *our_items = kept;
            }
            (our_value @ Value::Object(_), Value::Object(_)) => {
                keep_their_lists(our_value, their_value)
            }
            _ => {}
        }
    }
}

/// Some of the chart's settings take a mapping or a list, and helm would
/// replace a deployment's one form whole with hubtrust's other: `ours`
/// takes the form of `theirs`, so that [`keep_their_lists`] (or helm's
/// merge of mappings) keeps their items beside ours.
/// - The hub's variables (`hub.extraEnv`): a mapping of name to value, or
///   a list of `name:` items. (The labs' must be a mapping: KubeSpawner
///   takes no other.)
/// - The labs' volumes and mounts (`singleuser.storage.extraVolumes`,
///   `extraVolumeMounts`): a list, or a mapping whose values are the
///   items, keyed by name here.
pub fn collections_in_their_form(ours: &mut Value, theirs: &Value) {
    let at = |value: &Value, path: &[&str]| -> Value {
        path.iter()
            .try_fold(value, |v, key| v.get(key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let set = |ours: &mut Value, path: &[&str], to: Value| {
        if let Some(slot) = path.iter().try_fold(ours, |v, key| v.get_mut(key)) {
            *slot = to;
        }
    };
    let hub_env = ["hub", "extraEnv"];
    if let (Value::Object(variables), true) = (at(ours, &hub_env), at(theirs, &hub_env).is_array())
    {
        let items = variables
            .into_iter()
            .map(|(name, value)| match value {
                Value::Object(mut item) => {
                    item.insert("name".into(), Value::String(name));
                    Value::Object(item)
                }
                value => serde_json::json!({ "name": name, "value": value }),
            })
            .collect();
        set(ours, &hub_env, Value::Array(items));
    }
    for key in ["extraVolumes", "extraVolumeMounts"] {
        let path = ["singleuser", "storage", key];
        if let (Value::Array(items), true) = (at(ours, &path), at(theirs, &path).is_object()) {
            let keyed = items
                .into_iter()
                .filter_map(|item| Some((item.get("name")?.as_str()?.to_string(), item)))
                .collect();
            set(ours, &path, Value::Object(keyed));
        }
    }
}

/// The settings of `theirs` that weaken what the checks judge, each with
/// why: hubtrust's values would turn them back on for the run (or, for
/// the labs' variables, replace them), so the deployment as installed
/// elsewhere would not be what passed.
pub fn weakened(theirs: &Value) -> Vec<String> {
    let at = |path: &str| {
        path.split('.')
            .try_fold(theirs, |value, key| value.get(key))
            .filter(|value| !value.is_null())
    };
    let mut found = Vec::new();
    for (path, what) in [
        (
            "hub.config.JupyterHub.internal_ssl",
            "internal TLS between hub, proxy and labs is off",
        ),
        (
            "proxy.https.enabled",
            "the public side is served without TLS",
        ),
    ] {
        if let Some(value) = at(path).filter(|v| **v != Value::Bool(true)) {
            found.push(format!("{path} is {value}: {what}"));
        }
    }
    for path in [
        "hub.config.JupyterHub.hub_bind_url",
        "hub.config.JupyterHub.hub_connect_url",
        "hub.config.ConfigurableHTTPProxy.api_url",
    ] {
        if let Some(value) = at(path) {
            if !value
                .as_str()
                .is_some_and(|url| url.starts_with("https://"))
            {
                found.push(format!("{path} is {value}, not an https:// URL"));
            }
        }
    }
    // The chart's schema takes a list here, and KubeSpawner refuses one
    // at every spawn; hubtrust's mapping of the labs' variables, where a
    // stack sets some, would replace it and let the labs spawn.
    if at("singleuser.extraEnv").is_some_and(Value::is_array) {
        found.push(
            "singleuser.extraEnv is a list: KubeSpawner takes the labs' variables only as a mapping, so no lab spawns"
                .into(),
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_image_is_named_with_the_table_that_takes_it() {
        let theirs = serde_json::json!({
            "singleuser": { "image": { "name": "ghcr.io/example/lab", "tag": "2026.11" } },
            "hub": { "image": { "pullPolicy": "IfNotPresent" } },
        });
        let ours = serde_json::json!({
            "singleuser": { "image": { "name": "quay.io/jupyterhub/k8s-singleuser-sample", "tag": "4.4.0" } },
            "hub": { "image": { "name": "quay.io/jupyterhub/k8s-hub", "tag": "4.4.0" } },
        });
        let replaced = replaced_by(&theirs, &ours);
        assert_eq!(replaced, ["singleuser.image.name", "singleuser.image.tag"]);
        assert_eq!(images_replaced(&replaced), [("your lab image", "[lab]")]);
        assert!(images_replaced(&["proxy.https.type".into()]).is_empty());
    }
    use serde_json::json;

    #[test]
    fn only_keys_both_set_with_other_values_are_replaced() {
        let theirs = json!({
            "hub": {
                "config": { "JupyterHub": { "authenticator_class": "github", "admin_access": true } },
                "resources": { "requests": { "memory": "1Gi" } },
            },
            "proxy": { "https": { "enabled": true, "type": "letsencrypt" } },
            "singleuser": { "image": { "name": "ours-too" }, "cpu": { "limit": 2 } },
            "scheduling": { "userScheduler": { "enabled": false } },
        });
        let ours = json!({
            "hub": { "config": { "JupyterHub": { "authenticator_class": "dummy" } } },
            "proxy": { "https": { "enabled": true, "type": "secret" } },
            "singleuser": { "image": "not a mapping here" },
        });
        assert_eq!(
            replaced_by(&theirs, &ours),
            [
                "hub.config.JupyterHub.authenticator_class",
                "proxy.https.type",
                "singleuser.image",
            ]
        );
        assert!(replaced_by(&json!({}), &ours).is_empty());
    }

    #[test]
    fn a_list_both_set_keeps_their_items_first_and_is_not_named_replaced() {
        let theirs = json!({
            "hub": { "extraVolumes": [{ "name": "their-config" }] },
            "proxy": { "chp": { "extraCommandLineFlags": ["--no-x-forward", "--api-ssl-request-cert"] } },
        });
        let mut ours = json!({
            "hub": { "extraVolumes": [{ "name": "internal-ssl" }], "image": "hub" },
            "proxy": { "chp": { "extraCommandLineFlags": ["--api-ssl-request-cert", "--client-ssl-request-cert"] } },
        });
        keep_their_lists(&mut ours, &theirs);
        assert_eq!(
            ours["hub"]["extraVolumes"],
            json!([{ "name": "their-config" }, { "name": "internal-ssl" }])
        );
        assert_eq!(
            ours["proxy"]["chp"]["extraCommandLineFlags"],
            json!([
                "--no-x-forward",
                "--api-ssl-request-cert",
                "--client-ssl-request-cert"
            ])
        );
        assert_eq!(ours["hub"]["image"], "hub");
        assert!(replaced_by(&theirs, &ours).is_empty());
    }

    #[test]
    fn an_item_of_theirs_under_one_of_our_names_gives_way_and_the_list_is_named() {
        let theirs = json!({ "hub": { "extraVolumes": [
            { "name": "hub-scratch", "emptyDir": {} },
            { "name": "hubtrust-internal-ssl", "emptyDir": { "medium": "Memory" } },
        ] } });
        let mut ours = json!({ "hub": { "extraVolumes": [
            { "name": "hubtrust-internal-ssl", "emptyDir": {} },
        ] } });
        keep_their_lists(&mut ours, &theirs);
        assert_eq!(
            ours["hub"]["extraVolumes"],
            json!([
                { "name": "hub-scratch", "emptyDir": {} },
                { "name": "hubtrust-internal-ssl", "emptyDir": {} },
            ])
        );
        assert_eq!(replaced_by(&theirs, &ours), ["hub.extraVolumes"]);
    }

    #[test]
    fn an_empty_list_of_ours_replaces_theirs_and_is_named_with_the_image_it_takes() {
        let theirs = json!({ "singleuser": { "profileList": [
            { "display_name": "R", "kubespawner_override": { "image": "ghcr.io/example/r:1" } },
        ] } });
        let mut ours = json!({ "singleuser": { "profileList": [] } });
        keep_their_lists(&mut ours, &theirs);
        assert_eq!(ours["singleuser"]["profileList"], json!([]));
        let replaced = replaced_by(&theirs, &ours);
        assert_eq!(replaced, ["singleuser.profileList"]);
        assert_eq!(
            images_replaced(&replaced),
            [("the lab image of your default profile", "[lab]")]
        );
    }

    #[test]
    fn their_variables_as_a_list_stay_beside_ours() {
        let theirs = json!({
            "hub": { "extraEnv": [
                { "name": "OAUTH_SECRET", "valueFrom": { "secretKeyRef": { "name": "oauth", "key": "secret" } } },
                { "name": "SSL_CERT_FILE", "value": "/etc/theirs.pem" },
            ] },
            "singleuser": { "extraEnv": [{ "name": "TZ", "value": "UTC" }] },
        });
        let mut ours = json!({
            "hub": { "extraEnv": { "SSL_CERT_FILE": "/etc/merged.pem" } },
            "singleuser": { "extraEnv": { "HTTPS_PROXY": "http://proxy:8080" } },
        });
        collections_in_their_form(&mut ours, &theirs);
        keep_their_lists(&mut ours, &theirs);
        assert_eq!(
            ours["hub"]["extraEnv"],
            json!([
                theirs["hub"]["extraEnv"][0],
                { "name": "SSL_CERT_FILE", "value": "/etc/merged.pem" },
            ])
        );
        assert!(
            ours["singleuser"]["extraEnv"].is_object(),
            "the labs' variables stay a mapping: KubeSpawner takes no other"
        );
        assert_eq!(
            replaced_by(&theirs, &ours),
            ["hub.extraEnv", "singleuser.extraEnv"]
        );
    }

    #[test]
    fn their_lab_volumes_as_a_mapping_stay_beside_ours() {
        let theirs = json!({ "singleuser": { "storage": {
            "extraVolumes": { "shared": { "name": "shared", "nfs": { "server": "nfs", "path": "/" } } },
            "extraVolumeMounts": { "shared": { "name": "shared", "mountPath": "/shared" } },
        } } });
        let ours = json!({ "singleuser": { "storage": {
            "extraVolumes": [{ "name": "hubtrust-merged-bundle", "emptyDir": {} }],
            "extraVolumeMounts": [{ "name": "hubtrust-merged-bundle", "mountPath": "/etc/m" }],
        } } });
        let mut converted = ours.clone();
        collections_in_their_form(&mut converted, &theirs);
        assert_eq!(
            converted["singleuser"]["storage"]["extraVolumes"],
            json!({ "hubtrust-merged-bundle": { "name": "hubtrust-merged-bundle", "emptyDir": {} } })
        );
        assert!(replaced_by(&theirs, &converted).is_empty());
        assert_eq!(
            replaced_by(&theirs, &ours),
            [
                "singleuser.storage.extraVolumeMounts",
                "singleuser.storage.extraVolumes"
            ],
            "without the form of theirs, hubtrust's list would replace their mapping"
        );
    }

    #[test]
    fn settings_that_weaken_what_the_checks_judge_are_named() {
        let weak = json!({
            "hub": { "config": {
                "JupyterHub": { "internal_ssl": false, "hub_connect_url": "http://hub:8081", "hub_bind_url": "https://:8081" },
                "ConfigurableHTTPProxy": { "api_url": "http://proxy-api:8001" },
            }},
            "proxy": { "https": { "enabled": false } },
            "singleuser": { "extraEnv": [{ "name": "TZ", "value": "UTC" }] },
        });
        let found = weakened(&weak);
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(found[4].starts_with("singleuser.extraEnv is a list"));
        assert!(found[0].starts_with("hub.config.JupyterHub.internal_ssl is false: internal TLS"));
        assert!(found[1].starts_with("proxy.https.enabled is false"));
        assert!(found
            .iter()
            .any(|f| f.contains("hub_connect_url is \"http://hub:8081\", not an https:// URL")));
        assert!(!found.iter().any(|f| f.contains("hub_bind_url")));
        let kept = json!({
            "hub": { "config": { "JupyterHub": { "internal_ssl": true, "hub_connect_url": "https://hub.jhub.svc:8081" } } },
            "proxy": { "https": { "enabled": true, "type": "letsencrypt" } },
            "singleuser": { "cpu": { "limit": 2 }, "extraEnv": { "TZ": "UTC" } },
        });
        assert!(weakened(&kept).is_empty());
        assert!(weakened(&json!({})).is_empty());
    }

    #[test]
    fn a_values_file_must_be_yaml_and_a_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let good = UserValues::load(&write(
            "config.yaml",
            "hub:\n  config:\n    JupyterHub:\n      admin_access: true\nsingleuser:\n  cpu: {limit: 2}\n",
        ))
        .unwrap();
        assert_eq!(good.values["singleuser"]["cpu"]["limit"], 2);
        assert!(good.path.is_absolute());
        let empty = UserValues::load(&write("empty.yaml", "")).unwrap();
        assert_eq!(empty.values, json!({}));
        for (name, text, says) in [
            (
                "tabs.yaml",
                "hub:\n\tconfig: 1\n",
                "is not YAML helm can read",
            ),
            ("list.yaml", "- hub\n- proxy\n", "holds a list"),
        ] {
            let err = UserValues::load(&write(name, text))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(name) && err.contains(says) && err.contains("fix:"),
                "{err}"
            );
        }
        let missing = UserValues::load(&dir.path().join("nope.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("nope.yaml") && missing.contains("fix:"),
            "{missing}"
        );
    }
}
