//! A chart-started deployment as the scenarios see it. What this
//! machine can ask through the public side it asks when the step runs.
//! What only a pod sees (the trust matrix, from the labelled prober) or
//! only root on the node (the hub's certificate store) is what the run
//! observed there earlier, handed in. What nothing observed is said as
//! not observed, which a report shows as not run, never as passed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::TcpStream;

use super::outbound;
use super::public_check::PublicAddress;
use super::Deployment;
use crate::enterprise::{MergedBundleTexts, OutboundRuns, Target};
use crate::error::{HarnessError, Result};
use crate::hub_api::{
    check_public_side, log_in_through_form, operator_client, run_cell_through_public_side,
    PublicEntry, PublicSide, PublicSideReport,
};
use crate::inventory::Inventory;
use crate::lab::CellRun;
use crate::matrix::TrustMatrix;
use crate::pki::SYSTEM_STORE;
use crate::probe::ProbeOutcome;
use crate::reachability::ReachCell;
use crate::report::{ChainCheck, ProxyApiCall};
use crate::secret::Secret;
use crate::stack::SecretFile;
use crate::tls_scan::{EndpointScan, TlsPolicySpec};
use crate::under_test::{DeploymentUnderTest, MergedOrgBundle, RunningCapture};

/// What the run observed inside the cluster for a scenario to judge.
#[derive(Debug, Clone)]
pub enum Observation<T> {
    Seen(T),
    /// Meant to be made, and it could not be, with why: the scenario
    /// fails.
    Failed(String),
    /// Not made on this deployment, and why: the scenario is not run.
    NotMade(String),
}

/// What the run observed inside the cluster before the scenarios ran.
pub struct InClusterObservations {
    /// The hub's version, as its API said through the proxy.
    pub hub_version: Option<String>,
    /// The labelled prober's matrix against the Services.
    pub trust_matrix: Observation<TrustMatrix>,
    /// The labelled prober's calls of the proxy API, without and with its
    /// token.
    pub proxy_api: Observation<Vec<ProxyApiCall>>,
    /// The labelled prober's connections as each endpoint's real clients
    /// make them.
    pub chains: Observation<Vec<ChainCheck>>,
    /// The running hub's certificate store.
    pub inventory: Observation<Inventory>,
    /// The hub process's environment, read from its `/proc/<pid>/environ`.
    pub hub_environment: Observation<BTreeMap<String, String>>,
    /// The labelled prober's scan of the public side and the internal
    /// Services.
    pub tls_scan: Observation<Vec<EndpointScan>>,
    /// Both probers' tries of every internal Service: the labelled one is
    /// where the chart's NetworkPolicies admit clients, the bare one any
    /// other pod.
    pub reachability: Observation<Vec<ReachCell>>,
    /// Every tool in the first lab fetching every outbound server, and
    /// what the capture on the inspecting proxy's pod showed of them.
    pub outbound_tools: Observation<OutboundRuns>,
    /// The captures of the pods' own interfaces, which only hubtrust's
    /// command makes (entering the pods' network namespaces as root).
    pub captures: Observation<Arc<dyn CapturePods>>,
}

/// Captures of the pods' own interfaces, made by hubtrust's command.
#[async_trait::async_trait]
pub trait CapturePods: Send + Sync {
    /// Starts capturing the hub's, the proxy's and the first lab's pods,
    /// the pcaps going into `dir`; returns once every capture listens.
    async fn start(&self, dir: &Path) -> Result<Box<dyn RunningCapture>>;
}

/// Where and as whom this machine reaches the deployment's public side.
pub struct PublicSideAt {
    /// The name its certificate is verified for.
    pub name: String,
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub service_token: Secret,
    /// What the dummy authenticator takes at the log-in.
    pub user_password: Secret,
}

