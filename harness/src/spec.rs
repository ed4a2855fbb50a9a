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
    /// A topology file (`fixtures/topologies/*.toml`), relative to the
    /// stack file, used instead of an inline `[topology]`.
    #[serde(default)]
    pub topology_file: Option<std::path::PathBuf>,
    /// HPC settings: tunnel ports, the broker, reused CAs. Used when the
    /// topology has login and compute nodes.
    #[serde(default)]
    pub hpc: HpcSpec,
    /// The docker backend's images.
    #[serde(default)]
    pub docker: DockerSpec,
    /// What the TLS scan holds every endpoint to: a named policy and
    /// per-endpoint exceptions with their reasons.
    #[serde(default)]
    pub tls_policy: crate::tls_policy::TlsPolicySpec,
    /// The deployment's own certificates instead of hubtrust's minted ones.
    #[serde(default)]
    pub pki: PkiSpec,
    /// The kind and kubernetes backends: the chart version and the org
    /// trust ConfigMap.
    #[serde(default)]
    pub kubernetes: KubernetesSpec,
}

/// What a Kubernetes run installs (fixtures/kubernetes/z2jh.toml holds
/// the defaults).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSpec {
    /// Another exact chart version than hubtrust's pin (never a range).
    #[serde(default)]
    pub chart_version: Option<String>,
    /// Create the org trust ConfigMap (trust-manager's projection). Off, a
    /// lab's spawn must still succeed with the system bundle alone.
    #[serde(default = "yes")]
    pub org_trust_configmap: bool,
}

impl Default for KubernetesSpec {
    fn default() -> Self {
        KubernetesSpec {
            chart_version: None,
            org_trust_configmap: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// The deployment's own certificates (paths relative to the stack file).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PkiSpec {
    /// The public side's certificate: the leaf, then its chain (PEM).
    pub public_cert: Option<std::path::PathBuf>,
    /// Its private key: mode 0600 or the run refuses.
    pub public_key: Option<std::path::PathBuf>,
    /// The root(s) browsers trust for it (PEM), which hubtrust's own
    /// clients of the public side then trust too.
    pub public_ca: Option<std::path::PathBuf>,
}

/// What the docker backend runs the stack's hosts and components from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DockerSpec {
    /// The image every container is made from unless a more specific key
    /// names another. Unset: hubtrust's offline runtime image, which
    /// `hubtrust images build` makes.
    #[serde(default)]
    pub image: Option<String>,
    /// Per host, the image of the container that holds the host's network
    /// namespace (and runs what has no component container of its own).
    #[serde(default)]
    pub hosts: std::collections::BTreeMap<String, String>,
    /// Per component, the image of its own container: a vendor's hub,
    /// proxy or mitmproxy image beside hubtrust's. Such an image must carry
    /// the component where its manifest's command says, or the stack file
    /// overrides the command (`[hub] command = ["jupyterhub", …]`).
    #[serde(default)]
    pub components: std::collections::BTreeMap<ContainerRole, String>,
}

/// A component that gets a container of its own on the docker backend,
/// sharing its host's network namespace and run directory (a pod's
/// containers, in Kubernetes' words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerRole {
    /// JupyterHub.
    Hub,
    /// configurable-http-proxy, started by hubtrust as an external proxy.
    Proxy,
    /// Each user's JupyterLab, in a container the hub's spawner makes.
    Lab,
    /// The enterprise profile's TLS-inspecting proxy on the egress host.
    Mitmproxy,
}

impl ContainerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hub => "hub",
            Self::Proxy => "proxy",
            Self::Lab => "lab",
            Self::Mitmproxy => "mitmproxy",
        }
    }
}

/// The images a docker run is made from: one per host, and one per
/// component container with the host it joins.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerImages {
    pub hosts: std::collections::BTreeMap<String, String>,
    pub components: std::collections::BTreeMap<ContainerRole, (String, String)>,
    /// Each image's id (its content digest) in the daemon, once looked up.
    pub ids: std::collections::BTreeMap<String, String>,
}

impl DockerImages {
    /// Every image named, once.
    pub fn distinct(&self) -> std::collections::BTreeSet<&str> {
        self.hosts
            .values()
            .chain(self.components.values().map(|(_, image)| image))
            .map(String::as_str)
            .collect()
    }

