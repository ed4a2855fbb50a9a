//! The Kubernetes backends: a kind cluster hubtrust makes and deletes
//! (`--backend kind`), or a fresh namespace of a cluster the user already
//! has (`--backend kubernetes`). On both, the Zero to JupyterHub chart starts
//! hub, proxy and labs; hubtrust renders its values, makes the certificates
//! and the org trust bundle before install, and removes what it made.
//!
//! Everything here is plain data first: a [`Deployment`] renders to a
//! [`plan::KubernetesPlan`] (kind config, chart values, manifests, the
//! commands in order), which `--plan` prints and a run executes. The plan
//! is what the tests here pin; a cluster only ever sees a plan.

pub mod chart;
pub mod command;
pub mod in_cluster;
pub mod inspecting_proxy;
pub mod kind;
pub mod lab_trust;
pub mod names;
mod objects;
pub mod outbound;
pub mod plan;
pub mod pods;
pub mod preflight;
pub mod proxy_wire;
pub mod public_check;
pub mod run;
pub mod secret_modes;
pub mod under_test;
pub mod user_manifests;
pub mod user_values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{HarnessError, Result};
use crate::images::registry::PlatformImage;
use crate::spec::ContainerRole;

/// Where the deployment runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ClusterTarget {
    /// A kind cluster of this name, made for the run and deleted after it.
    Kind { cluster: String },
    /// A cluster that already runs: the kubeconfig given, else kubectl's
    /// default (KUBECONFIG or ~/.kube/config) and its current context.
    Existing { kubeconfig: Option<PathBuf> },
}

impl ClusterTarget {
    /// kubectl's and helm's flags that select this cluster.
    pub fn client_flags(&self) -> Vec<String> {
        match self {
            ClusterTarget::Kind { cluster } => vec!["--context".into(), format!("kind-{cluster}")],
            ClusterTarget::Existing {
                kubeconfig: Some(path),
            } => vec!["--kubeconfig".into(), path.display().to_string()],
            ClusterTarget::Existing { kubeconfig: None } => Vec::new(),
        }
    }

    /// `kind` or `kubernetes`, as `--backend` names it.
    pub fn backend_name(&self) -> &'static str {
        match self {
            ClusterTarget::Kind { .. } => "kind",
            ClusterTarget::Existing { .. } => "kubernetes",
        }
    }
}

/// The chart a run installs and the kind node it runs on
/// (fixtures/kubernetes/z2jh.toml).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChartPins {
    pub chart: ChartSource,
    pub kind: KindPins,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChartSource {
    pub repository: String,
    pub name: String,
    /// An exact version: `4.4.0`, never a range or `latest`.
    pub version: String,
    /// What the chart makes in the run's namespace, as `Kind/name`: the
    /// names a deployment's own objects may not take.
    #[serde(default)]
    pub objects: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KindPins {
    pub node_image: String,
}

/// The pins shipped with hubtrust.
pub const BUILTIN_PINS: &str = include_str!("../../../../fixtures/kubernetes/z2jh.toml");

/// The chart images' list and its lock (`hubtrust images pin
/// fixtures/kubernetes/images.toml`), built in; `--images` names another.
pub const DEFAULT_IMAGE_LIST: &str = "fixtures/kubernetes/images.toml";
pub const BUILTIN_IMAGE_LIST: &str = include_str!("../../../../fixtures/kubernetes/images.toml");
pub const BUILTIN_IMAGE_LOCK: &str = include_str!("../../../../fixtures/kubernetes/images.lock");

impl ChartPins {
    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN_PINS, Path::new("fixtures/kubernetes/z2jh.toml"))
    }

    pub fn parse(text: &str, source: &Path) -> Result<Self> {
        let pins: Self = toml::from_str(text).map_err(|e| HarnessError::StackFileInvalid {
            path: source.to_path_buf(),
            message: e.message().to_string(),
        })?;
        pins.chart.require_pinned(source)?;
        pins.kind.require_pinned(source)?;
        Ok(pins)
    }
}

impl KindPins {
    /// A node image named by tag alone is whatever the tag points at on
    /// the day, as a chart version range is.
    pub fn require_pinned(&self, source: &Path) -> Result<()> {
        match self.node_image.split_once('@') {
            Some((_, digest)) if crate::images::registry::is_digest(digest) => Ok(()),
            _ => Err(HarnessError::StackFileInvalid {
                path: source.to_path_buf(),
                message: format!(
                    "kind node image `{}` is not pinned by digest (fix: name it as kind's release notes do, `kindest/node:vX.Y.Z@sha256:<digest>`)",
                    self.node_image
                ),
            }),
        }
    }
}