pub struct ChartDeployment {
    user: String,
    http: reqwest::Client,
    public: PublicSideAt,
    observed: InClusterObservations,
    merged: Option<MergedOrgBundle>,
    /// What the org trust ConfigMap holds; None when there is none.
    org_bundle_pem: Option<String>,
    /// The outbound servers hubtrust runs in the namespace, as the
    /// enterprise steps judge them.
    outbound: Observation<Vec<Target>>,
    tls_policy: TlsPolicySpec,
    /// The cluster and namespace the pods run in, for what is asked of
    /// them with kubectl; None when the deployment was handed no cluster.
    cluster: Option<Deployment>,
}

impl ChartDeployment {
    /// The deployment as reached through `public`, which must stay open
    /// while the scenarios run; `org_bundle_pem` is what the run put in
    /// the org trust ConfigMap (when the stack file has one).
    pub fn new(
        deployment: &Deployment,
        public: &PublicAddress,
        observed: InClusterObservations,
        org_bundle_pem: Option<&str>,
    ) -> Result<Self> {
        let ca_path = deployment.run_dir.join("public/public-ca.crt");
        let ca_pem = std::fs::read_to_string(&ca_path)
            .map_err(|e| HarnessError::io(format!("read {}", ca_path.display()), e))?;
        let at = PublicSideAt {
            name: "localhost".into(),
            addr: public.addr,
            ca_pem,
            service_token: deployment.service_token.clone(),
            user_password: deployment.user_password.clone(),
        };
        let merged = deployment
            .org_trust
            .as_ref()
            .filter(|trust| trust.merge_into_labs)
            .map(|trust| MergedOrgBundle {
                path: super::chart::merged_bundle_path(),
                into_hub: trust.hub_included,
                holds_org: trust.configmap_present,
            });
        let ns = &deployment.namespace;
        let outbound = match deployment.outbound_servers {
            true => Observation::Seen(outbound::as_enterprise_targets(
                &outbound::targets(ns, deployment.inspecting_proxy().is_some()),
                ns,
            )),
            false => Observation::NotMade(
                "the run starts no outbound test servers: the stack's own org_bundle comes without the key to sign an org-CA server".into(),
            ),
        };
        let configmap = deployment
            .org_trust
            .as_ref()
            .is_some_and(|trust| trust.configmap_present);
        Ok(Self {
            merged,
            org_bundle_pem: org_bundle_pem.filter(|_| configmap).map(str::to_string),
            outbound,
            tls_policy: deployment.tls_policy.clone(),
            cluster: Some(deployment.clone()),
            ..Self::at(at, &deployment.user, observed)?
        })
    }

    /// The deployment of `user`'s lab, reached through `public`, merging
    /// no org bundle, judged by the default TLS policy.
    pub fn at(public: PublicSideAt, user: &str, observed: InClusterObservations) -> Result<Self> {
        let http = operator_client(
            &[&public.ca_pem],
            &public.name,
            public.addr,
            &public.service_token,
        )?;
        Ok(Self {
            user: user.into(),
            http,
            public,
            observed,
            merged: None,
            org_bundle_pem: None,
            outbound: Observation::NotMade("no outbound servers in this deployment".into()),
            tls_policy: TlsPolicySpec::default(),
            cluster: None,
        })
    }

    /// The same deployment, its labs merging an org bundle at `merged`
    /// from what `org_bundle_pem` holds.
    pub fn merging(self, merged: MergedOrgBundle, org_bundle_pem: Option<String>) -> Self {
        Self {
            merged: Some(merged),
            org_bundle_pem,
            ..self
        }
    }