    /// What a report says was tested: each component's and each host's
    /// image, with its id when known.
    pub fn table(&self) -> std::collections::BTreeMap<String, String> {
        let with_id = |image: &str| match self.ids.get(image) {
            Some(id) => format!("{image} ({id})"),
            None => image.to_string(),
        };
        let components = self
            .components
            .iter()
            .map(|(role, (_, image))| (role.as_str().to_string(), with_id(image)));
        let hosts = self
            .hosts
            .iter()
            .map(|(host, image)| (format!("host {host}"), with_id(image)));
        components.chain(hosts).collect()
    }
}

/// How the HPC path is run: the login nodes' tunnel port, the broker, the
/// internal CAs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HpcSpec {
    /// The port each login node exposes the proxy on (the remote tunnel's
    /// bind port); labs call the hub at `https://<login node>:<port>`.
    #[serde(default = "default_login_port")]
    pub login_port: u16,
    /// The tunnel broker's HTTPS port on the hub host.
    #[serde(default = "default_broker_port")]
    pub broker_port: u16,
    /// Replaces hubtrust's reference broker (a vendor's). It must serve the
    /// REST contract of REFERENCE.md over HTTPS on `$HUBTRUST_BROKER_LISTEN`
    /// with the certificate and key in `$HUBTRUST_BROKER_CERT` and
    /// `$HUBTRUST_BROKER_KEY`, accept the token in `$HUBTRUST_BROKER_TOKEN`,
    /// and read its login nodes and SSH files from `$HUBTRUST_BROKER_CONFIG`.
    #[serde(default)]
    pub broker_command: Option<Vec<String>>,
    /// An earlier run's `ca_certs.tar.gz`: reuse its internal CAs instead
    /// of generating new ones.
    #[serde(default)]
    pub ca_certs: Option<std::path::PathBuf>,
    /// The uid of the first user's lab on the compute nodes; the next user
    /// gets the next uid.
    #[serde(default = "default_first_lab_uid")]
    pub first_lab_uid: u32,
}

fn default_login_port() -> u16 {
    8443
}

fn default_broker_port() -> u16 {
    9443
}

fn default_first_lab_uid() -> u32 {
    2001
}

impl Default for HpcSpec {
    fn default() -> Self {
        Self {
            login_port: default_login_port(),
            broker_port: default_broker_port(),
            broker_command: None,
            ca_certs: None,
            first_lab_uid: default_first_lab_uid(),
        }
    }
}

/// The HPC part of a topology: login nodes (each linked to the hub and to
/// every compute node) and compute nodes (linked to nothing else). Adding a
/// node is adding a name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HpcNodes {
    pub login_nodes: Vec<String>,
    pub compute_nodes: Vec<String>,
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
    /// The program run as mitmproxy's `mitmdump`, with hubtrust's
    /// arguments: a mitmproxy image's own (`mitmdump` on its PATH) instead
    /// of hubtrust's.
    #[serde(default)]
    pub mitmdump: Option<String>,
    /// Options appended to hubtrust's own for mitmproxy (`--set
    /// connection_strategy=lazy`, say); ignored with `proxy_command`.
    #[serde(default)]
    pub proxy_args: Vec<String>,
    /// A vendor's merge step instead of hubtrust's script, run where the
    /// script runs (in place locally, as an init container in the lab's
    /// image on docker), with three arguments appended: the system bundle,
    /// the org bundle (which may be absent) and the output path. The checks
    /// judge what it wrote.
    #[serde(default)]
    pub merge_command: Option<Vec<String>>,
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
            topology_file: None,
            hpc: HpcSpec::default(),
            docker: DockerSpec::default(),
            tls_policy: Default::default(),
            pki: PkiSpec::default(),
            kubernetes: KubernetesSpec::default(),
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
    /// Login and compute nodes of an HPC site.
    #[serde(default)]
    pub hpc: Option<HpcNodes>,
}

impl Topology {
    /// Every host: the listed ones, then the HPC nodes.
    pub fn all_hosts(&self) -> Vec<String> {
        let mut hosts = self.hosts.clone();
        if let Some(hpc) = &self.hpc {
            hosts.extend(hpc.login_nodes.iter().cloned());
            hosts.extend(hpc.compute_nodes.iter().cloned());
        }
        hosts
    }

