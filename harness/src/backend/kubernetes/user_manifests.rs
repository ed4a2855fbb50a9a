//! A deployment's own objects (`--manifests FILE|DIR`): what its chart values
//! name but the chart does not make, such as a ConfigMap of page
//! templates the hub mounts. The run's namespace is new, so without them
//! the pods that mount them never start.
//!
//! A run removes what it made by removing its namespace (or its kind
//! cluster). So every object must live in that namespace: a kind hubtrust
//! does not know to be namespaced is refused before anything is made, and
//! so is an object that names a namespace of its own, or ([`clashes`]) one
//! of the names hubtrust's own objects take.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::user_values::{invalid, read_theirs};
use crate::error::{HarnessError, Result};

/// The kinds, by API version, that live in a namespace and go with it.
/// Anything else (a Namespace, a ClusterRole, a StorageClass, a custom
/// resource whose scope hubtrust cannot tell) could outlive the run.
const NAMESPACED: &[(&str, &[&str])] = &[
    (
        "v1",
        &[
            "ConfigMap",
            "Secret",
            "ServiceAccount",
            "Service",
            "PersistentVolumeClaim",
            "Pod",
            "LimitRange",
            "ResourceQuota",
        ],
    ),
    ("apps/v1", &["Deployment", "StatefulSet", "DaemonSet"]),
    ("batch/v1", &["Job", "CronJob"]),
    ("rbac.authorization.k8s.io/v1", &["Role", "RoleBinding"]),
    ("networking.k8s.io/v1", &["NetworkPolicy", "Ingress"]),
    ("policy/v1", &["PodDisruptionBudget"]),
];

/// One object of the deployment's, by kind and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectName {
    pub kind: String,
    pub name: String,
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// One manifests file or directory of the deployment's, read and checked:
/// every object in it goes into the run's namespace and with it.
#[derive(Debug, Clone)]
pub struct UserManifests {
    pub path: PathBuf,
    pub objects: Vec<ObjectName>,
}

impl UserManifests {
    /// Reads `path` (YAML documents, or a `List`; or a directory of such
    /// `.yaml`, `.yml` and `.json` files, as `kubectl apply -f DIR` takes
    /// them), refusing what could outlive the run or land outside its
    /// namespace.
    pub fn load(path: &Path) -> Result<Self> {
        let mut objects = Vec::new();
        for file in files_of(path)? {
            let invalid = invalid(&file);
            let text = read_theirs(
                &file,
                "pass the manifests of the objects your chart values name",
            )?;
            let mut documents = Vec::new();
            for document in serde_yaml_ng::Deserializer::from_str(&text) {
                let value = Value::deserialize(document).map_err(|e| {
                    invalid(format!(
                        "it is not YAML kubectl can read: {e} (fix: `kubectl apply --dry-run=client -f {}` names the problem too)",
                        file.display()
                    ))
                })?;
                flatten_lists(value, &mut documents);
            }
            for document in &documents {
                objects.push(checked(document).map_err(&invalid)?);
            }
        }
        if objects.is_empty() {
            return Err(invalid(path)(
                "it holds no objects (fix: pass a file or directory of Kubernetes manifests, or leave --manifests out)".into(),
            ));
        }
        Ok(UserManifests {
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            objects,
        })
    }

    /// The file or directory and its objects, as a report's stack line
    /// says them.
    pub fn said(&self) -> String {
        let objects: Vec<String> = self.objects.iter().map(ToString::to_string).collect();
        format!("{} ({})", self.path.display(), objects.join(", "))
    }
}

