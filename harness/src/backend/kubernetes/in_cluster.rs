//! The in-cluster prober: two idle pods in the deployment's namespace, one
//! carrying the chart's network-access labels and one without, and a
//! `hubtrust probe` run from each pod's network namespace. The labelled pod
//! is a client the chart's NetworkPolicies let in: the trust matrix and the
//! TLS scan run against the Services from there: the hub API, the proxy API
//! and the first user's lab (KubeSpawner's Service for it). The bare pod is
//! any other pod: none of the three may answer it, so the chart's
//! NetworkPolicies become cells of what is checked. Neither may reach any
//! other port the lab pod listens on (its kernel's).
//!
//! The wire evidence comes from the same place: captures on the hub's and
//! the lab's pods' own interfaces, judged by `judge_wire`.
//!
//! Probes and captures enter pods' network namespaces from this machine
//! (kind's nodes are containers on its docker), so they need no image of
//! their own and no cluster API beyond kubectl; they cannot reach a
//! cluster elsewhere.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use super::names::{dns_names, SERVICES};
use crate::error::HarnessError;
use crate::pki::{CertificateAuthority, Usage, Validity};

/// Where the checks from inside a cluster, and the pods' logs, are kept,
/// under the working directory: `<this>/<namespace>/…`.
pub const REPORTS_DIR: &str = "hubtrust-in-cluster";

/// The label the chart's hub NetworkPolicy admits on port 8081, and the
/// proxy's on its API port; labs admit the hub's label on 8888.
pub const NETWORK_ACCESS_LABELS: [&str; 3] = [
    "hub.jupyter.org/network-access-hub",
    "hub.jupyter.org/network-access-proxy-api",
    "hub.jupyter.org/network-access-singleuser",
];

/// An endpoint reached through its Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceTarget {
    /// What the report calls it.
    pub name: String,
    pub service: String,
    pub port: u16,
}

/// A client certificate from the internal store (or made for the run) and
/// the endpoints the trust graph says accept it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeIdentity {
    pub label: String,
    /// `<store>/<dir>/<dir>.crt` and `.key`, or the run's foreign identity.
    pub store_dir: Option<String>,
    pub accepted_by: Vec<String>,
}

/// An endpoint as one of its real clients reaches it on the chart: the
/// client's identity, its trust bundle in the internal store, and the
/// Service name the chart's config gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RealClientPath {
    pub endpoint: String,
    pub client: String,
    pub bundle: String,
    pub service: String,
    /// Asked for as `<service>.<ns>.svc.cluster.local` (KubeSpawner's lab
    /// URL), not as the bare Service name (the chart's hub config).
    pub qualified: bool,
}

/// One probe from one prober pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedProbe {
    pub pod: String,
    pub labelled: bool,
    /// Versions the probe cannot read from the public side (the chart's),
    /// for the known-defects list.
    pub components: BTreeMap<String, String>,
    /// Each endpoint as its real clients reach it.
    pub real_clients: Vec<RealClientPath>,
    /// Endpoints scanned and presented every identity.
    pub endpoints: Vec<ServiceTarget>,
    /// Endpoints that must not answer this pod.
    pub closed: Vec<ServiceTarget>,
    pub identities: Vec<ProbeIdentity>,
}

impl PlannedProbe {
    /// The kind of pod this prober stands for, as a reachability cell's
    /// place.
    pub fn place(&self) -> String {
        match self.labelled {
            true => format!(
                "a pod the chart's network-access labels admit ({})",
                self.pod
            ),
            false => format!("a pod without those labels ({})", self.pod),
        }
    }
}

/// What the report calls the hub's and CHP's internal APIs.
const HUB_API: &str = "hub API";
const PROXY_API: &str = "proxy API";

/// KubeSpawner's default port for a lab, which its Service exposes.
const LAB_PORT: u16 = 8888;

/// CHP's public port in its pod under `proxy.https` (proxy-public's
/// target port `https`).
const CHP_PUBLIC_PORT: u16 = 8443;

/// The Service KubeSpawner makes for `user`'s lab under internal SSL: its
/// pod's name, from the default `pod_name_template` (`jupyter-{user_server}`)
/// and a user name that needs no escaping, as hubtrust's users do.
pub fn lab_service(user: &str) -> String {
    format!("jupyter-{user}")
}

/// The hub API, the proxy API and `user`'s lab, each behind its Service.
fn internal_services(user: &str) -> Vec<ServiceTarget> {
    let chart = [("hub", HUB_API), ("proxy-api", PROXY_API)]
        .into_iter()
        .map(|(service, name)| ServiceTarget {
            name: name.into(),
            service: service.into(),
            port: SERVICES
                .iter()
                .find(|s| s.service == service)
                .map(|s| s.port)
                .unwrap_or_default(),
        });
    chart
        .chain([ServiceTarget {
            name: lab_name(user),
            service: lab_service(user),
            port: LAB_PORT,
        }])
        .collect()
}