    /// Kernel `kernel_id`'s ZeroMQ ports and its pod's address, as a cell
    /// in `user`'s lab reads them from the kernel's connection file.
    pub async fn kernel_ports(&self, user: &str, kernel_id: &str) -> Result<KernelPorts> {
        let run = self
            .run_cell(user, &kernel_ports_cell(kernel_id), Duration::from_secs(60))
            .await?;
        run.stdout
            .lines()
            .find_map(|l| l.strip_prefix(KERNEL_PORTS_MARKER))
            .and_then(|json| serde_json::from_str(json).ok())
            .filter(|_| run.status == "ok")
            .ok_or_else(|| HarnessError::CellOutput {
                what: format!("the lab of {user} (kernel {kernel_id}'s connection file)"),
                message: format!("status {}: {}", run.status, run.stdout.trim()),
            })
    }

    fn base(&self) -> String {
        format!("https://{}:{}", self.public.name, self.public.addr.port())
    }

    /// The public side as a client that knows only it sees it, reached
    /// through `connect`.
    fn public_side<'a>(&'a self, connect: &'a ConnectPublic<'a>) -> PublicSide<'a> {
        PublicSide {
            http: &self.http,
            base: self.base(),
            public_name: self.public.name.clone(),
            roots_pem: self.public.ca_pem.clone(),
            connect,
        }
    }
}

type ConnectPublic<'a> = dyn Fn() -> BoxFuture<'a, std::io::Result<TcpStream>> + Sync + 'a;

/// What the bundles cell prints before its JSON.
const BUNDLES_MARKER: &str = "HUBTRUST-BUNDLES ";

/// The lab's system bundle and merged bundle, printed as JSON.
fn bundles_cell(system: &str, merged: &str) -> String {
    let literal = |path: &str| serde_json::to_string(path).unwrap_or_default();
    format!(
        "import json\nprint({marker} + json.dumps({{'system': open({system}).read(), 'merged': open({merged}).read()}}))",
        marker = literal(BUNDLES_MARKER),
        system = literal(system),
        merged = literal(merged),
    )
}

fn not_observed(what: &str, why: &str) -> HarnessError {
    HarnessError::NotObserved {
        what: what.into(),
        why: why.into(),
    }
}

fn observed<T: Clone>(what: &str, observation: &Observation<T>) -> Result<T> {
    match observation {
        Observation::Seen(seen) => Ok(seen.clone()),
        Observation::Failed(why) => Err(HarnessError::Cluster {
            what: what.into(),
            message: why.clone(),
            fix: "see the run's earlier rows and the logs kept beside the report".into(),
        }),
        Observation::NotMade(why) => Err(not_observed(what, why)),
    }
}

#[async_trait::async_trait]
impl DeploymentUnderTest for ChartDeployment {
    fn users(&self) -> Vec<String> {
        vec![self.user.clone()]
    }

    /// JupyterHub's as its API said, and the chart's, which names the
    /// KubeSpawner it ships.
    fn component_versions(&self) -> BTreeMap<String, String> {
        let chart = self
            .cluster
            .iter()
            .flat_map(|deployment| deployment.chart.component_versions());
        let hub = self
            .observed
            .hub_version
            .iter()
            .map(|v| ("jupyterhub".to_string(), v.clone()));
        chart.chain(hub).collect()
    }

    async fn get_via_proxy(&self, path: &str) -> Result<u16> {
        let response = self
            .http
            .get(format!("{}{path}", self.base()))
            .send()
            .await
            .map_err(|e| HarnessError::HubApi {
                call: format!("GET {path} through the public proxy"),
                message: e.to_string(),
            })?;
        Ok(response.status().as_u16())
    }

    async fn check_from_outside(&self, user: &str, code: &str) -> Result<PublicSideReport> {
        let addr = self.public.addr;
        let connect =
            || -> BoxFuture<'_, std::io::Result<TcpStream>> { Box::pin(TcpStream::connect(addr)) };
        let (report, _) = check_public_side(
            &self.public_side(&connect),
            user,
            code,
            Duration::from_secs(120),
            Duration::from_secs(300),
        )
        .await?;
        Ok(report)
    }

    async fn trust_matrix(&self) -> Result<TrustMatrix> {
        observed(
            "the trust matrix from the labelled prober pod",
            &self.observed.trust_matrix,
        )
    }

