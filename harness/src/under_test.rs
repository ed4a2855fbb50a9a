//! What the scenarios ask of a deployment, whoever started it: a
//! stack of hosts hubtrust started (the local and docker backends), or a
//! chart's pods on a cluster. The steps judge; this only observes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::capture::WireCensus;
use crate::enterprise::{MergedBundleTexts, OutboundRuns, Target};
use crate::error::Result;
use crate::hub_api::PublicSideReport;
use crate::inventory::Inventory;
use crate::lab::CellRun;
use crate::matrix::TrustMatrix;
use crate::probe::ProbeOutcome;
use crate::reachability::ReachCell;
use crate::report::ChainCheck;
use crate::secret::Secret;
use crate::stack::SecretFile;
use crate::tls_scan::{EndpointScan, TlsPolicySpec};

pub use crate::error::NOT_OBSERVED;

/// The org bundle as a deployment merges it into the labs' trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedOrgBundle {
    /// Where the five CA variables point when they point at it.
    pub path: String,
    /// Whether the stack file gives it to the hub too.
    pub into_hub: bool,
    /// Whether the design puts an org bundle in it. A chart deployment
    /// whose stack file makes no ConfigMap merges the system bundle alone;
    /// an org bundle that went missing where the design has one is a
    /// broken deployment.
    pub holds_org: bool,
}

/// Captures of every link between a deployment's hosts, running.
#[async_trait::async_trait]
pub trait RunningCapture: Send {
    /// Stops every capture and builds the census of what crossed. A
    /// capture that could not be read is in the census as inconclusive.
    async fn finish(self: Box<Self>) -> WireCensus;
}

#[async_trait::async_trait]
pub trait DeploymentUnderTest: Send + Sync {
    /// The users with a lab, in order; the first is who single-user steps
    /// act as.
    fn users(&self) -> Vec<String>;

    /// The components' versions, which known defects are matched against.
    fn component_versions(&self) -> BTreeMap<String, String>;

    /// GET a path on the public proxy as the operator (service token
    /// sent): the HTTP status.
    async fn get_via_proxy(&self, path: &str) -> Result<u16>;

    /// What a client knowing only the public URL, the public CA and the
    /// service token sees when it runs `code` in `user`'s lab.
    async fn check_from_outside(&self, user: &str, code: &str) -> Result<PublicSideReport>;

    /// What the deployment's sites know of why a lab may not answer;
    /// appended to such a failure. Empty when they know nothing.
    fn diagnoses(&self) -> String {
        String::new()
    }

    /// Every internal endpoint × every client identity, observed.
    async fn trust_matrix(&self) -> Result<TrustMatrix>;

    /// Each server as each of its real clients reaches it: with the
    /// client's own bundle, server name and certificate.
    async fn real_client_chains(&self) -> Result<Vec<ChainCheck>>;

    /// The proxy's REST API called with the hub's certificate, with or
    /// without the auth token.
    async fn call_proxy_api(&self, with_token: bool) -> Result<ProbeOutcome>;

    /// Private keys and the cookie secret, with their modes.
    fn secret_files(&self) -> Result<Vec<SecretFile>>;

    /// Every certificate the deployment holds.
    fn inventory(&self) -> Result<Inventory>;

    /// The org bundle merged into the labs' trust, when the deployment
    /// merges one.
    fn merged_org_bundle(&self) -> Option<MergedOrgBundle>;

    /// The hub process's environment. Its tokens are in it: callers look
    /// only at what they need.
    fn hub_environment(&self) -> Result<BTreeMap<String, String>>;

    /// The TLS policy the deployment is judged against, with its
    /// exceptions.
    fn tls_policy(&self) -> TlsPolicySpec;

    /// Every TLS endpoint, scanned for the versions and TLS 1.2 suites it
    /// accepts, as its clients reach it.
    async fn tls_scan(&self) -> Result<Vec<EndpointScan>>;

    /// Every internal endpoint tried from every place of the topology,
    /// each cell saying whether the design expects it to answer there.
    async fn reachability_matrix(&self) -> Result<Vec<ReachCell>>;

    /// Runs `code` in a kernel of `user`'s running lab, as that user,
    /// within `deadline`.
    async fn run_cell(&self, user: &str, code: &str, deadline: Duration) -> Result<CellRun>;

    /// The org bundle's merge into the labs' trust, as text: the system
    /// bundle and the org bundle it started from, and what it wrote.
    async fn merged_bundle_texts(&self) -> Result<MergedBundleTexts>;

    /// The outbound endpoints the labs' tools fetch, and who signed each.
    fn outbound_targets(&self) -> Result<Vec<Target>>;

    /// Every tool in `user`'s lab fetching every outbound target, with the
    /// merged bundle and with the system bundle alone; with an inspecting
    /// proxy, its egress captured meanwhile (evidence kept in
    /// `evidence_dir`) and each proxied run's path read from it. A chart's
    /// deployment hands in the runs its bring-up made and captured.
    async fn run_outbound_tools(&self, user: &str, evidence_dir: &Path) -> Result<OutboundRuns>;

    /// Starts capturing every link between the deployment's hosts, the
    /// pcaps going into `dir`; returns once every capture listens.
    async fn start_wire_capture(&self, dir: &Path) -> Result<Box<dyn RunningCapture>>;

    /// Flows the design lets cross a link in plaintext, by server port,
    /// with the reason.
    fn plaintext_exceptions(&self) -> Vec<(u16, String)>;

    /// Logs `user` in through the hub's login form, as a browser does,
    /// and opens the hub's home page. Returns, by name, what the log-in
    /// sent that must never be readable on the wire.
    async fn log_in(&self, user: &str) -> Result<Vec<(String, Secret)>>;

    /// Runs `code` in a kernel started for it, through the public proxy:
    /// the wire sees the kernel start and its channels connect.
    async fn run_cell_in_new_kernel(&self, user: &str, code: &str) -> Result<CellRun>;

    /// Tries every ZeroMQ port of `user`'s kernel `kernel_id` from another
    /// host, greeting each that answers as an attacker would. Returns
    /// those that answered, each with where it was tried from.
    async fn kernel_ports_answering(&self, user: &str, kernel_id: &str) -> Result<Vec<String>>;

    /// The wire detector's self-test: a plain HTTP request carrying
    /// `canary` across a captured link between two hosts.
    async fn send_plaintext_canary(&self, canary: &str) -> Result<()>;
}

impl std::fmt::Debug for dyn DeploymentUnderTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeploymentUnderTest")
    }
}