    /// Every link: the listed ones, then those the HPC roles imply.
    pub fn all_links(&self) -> Vec<[String; 2]> {
        let mut links = self.links.clone();
        if let Some(hpc) = &self.hpc {
            for login in &hpc.login_nodes {
                links.extend(self.links_of_login_node(login, hpc));
            }
        }
        links
    }

    /// A login node's links: to the hub and to every compute node.
    pub fn links_of_login_node(&self, login: &str, hpc: &HpcNodes) -> Vec<[String; 2]> {
        std::iter::once([self.hub_host.clone(), login.to_string()])
            .chain(
                hpc.compute_nodes
                    .iter()
                    .map(|compute| [compute.clone(), login.to_string()]),
            )
            .collect()
    }

    pub fn is_hpc_node(&self, host: &str) -> bool {
        self.hpc.as_ref().is_some_and(|hpc| {
            hpc.login_nodes.iter().any(|h| h == host) || hpc.compute_nodes.iter().any(|h| h == host)
        })
    }
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
            hpc: None,
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
    /// Replaces the manifest's readiness checks: `[[hub.ready]]` tables of
    /// the same kinds (`tcp`, `tls-handshake`, `http`, `log-line`), with
    /// the same placeholders, for a vendor's component that is ready
    /// differently.
    #[serde(default)]
    pub ready: Option<Vec<toml::Table>>,
    /// The deployment's own config files (hub only: its
    /// `jupyterhub_config.py`), loaded in order before hubtrust's own
    /// settings; relative to the stack file. Every setting of theirs that
    /// ends up with another value is reported.
    #[serde(default)]
    pub config_files: Vec<std::path::PathBuf>,
}

impl StackSpec {
    /// Why this stack cannot run on the local backend, if it cannot.
    pub fn local_unsupported(&self) -> Option<String> {
        let t = &self.topology;
        (t.hpc.is_none() && t.lab_host != t.hub_host).then(|| {
            format!(
                "labs on `{}`, a host other than the hub's `{}`: the local backend's spawner starts labs on the hub's host",
                t.lab_host, t.hub_host
            )
        })
    }