    async fn real_client_chains(&self) -> Result<Vec<ChainCheck>> {
        observed(
            "each endpoint as the labelled prober pod reached it as its real clients",
            &self.observed.chains,
        )
    }

    async fn call_proxy_api(&self, with_token: bool) -> Result<ProbeOutcome> {
        let what = "the proxy API as the labelled prober pod called it";
        observed(what, &self.observed.proxy_api)?
            .into_iter()
            .find(|call| call.with_token == with_token)
            .map(|call| call.outcome)
            .ok_or_else(|| HarnessError::Cluster {
                what: what.into(),
                message: format!(
                    "the prober made no call {} the token",
                    if with_token { "with" } else { "without" }
                ),
                fix: "see the labelled prober's row and its report".into(),
            })
    }

    fn secret_files(&self) -> Result<Vec<SecretFile>> {
        Err(not_observed(
            "the 0600 rule over files hubtrust wrote",
            "the chart and KubeSpawner mount the keys as Secret volumes; the row \"Private keys and the hub's secrets are readable only by their component's user and group\" judges the pods' own files",
        ))
    }

    fn inventory(&self) -> Result<Inventory> {
        observed(
            "the running hub's certificate store",
            &self.observed.inventory,
        )
    }

    fn merged_org_bundle(&self) -> Option<MergedOrgBundle> {
        self.merged.clone()
    }

    fn hub_environment(&self) -> Result<BTreeMap<String, String>> {
        observed("the hub's environment", &self.observed.hub_environment)
    }

    fn tls_policy(&self) -> TlsPolicySpec {
        self.tls_policy.clone()
    }

    async fn tls_scan(&self) -> Result<Vec<EndpointScan>> {
        observed(
            "the TLS scan from the labelled prober pod",
            &self.observed.tls_scan,
        )
    }

    async fn reachability_matrix(&self) -> Result<Vec<ReachCell>> {
        observed(
            "the Services as the prober pods reached them",
            &self.observed.reachability,
        )
    }

    async fn run_cell(&self, user: &str, code: &str, deadline: Duration) -> Result<CellRun> {
        let addr = self.public.addr;
        let connect =
            || -> BoxFuture<'_, std::io::Result<TcpStream>> { Box::pin(TcpStream::connect(addr)) };
        run_cell_through_public_side(&self.public_side(&connect), user, code, deadline).await
    }

