//! A chart-started deployment as the scenarios see it. What this
//! machine can ask through the public side it asks when the step runs.
//! What only a pod sees (the trust matrix, from the labelled prober) or
//! only root on the node (the hub's certificate store) is what the run
//! observed there earlier, handed in. What nothing observed is said as
//! not observed, which a report shows as not run, never as passed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::TcpStream;

use super::outbound;
use super::public_check::PublicAddress;
use super::Deployment;
use crate::enterprise::{MergedBundleTexts, OutboundRuns, Target};
use crate::error::{HarnessError, Result};
use crate::hub_api::{
    check_public_side, operator_client, run_cell_through_public_side, PublicSide, PublicSideReport,
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
use crate::under_test::{DeploymentUnderTest, MergedOrgBundle};

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
}

/// Where and as whom this machine reaches the deployment's public side.
pub struct PublicSideAt {
    /// The name its certificate is verified for.
    pub name: String,
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub service_token: Secret,
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

    fn component_versions(&self) -> BTreeMap<String, String> {
        self.observed
            .hub_version
            .iter()
            .map(|v| ("jupyterhub".to_string(), v.clone()))
            .collect()
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
}