/// The name fixtures/known-defects.toml gives the chart (and the
/// KubeSpawner it ships) as a component.
pub const CHART_COMPONENT: &str = "zero-to-jupyterhub";

impl ChartSource {
    /// The chart's version as the known-defects list matches components.
    pub fn component_versions(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(CHART_COMPONENT.to_string(), self.version.clone())])
    }

    /// A version helm would resolve differently tomorrow is refused.
    pub fn require_pinned(&self, source: &Path) -> Result<()> {
        if is_exact_version(&self.version) {
            return Ok(());
        }
        Err(HarnessError::StackFileInvalid {
            path: source.to_path_buf(),
            message: format!(
                "chart version `{}` is not pinned: helm would pick whichever release matches on the day (fix: name one exact release, e.g. `4.4.0`)",
                self.version
            ),
        })
    }
}

/// `MAJOR.MINOR.PATCH` with an optional pre-release, as helm's releases are
/// named; constraints (`^4`, `~4.4`, `>=4`, `4.x`) and `latest` are not.
fn is_exact_version(version: &str) -> bool {
    let (core, pre) = match version.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (version, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && pre.is_none_or(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        })
}

/// What the org trust bundle reaches on Kubernetes, as Nebari wires it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrgTrust {
    /// Whether the ConfigMap exists at all: a spawn without it still
    /// succeeds, with the system bundle alone.
    pub configmap_present: bool,
    /// The gate (`merge_org_bundle`, off by default): without it labs keep
    /// exactly the environment they have without the org bundle.
    pub merge_into_labs: bool,
    /// The hub gets the merged bundle too (its own init container), only
    /// when the stack file says so (`merge_into_hub`).
    pub hub_included: bool,
}

impl OrgTrust {
    pub fn merges_anywhere(&self) -> bool {
        self.merge_into_labs || self.hub_included
    }
}

/// A chart image as the image list names it, and the lock's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChartImage {
    /// `repository:tag`, as listed.
    pub tagged: String,
    /// `sha256:…`; none only in a plan shown before the list is pinned.
    pub digest: Option<String>,
    /// The lock's platforms' images behind the digest: kind's preflight
    /// knows an image loaded from an archive by them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub platforms: BTreeMap<String, PlatformImage>,
}

impl ChartImage {
    /// What pods name. kind loads the tagged image from this machine's
    /// daemon, its digest checked first (an archive loaded by digest
    /// carries no name containerd matches); a cluster of the user's own
    /// pulls by digest.
    pub fn reference_for(&self, target: &ClusterTarget) -> String {
        match (target, &self.digest) {
            (ClusterTarget::Existing { .. }, Some(digest)) => format!("{}@{digest}", self.tagged),
            _ => self.tagged.clone(),
        }
    }
}

/// One deployment, as data: everything the plan is rendered from.
#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub target: ClusterTarget,
    pub namespace: String,
    pub chart: ChartSource,
    pub node_image: String,
    /// The platform of kind's nodes (`linux/amd64`): the one each image
    /// archive is saved for.
    pub node_platform: String,
    /// Each chart image and its pinned digest.
    pub images: BTreeMap<ContainerRole, ChartImage>,
    /// proxy-public's nodePort, mapped to loopback on kind.
    pub public_node_port: u16,
    /// The loopback port the operator reaches proxy-public at (kind only).
    pub public_host_port: u16,
    /// Set when the stack has an `[enterprise]` section: the org trust
    /// bundle as a ConfigMap, merged into each lab's bundle.
    pub org_trust: Option<OrgTrust>,
    /// The run's directory on this machine: values, manifests, certificates.
    pub run_dir: PathBuf,
    /// This machine, as the namespace's [`MADE_ON_LABEL`] names it
    /// ([`this_machine`]).
    pub made_on: String,
    /// The deployment's own chart values (`--values`), installed in order
    /// before hubtrust's.
    #[serde(skip)]
    pub user_values: Vec<user_values::UserValues>,
    /// The deployment's own objects (`--manifests`), applied into the
    /// namespace before the chart that names them.
    #[serde(skip)]
    pub user_manifests: Vec<user_manifests::UserManifests>,
    /// Where the run keeps what it saw, kept after it: every pod's log,
    /// the probes' reports, the captures (`hubtrust-in-cluster/<ns>` for
    /// `up`, `<report>/in-cluster` for `run`).
    pub artifacts_dir: PathBuf,
    /// hubtrust's service token on the hub, in the values only: masked
    /// wherever a plan is shown.
    #[serde(skip)]
    pub service_token: crate::secret::Secret,
    /// CHP's auth token (`hub.config.ConfigurableHTTPProxy.auth_token`),
    /// set by hubtrust so the in-cluster probe can show the proxy API
    /// wants it; masked like the service token.
    #[serde(skip)]
    pub proxy_token: crate::secret::Secret,
    /// The password the dummy authenticator takes at the `@wire` log-in
    /// (`hub.config.DummyAuthenticator.password`), fresh each run; masked
    /// like the tokens.
    #[serde(skip)]
    pub user_password: crate::secret::Secret,
    /// The user whose lab the public-side check spawns.
    pub user: String,
    /// The stack's `[tls_policy]`, which the in-cluster probes judge by.
    pub tls_policy: crate::tls_policy::TlsPolicySpec,
    /// The org-CA and foreign-CA test servers run in the namespace and the
    /// first lab's tools fetch them: only when hubtrust made the org CA
    /// (a stack's own `org_bundle` comes without its key).
    pub outbound_servers: bool,
    /// The image the inspecting proxy runs from, with the internet servers
    /// behind it: the images list's `[mitmproxy]`, or on kind hubtrust's
    /// runtime image. None on a cluster of the user's own without a listed
    /// one, since it cannot pull hubtrust's local image.
    pub proxy_image: Option<ProxyImage>,
}