    async fn merged_bundle_texts(&self) -> Result<MergedBundleTexts> {
        let merged = self
            .merged
            .as_ref()
            .ok_or_else(|| HarnessError::NotConfigured {
                what: "the stack does not merge the org bundle into labs".into(),
                fix: "enterprise.merge_org_bundle = true".into(),
            })?;
        let code = bundles_cell(SYSTEM_STORE, &merged.path);
        let run = self
            .run_cell(&self.user, &code, Duration::from_secs(60))
            .await?;
        let line = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(BUNDLES_MARKER))
            .ok_or_else(|| HarnessError::CellOutput {
                what: format!("the lab of {} (its bundles)", self.user),
                message: format!("no bundles in: {}", run.stdout.trim()),
            })?;
        #[derive(serde::Deserialize)]
        struct Bundles {
            system: String,
            merged: String,
        }
        let read: Bundles = serde_json::from_str(line).map_err(|e| HarnessError::CellOutput {
            what: format!("the lab of {} (its bundles)", self.user),
            message: e.to_string(),
        })?;
        Ok(MergedBundleTexts {
            system: read.system,
            org: self.org_bundle_pem.clone(),
            merged: read.merged,
        })
    }

    fn outbound_targets(&self) -> Result<Vec<Target>> {
        observed("the outbound test servers", &self.outbound)
    }

    async fn run_outbound_tools(&self, _: &str, _: &Path) -> Result<OutboundRuns> {
        observed(
            "every tool in the first lab against the outbound servers, as the run's cell ran them",
            &self.observed.outbound_tools,
        )
    }

    async fn start_wire_capture(&self, dir: &Path) -> Result<Box<dyn RunningCapture>> {
        observed(
            "the captures on the hub's, the proxy's and the lab's pods",
            &self.observed.captures,
        )?
        .start(dir)
        .await
    }

    /// The values hubtrust renders make every connection between pods
    /// TLS: none may cross in plaintext.
    fn plaintext_exceptions(&self) -> Vec<(u16, String)> {
        Vec::new()
    }

    async fn log_in(&self, user: &str) -> Result<Vec<(String, Secret)>> {
        // The run's own password, fresh each run, so that what shows on
        // the wire is this log-in's.
        let password = self.public.user_password.clone();
        let entry = PublicEntry {
            base: self.base(),
            name: self.public.name.clone(),
            addr: self.public.addr,
            roots_pem: self.public.ca_pem.clone(),
        };
        let cookie = log_in_through_form(&entry, user, &password).await?;
        Ok(vec![
            (
                "the hub API token".into(),
                self.public.service_token.clone(),
            ),
            ("the user's password".into(), password),
            ("the user's login cookie".into(), cookie),
        ])
    }

    /// Every cell through the public side starts a kernel of its own.
    async fn run_cell_in_new_kernel(&self, user: &str, code: &str) -> Result<CellRun> {
        self.run_cell(user, code, Duration::from_secs(60)).await
    }

    /// The kernel's ports and its pod's address, read by a cell in the
    /// lab; each port then tried from the hub's pod, which the chart's
    /// NetworkPolicies admit to labs.
    async fn kernel_ports_answering(&self, user: &str, kernel_id: &str) -> Result<Vec<String>> {
        let what = "the kernel's ZeroMQ ports tried from the hub's pod";
        let deployment = self.cluster.clone().ok_or_else(|| {
            not_observed(
                what,
                "this deployment was handed no cluster to reach its pods with kubectl",
            )
        })?;
        let kernel = self.kernel_ports(user, kernel_id).await?;
        let tried =
            tokio::task::spawn_blocking(move || try_ports_from_the_hub(&deployment, &kernel))
                .await
                .map_err(|e| HarnessError::Cluster {
                    what: what.into(),
                    message: e.to_string(),
                    fix: "see the hub pod's log".into(),
                })??;
        Ok(tried)
    }

    /// A cell in the lab's pod sends a plain HTTP request carrying
    /// `canary` to the hub's Service, across the captured link between the
    /// lab's pod and the hub's.
    async fn send_plaintext_canary(&self, canary: &str) -> Result<()> {
        let hub = &super::names::SERVICES[0];
        let run = self
            .run_cell(
                &self.user,
                &plaintext_canary_cell(canary, hub.service, hub.port),
                Duration::from_secs(60),
            )
            .await?;
        if run.status == "ok" && run.stdout.contains(PLAINTEXT_SENT) {
            return Ok(());
        }
        Err(HarnessError::CellOutput {
            what: format!(
                "the lab of {} (the self-test's plain HTTP request)",
                self.user
            ),
            message: format!("status {}: {}", run.status, run.stdout.trim()),
        })
    }
}

/// What the kernel-ports cell prints before its JSON.
const KERNEL_PORTS_MARKER: &str = "HUBTRUST-KERNEL-PORTS ";

/// A kernel's ZeroMQ ports by channel, and its pod's address.
#[derive(Debug, serde::Deserialize)]
pub struct KernelPorts {
    pub pod_ip: String,
    pub ports: BTreeMap<String, u16>,
}

