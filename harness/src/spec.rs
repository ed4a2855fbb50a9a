//! Stack files: which topology, which components, and what a deployment or
//! vendor changes about them. Plain serde data; unknown keys are errors.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{HarnessError, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default)]
    pub topology: Topology,
    /// Users whose labs are spawned through the hub's REST API.
    #[serde(default = "default_users")]
    pub users: Vec<String>,
    #[serde(default)]
    pub ports: Ports,
    #[serde(default)]
    pub hub: ComponentOverride,
    #[serde(default)]
    pub proxy: ComponentOverride,
    #[serde(default)]
    pub lab: ComponentOverride,
    /// Enterprise trust: outbound endpoints and the org-bundle merge step.
    #[serde(default)]
    pub enterprise: Option<EnterpriseSpec>,
}

/// The enterprise-trust setup: an `internet` host with hubtrust's outbound
/// test servers, and the init step that merges the org CA bundle into the
/// labs' trust.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnterpriseSpec {
    /// The host serving the org-CA, public and foreign endpoints; it needs
    /// a link to the lab host.
    pub internet_host: String,
    /// Run the merge step and point the labs' five CA variables at the
    /// merged bundle. Off by default: then the labs' environment is exactly
    /// what it is without this section.
    #[serde(default)]
    pub merge_org_bundle: bool,
    /// Give the hub the merged bundle too (the five variables in its
    /// environment), as some operators do.
    #[serde(default)]
    pub merge_into_hub: bool,
    /// The org bundle's source (a ConfigMap's equivalent); by default the
    /// run's org root CA. A missing file degrades to the system bundle.
    #[serde(default)]
    pub org_bundle: Option<std::path::PathBuf>,
    /// A host running the TLS-inspecting proxy (real mitmproxy, re-signing
    /// with the org's issuing intermediate). It needs links to the lab host
    /// and to the internet host; the labs get HTTPS_PROXY pointing at it
    /// and reach the internet host's far address only through it.
    #[serde(default)]
    pub egress_host: Option<String>,
    /// Replaces mitmproxy with another inspecting proxy (a vendor's). It
    /// must listen on `$HUBTRUST_PROXY_LISTEN` (host:port) and sign with the
    /// key and chain in `$HUBTRUST_PROXY_CA` (PEM: key, intermediate, root),
    /// trusting `$HUBTRUST_PROXY_UPSTREAM_TRUST` upstream.
    #[serde(default)]
    pub proxy_command: Option<Vec<String>>,
}

fn default_name() -> String {
    "default".into()
}

fn default_users() -> Vec<String> {
    vec!["alice".into()]
}

impl Default for StackSpec {
    fn default() -> Self {
        Self {
            name: default_name(),
            topology: Topology::default(),
            users: default_users(),
            ports: Ports::default(),
            hub: ComponentOverride::default(),
            proxy: ComponentOverride::default(),
            lab: ComponentOverride::default(),
            enterprise: None,
        }
    }
}

/// The hosts of a stack. Every host is linked to the operator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub hosts: Vec<String>,
    /// Host the hub (and the proxy it starts) runs on.
    #[serde(default = "default_hub_host")]
    pub hub_host: String,
    /// Host the labs run on. A parameter because the HPC topology moves
    /// labs to compute nodes.
    #[serde(default = "default_hub_host")]
    pub lab_host: String,
    /// The name browsers use for the public proxy.
    #[serde(default = "default_public_name")]
    pub public_name: String,
    /// Direct links between hosts, beside each host's link to the operator.
    #[serde(default)]
    pub links: Vec<[String; 2]>,
    /// Host the labs' kernels run on, when not the lab's own host (a remote
    /// kernel deployment). Needs a link to the lab host.
    #[serde(default)]
    pub kernel_host: Option<String>,
    /// Plaintext flows this topology is designed to carry across a link
    /// (the cleartext last hop of an HPC tunnel, say), each with its reason.
    /// The wire checks allow exactly these and name them in the report.
    #[serde(default)]
    pub plaintext_exceptions: Vec<PlaintextException>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlaintextException {
    /// The server port of the allowed flow.
    pub port: u16,
    pub reason: String,
}

fn default_hub_host() -> String {
    "hub".into()
}