/// `path` itself, or the manifests in it when it is a directory, in the
/// order kubectl applies them (by name, not into subdirectories).
fn files_of(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| {
        invalid(path)(format!(
            "{e} (fix: pass a readable directory or file of manifests)"
        ))
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|file| {
            file.is_file()
                && file
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| ["yaml", "yml", "json"].contains(&e))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn flatten_lists(value: Value, into: &mut Vec<Value>) {
    match value {
        Value::Null => {}
        Value::Object(ref map)
            if map.get("kind").and_then(Value::as_str) == Some("List")
                && map.get("items").is_some_and(Value::is_array) =>
        {
            if let Some(Value::Array(items)) = value.get("items").cloned() {
                for item in items {
                    flatten_lists(item, into);
                }
            }
        }
        other => into.push(other),
    }
}

/// The object's kind and name, or why it may not go into the run's
/// namespace.
fn checked(document: &Value) -> std::result::Result<ObjectName, String> {
    let text = |key: &str| document.get(key).and_then(Value::as_str);
    let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
        return Err(format!(
            "a document is not a Kubernetes object: it needs apiVersion and kind (it starts {})",
            start_of(document)
        ));
    };
    let metadata = document.get("metadata");
    let Some(name) = metadata.and_then(|m| m.get("name")).and_then(Value::as_str) else {
        return Err(format!(
            "the {kind} has no metadata.name (fix: name it; generateName would make a new one each run)"
        ));
    };
    let object = ObjectName {
        kind: kind.to_string(),
        name: name.to_string(),
    };
    let namespaced = NAMESPACED
        .iter()
        .any(|(version, kinds)| *version == api_version && kinds.contains(&kind));
    if !namespaced {
        return Err(format!(
            "{object} ({api_version}) is not a kind hubtrust knows to live in a namespace, so it could outlive the run, which removes only its namespace (fix: make it on the cluster before the run, or leave it out; namespaced kinds: {})",
            NAMESPACED
                .iter()
                .map(|(version, kinds)| format!("{} ({version})", kinds.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if let Some(namespace) = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        return Err(format!(
            "{object} names the namespace `{namespace}`, and each run makes a fresh one (fix: drop metadata.namespace; hubtrust applies every object into the run's namespace)"
        ));
    }
    Ok(object)
}

/// Refuses an object of the deployment's that takes the name of one of
/// `ours`, the objects hubtrust makes in the run's namespace (one would
/// replace the other), or of the chart's (`Kind/name`), which helm would
/// refuse to install over.
pub fn clashes(theirs: &[UserManifests], ours: &[ObjectName], chart: &[String]) -> Result<()> {
    for file in theirs {
        for object in &file.objects {
            let whose = if ours.contains(object) {
                "hubtrust's own objects take"
            } else if chart.contains(&object.to_string()) {
                "the Zero to JupyterHub chart's own objects take, and helm would not install over it"
            } else {
                continue;
            };
            return Err(HarnessError::DeploymentConfigInvalid {
                path: file.path.clone(),
                message: format!(
                    "{object} is a name {whose} in the run's namespace (fix: rename yours, and where your values name it)"
                ),
            });
        }
    }
    Ok(())
}

fn start_of(document: &Value) -> String {
    let text = document.to_string();
    match text.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<UserManifests> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("objects.yaml");
        std::fs::write(&path, text).unwrap();
        UserManifests::load(&path)
    }

    fn refusal(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn documents_and_lists_are_read_as_their_objects() {
        let read = load(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hub-templates}\ndata: {page.html: x}\n---\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: oauth}\n\
             - apiVersion: rbac.authorization.k8s.io/v1\n  kind: Role\n  metadata: {name: reader}\n",
        )
        .unwrap();
        let names: Vec<String> = read.objects.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            ["ConfigMap/hub-templates", "Secret/oauth", "Role/reader"]
        );
        assert!(read
            .said()
            .ends_with("objects.yaml (ConfigMap/hub-templates, Secret/oauth, Role/reader)"));
    }

    #[test]
    fn what_could_outlive_the_runs_namespace_is_refused_naming_it() {
        let cluster_scoped = refusal(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: wide}\n",
        );
        assert!(
            cluster_scoped.contains("ClusterRole/wide"),
            "{cluster_scoped}"
        );
        assert!(
            cluster_scoped.contains("could outlive the run"),
            "{cluster_scoped}"
        );
        let custom =
            refusal("apiVersion: example.org/v1\nkind: ConfigMap\nmetadata: {name: lookalike}\n");
        assert!(
            custom.contains("ConfigMap/lookalike (example.org/v1)"),
            "{custom}"
        );
        let elsewhere =
            refusal("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: jhub}\n");
        assert!(
            elsewhere.contains("names the namespace `jhub`"),
            "{elsewhere}"
        );
        assert!(elsewhere.contains("drop metadata.namespace"), "{elsewhere}");
    }

    #[test]
    fn a_directory_is_read_as_kubectl_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.yml"),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: second}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.json"),
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "first"}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("README.md"), "not a manifest").unwrap();
        std::fs::create_dir(dir.path().join("nested")).unwrap();
        std::fs::write(
            dir.path().join("nested/c.yaml"),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: nested}\n",
        )
        .unwrap();
        let read = UserManifests::load(dir.path()).unwrap();
        let names: Vec<String> = read.objects.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["ConfigMap/first", "Secret/second"]);
        std::fs::write(
            dir.path().join("c.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: wide}\n",
        )
        .unwrap();
        let refused = UserManifests::load(dir.path()).unwrap_err().to_string();
        assert!(
            refused.contains("c.yaml") && refused.contains("Namespace/wide"),
            "{refused}"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(UserManifests::load(empty.path())
            .unwrap_err()
            .to_string()
            .contains("holds no objects"));
    }

    #[test]
    fn a_file_that_is_not_objects_is_refused_naming_the_problem() {
        assert!(refusal("").contains("holds no objects"));
        assert!(refusal("kind: ConfigMap\n").contains("needs apiVersion and kind"));
        assert!(refusal("apiVersion: v1\nkind: Secret\nmetadata: {}\n")
            .contains("the Secret has no metadata.name"));
        assert!(refusal("apiVersion: v1\n\tkind: Secret\n").contains("not YAML kubectl can read"));
    }

    #[test]
    fn a_name_hubtrusts_or_the_charts_own_objects_take_is_refused() {
        let taken = [ObjectName {
            kind: "Secret".into(),
            name: "hubtrust-proxy-tls".into(),
        }];
        let chart = ["ConfigMap/hub".to_string()];
        let refusal = |text: &str| {
            clashes(&[load(text).unwrap()], &taken, &chart)
                .unwrap_err()
                .to_string()
        };
        let refused =
            refusal("apiVersion: v1\nkind: Secret\nmetadata: {name: hubtrust-proxy-tls}\n");
        assert!(
            refused.contains("Secret/hubtrust-proxy-tls is a name hubtrust's own objects take"),
            "{refused}"
        );
        let refused = refusal("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hub}\n");
        assert!(
            refused.contains(
                "ConfigMap/hub is a name the Zero to JupyterHub chart's own objects take"
            ),
            "{refused}"
        );
        for free in [
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hubtrust-proxy-tls}\n",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: hub-templates}\n",
        ] {
            assert!(clashes(&[load(free).unwrap()], &taken, &chart).is_ok());
        }
    }
}
