//! Sites: what a deployment holds beyond the hub, the proxy and the labs,
//! as add-ons the stack holds rather than branches inside it. An HPC
//! site (login and compute nodes, sshd, the tunnel broker) and an
//! enterprise's outbound side (the inspecting proxy, the org-CA, public
//! and foreign servers, the merged bundle) are each a [`SitePlan`] before
//! the stack runs and a [`Site`] while it runs; the stack asks whichever
//! it holds. [`plans_for`] is the one place that names them.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::backend::{HostPlan, StackNetwork};
use crate::component::ComponentManifest;
use crate::error::Result;
use crate::pki::OrgPki;
use crate::provision::Components;
use crate::reachability::InternalEndpoint;
use crate::secret::Secret;
use crate::spec::StackSpec;
use crate::stack::Stack;
use crate::tls_scan::ScanTarget;

pub(crate) type Progress<'a> = &'a (dyn Fn(&str) + Sync);

/// What every add-on is given before the hub starts.
pub struct SiteContext<'a> {
    pub spec: &'a StackSpec,
    pub network: &'a StackNetwork,
    pub components: &'a Components,
    pub org: &'a OrgPki,
    pub run_dir: &'a Path,
    /// The variable that marks every process of the run (the sweep after
    /// teardown), for whatever the add-on starts.
    pub marker_env: BTreeMap<String, String>,
    pub progress: Progress<'a>,
}

/// The public side's certificate when an add-on issues it (an HPC site's
/// proxy certificate, from its own CA), and the CA browsers must trust.
pub struct SitePublicSide {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub browser_root: String,
}

/// An add-on the stack file asks for, before the stack runs.
#[async_trait::async_trait]
pub trait SitePlan: Send + Sync {
    /// The plan of a host the add-on owns, instead of a plain host's.
    fn plan_host(
        &self,
        _name: &str,
        _components: &Components,
        _system_store: &Path,
    ) -> Option<HostPlan> {
        None
    }

    /// Files of this machine a host must see, at the same path.
    fn operator_files(&self, _spec: &StackSpec) -> Result<Vec<(String, PathBuf)>> {
        Ok(Vec::new())
    }

    /// Directories a host shares with this machine (the merged bundle the
    /// merge step leaves, as an init container leaves it in an emptyDir).
    fn shared_dirs(&self, _spec: &StackSpec, _run_dir: &Path) -> Vec<(String, PathBuf)> {
        Vec::new()
    }

    /// Whether every link is captured from the moment it exists (an HPC
    /// site's tunnels open during start-up).
    fn captures_from_start(&self) -> bool {
        false
    }

    /// Before the public side is issued: what must exist first.
    async fn prepare(&mut self, _ctx: &SiteContext<'_>) -> Result<()> {
        Ok(())
    }

    /// The public side's certificate, when this add-on issues it.
    fn public_side(&self) -> Result<Option<SitePublicSide>> {
        Ok(None)
    }

    /// Once the operator's client exists, before the hub's config: the
    /// running add-on. `lab` is the labs' manifest, which an add-on that
    /// places labs itself adapts.
    async fn start(
        self: Box<Self>,
        ctx: &SiteContext<'_>,
        http: &reqwest::Client,
        lab: &mut ComponentManifest,
    ) -> Result<Box<dyn Site>>;
}

/// A running add-on.
#[async_trait::async_trait]
pub trait Site: Send + Sync {
    /// Its name in messages (`HPC site`, `enterprise outbound side`).
    fn name(&self) -> &'static str;

    /// For the add-on's own steps, which reach it by type
    /// ([`Stack::site`]).
    fn as_any(&self) -> &dyn Any;

    /// Variables each lab's environment gains.
    fn lab_environment(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Lines of the hub's config, before the stack file's own.
    fn hub_config_lines(&self, _components: &Components) -> Vec<String> {
        Vec::new()
    }

    /// Variables the hub's environment gains.
    fn hub_environment(&self, _spec: &StackSpec) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Whether the add-on places the labs itself (an HPC site's batch
    /// spawner, on compute nodes): the backend then places none, the hub
    /// starts the proxy itself, and labs are reached from the hub's host.
    fn places_labs(&self) -> bool {
        false
    }

    /// Its TLS endpoints, for the TLS scan.
    fn tls_targets(&self, _spec: &StackSpec) -> Vec<ScanTarget> {
        Vec::new()
    }

    /// Its internal endpoints, for the reachability matrix.
    fn internal_endpoints(&self, _spec: &StackSpec) -> Vec<InternalEndpoint> {
        Vec::new()
    }

    /// Secrets of the site that must never reach a log or report.
    fn secrets(&self) -> Vec<&Secret> {
        Vec::new()
    }

    /// Copies the labs' logs where artifacts are gathered, when they are
    /// written somewhere else.
    fn gather_lab_logs(&self, _stack: &Stack) {}

    /// What explains a failure that crossed the site (the tunnels' last
    /// log lines), if anything.
    fn diagnosis(&self, _stack: &Stack) -> Option<String> {
        None
    }

    /// Puts the site back as designed after a scenario disturbed it, and
    /// waits until it is whole again; a site nothing disturbs has nothing
    /// to do.
    async fn restore(&self, _stack: &Stack) -> Result<()> {
        Ok(())
    }

    /// Stops what it started, before the stack's processes are swept.
    async fn stop(&mut self) {}
}
