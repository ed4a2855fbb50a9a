//! A chart-started deployment as the scenarios see it. What this
//! machine can ask through the public side it asks when the step runs.
//! What only a pod sees (the trust matrix, from the labelled prober) or
//! only root on the node (the hub's certificate store) is what the run
//! observed there earlier, handed in. What nothing observed is said as
//! not observed, which a report shows as not run, never as passed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::public_check::PublicAddress;
use super::Deployment;
use crate::error::{HarnessError, Result};
use crate::hub_api::{check_public_side, operator_client, PublicSide, PublicSideReport};
use crate::inventory::Inventory;
use crate::matrix::TrustMatrix;
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
    tls_policy: TlsPolicySpec,
}

impl ChartDeployment {
    /// The deployment as reached through `public`, which must stay open
    /// while the scenarios run.
    pub fn new(
        deployment: &Deployment,
        public: &PublicAddress,
        observed: InClusterObservations,
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
            });
        Ok(Self {
            merged,
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
            tls_policy: TlsPolicySpec::default(),
        })
    }

    fn base(&self) -> String {
        format!("https://{}:{}", self.public.name, self.public.addr.port())
    }
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
            || -> futures::future::BoxFuture<'_, std::io::Result<tokio::net::TcpStream>> {
                Box::pin(tokio::net::TcpStream::connect(addr))
            };
        let side = PublicSide {
            http: &self.http,
            base: self.base(),
            public_name: self.public.name.clone(),
            roots_pem: self.public.ca_pem.clone(),
            connect: &connect,
        };
        let (report, _) = check_public_side(
            &side,
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
}