/// Reads kernel `kernel_id`'s ports from its connection file, where the
/// lab keeps it, and the pod's own address; prints them, never the key.
fn kernel_ports_cell(kernel_id: &str) -> String {
    let file = serde_json::to_string(&format!("kernel-{kernel_id}.json")).unwrap_or_default();
    let marker = serde_json::to_string(KERNEL_PORTS_MARKER).unwrap_or_default();
    format!(
        "import json, os, socket\n\
         from jupyter_core.paths import jupyter_runtime_dir\n\
         info = json.load(open(os.path.join(jupyter_runtime_dir(), {file})))\n\
         ports = {{c: info[c + '_port'] for c in ('shell', 'iopub', 'stdin', 'control', 'hb')}}\n\
         print({marker} + json.dumps({{'pod_ip': socket.gethostbyname(socket.gethostname()), 'ports': ports}}))\n"
    )
}

/// Run in the hub's pod with the lab pod's address and the ports as JSON:
/// each port that accepts a connection gets a ZMTP greeting, as an
/// attacker's would, and is printed; the last line says how many were
/// tried, so a script that did not run is never "nothing answered".
const TRY_PORTS: &str = r#"import json, socket, sys
ip, ports = sys.argv[1], json.loads(sys.argv[2])
greeting = bytes([0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 1]) + b"NULL"
greeting += bytes(64 - len(greeting))
for channel, port in sorted(ports.items()):
    try:
        s = socket.create_connection((ip, port), timeout=3)
    except OSError:
        continue
    try:
        s.sendall(greeting)
        s.settimeout(2)
        s.recv(64)
    except OSError:
        pass
    s.close()
    print("ANSWERED", channel, port)
print("TRIED", len(ports))
"#;

fn try_ports_from_the_hub(deployment: &Deployment, kernel: &KernelPorts) -> Result<Vec<String>> {
    let hub = super::pods::running_pod(deployment, "component=hub", "the hub")?;
    let ports = serde_json::to_string(&kernel.ports).unwrap_or_default();
    let argv = [
        "python3".to_string(),
        "-c".into(),
        TRY_PORTS.into(),
        kernel.pod_ip.clone(),
        ports,
    ];
    let command = super::plan::exec_in_pod_command(
        "try the kernel's ZeroMQ ports",
        &deployment.target,
        &deployment.namespace,
        &hub,
        &argv,
    );
    let out = super::command::run(&command).map_err(|e| HarnessError::Cluster {
        what: "the kernel's ZeroMQ ports tried from the hub's pod".into(),
        message: e.to_string(),
        fix: "the hub's image must have python3; see the hub pod's log".into(),
    })?;
    answered_ports(&out.stdout, kernel, &hub)
}

/// The ports the script says answered, or why its output cannot be read.
fn answered_ports(stdout: &str, kernel: &KernelPorts, hub_pod: &str) -> Result<Vec<String>> {
    let tried = format!("TRIED {}", kernel.ports.len());
    if !stdout.lines().any(|l| l.trim() == tried) {
        return Err(HarnessError::Cluster {
            what: "the kernel's ZeroMQ ports tried from the hub's pod".into(),
            message: format!("the script did not finish: {}", stdout.trim()),
            fix: "see the hub pod's log".into(),
        });
    }
    Ok(stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ANSWERED "))
        .map(|rest| {
            let (channel, port) = rest.split_once(' ').unwrap_or((rest, "?"));
            format!(
                "{channel} port {port} at {}, from the hub's pod {hub_pod}",
                kernel.pod_ip
            )
        })
        .collect())
}

/// What the self-test cell prints once its request went out.
const PLAINTEXT_SENT: &str = "HUBTRUST-PLAINTEXT-SENT";

