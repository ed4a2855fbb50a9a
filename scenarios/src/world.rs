//! The cucumber World: what one scenario has seen so far. The stack itself
//! is shared by every scenario of a run and owned by the run, not the World.

use std::sync::{Arc, Mutex, OnceLock};

use hubtrust_harness::matrix::TrustMatrix;
use hubtrust_harness::probe::ProbeOutcome;
use hubtrust_harness::report::{ChainCheck, RunReport};
use hubtrust_harness::under_test::DeploymentUnderTest;
use hubtrust_harness::Stack;

/// The run's stack, brought up once before the first scenario and taken
/// back by the run for teardown.
pub static STACK: Mutex<Option<Arc<Stack>>> = Mutex::new(None);

pub fn shared_stack() -> Option<Arc<Stack>> {
    STACK.lock().ok().and_then(|s| s.clone())
}

/// A deployment hubtrust did not start host by host (a chart's pods), for
/// the scenarios that need only what every deployment offers. Set instead
/// of [`STACK`].
pub static DEPLOYMENT: Mutex<Option<Arc<dyn DeploymentUnderTest>>> = Mutex::new(None);

/// The run's deployment: its stack, else the deployment set instead.
pub fn shared_deployment() -> Option<Arc<dyn DeploymentUnderTest>> {
    match shared_stack() {
        Some(stack) => Some(stack),
        None => DEPLOYMENT.lock().ok().and_then(|d| d.clone()),
    }
}

/// Why the shared stack is not as designed: a disturbing scenario's undo
/// failed. Every later scenario fails with it until an undo succeeds,
/// since a check on a half-restored site could pass or fail for the wrong
/// reason.
pub static NOT_RESTORED: Mutex<Option<String>> = Mutex::new(None);

/// `--strict`: known defects fail like any other finding.
pub static STRICT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What steps add to the run's report (matrix, chains, inventory).
pub static REPORT: OnceLock<Arc<Mutex<RunReport>>> = OnceLock::new();

pub fn report() -> Arc<Mutex<RunReport>> {
    REPORT
        .get_or_init(|| Arc::new(Mutex::new(RunReport::default())))
        .clone()
}

/// Where reports (and so scenario artifacts) go.
pub static REPORT_DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

#[derive(Debug, Default, cucumber::World)]
pub struct Operator {
    /// Set by a Before hook, to name the scenario's artifact directory.
    pub scenario: String,
    pub capture: Option<WireCaptureHandle>,
    pub census: Option<hubtrust_harness::capture::WireCensus>,
    /// Canaries planted so far: (what, value).
    pub canaries: Vec<(String, String)>,
    pub kernel_id: Option<String>,
    pub kernel_ports_answering: Option<Vec<String>>,
    /// Set only when the deployment is a stack of hosts hubtrust started:
    /// the steps that start, stop or capture on those hosts need it.
    pub stack: Option<Arc<Stack>>,
    pub deployment: Option<Arc<dyn DeploymentUnderTest>>,
    pub http_status: Option<u16>,
    pub proxy_api: Option<ProbeOutcome>,
    pub matrix: Option<TrustMatrix>,
    pub chains: Vec<ChainCheck>,
    pub inventory: Option<hubtrust_harness::inventory::Inventory>,
    pub tool_runs: Option<Vec<hubtrust_harness::enterprise::ToolRun>>,
    /// What the wire showed of the runs through the inspecting proxy, or
    /// why it cannot tell.
    pub proxy_paths: Option<Result<hubtrust_harness::enterprise::ProxyPaths, String>>,
    pub tls_scan: Option<hubtrust_harness::report::TlsScanSection>,
    pub reach_cells: Option<Vec<hubtrust_harness::reachability::ReachCell>>,
    pub known_defects: Vec<hubtrust_harness::known_defects::KnownDefectHit>,
    /// Known-defect entries that applied but did not reproduce.
    pub stale_defects: Vec<String>,
    /// What the HPC steps noted for later steps of their scenario.
    pub hpc: HpcNotes,
}

/// What the HPC steps note between steps of one scenario.
#[derive(Debug, Default)]
pub struct HpcNotes {
    /// The lab's (pid, start time) on its compute node, noted earlier.
    pub lab_process: Option<(u32, u64)>,
    /// What the lab saw of each login node: (user, views, its environment).
    pub lab_view: Option<(
        String,
        Vec<hubtrust_harness::hpc::checks::LoginNodeView>,
        hubtrust_harness::hpc::checks::LabEnvironment,
    )>,
}

impl Operator {
    /// The first user with a lab: who the single-user steps act as.
    pub fn first_user(&self) -> anyhow::Result<String> {
        self.deployment()?
            .users()
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the stack has no user with a lab"))
    }

    /// The deployment, or a failure that says the Background never ran.
    pub fn deployment(&self) -> anyhow::Result<&dyn DeploymentUnderTest> {
        self.deployment.as_deref().ok_or_else(|| {
            anyhow::anyhow!("no deployment: the Background step that brings it up did not run")
        })
    }

    /// The stack of hosts hubtrust started, or why there is none: the
    /// Background never ran (a failure), or the deployment is a chart's
    /// pods (not observed: the scenario is not run).
    pub fn stack(&self) -> anyhow::Result<&Stack> {
        if let Some(stack) = self.stack.as_deref() {
            return Ok(stack);
        }
        match self.deployment {
            // Not run, never failed: the deployment is not broken, the
            // step has nothing to act on.
            Some(_) => Err(hubtrust_harness::HarnessError::NotObserved {
                what: "a step that acts on hosts hubtrust started".into(),
                why: "the chart started this deployment's components; it runs on the local and docker backends".into(),
            }
            .into()),
            None => anyhow::bail!("no stack: the Background step that brings it up did not run"),
        }
    }
}

/// A running capture; opaque in debug output.
pub struct WireCaptureHandle(pub Box<dyn hubtrust_harness::under_test::RunningCapture>);

impl std::fmt::Debug for WireCaptureHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireCapture")
    }
}

impl Operator {
    /// This scenario's artifact directory.
    pub fn artifact_dir(&self) -> std::path::PathBuf {
        let report = REPORT_DIR
            .get()
            .cloned()
            .unwrap_or_else(|| std::path::PathBuf::from("hubtrust-report"));
        report
            .join("artifacts")
            .join(crate::artifacts::slug(&self.scenario))
    }
}

/// What this scenario's known defects add to its failures: entries that no
/// longer reproduce always, the defects themselves under `--strict`.
/// Without it, each entry is named once as not failing.
pub fn known_defect_problems(world: &Operator) -> Vec<String> {
    let mut problems: Vec<String> = world
        .stale_defects
        .iter()
        .map(|id| {
            format!("known defect `{id}` no longer reproduces (fix: remove it from fixtures/known-defects.toml)")
        })
        .collect();
    let strict = STRICT.load(std::sync::atomic::Ordering::SeqCst);
    let mut by_entry: std::collections::BTreeMap<&str, usize> = Default::default();
    for hit in &world.known_defects {
        *by_entry.entry(hit.id.as_str()).or_default() += 1;
        if strict {
            problems.push(format!(
                "known defect {} (--strict): {}",
                hit.id, hit.finding
            ));
        }
    }
    if !strict {
        for (id, count) in by_entry {
            eprintln!("    known defect {id}: {count} finding(s), not failing (report.md lists them; --strict fails them)");
        }
    }
    problems
}