fn lab_name(user: &str) -> String {
    format!("lab of {user}")
}

/// The store directory of a lab certificate hubtrust issues under the
/// store's notebooks-ca, as the hub issues one for any user's lab: what
/// another user's lab presents.
pub const ANOTHER_LAB: &str = "user-hubtrust-another";

/// What the trust matrix calls [`ANOTHER_LAB`]'s certificate.
pub const ANOTHER_LAB_LABEL: &str = "lab cert (another user)";

/// Issues [`ANOTHER_LAB`]'s certificate into the internal store at
/// `internal` (its key 0600), after the chart is installed so the hub's
/// Secret never holds it.
pub fn issue_another_labs_certificate(internal: &Path) -> Result<(), HarnessError> {
    let ca = |ext: &str| {
        let path = internal
            .join("notebooks-ca")
            .join(format!("notebooks-ca.{ext}"));
        std::fs::read_to_string(&path)
            .map_err(|e| HarnessError::io(format!("read {}", path.display()), e))
    };
    let notebooks_ca = CertificateAuthority::adopt("notebooks-ca", &ca("crt")?, &ca("key")?)?;
    notebooks_ca
        .issue(
            ANOTHER_LAB,
            &[ANOTHER_LAB],
            Usage::ServerAndClient,
            Validity::fresh(1),
        )?
        .write_to(&internal.join(ANOTHER_LAB))?;
    Ok(())
}

/// The two probes, with `user`'s lab already running. Who accepts which
/// identity is JupyterHub's internal trust graph, the same one the local
/// and docker backends check: the hub API takes any internal client
/// certificate, the proxy API the hub's and a lab's (`proxy-api-ca_trust`
/// holds hub-ca, services-ca and notebooks-ca), a lab the hub's and the
/// proxy's (`notebooks-ca_trust` holds hub-ca and proxy-client-ca).
/// `components` reaches the probes' known-defects list.
pub fn planned_probes(user: &str, components: &BTreeMap<String, String>) -> Vec<PlannedProbe> {
    let identity = |label: &str, store_dir: Option<&str>, accepted_by: &[&str]| ProbeIdentity {
        label: label.into(),
        store_dir: store_dir.map(str::to_string),
        accepted_by: accepted_by.iter().map(|s| s.to_string()).collect(),
    };
    let lab = lab_name(user);
    let real =
        |endpoint: &str, client: &str, bundle: &str, service: &str, qualified| RealClientPath {
            endpoint: endpoint.into(),
            client: client.into(),
            bundle: bundle.into(),
            service: service.into(),
            qualified,
        };
    // The names the chart's hub config uses (`hub_connect_url`,
    // `api_url`) and KubeSpawner's lab URL; each client's bundle is the
    // one JupyterHub gives it. A lab calls the hub API with a certificate
    // the hub issued under notebooks-ca, as hubtrust's for another user
    // is; its bundle here is JupyterHub's `notebooks-ca_trust.crt`, which
    // KubeSpawner's lab bundle holds and extends.
    let lab_service = lab_service(user);
    let real_clients = vec![
        real(
            HUB_API,
            "proxy-client",
            "proxy-client-ca_trust.crt",
            "hub",
            false,
        ),
        real(
            HUB_API,
            ANOTHER_LAB_LABEL,
            "notebooks-ca_trust.crt",
            "hub",
            false,
        ),
        real(
            PROXY_API,
            "hub-internal",
            "hub-ca_trust.crt",
            "proxy-api",
            false,
        ),
        real(&lab, "hub-internal", "hub-ca_trust.crt", &lab_service, true),
        real(
            &lab,
            "proxy-client",
            "proxy-client-ca_trust.crt",
            &lab_service,
            true,
        ),
    ];
    vec![
        PlannedProbe {
            pod: "hubtrust-prober-labelled".into(),
            labelled: true,
            real_clients,
            endpoints: internal_services(user),
            closed: Vec::new(),
            identities: vec![
                identity(
                    "hub-internal",
                    Some("hub-internal"),
                    &[HUB_API, PROXY_API, &lab],
                ),
                identity("proxy-client", Some("proxy-client"), &[HUB_API, &lab]),
                identity("proxy-api", Some("proxy-api"), &[HUB_API]),
                identity(ANOTHER_LAB_LABEL, Some(ANOTHER_LAB), &[HUB_API, PROXY_API]),
                identity("foreign-CA cert", None, &[]),
            ],
            components: components.clone(),
        },
        PlannedProbe {
            pod: "hubtrust-prober-bare".into(),
            labelled: false,
            real_clients: Vec::new(),
            endpoints: Vec::new(),
            closed: internal_services(user),
            identities: Vec::new(),
            components: components.clone(),
        },
    ]
}