/// A plain HTTP request carrying `canary` to `host:port`. The canary is
/// joined at run time, so the cell's own text (in TLS, through the proxy)
/// never holds it whole.
fn plaintext_canary_cell(canary: &str, host: &str, port: u16) -> String {
    let (head, tail) = canary.split_at(canary.len() / 2);
    let literal = |text: &str| serde_json::to_string(text).unwrap_or_default();
    format!(
        "import socket\n\
         body = ({head} + {tail}).encode()\n\
         s = socket.create_connection(({service}, {port}), timeout=10)\n\
         s.sendall(b'POST /hubtrust-self-test HTTP/1.1\\r\\nHost: ' + {service}.encode() + b'\\r\\nContent-Length: ' + str(len(body)).encode() + b'\\r\\n\\r\\n' + body)\n\
         s.settimeout(5)\n\
         try:\n    s.recv(4096)\nexcept OSError:\n    pass\n\
         s.close()\n\
         print({sent})\n",
        head = literal(head),
        tail = literal(tail),
        service = literal(host),
        sent = literal(PLAINTEXT_SENT),
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    fn python(code: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(code)
            .args(args)
            .output()
            .expect("python3 runs")
    }

    /// The self-test's cell, run by python3 against a listener here: the
    /// request arrives as plain HTTP carrying the whole canary, which the
    /// cell's own text never holds.
    #[test]
    fn the_self_test_cell_sends_its_canary_as_plain_http() {
        const CANARY: &str = "HUBTRUST-SELFTEST-0123456789abcdef";
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let code = plaintext_canary_cell(CANARY, "127.0.0.1", port);
        assert!(!code.contains(CANARY), "{code}");
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains(CANARY) {
                let n = socket.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let out = python(&code, &[]);
        let request = server.join().unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(PLAINTEXT_SENT),
            "{out:?}"
        );
        assert!(
            request.starts_with("POST /hubtrust-self-test HTTP/1.1\r\n"),
            "{request:?}"
        );
        assert!(
            request.ends_with(&format!("\r\n\r\n{CANARY}")),
            "{request:?}"
        );
    }

    /// The script the hub's pod runs: a port that accepts gets a ZMTP
    /// greeting and is named; a closed one is not; output cut short is an
    /// error, never "nothing answered".
    #[test]
    fn the_port_script_names_the_ports_that_answer_and_only_those() {
        let open = TcpListener::bind("127.0.0.1:0").unwrap();
        let open_port = open.local_addr().unwrap().port();
        let greeted = std::thread::spawn(move || {
            let (mut socket, _) = open.accept().unwrap();
            let mut greeting = [0u8; 64];
            socket.read_exact(&mut greeting).unwrap();
            socket.write_all(&greeting).unwrap();
            greeting
        });
        // Nothing here listens on port 1 (tcpmux, long unused).
        let kernel = KernelPorts {
            pod_ip: "127.0.0.1".into(),
            ports: [("shell".to_string(), open_port), ("hb".to_string(), 1)].into(),
        };
        let ports = serde_json::to_string(&kernel.ports).unwrap();
        let out = python(TRY_PORTS, &["127.0.0.1", &ports]);
        let greeting = greeted.join().unwrap();
        assert_eq!(&greeting[..2], &[0xFF, 0]);
        assert_eq!(&greeting[12..16], b"NULL");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            answered_ports(&stdout, &kernel, "hub-0").unwrap(),
            [format!(
                "shell port {open_port} at 127.0.0.1, from the hub's pod hub-0"
            )]
        );
        assert!(answered_ports("", &kernel, "hub-0").is_err());
        assert!(answered_ports("TRIED 1\n", &kernel, "hub-0").is_err());
    }

    /// The kernel-ports cell is valid Python that names the connection
    /// file and prints no key (a real lab runs it in
    /// `scenarios/tests/probe.rs`).
    #[test]
    fn the_kernel_ports_cell_reads_the_connection_file_and_prints_no_key() {
        let code = kernel_ports_cell("abc-123");
        assert!(code.contains("\"kernel-abc-123.json\""), "{code}");
        assert!(!code.contains("'key'"), "{code}");
        let compiled = python("import sys; compile(sys.argv[1], 'cell', 'exec')", &[&code]);
        assert!(compiled.status.success(), "{compiled:?}");
    }
}
