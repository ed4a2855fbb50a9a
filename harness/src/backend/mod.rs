//! Where a stack's hosts live, behind one interface.
//!
//! A backend makes a [`StackNetwork`] (hosts and links) from a
//! [`NetworkRequest`]; every host carries its backend's [`HostRuntime`],
//! and the network its [`BackendRun`]. Everything above this module calls
//! only these: [`local`] (network namespaces) and [`docker`] (a container
//! per host) each own their specifics and never import each other.
//!
//! Both backends' hosts are Linux namespaces this machine can enter, so
//! connecting, listening and `ip` from a host ([`Host`]) are written once,
//! here.

pub mod docker;
mod host;
pub mod kubernetes;
pub mod local;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use tokio::net::TcpStream;

pub use host::{
    run_ip, Host, HostFilesystem, HostPlan, InitArg, InitStep, Link, RunOutput, StackNetwork,
    ThisMachine,
};

use crate::error::Result;
use crate::process::{LaunchSpec, ManagedProcess};
use crate::spec::ContainerRole;

/// Opening connections *from* a named host of a stack, as a process on that
/// host would. Probes use it to reach loopback-only endpoints such as the
/// proxy API.
pub trait HostNetwork: Send + Sync {
    fn connect_from(
        &self,
        host: &str,
        addr: SocketAddr,
    ) -> impl std::future::Future<Output = std::io::Result<TcpStream>> + Send;
}

/// A backend: how a stack's hosts and links are made.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Its name, as `--backend` takes it.
    fn name(&self) -> &'static str;
    /// The hosts and links `request` plans, the operator's host included.
    /// On error, whatever was made is removed.
    async fn build(self: Box<Self>, request: &NetworkRequest) -> Result<StackNetwork>;
}

/// What a backend is asked to build.
#[derive(Debug, Clone)]
pub struct NetworkRequest {
    pub plans: Vec<HostPlan>,
    /// Direct host-to-host links (`[a, b]`), besides each plan's link to
    /// the operator.
    pub links: Vec<[String; 2]>,
    /// The run directory, which every host sees at the same path.
    pub run_dir: PathBuf,
    /// Directories a host's init steps write and its components read,
    /// shared as a pod's emptyDir is: `(host, path)`.
    pub shared_dirs: Vec<(String, PathBuf)>,
    /// Files of this machine a host must see at the same path, read-only:
    /// `(host, path)`.
    pub operator_files: Vec<(String, PathBuf)>,
    /// Where the stack's logs go (a backend adds its components' logs).
    pub logs_dir: PathBuf,
}

/// One running stack's backend: what it made, and what it can still do.
/// Dropping it removes whatever the backend made outside this process.
#[async_trait::async_trait]
pub trait BackendRun: Send + Sync {
    fn backend(&self) -> &'static str;

    /// Adds host `plan.name` to a running network, made like host `like`,
    /// with a link from each of `peers` (`<peer>--<name>`) and none to the
    /// operator: a site adding a machine. Nothing else restarts.
    async fn add_host(
        &self,
        network: &StackNetwork,
        plan: &HostPlan,
        like: &str,
        peers: &[String],
    ) -> Result<(Host, Vec<Link>)>;

    /// This machine's own addresses on `host`'s links to other hosts,
    /// which a host has no business reaching.
    async fn machine_addresses_near(
        &self,
        network: &StackNetwork,
        host: &str,
    ) -> Result<Vec<Ipv4Addr>>;

    /// Whether each component runs apart from the others, as Zero to
    /// JupyterHub runs them (a container each): then hubtrust starts the
    /// proxy itself instead of the hub, and the hub spawns labs through
    /// [`BackendRun::hub_config_for_labs`].
    fn components_apart(&self) -> bool;

    /// Hub config lines that make the hub spawn each lab the backend's way
    /// (none: the hub's own spawner, in the lab host's namespaces).
    fn hub_config_for_labs(
        &self,
        network: &StackNetwork,
        labs: &LabPlacement,
    ) -> Result<Vec<String>>;

    /// Where a lab sees this machine's file `path` that
    /// [`LabPlacement::kernel_netns`] names.
    fn path_in_labs(&self, path: &Path) -> PathBuf;

    /// Each component's and host's image, with its id: what a report says
    /// was tested. Empty where nothing runs from an image.
    fn images_used(&self) -> BTreeMap<String, String>;

    /// What the backend had to work around so far (a copy out of a
    /// container fetched again), for the report. Nothing, by default.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// The stack is up: from now on only [`BackendRun::keep`] keeps what
    /// the backend made.
    fn mark_started(&self);

    /// Leaves what the backend made in place after the run; the id
    /// `hubtrust down` takes. `None` when nothing outlives the process.
    fn keep(&self) -> Option<String>;
}

/// Where and how labs run, for [`BackendRun::hub_config_for_labs`].
#[derive(Debug, Clone)]
pub struct LabPlacement {
    pub lab_host: String,
    pub hub_host: String,
    pub public_name: String,
    /// The lab's system CA store file here, installed at
    /// [`crate::pki::SYSTEM_STORE`] in each lab.
    pub system_store: PathBuf,
    /// A network namespace path here that each lab must enter (kernels
    /// on a host of their own), at [`BackendRun::path_in_labs`].
    pub kernel_netns: Option<String>,
    /// Each user's home, `{username}` standing for the user.
    pub home_template: String,
    /// Where the hub's spawner module may be written.
    pub spawner_dir: PathBuf,
}

/// What a backend does on one host. Methods take the [`Host`] they act
/// on, for its name and namespaces.
#[async_trait::async_trait]
pub trait HostRuntime: Send + Sync {
    fn backend(&self) -> &'static str;

    /// Starts a component on the host.
    async fn start(&self, host: &Host, spec: &LaunchSpec) -> Result<ManagedProcess>;

    /// Runs `argv` to its end where `role` runs (the host itself for
    /// `None`), in `cwd`.
    async fn run_to_end(
        &self,
        host: &Host,
        role: Option<ContainerRole>,
        argv: &[String],
        cwd: &Path,
    ) -> Result<RunOutput>;

    /// Runs an init step to its end, as a pod's init container runs:
    /// before the component it prepares, with its inputs, writing into the
    /// step's shared directories.
    async fn run_init_step(&self, host: &Host, step: &InitStep) -> Result<RunOutput>;

    /// Makes `source` (a file here) the host's `target`.
    async fn install_file(&self, host: &Host, source: &Path, target: &Path) -> Result<()>;

    /// Makes `dir` here the host's `dir`, modes kept.
    async fn copy_in(&self, host: &Host, dir: &Path) -> Result<()>;

    /// Makes the host's `dir` this machine's `dir`.
    async fn copy_out(&self, host: &Host, dir: &Path) -> Result<()>;

    /// Whether programs started on the host come from this machine's own
    /// files, so that their modes decide who may run them.
    fn runs_this_machines_files(&self) -> bool;
}