/// The prober pods: idle, unprivileged, from an image the cluster already
/// holds (the hub's), so nothing is pulled.
pub fn prober_pods(namespace: &str, image: &str, probes: &[PlannedProbe]) -> Value {
    let items: Vec<Value> = probes
        .iter()
        .map(|probe| {
            let mut labels = serde_json::Map::new();
            labels.insert("app.kubernetes.io/managed-by".into(), json!("hubtrust"));
            if probe.labelled {
                for label in NETWORK_ACCESS_LABELS {
                    labels.insert(label.into(), json!("true"));
                }
            }
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": { "name": probe.pod, "namespace": namespace, "labels": labels },
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{
                        "name": "idle",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sleep", "infinity"],
                        "securityContext": {
                            "runAsUser": 1000,
                            "runAsNonRoot": true,
                            "allowPrivilegeEscalation": false,
                            "capabilities": { "drop": ["ALL"] },
                        },
                    }],
                },
            })
        })
        .collect();
    json!({ "apiVersion": "v1", "kind": "List", "items": items })
}

/// The pid, as this machine sees it, of a process in the pod with `uid`:
/// the kubelet puts each pod's containers in a cgroup named after the pod's
/// UID (dashes become underscores under the systemd cgroup driver).
pub fn pod_process(proc_root: &Path, uid: &str) -> Option<u32> {
    pod_processes(proc_root, uid).into_iter().next()
}

/// The pid of the pod's process whose command line holds `needle`: a
/// container's own process, whose root is that container's filesystem
/// (the first process of a pod is usually its pause container's).
pub fn pod_process_running(proc_root: &Path, uid: &str, needle: &str) -> Option<u32> {
    pod_processes(proc_root, uid).into_iter().find(|pid| {
        std::fs::read(proc_root.join(pid.to_string()).join("cmdline"))
            .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
            .unwrap_or(false)
    })
}

/// Every process of the pod with `uid`, lowest pid first.
fn pod_processes(proc_root: &Path, uid: &str) -> Vec<u32> {
    if uid.is_empty() {
        return Vec::new();
    }
    let needles = [format!("pod{uid}"), format!("pod{}", uid.replace('-', "_"))];
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.retain(|pid| {
        std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
            .map(|text| needles.iter().any(|n| text.contains(n.as_str())))
            .unwrap_or(false)
    });
    pids
}

/// Files the probe reads.
pub struct ProbeFiles<'a> {
    pub public_ca: &'a Path,
    /// The internal store (`internal-ssl`).
    pub internal: &'a Path,
    /// The run's foreign-CA client certificate and key.
    pub foreign: (&'a Path, &'a Path),
    pub token_file: &'a Path,
    /// CHP's auth token, for the proxy API's token check.
    pub proxy_token_file: &'a Path,
    /// The stack's TLS policy, as `--policy-file` takes it.
    pub policy: &'a Path,
    pub report: PathBuf,
}