    /// The images a docker run is made from: a host's container from
    /// `[docker.hosts]`, a component's from `[docker.components]`, else
    /// `[docker] image`, else `default`. A host the topology does not have
    /// is an error naming it.
    pub fn docker_images(&self, default: &str) -> std::result::Result<DockerImages, String> {
        let hosts = self.topology.all_hosts();
        if let Some(unknown) = self.docker.hosts.keys().find(|h| !hosts.contains(h)) {
            return Err(format!(
                "[docker.hosts] names `{unknown}`, which is not a host of the topology (hosts: {})",
                hosts.join(", ")
            ));
        }
        let fallback = self.docker.image.as_deref().unwrap_or(default);
        let component_image = |role: ContainerRole| {
            self.docker
                .components
                .get(&role)
                .map_or(fallback, String::as_str)
                .to_string()
        };
        let hub_host = &self.topology.hub_host;
        let mut components = std::collections::BTreeMap::from([(
            ContainerRole::Hub,
            (hub_host.clone(), component_image(ContainerRole::Hub)),
        )]);
        if self.topology.hpc.is_some() {
            // An HPC site's hub starts the proxy itself, and its batch
            // spawner runs labs as processes on the compute nodes: both
            // come from the hub's and the nodes' images.
            if let Some(role) = [ContainerRole::Proxy, ContainerRole::Lab]
                .into_iter()
                .find(|r| self.docker.components.contains_key(r))
            {
                return Err(format!(
                    "[docker.components] names a {} image, but on an HPC stack the hub starts the proxy in its own container and labs run on the compute nodes (name their images under [docker.components] hub and [docker.hosts])",
                    role.as_str()
                ));
            }
        } else {
            components.insert(
                ContainerRole::Proxy,
                (hub_host.clone(), component_image(ContainerRole::Proxy)),
            );
            components.insert(
                ContainerRole::Lab,
                (
                    self.topology.lab_host.clone(),
                    component_image(ContainerRole::Lab),
                ),
            );
        }
        match self
            .enterprise
            .as_ref()
            .and_then(|e| e.egress_host.as_ref())
        {
            Some(egress) => {
                components.insert(
                    ContainerRole::Mitmproxy,
                    (egress.clone(), component_image(ContainerRole::Mitmproxy)),
                );
            }
            None if self
                .docker
                .components
                .contains_key(&ContainerRole::Mitmproxy) =>
            {
                return Err("[docker.components] names a mitmproxy image, but the stack has no enterprise.egress_host to run it on".into());
            }
            None => {}
        }
        Ok(DockerImages {
            hosts: hosts
                .into_iter()
                .map(|h| {
                    let image = self.docker.hosts.get(&h).map_or(fallback, String::as_str);
                    let image = image.to_string();
                    (h, image)
                })
                .collect(),
            components,
            ids: std::collections::BTreeMap::new(),
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|cause| HarnessError::StackFileUnreadable {
                path: path.to_path_buf(),
                cause,
            })?;
        let invalid = |path: &Path, e: toml::de::Error| HarnessError::StackFileInvalid {
            path: path.to_path_buf(),
            message: format!(
                "{} (fix: see fixtures/stacks/example.toml for every accepted key)",
                one_line(&e.to_string())
            ),
        };
        let mut spec: Self = toml::from_str(&text).map_err(|e| invalid(path, e))?;
        if let Some(file) = spec.topology_file.clone() {
            let inline = toml::from_str::<toml::Table>(&text)
                .map(|t| t.contains_key("topology"))
                .unwrap_or(false);
            if inline {
                return Err(HarnessError::StackFileInvalid {
                    path: path.to_path_buf(),
                    message: "both `topology_file` and a `[topology]` table: keep one".into(),
                });
            }
            let topology_path = path.parent().unwrap_or(Path::new(".")).join(file);
            let text = std::fs::read_to_string(&topology_path).map_err(|cause| {
                HarnessError::StackFileUnreadable {
                    path: topology_path.clone(),
                    cause,
                }
            })?;
            spec.topology = toml::from_str(&text).map_err(|e| invalid(&topology_path, e))?;
        }
        let here = path.parent().unwrap_or(Path::new("."));
        for (section, files) in [
            ("proxy", &spec.proxy.config_files),
            ("lab", &spec.lab.config_files),
        ] {
            if !files.is_empty() {
                return Err(HarnessError::StackFileInvalid {
                    path: path.to_path_buf(),
                    message: format!("[{section}] config_files: only the hub takes config files (fix: put them under [hub]; the proxy takes command-line options, the lab its `args`)"),
                });
            }
        }
        for file in [
            &mut spec.pki.public_cert,
            &mut spec.pki.public_key,
            &mut spec.pki.public_ca,
        ]
        .into_iter()
        .flatten()
        {
            *file = here.join(&*file);
        }
        crate::pki::check_supplied_public(
            spec.pki.public_cert.as_deref(),
            spec.pki.public_key.as_deref(),
            spec.pki.public_ca.as_deref(),
            spec.topology.hpc.is_some(),
        )
        .map_err(|message| HarnessError::StackFileInvalid {
            path: path.to_path_buf(),
            message,
        })?;
        for file in &mut spec.hub.config_files {
            *file = here.join(&*file);
            if !file.is_file() {
                return Err(HarnessError::StackFileInvalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "[hub] config_files: {} does not exist (fix: a path relative to the stack file)",
                        file.display()
                    ),
                });
            }
        }
        spec.validate().map_err(|message| HarnessError::StackFileInvalid {
            path: path.to_path_buf(),
            message: format!("{message} (fix: edit the stack file; fixtures/stacks/example.toml shows every key)"),
        })?;
        Ok(spec)
    }

    /// Checks what serde cannot: references between fields.
    pub fn validate(&self) -> std::result::Result<(), String> {
        // The stack file's environment wins over hubtrust's defaults, but
        // not over the variables hubtrust runs the stack by.
        for (section, env) in [
            ("hub", &self.hub.env),
            ("proxy", &self.proxy.env),
            ("lab", &self.lab.env),
        ] {
            if let Some(name) = env.keys().find(|k| k.starts_with("HUBTRUST_")) {
                return Err(format!(
                    "[{section}] env sets {name}: HUBTRUST_* variables are hubtrust's own (they mark the run's processes for cleanup and carry its tokens), so the stack cannot run with another value (fix: remove it)"
                ));
            }
        }
        let t = &self.topology;
        let all_hosts = t.all_hosts();
        for (what, host) in [("hub_host", &t.hub_host), ("lab_host", &t.lab_host)] {
            if !all_hosts.contains(host) {
                return Err(format!(
                    "topology.{what} = {host:?} is not one of topology.hosts {:?}",
                    all_hosts
                ));
            }
        }
        if let Some(hpc) = &t.hpc {
            if hpc.login_nodes.is_empty() || hpc.compute_nodes.is_empty() {
                return Err(
                    "topology.hpc needs at least one login node and one compute node".into(),
                );
            }
            if !hpc.compute_nodes.contains(&t.lab_host) {
                return Err(format!(
                    "topology.lab_host = {:?} is not one of topology.hpc.compute_nodes {:?}: on an HPC site labs run on compute nodes",
                    t.lab_host, hpc.compute_nodes
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(dup) = all_hosts.iter().find(|h| !seen.insert(*h)) {
                return Err(format!("host {dup:?} is named twice in the topology"));
            }
            if let Some(bad) = all_hosts.iter().find(|h| {
                h.is_empty()
                    || h.len() > 12
                    || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }) {
                return Err(format!(
                    "host name {bad:?} must be 1-12 ASCII letters, digits and dashes"
                ));
            }
        } else if t.lab_host != t.hub_host
            && !t.links.iter().any(|[a, b]| {
                (a == &t.lab_host && b == &t.hub_host) || (b == &t.lab_host && a == &t.hub_host)
            })
        {
            return Err(format!(
                "labs on `{}` but the hub on `{}`, with no link between them: add [{:?}, {:?}] to topology.links",
                t.lab_host, t.hub_host, t.hub_host, t.lab_host
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
        self.tls_policy.validate()?;
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
        if all_hosts.iter().any(|h| h == "operator") {
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
    fn a_tls_policy_exception_needs_a_reason() {
        let err = parse("[tls_policy]\nexceptions = [{ endpoint = \"hub API\", allow = [\"TLSv1.1\"], reason = \"\" }]\n").unwrap_err();
        assert!(err.contains("`hub API` gives no reason"), "{err}");
    }

    #[test]
    fn the_hpc_topology_derives_its_links_and_a_login_node_is_one_name() {
        let text = include_str!("../../fixtures/topologies/hpc.toml");
        let topology: Topology = toml::from_str(text).unwrap();
        let spec = StackSpec {
            topology: topology.clone(),
            ..StackSpec::default()
        };
        spec.validate().unwrap();
        assert_eq!(
            topology.all_hosts(),
            ["hub", "login-1", "login-2", "compute-1"]
        );
        let links = topology.all_links();
        assert!(links.contains(&["hub".into(), "login-1".into()]));
        assert!(links.contains(&["compute-1".into(), "login-2".into()]));
        assert!(!links
            .iter()
            .any(|[a, b]| (a == "hub" && b == "compute-1") || (a == "compute-1" && b == "hub")));
        let mut grown = topology.clone();
        if let Some(hpc) = grown.hpc.as_mut() {
            hpc.login_nodes.push("login-3".into());
        }
        assert_eq!(grown.all_links().len(), links.len() + 2);
        let mut wrong = spec.clone();
        wrong.topology.lab_host = "hub".into();
        assert!(wrong.validate().unwrap_err().contains("compute nodes"));
    }

    #[test]
    fn labs_on_their_own_host_need_a_link_to_the_hub_and_the_docker_backend() {
        let unlinked = "[topology]\nhosts = [\"hub\", \"labs\"]\nlab_host = \"labs\"\n";
        let err = parse(unlinked).unwrap_err();
        assert!(err.contains("[\"hub\", \"labs\"]"), "{err}");
        let spec = parse(&format!("{unlinked}links = [[\"hub\", \"labs\"]]\n")).unwrap();
        let why = spec.local_unsupported().unwrap();
        assert!(why.contains("`labs`"), "{why}");
        assert!(StackSpec::default().local_unsupported().is_none());
    }

    #[test]
    fn an_hpc_stack_on_docker_has_a_hub_container_and_node_hosts() {
        let spec = parse(
            "[topology]\nhosts = [\"hub\"]\nlab_host = \"compute-1\"\n\
             [topology.hpc]\nlogin_nodes = [\"login-1\"]\ncompute_nodes = [\"compute-1\"]\n\
             [docker.hosts]\ncompute-1 = \"site/compute:1\"\n",
        )
        .unwrap();
        let images = spec.docker_images("hubtrust/runtime:x").unwrap();
        // The hub starts the proxy; labs are processes on compute nodes.
        assert_eq!(
            images.components.keys().collect::<Vec<_>>(),
            [&ContainerRole::Hub]
        );
        assert_eq!(images.hosts["compute-1"], "site/compute:1");
        assert_eq!(images.hosts["login-1"], "hubtrust/runtime:x");
        let mut with_proxy = spec.clone();
        with_proxy
            .docker
            .components
            .insert(ContainerRole::Proxy, "vendor/chp:5".into());
        let err = with_proxy.docker_images("hubtrust/runtime:x").unwrap_err();
        assert!(err.contains("names a proxy image"), "{err}");
    }

    #[test]
    fn lab_host_must_exist() {
        let err = parse("[topology]\nhosts = [\"hub\"]\nlab_host = \"compute-1\"\n").unwrap_err();
        assert!(err.contains("compute-1"), "{err}");
    }

    #[test]
    fn each_docker_host_gets_its_own_image_else_the_stacks_else_the_default() {
        let spec = parse(
            "[topology]\nhosts = [\"hub\", \"internet\"]\n\
             [docker]\nimage = \"vendor/all:1\"\n[docker.hosts]\nhub = \"vendor/hub:2\"\n",
        )
        .unwrap();
        let images = spec.docker_images("hubtrust/runtime:x").unwrap();
        assert_eq!(images.hosts["hub"], "vendor/hub:2");
        assert_eq!(images.hosts["internet"], "vendor/all:1");
        let images = StackSpec::default()
            .docker_images("hubtrust/runtime:x")
            .unwrap();
        assert_eq!(images.hosts["hub"], "hubtrust/runtime:x");
        assert_eq!(images.distinct().len(), 1);
        let stray = parse("[docker.hosts]\nlogin-9 = \"vendor/hub:2\"\n").unwrap();
        let err = stray.docker_images("hubtrust/runtime:x").unwrap_err();
        assert!(err.contains("login-9"), "{err}");
    }

    #[test]
    fn each_component_gets_its_own_image_on_its_host() {
        let spec = parse(
            "[topology]\nhosts = [\"hub\", \"internet\", \"egress\"]\n\
             links = [[\"hub\", \"internet\"], [\"hub\", \"egress\"], [\"egress\", \"internet\"]]\n\
             [enterprise]\ninternet_host = \"internet\"\negress_host = \"egress\"\n\
             [docker]\nimage = \"vendor/all:1\"\n\
             [docker.components]\nproxy = \"vendor/chp:5\"\nmitmproxy = \"vendor/mitm:11\"\n",
        )
        .unwrap();
        let images = spec.docker_images("hubtrust/runtime:x").unwrap();
        let component = |role| images.components[&role].clone();
        assert_eq!(
            component(ContainerRole::Hub),
            ("hub".into(), "vendor/all:1".into())
        );
        assert_eq!(
            component(ContainerRole::Proxy),
            ("hub".into(), "vendor/chp:5".into())
        );
        assert_eq!(
            component(ContainerRole::Mitmproxy),
            ("egress".into(), "vendor/mitm:11".into())
        );
        assert_eq!(images.distinct().len(), 3);
        let err = parse("[docker.components]\nlabs = \"x\"\n").unwrap_err();
        assert!(
            err.contains("expected one of `hub`, `proxy`, `lab`"),
            "{err}"
        );
        let nowhere = parse("[docker.components]\nmitmproxy = \"x\"\n").unwrap();
        let err = nowhere.docker_images("hubtrust/runtime:x").unwrap_err();
        assert!(err.contains("egress_host"), "{err}");
    }

    #[test]
    fn hubtrusts_own_variables_cannot_be_set_by_the_stack_file() {
        let spec: StackSpec = toml::from_str("[lab.env]\nHUBTRUST_STACK = \"x\"\n").unwrap();
        let err = spec.validate().unwrap_err();
        assert!(err.contains("[lab] env sets HUBTRUST_STACK"), "{err}");
        let ok: StackSpec = toml::from_str("[lab.env]\nNO_PROXY = \"*\"\n").unwrap();
        assert!(ok.validate().is_ok());
    }
}