impl Deployment {
    /// The image the inspecting proxy runs from, when it runs: only with
    /// the outbound servers behind it.
    pub fn inspecting_proxy(&self) -> Option<&ProxyImage> {
        self.proxy_image.as_ref().filter(|_| self.outbound_servers)
    }
}

/// The inspecting proxy's image, as kind loads it or a cluster pulls it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyImage {
    /// hubtrust's local tag (`hubtrust/runtime:<inputs digest>`), or the
    /// images list's `[mitmproxy]` as the cluster takes it (by digest on
    /// one of the user's own).
    pub reference: String,
    /// mitmproxy's `mitmdump` inside it: the list's command, or hubtrust's
    /// own install.
    pub mitmdump: String,
    /// `[enterprise] proxy_args`, after hubtrust's own arguments.
    pub extra_args: Vec<String>,
    /// Listed in the images list: pinned, saved and loaded with the
    /// chart's images rather than built here.
    pub listed: bool,
    /// `[enterprise] proxy_command`: a proxy other than mitmproxy, run in
    /// this image instead of `mitmdump`, under the contract the other
    /// backends give it (`HUBTRUST_PROXY_LISTEN`, `_CA`, `_UPSTREAM_TRUST`).
    pub replacement: Option<Vec<String>>,
}

/// The stack file's settings a Kubernetes run does not apply (yet), each
/// with why, so that none is ignored silently.
pub fn keys_not_applied(spec: &crate::spec::StackSpec) -> Vec<String> {
    let default = crate::spec::StackSpec::default();
    let mut not_applied = Vec::new();
    let mut note = |differs: bool, key: &str, why: &str| {
        if differs {
            not_applied.push(format!("{key} ({why})"));
        }
    };
    note(
        spec.topology != default.topology || spec.topology_file.is_some(),
        "[topology]",
        "the chart places hub, proxy and labs in pods",
    );
    note(
        spec.ports != default.ports,
        "[ports]",
        "the chart's Services fix them",
    );
    for (key, set, defaults) in [
        ("[hub]", &spec.hub, &default.hub),
        ("[proxy]", &spec.proxy, &default.proxy),
        ("[lab]", &spec.lab, &default.lab),
    ] {
        note(
            set != defaults,
            key,
            "component overrides are the other backends'; chart values are rendered by hubtrust",
        );
    }
    note(
        spec.docker != default.docker,
        "[docker]",
        "the docker backend's images",
    );
    note(
        spec.pki != default.pki,
        "[pki]",
        "a deployment's own certificates are not taken on Kubernetes yet",
    );
    if let Some(e) = &spec.enterprise {
        note(
            e.egress_host.is_some(),
            "[enterprise] egress_host",
            "the inspecting proxy runs in its own pod",
        );
        note(
            e.mitmdump.is_some(),
            "[enterprise] mitmdump",
            "a path on this machine; list a mitmproxy image of your own as `[mitmproxy]` in the --images list, with mitmdump's path in it as its command",
        );
    }
    not_applied
}

/// The release name every deployment gets; the chart names its Services
/// `hub`, `proxy-api` and `proxy-public` after no release (hubtrust's
/// values set `fullnameOverride: ""`), which is what KubeSpawner and the
/// certificates use.
pub const RELEASE: &str = "hubtrust";

/// A namespace name hubtrust makes for one run.
pub fn run_namespace(run_id: &str) -> String {
    format!("hubtrust-{}", run_id.to_ascii_lowercase())
}