/// `hubtrust probe`'s arguments for `probe`, with each Service at its
/// ClusterIP and verified under its in-cluster name, and `also_closed`
/// (named addresses found at run time) added to what must not answer.
/// With `pid`, the probe enters that process's network namespace; without,
/// it runs where it is (copied into the pod).
pub fn probe_args(
    probe: &PlannedProbe,
    namespace: &str,
    pid: Option<u32>,
    cluster_ips: &BTreeMap<String, IpAddr>,
    files: &ProbeFiles<'_>,
    also_closed: &[(String, SocketAddr)],
) -> Result<Vec<String>, String> {
    let at = |service: &str, port: u16| -> Result<SocketAddr, String> {
        cluster_ips
            .get(service)
            .map(|ip| SocketAddr::new(*ip, port))
            .ok_or_else(|| format!("the Service `{service}` has no ClusterIP"))
    };
    let full_name = |service: &str| dns_names(service, namespace)[3].clone();
    let public = SERVICES
        .iter()
        .find(|s| s.service == "proxy-public")
        .map(|s| s.port)
        .unwrap_or(443);
    let mut args: Vec<String> = vec!["probe".into()];
    if let Some(pid) = pid {
        args.extend(["--from-netns-of".into(), pid.to_string()]);
    }
    args.extend([
        "--url".into(),
        format!("https://{}", full_name("proxy-public")),
        "--connect".into(),
        at("proxy-public", public)?.to_string(),
        "--ca".into(),
        files.public_ca.display().to_string(),
        "--token-file".into(),
        files.token_file.display().to_string(),
        "--policy-file".into(),
        files.policy.display().to_string(),
        "--report".into(),
        files.report.display().to_string(),
    ]);
    if !probe.endpoints.is_empty() {
        args.extend([
            "--internal-ca".into(),
            files
                .internal
                .join("hub-ca_trust.crt")
                .display()
                .to_string(),
        ]);
    }
    for endpoint in &probe.endpoints {
        args.push("--endpoint".into());
        args.push(format!(
            "{}={},name={}",
            endpoint.name,
            at(&endpoint.service, endpoint.port)?,
            full_name(&endpoint.service)
        ));
    }
    for identity in &probe.identities {
        let (cert, key) = match &identity.store_dir {
            Some(dir) => {
                let base = files.internal.join(dir).join(dir);
                (
                    base.with_extension("crt").display().to_string(),
                    base.with_extension("key").display().to_string(),
                )
            }
            None => (
                files.foreign.0.display().to_string(),
                files.foreign.1.display().to_string(),
            ),
        };
        let mut spec = format!("{}={cert},{key}", identity.label);
        if !identity.accepted_by.is_empty() {
            spec.push_str(&format!(",accepted-by={}", identity.accepted_by.join("+")));
        }
        args.push("--identity".into());
        args.push(spec);
    }
    for real in &probe.real_clients {
        let name = match real.qualified {
            true => full_name(&real.service),
            false => real.service.clone(),
        };
        args.push("--real-client".into());
        args.push(format!(
            "{}={},bundle={},name={name}",
            real.endpoint,
            real.client,
            files.internal.join(&real.bundle).display()
        ));
    }
    if probe.endpoints.iter().any(|e| e.name == PROXY_API) {
        args.extend([
            "--proxy-api".into(),
            PROXY_API.into(),
            "--proxy-token-file".into(),
            files.proxy_token_file.display().to_string(),
        ]);
    }
    for closed in &probe.closed {
        args.push("--closed".into());
        args.push(format!(
            "{}={}",
            closed.name,
            at(&closed.service, closed.port)?
        ));
    }
    for (name, addr) in also_closed {
        args.push("--closed".into());
        args.push(format!("{name}={addr}"));
    }
    for (component, version) in &probe.components {
        args.push("--component".into());
        args.push(format!("{component}={version}"));
    }
    Ok(args)
}

/// The files of the internal store `probe_args` names for `probe`,
/// relative to the store: what a probe copied into its pod needs of it,
/// and no other key.
pub fn store_files_used(probe: &PlannedProbe) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if !probe.endpoints.is_empty() {
        files.push(PathBuf::from("hub-ca_trust.crt"));
    }
    for dir in probe.identities.iter().filter_map(|i| i.store_dir.as_ref()) {
        let base = Path::new(dir).join(dir);
        files.push(base.with_extension("crt"));
        files.push(base.with_extension("key"));
    }
    files.extend(probe.real_clients.iter().map(|r| PathBuf::from(&r.bundle)));
    files.sort();
    files.dedup();
    files
}

/// The TCP ports a pod listens on, from its `/proc/<pid>/net/tcp` and
/// `tcp6` (any process in the pod shares its network namespace): the
/// kernel's ZMQ ports among them, which no other pod may reach.
pub fn listening_ports(proc_net_tcp: &[&str]) -> Vec<u16> {
    const LISTEN: &str = "0A";
    let mut ports: Vec<u16> = proc_net_tcp
        .iter()
        .flat_map(|table| table.lines().skip(1))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state) = (fields.get(1)?, fields.get(3)?);
            if *state != LISTEN {
                return None;
            }
            let (_, port) = local.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Every port `user`'s lab pod listens on besides the lab's own, at the
/// pod's address: what the chart's singleuser NetworkPolicy (which admits
/// the lab port alone) and the kernel's loopback binding keep from every
/// other pod, the labelled prober included.
pub fn lab_ports_closed(
    user: &str,
    pod_ip: IpAddr,
    listening: &[u16],
) -> Vec<(String, SocketAddr)> {
    listening
        .iter()
        .filter(|port| **port != LAB_PORT)
        .map(|port| {
            (
                format!("port {port} of {user}'s lab pod"),
                SocketAddr::new(pod_ip, *port),
            )
        })
        .collect()
}

/// A connection a capture must see, carrying data, for its evidence to
/// count: into the captured pod, or from it to a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ExpectedFlow {
    /// A client connected to the captured pod on this port.
    Into { port: u16 },
    /// The captured pod connected to this Service (named as the census
    /// names its ClusterIP) on this port.
    To { service: String, port: u16 },
}

