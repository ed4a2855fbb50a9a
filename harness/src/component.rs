//! Component manifests: what to run, at which version, with which config
//! template, environment and readiness checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{HarnessError, Result};
use crate::ready::ReadyCheck;

/// The part a component plays in a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Hub,
    Proxy,
    Lab,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentManifest {
    pub name: String,
    pub role: Role,
    pub version: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// A template file beside the manifest, rendered per run.
    #[serde(default)]
    pub config_template: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub ready: Vec<ReadyCheck>,
}

/// The manifests and templates shipped in `fixtures/components/`, built into
/// the binary so it runs from anywhere.
pub mod builtin {
    pub const JUPYTERHUB: &str = include_str!("../../fixtures/components/jupyterhub.toml");
    pub const PROXY: &str = include_str!("../../fixtures/components/configurable-http-proxy.toml");
    pub const LAB: &str = include_str!("../../fixtures/components/jupyterlab.toml");
    pub const HUB_CONFIG_TEMPLATE: &str =
        include_str!("../../fixtures/components/jupyterhub_config.py");
    pub const REMOTE_KERNEL_MODULE: &str =
        include_str!("../../fixtures/remote-kernel/hubtrust_remote_kernel.py");
    pub const POD_SPAWNER: &str = include_str!("../../fixtures/docker/hubtrust_pod_spawner.py");
    pub const MERGE_CA_BUNDLE: &str = include_str!("../../fixtures/enterprise/merge-ca-bundle.sh");
}

/// Fills `{{name}}` placeholders. A placeholder with no value is an error,
/// never silently left in a config.
pub fn render(template: &str, values: &BTreeMap<&str, String>, what: &str) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| HarnessError::ManifestInvalid {
                name: what.into(),
                message: "unclosed `{{` placeholder".into(),
            })?;
        let key = after[..end].trim();
        let value = values
            .get(key)
            .ok_or_else(|| HarnessError::ManifestInvalid {
                name: what.into(),
                message: format!("unknown placeholder `{{{{{key}}}}}`"),
            })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

impl ComponentManifest {
    /// Renders the manifest's placeholders, then parses it.
    pub fn load(name: &str, text: &str, values: &BTreeMap<&str, String>) -> Result<Self> {
        let rendered = render(text, values, name)?;
        toml::from_str(&rendered).map_err(|e| HarnessError::ManifestInvalid {
            name: name.into(),
            message: e.to_string(),
        })
    }
}

/// A Python literal for a string or list of strings (JSON's syntax for
/// these is valid Python).
pub fn py<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "None".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> BTreeMap<&'static str, String> {
        [
            ("venv", "/cache/venv"),
            ("node_modules", "/cache/node_modules"),
            ("config", "/run/hub.py"),
            ("public_name", "hub.test"),
            ("public_port", "8000"),
            ("hub_host", "hub"),
            ("proxy_api_port", "8001"),
            ("user", "alice"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect()
    }

    #[test]
    fn builtin_manifests_parse() {
        for (name, text) in [
            ("jupyterhub", builtin::JUPYTERHUB),
            ("proxy", builtin::PROXY),
            ("lab", builtin::LAB),
        ] {
            let manifest = ComponentManifest::load(name, text, &values()).unwrap();
            assert!(!manifest.ready.is_empty(), "{name} has no readiness checks");
            assert!(!manifest.command.is_empty());
        }
    }

    #[test]
    fn unknown_placeholder_is_an_error() {
        let err = render("x = {{nope}}", &values(), "t").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn unknown_manifest_keys_are_rejected() {
        let err = ComponentManifest::load(
            "x",
            "name='x'\nrole='hub'\nversion='1'\ncommand=['a']\nbogus=1",
            &values(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