/// The kind cluster hubtrust makes for one run.
pub fn kind_cluster_name(run_id: &str) -> String {
    format!("hubtrust-{run_id}")
}

/// One run's directory on this machine (its keys among it), under
/// `parent`: a [`crate::workdir::RunDir`], so that a run killed with its
/// reaper leaves it for the next run to sweep.
pub fn run_dir(parent: &Path, target: &ClusterTarget, run_id: &str) -> PathBuf {
    crate::workdir::RunDir::path_for(parent, &format!("{}-{run_id}", target.backend_name()))
}

/// Of the kind clusters `kind get clusters` listed, those hubtrust made
/// for a run that is gone: no live run holds its directory under
/// `parent`. They are left when hubtrust and its reaper were both killed.
pub fn kind_clusters_left(listed: &str, parent: &Path) -> Vec<String> {
    listed
        .lines()
        .map(str::trim)
        .filter(|name| {
            name.strip_prefix("hubtrust-").is_some_and(|id| {
                let target = ClusterTarget::Kind {
                    cluster: name.to_string(),
                };
                !crate::workdir::is_held(&run_dir(parent, &target, id))
            })
        })
        .map(str::to_string)
        .collect()
}

/// The label on every namespace hubtrust creates naming the machine that
/// created it, so that `doctor` judges only its own machine's runs.
pub const MADE_ON_LABEL: &str = "hubtrust.io/made-on";
/// The annotation naming the run's directory on that machine: while a live
/// run holds it, the namespace is in use.
pub const RUN_DIR_ANNOTATION: &str = "hubtrust.io/run-dir";
const MANAGED_BY_HUBTRUST: &str = "app.kubernetes.io/managed-by=hubtrust";

/// This machine, for [`MADE_ON_LABEL`]: a digest of its machine-id (or,
/// without one, of this boot's id), not the id itself, which systemd asks
/// applications not to publish. `None` when neither can be read: then no
/// namespace is ever judged this machine's.
pub fn this_machine() -> Option<String> {
    use sha2::{Digest, Sha256};
    let id = ["/etc/machine-id", "/proc/sys/kernel/random/boot_id"]
        .into_iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|id| id.trim().to_string())
        .find(|id| !id.is_empty())?;
    let digest = Sha256::digest(format!("hubtrust made-on {id}"));
    Some(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

/// kubectl's arguments that list the namespaces hubtrust made, as JSON.
pub const LIST_HUBTRUST_NAMESPACES: [&str; 6] =
    ["get", "namespaces", "-l", MANAGED_BY_HUBTRUST, "-o", "json"];

/// What [`namespaces_left`] found among hubtrust's namespaces.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NamespacesLeft {
    /// Made on this machine for a run that is gone: none holds its directory.
    pub left: Vec<String>,
    /// Made on other machines (or on one without an id): whether their
    /// runs live cannot be told from here.
    pub elsewhere: Vec<String>,
}