/// A pod whose own interface is captured for wire evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WireCapture {
    /// What the report calls it.
    pub what: String,
    /// The `kubectl get pods -l` selector that finds it.
    pub selector: String,
    /// Captured from before the first lab's spawn (the pod exists then),
    /// so the spawn's own connections are seen.
    pub across_spawn: bool,
    pub expected: Vec<ExpectedFlow>,
}

/// The hub's pod, from before the spawn: the proxy's requests into the
/// hub API, the hub's calls to the proxy API (the lab's route) and to the
/// new lab (waiting for it to answer). The proxy's pod, from before the
/// spawn too: the same flows from its side, and users' requests. `user`'s
/// lab pod, once it runs: the proxy's requests into it. Pod to pod, before
/// any node rewrites them.
/// The selectors are the chart's legacy `component` label and
/// KubeSpawner's labels for a lab.
pub fn planned_wire(user: &str) -> Vec<WireCapture> {
    let port_of = |service: &str| {
        SERVICES
            .iter()
            .find(|s| s.service == service)
            .map(|s| s.port)
            .unwrap_or_default()
    };
    vec![
        WireCapture {
            what: "the hub".into(),
            selector: "component=hub".into(),
            across_spawn: true,
            expected: vec![
                ExpectedFlow::Into {
                    port: port_of("hub"),
                },
                ExpectedFlow::To {
                    service: "proxy-api".into(),
                    port: port_of("proxy-api"),
                },
                ExpectedFlow::To {
                    service: lab_service(user),
                    port: LAB_PORT,
                },
            ],
        },
        // CHP's pod: its public port (users through the nodePort, and
        // kubelet's probes, which are HTTPS under `proxy.https.type:
        // secret`), its API (the hub), and its own connections to the hub
        // and the lab it routes to.
        WireCapture {
            what: "the proxy".into(),
            selector: "component=proxy".into(),
            across_spawn: true,
            expected: vec![
                ExpectedFlow::Into {
                    port: CHP_PUBLIC_PORT,
                },
                ExpectedFlow::Into {
                    port: port_of("proxy-api"),
                },
                ExpectedFlow::To {
                    service: "hub".into(),
                    port: port_of("hub"),
                },
                ExpectedFlow::To {
                    service: lab_service(user),
                    port: LAB_PORT,
                },
            ],
        },
        WireCapture {
            what: format!("{user}'s lab"),
            selector: format!("component=singleuser-server,hub.jupyter.org/username={user}"),
            across_spawn: false,
            expected: vec![ExpectedFlow::Into { port: LAB_PORT }],
        },
    ]
}

/// What the captures on pods' own interfaces say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodWire {
    /// Every expected connection was seen, and every flow was TLS 1.2 or
    /// newer.
    Encrypted(String),
    /// The evidence cannot be trusted, or misses a connection: why.
    Inconclusive(String),
    /// Flows that crossed a pod's interface unprotected.
    Plaintext(Vec<String>),
}

/// The verdict on what captures saw, with each `(pod, expected flows)`.
/// A plaintext flow is a finding even when a capture missed packets; a
/// capture that missed packets, or an expected connection not seen, is
/// never a pass.
pub fn judge_wire(
    census: &crate::capture::WireCensus,
    expected: &[(String, Vec<ExpectedFlow>)],
) -> PodWire {
    let plaintext: Vec<String> = census
        .unprotected(&[])
        .iter()
        .map(|flow| flow.describe())
        .collect();
    if !plaintext.is_empty() {
        return PodWire::Plaintext(plaintext);
    }
    let inconclusive = census.inconclusive();
    if !inconclusive.is_empty() {
        return PodWire::Inconclusive(inconclusive.join("; "));
    }
    let mut seen = Vec::new();
    for (pod, flows) in expected {
        for flow in flows {
            let (client, server, port, said) = match flow {
                ExpectedFlow::Into { port } => {
                    (None, pod.as_str(), *port, format!("into {pod}:{port}"))
                }
                ExpectedFlow::To { service, port } => (
                    Some(pod.as_str()),
                    service.as_str(),
                    *port,
                    format!("from {pod} to {service}:{port}"),
                ),
            };
            let matching: Vec<String> = census
                .flows
                .iter()
                .filter(|f| {
                    f.server_host == server
                        && f.server_port == port
                        && client.is_none_or(|c| f.client_host == c)
                        && f.class != crate::capture::FlowClass::Empty
                })
                .map(|f| {
                    format!(
                        "{} → {}:{} {}",
                        f.client_host, f.server_host, f.server_port, f.label
                    )
                })
                .collect();
            if matching.is_empty() {
                return PodWire::Inconclusive(format!(
                    "no connection {said} that carried data was seen on its interface"
                ));
            }
            seen.extend(matching);
        }
    }
    seen.sort();
    seen.dedup();
    PodWire::Encrypted(seen.join(", "))
}

