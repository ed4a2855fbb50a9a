//! Typed errors of the engine. Messages are lowercase and read after "failed to …".

use std::path::PathBuf;

/// How a [`HarnessError::NotObserved`] begins, so a report shows its
/// scenario as not run rather than failed.
pub const NOT_OBSERVED: &str = "not observed on this deployment: ";

/// Every way the engine can fail. The `hint` fields tell an operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("read stack file {path}: {cause} (fix: check the path given to --stack)")]
    StackFileUnreadable {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("parse stack file {path}: {message}")]
    StackFileInvalid { path: PathBuf, message: String },
    #[error("read the deployment's config file {path}: {message}")]
    DeploymentConfigInvalid { path: PathBuf, message: String },
    #[error("read the known-defects list {0}")]
    KnownDefects(String),
    #[error("read image list {path}: {message} (fix: {fix})")]
    ImageList {
        path: PathBuf,
        message: String,
        fix: String,
    },
    #[error("parse component manifest {name}: {message}")]
    ManifestInvalid { name: String, message: String },
    #[error("find prerequisite `{what}`: {why} (fix: {fix})")]
    MissingPrerequisite {
        what: String,
        why: String,
        fix: String,
    },
    #[error("provision {what}: {message}")]
    Provision { what: String, message: String },
    #[error("set up host network `{host}`: {message}")]
    Network { host: String, message: String },
    #[error("start component `{component}`: {message}")]
    Spawn { component: String, message: String },
    #[error("{}", exited_message(.component, .status, .last_lines))]
    ComponentExited {
        component: String,
        status: String,
        last_lines: Vec<String>,
    },
    #[error("{}", not_ready_message(.component, .check, .seconds, .last_lines))]
    NotReady {
        component: String,
        check: String,
        seconds: u64,
        last_lines: Vec<String>,
    },
    /// A component did not come up, and probing it found why: a defect of
    /// the deployment, not of the machine (exit 1, a finding).
    #[error("{}", defect_message(.component, .check, .finding, .last_lines))]
    DeploymentDefect {
        component: String,
        check: String,
        finding: String,
        last_lines: Vec<String>,
    },
    #[error("{}", tunnel_message(.node, .message, .last_lines))]
    Tunnel {
        node: String,
        message: String,
        last_lines: Vec<String>,
    },
    #[error("bind port {port} on host `{host}`: it is already in use (fix: stop whatever listens there, or change the port in the stack file)")]
    PortInUse { host: String, port: u16 },
    #[error("generate certificates: {0}")]
    Pki(String),
    #[error("probe {endpoint}: {message}")]
    Probe { endpoint: String, message: String },
    #[error("call the hub API {call}: {message}")]
    HubApi { call: String, message: String },
    #[error("{what}: {message}")]
    Docker { what: String, message: String },
    /// What this machine could not see of a kind node's pod.
    #[error("{what}: {message}")]
    Pod { what: String, message: String },
    #[error("{what}: {message} (fix: {fix})")]
    Cluster {
        what: String,
        message: String,
        fix: String,
    },
    /// A scenario asked what this deployment's run did not observe: said
    /// as not run, never passed.
    #[error("{NOT_OBSERVED}{what}: {why}")]
    NotObserved { what: String, why: String },
    /// The deployment lacks what a check needs: a failure, not "not run".
    #[error("{what} (fix: {fix})")]
    NotConfigured { what: String, fix: String },
    #[error("read what {what} printed: {message}")]
    CellOutput { what: String, message: String },
    #[error("restore the {site} after a scenario: {message}")]
    SiteNotRestored { site: String, message: String },
    #[error("{what}: not supported by the {backend} backend (fix: {fix})")]
    NotSupported {
        backend: &'static str,
        what: String,
        fix: String,
    },
    #[error("resolve image {reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
}

impl HarnessError {
    pub fn io(context: impl Into<String>, cause: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            cause,
        }
    }

    /// True when the failure lies in the operator's environment or input
    /// rather than in the deployment under test (exit code 2, not 1).
    pub fn is_environment(&self) -> bool {
        matches!(
            self,
            Self::StackFileUnreadable { .. }
                | Self::StackFileInvalid { .. }
                | Self::DeploymentConfigInvalid { .. }
                | Self::ImageList { .. }
                | Self::ManifestInvalid { .. }
                | Self::MissingPrerequisite { .. }
                | Self::Provision { .. }
                | Self::Network { .. }
                | Self::PortInUse { .. }
                | Self::Docker { .. }
                | Self::Cluster { .. }
                | Self::NotSupported { .. }
                | Self::Registry { .. }
        )
    }
}

fn tail(last_lines: &[String]) -> String {
    if last_lines.is_empty() {
        return "\n  (the component wrote no log lines)".into();
    }
    last_lines.iter().map(|l| format!("\n  | {l}")).collect()
}

fn exited_message(component: &str, status: &str, last_lines: &[String]) -> String {
    format!(
        "start `{component}`: it exited during start-up ({status}) (fix: read its last log lines below; for the hub this is usually a rejected config line){}",
        tail(last_lines)
    )
}

fn not_ready_message(component: &str, check: &str, seconds: &u64, last_lines: &[String]) -> String {
    format!(
        "wait for `{component}` to become ready: {check} did not pass within {seconds}s (fix: read its last log lines below){}",
        tail(last_lines)
    )
}

fn defect_message(component: &str, check: &str, finding: &str, last_lines: &[String]) -> String {
    format!(
        "`{component}` did not come up ({check}), because {finding}{}",
        tail(last_lines)
    )
}

fn tunnel_message(node: &str, message: &str, last_lines: &[String]) -> String {
    format!(
        "open the tunnel through login node `{node}`: {message} (fix: the broker's and the login node's sshd's last log lines below name the cause){}",
        tail(last_lines)
    )
}

pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