fn default_public_name() -> String {
    "hub.hubtrust.test".into()
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            hosts: vec![default_hub_host()],
            hub_host: default_hub_host(),
            lab_host: default_hub_host(),
            public_name: default_public_name(),
            links: Vec::new(),
            kernel_host: None,
            plaintext_exceptions: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    pub public: u16,
    pub hub: u16,
    pub proxy_api: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            public: 8000,
            hub: 8081,
            proxy_api: 8001,
        }
    }
}

/// What a stack file may change about a component.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComponentOverride {
    /// Replaces the manifest's command (a vendor's build, say).
    pub command: Option<Vec<String>>,
    /// Replaces the manifest's arguments.
    pub args: Option<Vec<String>>,
    /// Added to (and overriding) the manifest's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Lines appended to the rendered config (hub only).
    #[serde(default)]
    pub extra_config: Vec<String>,
}

impl StackSpec {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|cause| HarnessError::StackFileUnreadable {
                path: path.to_path_buf(),
                cause,
            })?;
        let spec: Self = toml::from_str(&text).map_err(|e| HarnessError::StackFileInvalid {
            path: path.to_path_buf(),
            message: format!(
                "{} (fix: see fixtures/stacks/example.toml for every accepted key)",
                one_line(&e.to_string())
            ),
        })?;
        spec.validate().map_err(|message| HarnessError::StackFileInvalid {
            path: path.to_path_buf(),
            message: format!("{message} (fix: edit the stack file; fixtures/stacks/example.toml shows every key)"),
        })?;
        Ok(spec)
    }

    /// Checks what serde cannot: references between fields.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.topology;
        for (what, host) in [("hub_host", &t.hub_host), ("lab_host", &t.lab_host)] {
            if !t.hosts.contains(host) {
                return Err(format!(
                    "topology.{what} = {host:?} is not one of topology.hosts {:?}",
                    t.hosts
                ));
            }
        }
        if t.lab_host != t.hub_host {
            return Err(format!(
                "labs on `{}` but the hub on `{}`: the local spawner starts labs on the hub's host; other lab hosts need the HPC topology",
                t.lab_host, t.hub_host
            ));
        }
        for [a, b] in &t.links {
            for end in [a, b] {
                if !t.hosts.contains(end) {
                    return Err(format!(
                        "topology.links names {end:?}, which is not one of topology.hosts {:?}",
                        t.hosts
                    ));
                }
            }
            if a == b {
                return Err(format!("topology.links links {a:?} to itself"));
            }
        }
        if let Some(kernel_host) = &t.kernel_host {
            let linked = t.links.iter().any(|[a, b]| {
                (a == kernel_host && b == &t.lab_host) || (b == kernel_host && a == &t.lab_host)
            });
            if kernel_host != &t.lab_host && !linked {
                return Err(format!(
                    "topology.kernel_host = {kernel_host:?} has no link to the lab host {:?}: add [{kernel_host:?}, {:?}] to topology.links",
                    t.lab_host, t.lab_host
                ));
            }
        }
        if let Some(bad) = t
            .plaintext_exceptions
            .iter()
            .find(|e| e.reason.trim().is_empty())
        {
            return Err(format!(
                "topology.plaintext_exceptions for port {} gives no reason",
                bad.port
            ));
        }
        if let Some(e) = &self.enterprise {
            let host = &e.internet_host;
            let linked = t
                .links
                .iter()
                .any(|[a, b]| (a == host && b == &t.lab_host) || (b == host && a == &t.lab_host));
            if !t.hosts.contains(host) || !linked {
                return Err(format!(
                    "enterprise.internet_host = {host:?} needs to be one of topology.hosts and linked to the lab host: add {host:?} to hosts and [{:?}, {host:?}] to topology.links",
                    t.lab_host
                ));
            }
            if e.merge_into_hub && !e.merge_org_bundle {
                return Err("enterprise.merge_into_hub needs enterprise.merge_org_bundle = true: there is no merged bundle otherwise".into());
            }
            if let Some(egress) = &e.egress_host {
                let has = |x: &String, y: &String| {
                    t.links
                        .iter()
                        .any(|[a, b]| (a == x && b == y) || (a == y && b == x))
                };
                if !t.hosts.contains(egress) || !has(egress, &t.lab_host) || !has(egress, host) {
                    return Err(format!(
                        "enterprise.egress_host = {egress:?} needs to be one of topology.hosts, linked to the lab host {:?} and to the internet host {host:?}",
                        t.lab_host
                    ));
                }
            }
        }
        if t.hosts.iter().any(|h| h == "operator") {
            return Err("`operator` is reserved for hubtrust's own namespace".into());
        }
        let p = self.ports;
        let ports = [
            ("public", p.public),
            ("hub", p.hub),
            ("proxy_api", p.proxy_api),
        ];
        for (i, (a, pa)) in ports.iter().enumerate() {
            for (b, pb) in &ports[i + 1..] {
                if pa == pb {
                    return Err(format!("port {pa} is assigned to both ports.{a} and ports.{b}: the second component cannot bind it"));
                }
            }
        }
        if self.users.is_empty() {
            return Err("`users` is empty: at least one lab is needed".into());
        }
        if let Some(bad) = self
            .users
            .iter()
            .find(|u| u.is_empty() || !u.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(format!(
                "user name {bad:?} must be ASCII letters, digits and dashes"
            ));
        }
        Ok(())
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<StackSpec, String> {
        let spec: StackSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        spec.validate()?;
        Ok(spec)
    }

    #[test]
    fn empty_file_is_the_default_stack() {
        assert_eq!(parse("").unwrap(), StackSpec::default());
    }

    #[test]
    fn example_stack_file_parses() {
        let text = include_str!("../../fixtures/stacks/example.toml");
        let spec = parse(text).unwrap();
        assert!(!spec.hub.extra_config.is_empty());
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("[hub]\nextra_cofnig = []\n").unwrap_err();
        assert!(err.contains("extra_cofnig"), "{err}");
    }

    #[test]
    fn duplicate_ports_are_rejected() {
        let err = parse("[ports]\npublic = 8000\nhub = 8001\nproxy_api = 8001\n").unwrap_err();
        assert!(err.contains("8001"), "{err}");
    }

    #[test]
    fn a_link_to_an_unknown_host_is_named() {
        let err =
            parse("[topology]\nhosts = [\"hub\"]\nlinks = [[\"hub\", \"login-9\"]]\n").unwrap_err();
        assert!(
            err.contains("\"login-9\"") && err.contains("topology.hosts"),
            "{err}"
        );
    }

    #[test]
    fn enterprise_hosts_must_be_linked_as_the_design_needs() {
        let err = parse("[topology]\nhosts = [\"hub\", \"internet\"]\n[enterprise]\ninternet_host = \"internet\"\n")
            .unwrap_err();
        assert!(err.contains("linked to the lab host"), "{err}");
        let err = parse("[topology]\nhosts = [\"hub\", \"internet\", \"egress\"]\nlinks = [[\"hub\", \"internet\"]]\n[enterprise]\ninternet_host = \"internet\"\negress_host = \"egress\"\n")
            .unwrap_err();
        assert!(err.contains("enterprise.egress_host"), "{err}");
        let err = parse("[topology]\nhosts = [\"hub\", \"internet\"]\nlinks = [[\"hub\", \"internet\"]]\n[enterprise]\ninternet_host = \"internet\"\nmerge_into_hub = true\n")
            .unwrap_err();
        assert!(err.contains("merge_org_bundle"), "{err}");
        let ok = include_str!("../../fixtures/stacks/enterprise.toml");
        parse(ok).unwrap();
    }

    #[test]
    fn a_kernel_host_needs_a_link_to_the_lab_host() {
        let err = parse("[topology]\nhosts = [\"hub\", \"kernels\"]\nkernel_host = \"kernels\"\n")
            .unwrap_err();
        assert!(err.contains("topology.links"), "{err}");
        let text = include_str!("../../fixtures/stacks/kernel-on-another-host.toml");
        assert_eq!(
            parse(text).unwrap().topology.kernel_host.as_deref(),
            Some("kernels")
        );
    }

    #[test]
    fn a_plaintext_exception_needs_a_reason() {
        let err =
            parse("[topology]\nhosts = [\"hub\"]\n[[topology.plaintext_exceptions]]\nport = 9000\nreason = \"\"\n").unwrap_err();
        assert!(err.contains("9000"), "{err}");
        let ok =
            parse("[topology]\nhosts = [\"hub\"]\n[[topology.plaintext_exceptions]]\nport = 9000\nreason = \"tunnel last hop\"\n")
                .unwrap();
        assert_eq!(ok.topology.plaintext_exceptions[0].port, 9000);
    }

    #[test]
    fn lab_host_must_exist() {
        let err = parse("[topology]\nhosts = [\"hub\"]\nlab_host = \"compute-1\"\n").unwrap_err();
        assert!(err.contains("compute-1"), "{err}");
    }
}