/// `name=IP` lines, as `kubectl get services|pods -o jsonpath` prints
/// them (a headless Service's `None`, a pod with no address yet, left out).
pub fn parse_cluster_ips(text: &str) -> BTreeMap<String, IpAddr> {
    text.lines()
        .filter_map(|line| {
            let (name, ip) = line.trim().split_once('=')?;
            Some((name.to_string(), ip.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_labelled_pod_carries_the_network_access_labels() {
        let pods = prober_pods(
            "hubtrust-x",
            "hub:1",
            &planned_probes("alice", &BTreeMap::new()),
        );
        let items = pods["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        for label in NETWORK_ACCESS_LABELS {
            assert_eq!(items[0]["metadata"]["labels"][label], "true");
            assert!(items[1]["metadata"]["labels"].get(label).is_none());
        }
        assert_eq!(items[1]["spec"]["automountServiceAccountToken"], false);
    }

    #[test]
    fn the_bare_pod_must_find_the_internal_apis_closed() {
        let probes = planned_probes("alice", &BTreeMap::new());
        let bare = probes.iter().find(|p| !p.labelled).unwrap();
        let closed: Vec<&str> = bare.closed.iter().map(|c| c.service.as_str()).collect();
        assert_eq!(closed, ["hub", "proxy-api", "jupyter-alice"]);
        assert!(bare.endpoints.is_empty() && bare.identities.is_empty());
    }

    #[test]
    fn a_pod_is_found_by_its_uid_in_either_cgroup_driver_layout() {
        let held = tempfile::tempdir().unwrap();
        let root = held.path();
        let cgroup = |pid: u32, text: &str| {
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup"), text).unwrap();
        };
        cgroup(10, "0::/system.slice/docker-abc.scope/init.scope\n");
        cgroup(
            20,
            "0::/system.slice/docker-abc.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod1b2c_33d4.slice/cri-containerd-f00.scope\n",
        );
        cgroup(30, "0::/kubepods/besteffort/pod9e8d-7c6b/f00\n");
        std::fs::create_dir_all(root.join("self")).unwrap();
        assert_eq!(pod_process(root, "1b2c-33d4"), Some(20));
        assert_eq!(pod_process(root, "9e8d-7c6b"), Some(30));
        assert_eq!(pod_process(root, "0000-1111"), None);
        assert_eq!(pod_process(root, ""), None);
        // The pod's pause process comes first; its lab, by command line.
        cgroup(31, "0::/kubepods/besteffort/pod9e8d-7c6b/f01\n");
        std::fs::write(root.join("30/cmdline"), "/pause\0").unwrap();
        std::fs::write(
            root.join("31/cmdline"),
            "/opt/conda/bin/python3\0/opt/conda/bin/jupyterhub-singleuser\0",
        )
        .unwrap();
        assert_eq!(
            pod_process_running(root, "9e8d-7c6b", "jupyterhub-singleuser"),
            Some(31)
        );
        assert_eq!(pod_process_running(root, "9e8d-7c6b", "jupyterhub "), None);
    }

    #[test]
    fn a_probe_copied_into_its_pod_gets_exactly_the_store_files_its_arguments_name() {
        let ips = parse_cluster_ips(
            "hub=10.96.0.11\nproxy-api=10.96.0.12\nproxy-public=10.96.0.13\njupyter-alice=10.96.0.14\n",
        );
        let files = ProbeFiles {
            public_ca: Path::new("/tmp/hubtrust/public-ca.crt"),
            internal: Path::new("/tmp/hubtrust/internal-ssl"),
            foreign: (
                Path::new("/tmp/hubtrust/foreign.crt"),
                Path::new("/tmp/hubtrust/foreign.key"),
            ),
            token_file: Path::new("/tmp/hubtrust/token"),
            proxy_token_file: Path::new("/tmp/hubtrust/proxy-token"),
            policy: Path::new("/tmp/hubtrust/tls-policy.toml"),
            report: PathBuf::from("/tmp/hubtrust/report"),
        };
        let chart = BTreeMap::from([("zero-to-jupyterhub".to_string(), "4.4.0".to_string())]);
        let probes = planned_probes("alice", &chart);
        let args = probe_args(&probes[0], "ns", None, &ips, &files, &[]).unwrap();
        let line = args.join(" ");
        assert!(line.starts_with("probe --url "), "{args:?}");
        // The chart's version reaches the probe's known-defects list, and
        // the trust graph's expectations for a lab's and the proxy API's
        // certificates go with them.
        assert!(
            line.contains("--component zero-to-jupyterhub=4.4.0"),
            "{line}"
        );
        assert!(
            line.contains(&format!(
                "--identity lab cert (another user)=/tmp/hubtrust/internal-ssl/{ANOTHER_LAB}/{ANOTHER_LAB}.crt,/tmp/hubtrust/internal-ssl/{ANOTHER_LAB}/{ANOTHER_LAB}.key,accepted-by=hub API+proxy API"
            )),
            "{line}"
        );
        assert!(
            line.contains("proxy-api.key,accepted-by=hub API --identity"),
            "{line}"
        );
        let named: std::collections::BTreeSet<PathBuf> = args
            .iter()
            .flat_map(|a| a.split([',', '=']))
            .filter_map(|piece| piece.strip_prefix("/tmp/hubtrust/internal-ssl/"))
            .map(PathBuf::from)
            .collect();
        let copied: std::collections::BTreeSet<PathBuf> =
            store_files_used(&probes[0]).into_iter().collect();
        assert_eq!(named, copied);
        assert_eq!(copied.len(), 11, "{copied:?}");
        // The CAs' own keys never leave this machine.
        assert!(copied
            .iter()
            .all(|f| !f.display().to_string().contains("-ca/")));
        assert!(store_files_used(&probes[1]).is_empty());
    }

    #[test]
    fn another_labs_certificate_is_issued_by_the_stores_notebooks_ca_its_key_0600() {
        use std::os::unix::fs::PermissionsExt;
        let held = tempfile::tempdir().unwrap();
        let store = held.path();
        let notebooks_ca = CertificateAuthority::root("notebooks-ca").unwrap();
        let ca_dir = store.join("notebooks-ca");
        std::fs::create_dir_all(&ca_dir).unwrap();
        std::fs::write(ca_dir.join("notebooks-ca.crt"), notebooks_ca.cert_pem()).unwrap();
        std::fs::write(ca_dir.join("notebooks-ca.key"), notebooks_ca.signing_pem()).unwrap();
        issue_another_labs_certificate(store).unwrap();
        let base = store.join(ANOTHER_LAB).join(ANOTHER_LAB);
        let key = base.with_extension("key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leaf =
            openssl::x509::X509::from_pem(&std::fs::read(base.with_extension("crt")).unwrap())
                .unwrap();
        let ca = openssl::x509::X509::from_pem(notebooks_ca.cert_pem().as_bytes()).unwrap();
        assert!(leaf.verify(&ca.public_key().unwrap()).unwrap());
        assert_eq!(
            leaf.issuer_name().to_der().unwrap(),
            ca.subject_name().to_der().unwrap()
        );
        // Without the store's notebooks-ca, nothing is issued.
        let empty = store.join("empty");
        let err = issue_another_labs_certificate(&empty)
            .unwrap_err()
            .to_string();
        assert!(err.contains("notebooks-ca.crt"), "{err}");
    }

    #[test]
    fn the_labelled_probe_verifies_each_service_under_its_in_cluster_name() {
        let ips = parse_cluster_ips(
            "hub=10.96.0.11\nproxy-api=10.96.0.12\nproxy-public=10.96.0.13\njupyter-alice=10.96.0.14\nheadless=None\n",
        );
        assert!(!ips.contains_key("headless"));
        let files = ProbeFiles {
            public_ca: Path::new("/run/public-ca.crt"),
            internal: Path::new("/run/internal-ssl"),
            foreign: (Path::new("/run/foreign.crt"), Path::new("/run/foreign.key")),
            token_file: Path::new("/run/token"),
            proxy_token_file: Path::new("/run/proxy-token"),
            policy: Path::new("/run/tls-policy.toml"),
            report: PathBuf::from("/out/labelled"),
        };
        let probes = planned_probes("alice", &BTreeMap::new());
        let args = probe_args(&probes[0], "ns", Some(4242), &ips, &files, &[]).unwrap();
        let line = args.join(" ");
        assert!(line.starts_with("probe --from-netns-of 4242 --url https://proxy-public.ns.svc.cluster.local --connect 10.96.0.13:443"), "{line}");
        assert!(
            line.contains("--endpoint hub API=10.96.0.11:8081,name=hub.ns.svc.cluster.local"),
            "{line}"
        );
        assert!(
            line.contains(
                "--endpoint lab of alice=10.96.0.14:8888,name=jupyter-alice.ns.svc.cluster.local"
            ),
            "{line}"
        );
        assert!(line.contains("--identity hub-internal=/run/internal-ssl/hub-internal/hub-internal.crt,/run/internal-ssl/hub-internal/hub-internal.key,accepted-by=hub API+proxy API+lab of alice"), "{line}");
        assert!(line.contains("--identity proxy-client=/run/internal-ssl/proxy-client/proxy-client.crt,/run/internal-ssl/proxy-client/proxy-client.key,accepted-by=hub API+lab of alice"), "{line}");
        assert!(
            line.contains("--identity foreign-CA cert=/run/foreign.crt,/run/foreign.key"),
            "{line}"
        );
        assert!(
            line.contains("--proxy-api proxy API --proxy-token-file /run/proxy-token"),
            "{line}"
        );
        // Each client as the chart's config has it connect.
        for real in [
            "--real-client hub API=proxy-client,bundle=/run/internal-ssl/proxy-client-ca_trust.crt,name=hub ",
            "--real-client hub API=lab cert (another user),bundle=/run/internal-ssl/notebooks-ca_trust.crt,name=hub ",
            "--real-client proxy API=hub-internal,bundle=/run/internal-ssl/hub-ca_trust.crt,name=proxy-api ",
            "--real-client lab of alice=hub-internal,bundle=/run/internal-ssl/hub-ca_trust.crt,name=jupyter-alice.ns.svc.cluster.local ",
            "--real-client lab of alice=proxy-client,bundle=/run/internal-ssl/proxy-client-ca_trust.crt,name=jupyter-alice.ns.svc.cluster.local ",
        ] {
            assert!(line.contains(real), "{real} in {line}");
        }
        // The names the hub and CHP ask for are among the internal
        // certificates' alternative names.
        let alt_names = crate::backend::kubernetes::names::trusted_alt_names("ns");
        for real in probes[0].real_clients.iter().filter(|r| !r.qualified) {
            let name = format!("DNS:{}", real.service);
            assert!(alt_names.contains(&name), "{name} not in {alt_names:?}");
        }
        let kernel = lab_ports_closed("alice", "10.244.1.7".parse().unwrap(), &[8888, 35001]);
        let bare = probe_args(&probes[1], "ns", Some(4243), &ips, &files, &kernel).unwrap();
        let bare = bare.join(" ");
        assert!(
            bare.contains("--closed proxy API=10.96.0.12:8001"),
            "{bare}"
        );
        assert!(
            bare.contains("--closed port 35001 of alice's lab pod=10.244.1.7:35001"),
            "{bare}"
        );
        assert!(!bare.contains("10.244.1.7:8888"), "{bare}");
        assert!(!bare.contains("--proxy-api"), "{bare}");
        // Both judge TLS by the stack's policy, exceptions included.
        for args in [&line, &bare] {
            assert!(
                args.contains("--policy-file /run/tls-policy.toml"),
                "{args}"
            );
        }
        let missing =
            probe_args(&probes[1], "ns", Some(1), &BTreeMap::new(), &files, &[]).unwrap_err();
        assert!(missing.contains("proxy-public"), "{missing}");
    }

    #[test]
    fn the_ports_a_process_listens_on_are_read_from_its_proc_net_tcp() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let tcp = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
        let tcp6 = std::fs::read_to_string("/proc/self/net/tcp6").unwrap_or_default();
        assert!(listening_ports(&[&tcp, &tcp6]).contains(&port));
        drop(listener);
        // An established connection (state 01) is not a listener.
        let table = "  sl  local_address rem_address   st\n   0: 0100007F:22B8 00000000:0000 0A\n   1: 0100007F:9C41 0100007F:22B8 01\n";
        assert_eq!(listening_ports(&[table]), [8888]);
    }

    #[test]
    fn the_hub_and_proxy_pods_are_captured_across_the_spawn_and_the_lab_pod_after_it() {
        let wire = planned_wire("alice");
        assert_eq!(wire[0].selector, "component=hub");
        assert!(wire[0].across_spawn);
        assert_eq!(
            wire[0].expected,
            [
                ExpectedFlow::Into { port: 8081 },
                ExpectedFlow::To {
                    service: "proxy-api".into(),
                    port: 8001
                },
                ExpectedFlow::To {
                    service: "jupyter-alice".into(),
                    port: 8888
                },
            ]
        );
        assert_eq!(wire[1].selector, "component=proxy");
        assert!(wire[1].across_spawn);
        assert_eq!(
            wire[1].expected,
            [
                ExpectedFlow::Into { port: 8443 },
                ExpectedFlow::Into { port: 8001 },
                ExpectedFlow::To {
                    service: "hub".into(),
                    port: 8081
                },
                ExpectedFlow::To {
                    service: "jupyter-alice".into(),
                    port: 8888
                },
            ]
        );
        assert_eq!(
            wire[2].selector,
            "component=singleuser-server,hub.jupyter.org/username=alice"
        );
        assert!(!wire[2].across_spawn);
        assert_eq!(wire[2].expected, [ExpectedFlow::Into { port: 8888 }]);
    }
}