/// Of the namespaces `kubectl get namespaces -l
/// app.kubernetes.io/managed-by=hubtrust -o json` listed, those this
/// machine made for runs that are gone (killed with their reaper, or kept
/// with `--keep`).
pub fn namespaces_left(
    listed_json: &str,
    this_machine: Option<&str>,
) -> std::result::Result<NamespacesLeft, String> {
    let listed: serde_json::Value = serde_json::from_str(listed_json)
        .map_err(|e| format!("kubectl's namespace list is not JSON ({e})"))?;
    let items = listed["items"]
        .as_array()
        .ok_or("kubectl's namespace list has no `items`")?;
    let mut found = NamespacesLeft::default();
    for item in items {
        let metadata = &item["metadata"];
        let Some(name) = metadata["name"].as_str() else {
            continue;
        };
        let made_here =
            this_machine.is_some() && metadata["labels"][MADE_ON_LABEL].as_str() == this_machine;
        if !made_here {
            found.elsewhere.push(name.to_string());
            continue;
        }
        let held = metadata["annotations"][RUN_DIR_ANNOTATION]
            .as_str()
            .is_some_and(|dir| crate::workdir::is_held(Path::new(dir)));
        if !held {
            found.left.push(name.to_string());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_chart_versions_count_as_pinned() {
        for pinned in ["4.4.0", "4.0.0-beta.1", "10.20.30"] {
            assert!(is_exact_version(pinned), "{pinned}");
        }
        for loose in [
            "latest", "4", "4.4", "^4.4.0", "~4.4", ">=4.0.0", "4.x", "4.4.*", "", "4.4.0-",
        ] {
            assert!(!is_exact_version(loose), "{loose}");
        }
    }

    /// A cluster of a live run is not named, nor one hubtrust did not
    /// make; one whose run is gone is.
    #[test]
    fn a_kind_cluster_is_left_only_when_its_run_is_gone() {
        let held = tempfile::tempdir().unwrap();
        let live_target = ClusterTarget::Kind {
            cluster: kind_cluster_name("0000live"),
        };
        let _live =
            crate::workdir::RunDir::create_at(&run_dir(held.path(), &live_target, "0000live"))
                .unwrap();
        let listed = "hubtrust-0000dead\nhubtrust-0000live\nkind\nusers-own\n";
        assert_eq!(
            kind_clusters_left(listed, held.path()),
            ["hubtrust-0000dead"]
        );
        assert!(kind_clusters_left("", held.path()).is_empty());
    }

    /// Only this machine's namespaces are judged; one without the run's
    /// directory named, or of a list kubectl did not give, is not passed.
    #[test]
    fn namespaces_are_judged_only_when_this_machine_made_them() {
        let listed = json_list(&[
            ("made-here-no-annotation", Some("aaaa"), None),
            (
                "made-here-dir-gone",
                Some("aaaa"),
                Some("/nonexistent/hubtrust-run-x"),
            ),
            (
                "made-elsewhere",
                Some("bbbb"),
                Some("/nonexistent/hubtrust-run-y"),
            ),
            ("made-before-labels", None, None),
        ]);
        let found = namespaces_left(&listed, Some("aaaa")).unwrap();
        assert_eq!(
            found.left,
            ["made-here-no-annotation", "made-here-dir-gone"]
        );
        assert_eq!(found.elsewhere, ["made-elsewhere", "made-before-labels"]);
        let unknown = namespaces_left(&listed, None).unwrap();
        assert!(unknown.left.is_empty());
        assert_eq!(unknown.elsewhere.len(), 4);
        assert!(namespaces_left("No resources found", Some("aaaa")).is_err());
        assert!(namespaces_left("{}", Some("aaaa")).is_err());
    }

    fn json_list(namespaces: &[(&str, Option<&str>, Option<&str>)]) -> String {
        let items: Vec<serde_json::Value> = namespaces
            .iter()
            .map(|(name, made_on, run_dir)| {
                let mut metadata =
                    serde_json::json!({ "name": name, "labels": {}, "annotations": {} });
                if let Some(made_on) = made_on {
                    metadata["labels"][MADE_ON_LABEL] = (*made_on).into();
                }
                if let Some(dir) = run_dir {
                    metadata["annotations"][RUN_DIR_ANNOTATION] = (*dir).into();
                }
                serde_json::json!({ "metadata": metadata })
            })
            .collect();
        serde_json::json!({ "items": items }).to_string()
    }

    #[test]
    fn this_machine_is_named_by_a_digest_that_stays_the_same() {
        let named = this_machine().expect("a Linux machine has a boot id");
        assert_eq!(named.len(), 16);
        assert!(named.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(this_machine(), Some(named));
    }

    #[test]
    fn the_shipped_pins_load() {
        let pins = ChartPins::builtin().expect("fixtures/kubernetes/z2jh.toml");
        assert_eq!(pins.chart.name, "jupyterhub");
    }

    #[test]
    fn a_kind_node_image_by_tag_alone_names_the_fix() {
        let pinned = BUILTIN_PINS
            .lines()
            .find(|l| l.starts_with("node_image"))
            .unwrap();
        for node_image in [
            "\"kindest/node:v1.33.1\"",
            "\"kindest/node:v1.33.1@sha256:0500\"",
            "\"kindest/node@latest\"",
        ] {
            let text = BUILTIN_PINS.replace(pinned, &format!("node_image = {node_image}"));
            let err = ChartPins::parse(&text, Path::new("z2jh.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("is not pinned by digest") && err.contains("fix:"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_default_stack_is_applied_whole_and_a_topology_is_named() {
        let mut spec = crate::spec::StackSpec::default();
        assert_eq!(keys_not_applied(&spec), Vec::<String>::new());
        spec.topology.lab_host = "labs".into();
        let notes = keys_not_applied(&spec);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].starts_with("[topology]"), "{notes:?}");
    }

    #[test]
    fn an_unpinned_chart_version_names_the_fix() {
        let chart = ChartSource {
            repository: "https://hub.jupyter.org/helm-chart/".into(),
            name: "jupyterhub".into(),
            version: "^4".into(),
            objects: Vec::new(),
        };
        let err = chart
            .require_pinned(Path::new("stack.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`^4` is not pinned") && err.contains("fix:"),
            "{err}"
        );
    }
}
