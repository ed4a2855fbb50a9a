//! `--backend kind` and `--backend kubernetes`: the deployment described as
//! data, its plan printed (`--plan`) or executed, and everything it made
//! removed on every path out, by the reaper when hubtrust is killed.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ExitCode, Stdio};

use anyhow::Context;
use cucumber::gherkin::tagexpr::TagOperation;
use hubtrust_harness::backend::kubernetes::public_check::{self, PublicAddress, ToolsVerdict};
use hubtrust_harness::backend::kubernetes::under_test::{CapturePods, Observation};
use hubtrust_harness::backend::kubernetes::{
    self, command, in_cluster,
    plan::{KubernetesPlan, ProbesRun},
    pods, preflight,
    run::KubernetesRun,
    user_manifests::{self, UserManifests},
    user_values::{self, UserValues},
    ChartImage, ChartPins, ClusterTarget, Deployment, OrgTrust, ProxyImage, BUILTIN_IMAGE_LIST,
    BUILTIN_IMAGE_LOCK, DEFAULT_IMAGE_LIST,
};
use hubtrust_harness::capture::{LinkEvidence, WireCensus};
use hubtrust_harness::enterprise::{OutboundRuns, ProxyPaths, ToolRun};
use hubtrust_harness::images::list::{ImageList, ImageLock};
use hubtrust_harness::pki::OrgPki;
use hubtrust_harness::report::{RunReport, ScenarioResult, Status};
use hubtrust_harness::secret::Secret;
use hubtrust_harness::spec::{ContainerRole, StackSpec};
use hubtrust_harness::under_test::RunningCapture;
use hubtrust_harness::workdir::RunDir;
use hubtrust_harness::{hpc, provision};

use crate::checklist::{Checklist, Outcome};
use crate::{usage_error, BackendChoice, ClusterArgs};

/// proxy-public's nodePort; kind maps it to a free loopback port.
const PUBLIC_NODE_PORT: u16 = 30443;

/// What the Kubernetes backends take from the command line.
pub struct KubernetesArgs<'a> {
    pub backend: BackendChoice,
    pub stack: Option<&'a Path>,
    pub images: Option<&'a Path>,
    pub kubeconfig: Option<&'a Path>,
    pub namespace: Option<&'a str>,
    /// The deployment's own chart values files (`--values`), in order.
    pub values: &'a [PathBuf],
    /// The deployment's own objects (`--manifests`), made before the chart.
    pub manifests: &'a [PathBuf],
    pub plan: bool,
    /// Where the run keeps what it saw; `hubtrust-in-cluster/<ns>` when
    /// not given.
    pub artifacts: Option<PathBuf>,
    /// Where the feature files are (`--features`).
    pub features: Option<&'a Path>,
}

impl<'a> KubernetesArgs<'a> {
    pub fn from_cli(
        backend: BackendChoice,
        stack: Option<&'a Path>,
        images: Option<&'a Path>,
        cluster: &'a ClusterArgs,
    ) -> Self {
        KubernetesArgs {
            backend,
            stack,
            images,
            kubeconfig: cluster.kubeconfig.as_deref(),
            namespace: cluster.namespace.as_deref(),
            values: &cluster.values,
            manifests: &cluster.manifests,
            plan: cluster.plan,
            artifacts: None,
            features: None,
        }
    }
}

/// `run`'s options besides the deployment's.
pub struct RunOptions<'a> {
    pub tags: Option<&'a str>,
    pub report_dir: &'a Path,
    pub keep_if_failed: bool,
    /// Known upstream defects fail too.
    pub strict: bool,
    pub repeat: Option<u32>,
}

/// `hubtrust run --backend kind|kubernetes`: the deployment brought up,
/// every check of it run, the report written, everything torn down.
/// Exit 0 when every check passed, 1 when one failed or none ran.
pub fn run_command(mut args: KubernetesArgs<'_>, options: RunOptions<'_>) -> ExitCode {
    let RunOptions {
        tags,
        report_dir,
        keep_if_failed,
        strict,
        repeat,
    } = options;
    crate::world::STRICT.store(strict, std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    let outcome = (|| {
        if let Some(rounds) = repeat {
            anyhow::bail!(
                "--repeat {rounds}: not built for --backend {}, where each round would be a fresh cluster or namespace and chart install (fix: drop --repeat, and repeat the run in your CI instead)",
                args.backend.name()
            );
        }
        if let Some(tags) = tags {
            anyhow::bail!(
                "--tags {tags}: a run on --backend {} runs every check of the deployment and the scenarios of `{SCENARIO_TAGS}` (with @enterprise's when the stack merges the org bundle); tags cannot choose among them (fix: drop --tags; docs/kubernetes.md lists the checks)",
                args.backend.name()
            );
        }
        // Beside the report, so one directory holds everything a run saw.
        args.artifacts = Some(report_dir.join("in-cluster"));
        let prepared = prepare(&args)?;
        if args.plan {
            print!("{}", prepared.plan.render());
            return Ok(None);
        }
        preflight::check(&prepared.deployment)?;
        let list = bring_up(&prepared, Purpose::Check { keep_if_failed })?;
        Ok(Some((prepared, list)))
    })();
    let (prepared, list) = match outcome {
        Ok(Some(checked)) => checked,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => return usage_error(e),
    };
    let deployment = &prepared.deployment;
    // What the scenarios' steps added: the matrix they judged, and the
    // known defects they met.
    let scenarios_said = crate::world::report()
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let report = RunReport {
        tool: format!("hubtrust {}", env!("CARGO_PKG_VERSION")),
        tags: None,
        stack: stack_line(&prepared),
        backend: deployment.target.backend_name().to_string(),
        images: deployment
            .images
            .iter()
            .map(|(role, image)| {
                let pinned = match &image.digest {
                    Some(digest) => format!("{}@{digest}", image.tagged),
                    None => image.tagged.clone(),
                };
                (role.as_str().to_string(), pinned)
            })
            .collect(),
        scenarios: list.results.clone(),
        seconds: started.elapsed().as_secs_f64(),
        stack_ready_seconds: list.ready_seconds,
        known_defects: list
            .known_defects
            .iter()
            .chain(&scenarios_said.known_defects)
            .cloned()
            .collect(),
        inventory: list.inventory.clone(),
        trust_matrix: scenarios_said.trust_matrix,
        chains: scenarios_said.chains,
        peak_rss_kb: crate::measure::peak_rss_kb(),
        ..RunReport::default()
    };
    if let Err(e) = report.write_all(report_dir) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let not_run = list
        .results
        .iter()
        .filter(|r| r.status == Status::Skipped)
        .count();
    println!("reports written to {}", report_dir.display());
    println!(
        "checks: {} passed, {} failed, {not_run} not run or inconclusive",
        report.passed(),
        report.failed()
    );
    if list.passed() {
        ExitCode::SUCCESS
    } else {
        for failure in list.failures() {
            eprintln!("failed: {failure}");
        }
        ExitCode::from(1)
    }
}

/// `hubtrust up --backend kind|kubernetes`: the deployment, until Ctrl-C.
pub fn up_command(args: KubernetesArgs<'_>, show_secrets: bool) -> ExitCode {
    let outcome = prepare(&args).and_then(|prepared| {
        if args.plan {
            print!("{}", prepared.plan.render());
            return Ok(None);
        }
        preflight::check(&prepared.deployment)?;
        bring_up(&prepared, Purpose::Hold { show_secrets }).map(Some)
    });
    match outcome {
        Ok(Some(list)) if !list.passed() => {
            eprintln!("the deployment does not pass its checks, so it was not held:");
            for failure in list.failures() {
                eprintln!("failed: {failure}");
            }
            ExitCode::from(1)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => usage_error(e),
    }
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:08x}",
        (nanos as u64 ^ u64::from(std::process::id())) & 0xffff_ffff
    )
}

fn free_loopback_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("find a free loopback port for proxy-public")?;
    Ok(listener.local_addr()?.port())
}

/// The org CA a run puts in the ConfigMap: the stack's own bundle, or a
/// fresh org PKI's root, whose issuing CA then signs the org-CA test server.
struct OrgCa {
    pem: String,
    pki: Option<OrgPki>,
}

/// The report's stack line: the stack, the namespace, and what of the
/// deployment's own went in.
fn stack_line(prepared: &Prepared) -> String {
    let deployment = &prepared.deployment;
    let mut line = format!(
        "{}, namespace {}",
        prepared.stack_name, deployment.namespace
    );
    if !prepared.values_said.is_empty() {
        line += &format!(
            ", your chart values {}",
            prepared.values_said.join(", then ")
        );
    }
    if !deployment.user_manifests.is_empty() {
        let said: Vec<String> = deployment
            .user_manifests
            .iter()
            .map(UserManifests::said)
            .collect();
        line += &format!(", your objects {}", said.join(", "));
    }
    line
}

/// A deployment ready to be brought up: nothing is made yet.
struct Prepared {
    stack_name: String,
    /// Each of the deployment's own values files, and the keys of it
    /// hubtrust's replace: said in the report beside the stack.
    values_said: Vec<String>,
    deployment: Deployment,
    plan: KubernetesPlan,
    org: Option<OrgCa>,
    /// The feature files, and the expression selecting the scenarios a
    /// chart-started deployment answers: checked before anything starts.
    features: PathBuf,
    scenario_tags: TagOperation,
}

/// The deployment and its plan, from the stack file and the pins; nothing
/// is made yet. The org bundle (when the stack has `[enterprise]`) is the
/// stack's own file or, as on the other backends, a fresh org PKI's root.
fn prepare(args: &KubernetesArgs<'_>) -> anyhow::Result<Prepared> {
    let spec = match args.stack {
        Some(path) => StackSpec::load(path)?,
        None => StackSpec::default(),
    };
    let stack_file = args
        .stack
        .map_or_else(|| PathBuf::from("the default stack"), Path::to_path_buf);
    let pins = ChartPins::builtin()?;
    let mut chart = pins.chart;
    if let Some(version) = &spec.kubernetes.chart_version {
        chart.version = version.clone();
        chart.require_pinned(&stack_file)?;
    }
    anyhow::ensure!(
        spec.topology.hpc.is_none(),
        "{}: an HPC topology's login and compute nodes are not built on Kubernetes yet (fix: run HPC stacks on --backend local or docker)",
        stack_file.display()
    );
    for note in kubernetes::keys_not_applied(&spec) {
        eprintln!(
            "note: {}: not applied on --backend {}: {note}",
            stack_file.display(),
            args.backend.name()
        );
    }
    let id = run_id();
    let target = match args.backend {
        BackendChoice::Kind => {
            anyhow::ensure!(
                args.kubeconfig.is_none(),
                "--kubeconfig names an existing cluster; --backend kind makes its own (fix: use --backend kubernetes)"
            );
            ClusterTarget::Kind {
                cluster: kubernetes::kind_cluster_name(&id),
            }
        }
        _ => ClusterTarget::Existing {
            kubeconfig: args.kubeconfig.map(Path::to_path_buf),
        },
    };
    let namespace = args
        .namespace
        .map(str::to_string)
        .unwrap_or_else(|| kubernetes::run_namespace(&id));
    if !args.plan {
        preflight::require_tools(&target)?;
    }
    let user_values = args
        .values
        .iter()
        .map(|path| UserValues::load(path))
        .collect::<Result<Vec<_>, _>>()?;
    let user_manifests = args
        .manifests
        .iter()
        .map(|path| UserManifests::load(path))
        .collect::<Result<Vec<_>, _>>()?;
    let (mut images, mitmproxy_command) = pinned_images(args.images, args.plan)?;
    let org_trust = spec.enterprise.as_ref().map(|e| OrgTrust {
        configmap_present: spec.kubernetes.org_trust_configmap,
        merge_into_labs: e.merge_org_bundle,
        hub_included: e.merge_into_hub,
    });
    let org = match spec.enterprise.as_ref() {
        None => None,
        Some(e) => Some(match &e.org_bundle {
            Some(path) => {
                let here = args.stack.and_then(Path::parent).unwrap_or(Path::new("."));
                let path = here.join(path);
                let pem = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "read the org bundle {} (enterprise.org_bundle)",
                        path.display()
                    )
                })?;
                OrgCa { pem, pki: None }
            }
            None => {
                let pki = OrgPki::generate()?;
                OrgCa {
                    pem: pki.root.cert_pem(),
                    pki: Some(pki),
                }
            }
        }),
    };
    let run_dir = kubernetes::run_dir(&std::env::temp_dir(), &target, &id);
    let artifacts_dir = args
        .artifacts
        .clone()
        .unwrap_or_else(|| PathBuf::from(kubernetes::in_cluster::REPORTS_DIR).join(&namespace));
    let outbound_servers = org.as_ref().is_some_and(|o| o.pki.is_some());
    let proxy_image = inspecting_proxy_image(
        &spec,
        &target,
        &mut images,
        mitmproxy_command,
        outbound_servers,
        args.backend.name(),
    )?;
    let deployment = Deployment {
        target,
        namespace,
        chart,
        node_image: pins.kind.node_image,
        node_platform: hubtrust_harness::backend::kubernetes::kind::host_node_platform(),
        images,
        public_node_port: PUBLIC_NODE_PORT,
        public_host_port: free_loopback_port()?,
        org_trust,
        artifacts_dir,
        run_dir,
        made_on: kubernetes::this_machine().unwrap_or_else(|| "unknown".into()),
        user_values,
        user_manifests,
        service_token: Secret::generate(),
        proxy_token: Secret::generate(),
        user_password: Secret::generate(),
        user: spec
            .users
            .first()
            .cloned()
            .unwrap_or_else(|| "alice".into()),
        tls_policy: spec.tls_policy.clone(),
        outbound_servers,
        proxy_image,
    };
    let merge_command = spec
        .enterprise
        .as_ref()
        .and_then(|e| e.merge_command.clone());
    let plan = kubernetes::plan::plan(
        &deployment,
        org.as_ref().map(|o| o.pem.as_str()),
        merge_command.as_deref(),
    );
    user_manifests::clashes(
        &deployment.user_manifests,
        &plan.objects_made(),
        &deployment.chart.objects,
    )?;
    let ours = plan
        .files
        .iter()
        .find(|f| f.path.ends_with("values.json"))
        .map(|f| &f.contents);
    for why in weakened_by_their_values(&deployment) {
        eprintln!(
            "warning: {why}; hubtrust's values would hide it in the run, so the run fails on it"
        );
    }
    let mut values_said = Vec::new();
    for theirs in &deployment.user_values {
        let replaced = ours
            .map(|ours| user_values::replaced_by(&theirs.values, ours))
            .unwrap_or_default();
        if replaced.is_empty() {
            values_said.push(format!("{} (installed as written)", theirs.path.display()));
        } else {
            eprintln!(
                "note: {}: hubtrust's values replace yours at {} (the checks need them: docs/kubernetes.md, \"Your own values\"); the rest of yours is installed as written",
                theirs.path.display(),
                replaced.join(", ")
            );
            for (what, table) in user_values::images_replaced(&replaced) {
                eprintln!(
                    "note: {what} is not what runs: the images list's {table} is (fix: to check yours, copy {} with yours under {table}, pin it with `hubtrust images pin LIST`, and pass --images LIST)",
                    args.images.map_or_else(|| "fixtures/kubernetes/images.toml".into(), |list| list.display().to_string()),
                );
            }
            values_said.push(format!(
                "{} (hubtrust's replace yours at {})",
                theirs.path.display(),
                replaced.join(", ")
            ));
        }
    }
    let features = crate::features::locate(args.features);
    let merges = deployment
        .org_trust
        .as_ref()
        .is_some_and(|trust| trust.merge_into_labs);
    let scenario_tags = crate::features::parse_tags(
        if merges {
            SCENARIO_TAGS_ENTERPRISE
        } else {
            SCENARIO_TAGS
        },
        &crate::features::scenarios(&features)?,
    )?;
    Ok(Prepared {
        stack_name: spec.name.clone(),
        values_said,
        deployment,
        plan,
        org,
        features,
        scenario_tags,
    })
}

/// Each setting of the deployment's own values files that weakens what
/// the checks judge, naming the file.
fn weakened_by_their_values(deployment: &Deployment) -> Vec<String> {
    deployment
        .user_values
        .iter()
        .flat_map(|theirs| {
            user_values::weakened(&theirs.values)
                .into_iter()
                .map(|why| format!("{}: {why}", theirs.path.display()))
        })
        .collect()
}

/// Why a check that needs the pods on this machine did not run: `how` it
/// reads them, and the backend it ran on.
fn not_on_this_machine(deployment: &Deployment, how: &str) -> String {
    format!(
        "not run: {how}, and a cluster's pods are on this machine only on kind, whose nodes run here; this is --backend {}",
        deployment.target.backend_name()
    )
}

/// The image the inspecting proxy runs from, when it runs: only with the
/// internet servers behind it (hubtrust made the org CA). A listed
/// `[mitmproxy]` runs it on either backend, pulled or loaded by its digest;
/// without one, kind loads hubtrust's runtime image, which a cluster of the
/// user's own cannot pull, so there no proxy runs and the run says so. A
/// listed `[mitmproxy]` that does not run is named and taken out of the
/// images, so it is neither loaded nor required.
fn inspecting_proxy_image(
    spec: &StackSpec,
    target: &ClusterTarget,
    images: &mut BTreeMap<ContainerRole, ChartImage>,
    mitmproxy_command: Option<Vec<String>>,
    outbound_servers: bool,
    backend: &str,
) -> anyhow::Result<Option<ProxyImage>> {
    let on_kind = matches!(target, ClusterTarget::Kind { .. });
    let enterprise = spec.enterprise.as_ref();
    let extra_args = enterprise.map(|e| e.proxy_args.clone()).unwrap_or_default();
    let replacement = enterprise.and_then(|e| e.proxy_command.clone());
    let listed = images.get(&ContainerRole::Mitmproxy);
    anyhow::ensure!(
        !(outbound_servers && on_kind && replacement.is_some() && listed.is_none()),
        "[enterprise] proxy_command names a proxy other than mitmproxy, and in the cluster it runs in an image of its own, which the images list does not name (fix: list the proxy's image as [mitmproxy] in the --images list, pinned like the chart's)"
    );
    Ok(match listed {
        Some(listed) if outbound_servers => Some(ProxyImage {
            reference: listed.reference_for(target),
            // The list allows one program here; `mitmdump` on the
            // image's PATH when it names none.
            mitmdump: mitmproxy_command
                .and_then(|command| command.first().cloned())
                .unwrap_or_else(|| "mitmdump".into()),
            extra_args,
            listed: true,
            replacement,
        }),
        Some(listed) => {
            eprintln!(
                "note: the images list's [mitmproxy] ({}) is not used: no inspecting proxy runs on --backend {backend} without a stack whose [enterprise] section has hubtrust make the org CA",
                listed.tagged,
            );
            images.remove(&ContainerRole::Mitmproxy);
            None
        }
        None if outbound_servers && !on_kind => {
            let unused: Vec<&str> = [
                (!extra_args.is_empty()).then_some("[enterprise] proxy_args"),
                replacement
                    .is_some()
                    .then_some("[enterprise] proxy_command"),
            ]
            .into_iter()
            .flatten()
            .collect();
            eprintln!(
                "note: no inspecting proxy runs on --backend {backend}{}: a cluster of your own cannot pull hubtrust's local runtime image, so the labs' tools fetch the org-CA and foreign-CA servers only (fix: list a mitmproxy image as [mitmproxy] in the --images list, pinned like the chart's)",
                if unused.is_empty() {
                    String::new()
                } else {
                    format!(" and {} are not applied", unused.join(" and "))
                }
            );
            None
        }
        None => outbound_servers.then(|| {
            use hubtrust_harness::backend::docker::images;
            ProxyImage {
                reference: images::runtime_image(),
                mitmdump: images::components_in_image()
                    .mitmproxy_venv
                    .join("bin/mitmdump")
                    .display()
                    .to_string(),
                extra_args,
                listed: false,
                replacement,
            }
        }),
    })
}

/// The listed images by role, each with its pinned digest, and the
/// `[mitmproxy]` entry's command.
type PinnedImages = (BTreeMap<ContainerRole, ChartImage>, Option<Vec<String>>);

/// The chart images with their locked digests. A plan may show an image
/// the lock lacks, marked; a run refuses it.
fn pinned_images(list_path: Option<&Path>, for_plan: bool) -> anyhow::Result<PinnedImages> {
    let (list, lock, list_path) = match list_path {
        Some(path) => (
            ImageList::load(path)?,
            ImageLock::load_for(path)?,
            path.to_path_buf(),
        ),
        None => {
            let path = PathBuf::from(DEFAULT_IMAGE_LIST);
            (
                ImageList::parse(BUILTIN_IMAGE_LIST, &path)?,
                ImageLock::parse(BUILTIN_IMAGE_LOCK, &ImageList::lock_path(&path))?,
                path,
            )
        }
    };
    if let Err(e) = list.pinned(&lock, &list_path) {
        if !for_plan {
            return Err(e.into());
        }
        eprintln!("warning: {e}; the plan shows those images by tag alone, and a run refuses them");
    }
    let mitmproxy_command = list
        .components
        .get(&ContainerRole::Mitmproxy)
        .and_then(|listed| listed.command.clone());
    let images = list
        .components
        .iter()
        .map(|(role, listed)| {
            let image = ChartImage {
                tagged: listed.image.clone(),
                digest: lock.digests.get(&listed.image).cloned(),
                platforms: lock
                    .platforms
                    .get(&listed.image)
                    .cloned()
                    .unwrap_or_default(),
            };
            (*role, image)
        })
        .collect();
    Ok((images, mitmproxy_command))
}

/// What a bring-up is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// `up`: once every check passed, hold the deployment until Ctrl-C or
    /// SIGTERM, printing its secrets masked unless `show_secrets`.
    Hold { show_secrets: bool },
    /// `run`: check it and tear it down; with `keep_if_failed` (`--keep`),
    /// a deployment that failed a check is left for inspection instead.
    Check { keep_if_failed: bool },
}

/// The checks' names, as the report and the docs list them.
const INSTALLED: &str = "The cluster is ready and the chart installs, with every pod ready";
const YOUR_VALUES: &str =
    "The deployment's own values keep internal TLS and the public TLS on, and can spawn a lab, as the checks judge them";
const PUBLIC_SIDE: &str =
    "The hub answers through the proxy over verified TLS, and the first user's lab spawns and runs a cell";
const ORG_BUNDLE: &str = "The lab holds the org trust bundle exactly as the stack file says";
const LAB_TOOLS: &str = "The lab's tools trust the org CA with the merged bundle, and nothing else";
const WIRE: &str =
    "Every connection between the hub's, the proxy's and the lab's pods is TLS on the wire";
const TORN_DOWN: &str = "Everything the run made is removed";
const OUTSIDE: &str = "Probe from outside, through the public URL";
/// The five CAs and the leaves' strength are the `@core` inventory
/// scenario's verdict, judged on what this check read.
const INVENTORY: &str =
    "The running hub's certificate store is read, the lab's certificate made at spawn among it";
const SECRETS: &str =
    "Private keys and the hub's secrets are readable only by their component's user and group";
const PROXY_WIRE: &str =
    "Every fetch through the inspecting proxy crossed it on the wire: lab to proxy, then proxy to internet";

/// Starts the reaper, makes the certificates, applies the plan and runs
/// every check; for `up`, holds the deployment while every check passed.
/// Everything is torn down on every path out, the reaper covering SIGKILL.
fn bring_up(prepared: &Prepared, purpose: Purpose) -> anyhow::Result<Checklist> {
    let Prepared {
        deployment,
        plan,
        org,
        ..
    } = prepared;
    let org = org.as_ref();
    let run_dir = &deployment.run_dir;
    // The reaper first, so that no instant passes with the directory and
    // nothing to remove it. Should the reaper be killed too, the next run
    // sweeps the directory, as it does a local run's.
    let mut reaper = Reaper::start(plan, run_dir)?;
    let _run_dir_held = RunDir::create_at(run_dir)?;
    hubtrust_harness::pki::set_mode(run_dir, 0o700)?;

    eprintln!("· making the internal CAs (jupyterhub --generate-certs) and the public leaf");
    let components = provision::ensure(&mut std::io::stderr())?;
    let internal = run_dir.join("internal-ssl");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(hpc::make_internal_store(
        &components,
        &plan.certificates.trusted_alt_names,
        &internal,
    ))?;
    kubernetes::run::retarget_store(&internal, &plan.certificates.ca_certs)?;
    kubernetes::run::issue_public_leaf(plan)?;
    kubernetes::run::check_sans(plan, &internal)?;
    if let Some(pki) = org.and_then(|o| o.pki.as_ref()) {
        let with_proxy = deployment.inspecting_proxy().is_some();
        kubernetes::outbound::issue(pki, &deployment.namespace, run_dir, with_proxy)?;
        if with_proxy {
            kubernetes::inspecting_proxy::write_files(pki, run_dir)?;
        }
        if deployment
            .inspecting_proxy()
            .is_some_and(|proxy| !proxy.listed)
        {
            eprintln!("· hubtrust's runtime image, for the inspecting proxy (built once, offline)");
            crate::docker::ensure_runtime_image()?;
        }
    }
    kubernetes::run::write_files(plan)?;
    std::fs::write(run_dir.join(TLS_POLICY_FILE), plan.tls_policy.to_toml())?;

    let keep_if_failed = matches!(
        purpose,
        Purpose::Check {
            keep_if_failed: true
        }
    );
    reaper.arm();
    // The same name every run, so CI keeps each check's history; the
    // namespace (a run id) is in the report's stack line.
    let mut list = Checklist::new(format!(
        "Zero to JupyterHub on {}",
        deployment.target.backend_name()
    ));
    if !deployment.user_values.is_empty() {
        list.check(YOUR_VALUES, None, || {
            let weakened = weakened_by_their_values(deployment);
            anyhow::ensure!(
                weakened.is_empty(),
                "{}; hubtrust's values would hide it in this run, so what passed here would not be the deployment you install (fix: keep TLS on and its URLs https:// in your values, or drop them to the chart's; give singleuser.extraEnv as a mapping of name to value)",
                weakened.join("; ")
            );
            Ok(Outcome::Passed)
        });
    }
    let mut run = None;
    list.check(INSTALLED, None, || {
        let mut progress = |step: &str| eprintln!("· {step}");
        run = Some(KubernetesRun::apply(
            plan,
            &deployment.target,
            &mut progress,
            keep_if_failed,
            &deployment.artifacts_dir,
        )?);
        Ok(Outcome::Passed)
    });
    let public = check_deployment(&mut list, &runtime, prepared, run.is_some());
    let held = match (purpose, &public) {
        (Purpose::Hold { show_secrets }, Some(public)) if list.passed() => {
            let shown = |secret: &Secret| match show_secrets {
                true => secret.expose().to_string(),
                false => secret.masked(),
            };
            // For a probe from outside under the same policy.
            println!("TLS policy: {}", run_dir.join(TLS_POLICY_FILE).display());
            println!("  service token  {}", shown(&deployment.service_token));
            println!(
                "  user password  {} (any user name logs in with it)",
                shown(&deployment.user_password)
            );
            println!(
                "ready: {} (CA {}); Ctrl-C tears it down",
                public.url(),
                run_dir.join("public/public-ca.crt").display()
            );
            let _ = std::io::stdout().flush();
            wait_for_stop_signal()
        }
        _ => Ok(()),
    };
    drop(public);
    if let Some(run) = run.as_mut() {
        if let Some(dir) = run.keep_logs(!list.passed()) {
            eprintln!(
                "· every pod's log and the namespace's events kept in {}",
                dir.display()
            );
        }
    }
    if let (Some(run), false) = (&run, list.passed()) {
        eprintln!("· the namespace as the checks left it:{}", run.pods_state());
    }
    if keep_if_failed && !list.passed() {
        let removal = match run.as_mut() {
            Some(run) => run.keep(),
            None => plan.teardown.iter().map(|c| c.shell_line()).collect(),
        };
        reaper.stand_down();
        let said = format!(
            "kept for inspection (--keep), since a check failed; remove it with `{}`",
            removal.join(" && ")
        );
        eprintln!("· {said}");
        list.not_run(TORN_DOWN, said);
        held?;
        return Ok(list);
    }
    eprintln!("· tearing down");
    // A failed install tore itself down already; either way the cluster
    // is asked afterwards, not trusted.
    list.check(TORN_DOWN, None, || {
        let failures = match run.as_mut() {
            Some(run) => run.tear_down(),
            None => Vec::new(),
        };
        anyhow::ensure!(
            failures.is_empty(),
            "the teardown failed: {}",
            failures
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        let ns = &deployment.namespace;
        let answer = command::run(&kubernetes::plan::leftovers_command(&deployment.target, ns))
            .map_err(|e| anyhow::anyhow!("could not ask what is left: {e}"))?;
        if let Some(left) = kubernetes::plan::left_behind(&deployment.target, ns, &answer.stdout) {
            anyhow::bail!("the run left {left}");
        }
        Ok(Outcome::Passed)
    });
    reaper.stand_down();
    held?;
    Ok(list)
}

/// Every check after the install, in order; a check whose ground an
/// earlier one did not lay is said as not run. Returns the public address
/// while it is held (a port-forward, on `--backend kubernetes`).
fn check_deployment(
    list: &mut Checklist,
    runtime: &tokio::runtime::Runtime,
    prepared: &Prepared,
    installed: bool,
) -> Option<PublicAddress> {
    let deployment = &prepared.deployment;
    let plan = &prepared.plan;
    let not_installed = (!installed).then_some("the chart did not install (see the check above)");
    // The hub's pod is captured from before the spawn, so the spawn's own
    // connections are seen; the probes come after every capture stopped,
    // so their TLS scan's old-version handshakes are never judged as the
    // deployment's traffic.
    let early = installed.then(|| wire_before_spawn(deployment, plan));
    let proxy_capture = match (&plan.proxy_wire, installed) {
        (Some(capture), true) => Some(PodCapture::start(
            deployment,
            capture,
            &wire_dir(deployment),
        )),
        _ => None,
    };
    let mut public = None;
    let mut seen = None;
    let spawned = list.check(PUBLIC_SIDE, not_installed, || {
        let address = runtime.block_on(PublicAddress::open(deployment))?;
        let said = runtime.block_on(public_check::check(
            deployment,
            &address,
            prepared.org.as_ref().map(|o| o.pem.as_str()),
        ))?;
        eprintln!(
            "· the hub (JupyterHub {}) answers through the proxy; {}'s lab was ready after {:.1} s and ran a cell",
            said.hub_version, deployment.user, said.lab_ready_after_seconds
        );
        public = Some(address);
        seen = Some(said);
        Ok(Outcome::Passed)
    });
    if spawned {
        list.mark_ready();
    }
    let no_lab = (!spawned).then_some(
        "the first user's lab did not spawn through the public side (see the check above)",
    );
    if deployment.org_trust.is_some() {
        let bundle = seen.as_mut().and_then(|s| s.org_bundle.take());
        list.check(ORG_BUNDLE, no_lab, || {
            let said = bundle.context("the lab's cell said nothing of its bundle")??;
            eprintln!("· {said}");
            Ok(Outcome::Passed)
        });
        match seen.as_mut().and_then(|s| s.tools.take()) {
            Some(ToolsVerdict::NotTried(why)) => list.not_run(LAB_TOOLS, format!("not run: {why}")),
            tools => {
                list.check(LAB_TOOLS, no_lab, || {
                    let said = match tools {
                        Some(ToolsVerdict::Judged(verdict)) => verdict?,
                        _ => anyhow::bail!("the lab's cell said nothing of its tools' fetches"),
                    };
                    for line in said {
                        eprintln!("· {line}");
                    }
                    Ok(Outcome::Passed)
                });
            }
        }
    }
    let runs = seen.as_mut().and_then(|s| s.runs.take());
    let mut proxy_paths = None;
    if plan.proxy_wire.is_some() {
        list.check(PROXY_WIRE, no_lab, || {
            let capture = proxy_capture.context("the capture was not started")??;
            judge_proxy_wire(deployment, capture, runs.as_ref(), &mut proxy_paths)
        });
    } else if deployment.inspecting_proxy().is_some() {
        list.not_run(
            PROXY_WIRE,
            not_on_this_machine(
                deployment,
                "the inspecting proxy's pod is captured in its own network namespace",
            ),
        );
    }
    let tools = tools_observed(deployment, plan, runs, proxy_paths);
    if plan.wire.is_empty() {
        list.not_run(
            WIRE,
            not_on_this_machine(
                deployment,
                "the pods are captured in their own network namespaces",
            ),
        );
    } else {
        list.check(WIRE, no_lab, || {
            let early = early.context("the captures were not started")??;
            wire_from_inside(runtime, deployment, plan, early)
        });
    }
    let mut inventory = None;
    list.check(INVENTORY, no_lab, || {
        check_inventory(deployment, &mut inventory)
    });
    list.inventory = inventory;
    let mut known = Vec::new();
    list.check(SECRETS, no_lab, || {
        check_secret_files(deployment, plan, &mut known)
    });
    list.known_defects.extend(known);
    probe_from_inside(list, deployment, plan, no_lab);
    match (&public, no_lab) {
        (Some(address), None) => {
            let hub_version = seen.as_ref().map(|s| s.hub_version.clone());
            run_scenarios(list, runtime, prepared, address, hub_version, tools);
        }
        (_, why) => list.not_run(
            SCENARIOS,
            format!(
                "not run: {}",
                why.unwrap_or("the public side was not reached")
            ),
        ),
    }
    match (&public, no_lab) {
        (Some(address), None) => probe_from_outside(list, runtime, deployment, address),
        (_, why) => list.not_run(
            OUTSIDE,
            format!(
                "not run: {}",
                why.unwrap_or("the public side was not reached")
            ),
        ),
    }
    public
}

/// The Gherkin scenarios a chart-started deployment answers, the
/// enterprise feature's when it merges the org bundle.
const SCENARIO_TAGS: &str = "@core or @wire";
const SCENARIO_TAGS_ENTERPRISE: &str = "@core or @enterprise or @wire";
const SCENARIOS: &str = "The feature files' scenarios, unchanged, against the chart's pods";

/// The feature files' scenarios `prepared.scenario_tags` selects, run against the
/// deployment through `public` and what the checks above observed inside
/// the cluster; each becomes a row of the report under its own feature.
fn run_scenarios(
    list: &mut Checklist,
    runtime: &tokio::runtime::Runtime,
    prepared: &Prepared,
    public: &PublicAddress,
    hub_version: Option<String>,
    outbound_tools: Observation<OutboundRuns>,
) {
    use hubtrust_harness::backend::kubernetes::under_test::{
        ChartDeployment, InClusterObservations,
    };
    let deployment = &prepared.deployment;
    let plan = &prepared.plan;
    // Kind's pods are on this machine; a cluster elsewhere's are not.
    let no_pod_entered = format!(
        "hubtrust reads pods' processes and files only on kind, whose nodes are on this machine; this is --backend {}",
        deployment.target.backend_name()
    );
    let observed = InClusterObservations {
        hub_version,
        trust_matrix: labelled_probe_saw(deployment, plan, "/trust_matrix", &no_pod_entered),
        proxy_api: labelled_probe_saw(deployment, plan, "/proxy_api_calls", &no_pod_entered),
        chains: labelled_probe_saw(deployment, plan, "/chains", &no_pod_entered),
        tls_scan: labelled_probe_saw(deployment, plan, "/tls_scan/endpoints", &no_pod_entered),
        reachability: probers_reached(deployment, plan, &no_pod_entered),
        outbound_tools,
        hub_environment: pods::hub_environment(deployment)
            .map_or_else(|e| Observation::Failed(e.to_string()), Observation::Seen),
        captures: match plan.wire.is_empty() {
            true => Observation::NotMade(no_pod_entered.clone()),
            false => Observation::Seen(std::sync::Arc::new(ScenarioPodCaptures {
                deployment: deployment.clone(),
                pods: plan.wire.clone(),
            })),
        },
        inventory: match list.inventory.clone() {
            Some(inventory) => Observation::Seen(inventory),
            None => Observation::Failed(
                "the hub's certificate store was not read (see the inventory row)".into(),
            ),
        },
    };
    let org_bundle = prepared.org.as_ref().map(|org| org.pem.as_str());
    let chart = match ChartDeployment::new(deployment, public, observed, org_bundle) {
        Ok(chart) => chart,
        Err(e) => {
            list.check(SCENARIOS, None, || Err(e.into()));
            return;
        }
    };
    if let Ok(mut shared) = crate::world::DEPLOYMENT.lock() {
        *shared = Some(std::sync::Arc::new(chart));
    }
    let results = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    runtime.block_on(crate::run::run_scenarios(
        prepared.features.clone(),
        Some(prepared.scenario_tags.clone()),
        results.clone(),
        Box::new(|_, _| None),
    ));
    if let Ok(mut shared) = crate::world::DEPLOYMENT.lock() {
        *shared = None;
    }
    let results = results.lock().map(|r| r.clone()).unwrap_or_default();
    if results.is_empty() {
        list.check(SCENARIOS, None, || {
            anyhow::bail!("no scenario ran, so nothing was shown to work")
        });
    }
    list.results.extend(results);
}

/// The lab's tool runs and what the wire showed of those through the
/// inspecting proxy, as the rows above observed them, for the enterprise
/// scenario's table.
fn tools_observed(
    deployment: &Deployment,
    plan: &KubernetesPlan,
    runs: Option<Result<Vec<ToolRun>, String>>,
    proxy_paths: Option<Result<ProxyPaths, String>>,
) -> Observation<OutboundRuns> {
    use hubtrust_harness::backend::kubernetes::outbound;
    if !deployment.outbound_servers {
        return Observation::NotMade(
            "the run starts no outbound test servers: the stack's own org_bundle comes without the key to sign an org-CA server".into(),
        );
    }
    if plan.proxy_wire.is_none() {
        return Observation::NotMade(if deployment.inspecting_proxy().is_some() {
            "the inspecting proxy's capture is made in its pod's network namespace, which is on this machine only on kind; the lab-tools row judges every fetch, the proxied ones included".into()
        } else {
            "no inspecting proxy runs: on a cluster of your own it needs a [mitmproxy] in the --images list; the lab-tools row judges the direct servers".into()
        });
    }
    let ns = &deployment.namespace;
    match runs {
        None => Observation::Failed(
            "the lab's cell reported no tool runs (see the public side's row)".into(),
        ),
        Some(Err(why)) => Observation::Failed(why),
        Some(Ok(runs)) => Observation::Seen(OutboundRuns {
            targets: outbound::as_enterprise_targets(
                &outbound::targets(ns, deployment.inspecting_proxy().is_some()),
                ns,
            ),
            runs,
            proxy_paths: Some(proxy_paths.unwrap_or_else(|| {
                Err(
                    "inconclusive: the inspecting proxy's capture was not judged (see its row)"
                        .into(),
                )
            })),
        }),
    }
}

/// A section of the labelled prober pod's report: what it observed, or
/// why it was not (no prober on this backend) or could not be.
fn labelled_probe_saw<T: serde::de::DeserializeOwned>(
    deployment: &Deployment,
    plan: &KubernetesPlan,
    section: &str,
    no_pod_entered: &str,
) -> hubtrust_harness::backend::kubernetes::under_test::Observation<T> {
    use hubtrust_harness::backend::kubernetes::under_test::Observation;
    match plan.probes.iter().find(|p| p.labelled) {
        Some(probe) => probe_saw(deployment, probe, section),
        None => Observation::NotMade(no_pod_entered.to_string()),
    }
}

/// Every prober pod's tries of the Services, each cell said to come from
/// the kind of pod its prober stands for.
fn probers_reached(
    deployment: &Deployment,
    plan: &KubernetesPlan,
    no_pod_entered: &str,
) -> hubtrust_harness::backend::kubernetes::under_test::Observation<
    Vec<hubtrust_harness::reachability::ReachCell>,
> {
    use hubtrust_harness::backend::kubernetes::under_test::Observation;
    if plan.probes.is_empty() {
        return Observation::NotMade(no_pod_entered.to_string());
    }
    let mut cells = Vec::new();
    for probe in &plan.probes {
        match probe_saw::<Vec<hubtrust_harness::reachability::ReachCell>>(
            deployment,
            probe,
            "/reachability",
        ) {
            Observation::Seen(seen) => cells.extend(seen.into_iter().map(|mut cell| {
                cell.from = probe.place();
                cell
            })),
            Observation::Failed(why) => return Observation::Failed(why),
            Observation::NotMade(why) => return Observation::NotMade(why),
        }
    }
    Observation::Seen(cells)
}

/// What `probe`'s pod observed under `section` (a JSON pointer into its
/// report), or why it could not be read. A section the prober did not
/// write is a failure, never an empty list a step could pass.
fn probe_saw<T: serde::de::DeserializeOwned>(
    deployment: &Deployment,
    probe: &in_cluster::PlannedProbe,
    section: &str,
) -> hubtrust_harness::backend::kubernetes::under_test::Observation<T> {
    use hubtrust_harness::backend::kubernetes::under_test::Observation;
    let file = deployment
        .artifacts_dir
        .join(&probe.pod)
        .join("report.json");
    let read = std::fs::read(&file)
        .map_err(|e| {
            format!(
                "the prober pod {} left no report at {} ({e}); see its row",
                probe.pod,
                file.display()
            )
        })
        .and_then(|text| {
            serde_json::from_slice::<serde_json::Value>(&text)
                .map_err(|e| format!("parse {}: {e}", file.display()))
        })
        .and_then(|mut written| {
            let found = written
                .pointer_mut(section)
                .map(serde_json::Value::take)
                .unwrap_or_default();
            serde_json::from_value(found)
                .map_err(|e| format!("`{section}` in {}: {e}", file.display()))
        });
    read.map_or_else(Observation::Failed, Observation::Seen)
}

/// `hubtrust probe`'s checks from this machine, through the public URL,
/// under the stack's TLS policy: what a user's browser meets. Its report
/// goes to `<artifacts>/outside/`.
fn probe_from_outside(
    list: &mut Checklist,
    runtime: &tokio::runtime::Runtime,
    deployment: &Deployment,
    address: &PublicAddress,
) {
    use hubtrust_harness::probe_deployment::{probe_deployment, ProbeTarget};
    let found = (|| -> anyhow::Result<_> {
        let ca_path = deployment.run_dir.join("public/public-ca.crt");
        let target = ProbeTarget {
            public_name: "localhost".into(),
            public_port: address.addr.port(),
            public_addr: address.addr,
            public_roots: std::fs::read_to_string(&ca_path)
                .with_context(|| format!("read {}", ca_path.display()))?,
            internal: Vec::new(),
            internal_roots: None,
            closed: Vec::new(),
            identities: Vec::new(),
            hub_token: Some(deployment.service_token.clone()),
            user_token: Some(runtime.block_on(public_check::user_token(deployment, address))?),
            proxy_api: None,
            real_clients: Vec::new(),
            policy: deployment.tls_policy.clone(),
            strict: false,
            components: deployment.chart.component_versions(),
        };
        let findings = runtime.block_on(probe_deployment(&target))?;
        let dir = deployment.artifacts_dir.join("outside");
        findings.report.write_all(&dir)?;
        Ok(findings.report.scenarios)
    })();
    match found {
        Ok(results) => {
            for r in &results {
                eprintln!("· {} {}", status_mark(r.status), r.scenario);
            }
            list.lift(OUTSIDE, results)
        }
        Err(e) => {
            list.check(OUTSIDE, None, || Err(e));
        }
    }
}

fn status_mark(status: Status) -> &'static str {
    match status {
        Status::Passed => "✔",
        Status::Failed => "✘",
        Status::Skipped => "–",
    }
}

/// The stack's `[tls_policy]` in the run directory, as `hubtrust probe
/// --policy-file` takes it.
const TLS_POLICY_FILE: &str = "tls-policy.toml";

/// `hubtrust probe` from each prober pod's network namespace, as root
/// (through `sudo -n` when hubtrust is not): the labelled pod's trust
/// matrix and TLS scan against the Services, the bare pod's closed
/// endpoints. Each probe is a check, and its own checks are lifted into
/// the list; its report stays in `<artifacts>/<pod>/`.
fn probe_from_inside(
    list: &mut Checklist,
    deployment: &Deployment,
    plan: &KubernetesPlan,
    blocked: Option<&str>,
) {
    if plan.probes.is_empty() {
        return;
    }
    let prepared = match blocked {
        Some(why) => Err(why.to_string()),
        None => prepare_probes(deployment, plan).map_err(|e| format!("{e:#}")),
    };
    for probe in &plan.probes {
        let labels = if probe.labelled {
            "with the network-access labels"
        } else {
            "without labels"
        };
        let scenario = format!(
            "The in-cluster probe from pod {} ({labels}) passes",
            probe.pod
        );
        let report = deployment.artifacts_dir.join(&probe.pod);
        let mut lifted = Vec::new();
        let ready = match (&prepared, blocked) {
            (_, Some(why)) => {
                list.not_run(&scenario, format!("not run: {why}"));
                continue;
            }
            (Ok(ready), None) => Ok(ready),
            (Err(why), None) => Err(anyhow::anyhow!("{why}")),
        };
        list.check(&scenario, None, || {
            let ready = ready?;
            let ended = match plan.probes_run {
                ProbesRun::FromThisMachine => {
                    probe_from_this_machine(deployment, probe, ready, &report)?
                }
                ProbesRun::CopiedIntoThePod => {
                    probe_copied_into_its_pod(deployment, probe, ready, &report)?
                }
            };
            let file = report.join("report.json");
            lifted = read_scenarios(&file).with_context(|| {
                format!("the probe ended with {ended} and left no readable report")
            })?;
            anyhow::ensure!(
                ended.success,
                "{ended}: its report is in {}",
                report.display()
            );
            Ok(Outcome::Passed)
        });
        list.lift(
            &format!("In-cluster probe from pod {} ({labels})", probe.pod),
            lifted,
        );
    }
}

/// How a probe ended.
struct ProbeEnded {
    success: bool,
    said: String,
}

/// Why a probe copied into `pod` left no report, with the fix when its
/// own words name one: a hubtrust built against a newer C library than the
/// hub image's cannot start there.
fn no_report_from(pod: &str, ended: &ProbeEnded) -> String {
    let fix = match ended.said.contains("GLIBC_") {
        true => " (fix: the copy runs on the hub image's C library, older than the one this hubtrust was built against; build hubtrust on a system no newer than the hub image's Debian 12, for example in a debian:bookworm container)",
        false => "",
    };
    format!("hubtrust probe in pod {pod} ended {ended} and left no report{fix}")
}

impl std::fmt::Display for ProbeEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.said)
    }
}

/// `hubtrust probe` in `probe`'s pod's network namespace, as root, its
/// report written straight to `report`.
fn probe_from_this_machine(
    deployment: &Deployment,
    probe: &in_cluster::PlannedProbe,
    ready: &ProbeInputs,
    report: &Path,
) -> anyhow::Result<ProbeEnded> {
    let pid = pods::pod_process(deployment, &probe.pod)?;
    let files = in_cluster::ProbeFiles {
        public_ca: &deployment.run_dir.join("public/public-ca.crt"),
        internal: &deployment.run_dir.join("internal-ssl"),
        foreign: (&ready.foreign.0, &ready.foreign.1),
        token_file: &ready.token_file,
        proxy_token_file: &ready.proxy_token_file,
        policy: &deployment.run_dir.join(TLS_POLICY_FILE),
        report: report.to_path_buf(),
    };
    let ns = &deployment.namespace;
    let args = in_cluster::probe_args(probe, ns, Some(pid), &ready.ips, &files, &ready.lab_ports)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "· probing from inside the cluster: pod {} (pid {pid})",
        probe.pod
    );
    let status = hubtrust_as_root()?
        .args(&args)
        .stdin(Stdio::null())
        .status()
        .context("run hubtrust probe")?;
    Ok(ProbeEnded {
        success: status.success(),
        said: status.to_string(),
    })
}

/// `hubtrust probe` copied into `probe`'s pod with the files it reads (of
/// the internal store, only those its arguments name) and run there; its
/// report copied back to `report`. What is copied is staged 0700 in the
/// run directory, which goes with the run.
fn probe_copied_into_its_pod(
    deployment: &Deployment,
    probe: &in_cluster::PlannedProbe,
    ready: &ProbeInputs,
    report: &Path,
) -> anyhow::Result<ProbeEnded> {
    use hubtrust_harness::backend::kubernetes::plan::{
        copy_from_pod_command, copy_into_pod_command, exec_in_pod_command, PROBE_DIR_IN_POD,
    };
    let staged = deployment.run_dir.join("probe-copy").join(&probe.pod);
    let _ = std::fs::remove_dir_all(&staged);
    std::fs::create_dir_all(&staged)?;
    hubtrust_harness::pki::set_mode(&staged, 0o700)?;
    let stage = |from: &Path, to: &str| -> anyhow::Result<()> {
        let into = staged.join(to);
        if let Some(parent) = into.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, &into)
            .with_context(|| format!("stage {} for the pod {}", from.display(), probe.pod))?;
        Ok(())
    };
    let exe = std::env::current_exe().context("find hubtrust's own executable")?;
    stage(&exe, "hubtrust")?;
    stage(
        &deployment.run_dir.join("public/public-ca.crt"),
        "public-ca.crt",
    )?;
    let store = deployment.run_dir.join("internal-ssl");
    for file in in_cluster::store_files_used(probe) {
        stage(
            &store.join(&file),
            &format!("internal-ssl/{}", file.display()),
        )?;
    }
    stage(&ready.foreign.0, "foreign.crt")?;
    stage(&ready.foreign.1, "foreign.key")?;
    stage(&ready.token_file, "service-token")?;
    stage(&ready.proxy_token_file, "proxy-token")?;
    stage(&deployment.run_dir.join(TLS_POLICY_FILE), TLS_POLICY_FILE)?;
    let in_pod = |name: &str| Path::new(PROBE_DIR_IN_POD).join(name);
    let files = in_cluster::ProbeFiles {
        public_ca: &in_pod("public-ca.crt"),
        internal: &in_pod("internal-ssl"),
        foreign: (&in_pod("foreign.crt"), &in_pod("foreign.key")),
        token_file: &in_pod("service-token"),
        proxy_token_file: &in_pod("proxy-token"),
        policy: &in_pod(TLS_POLICY_FILE),
        report: in_pod("report"),
    };
    let ns = &deployment.namespace;
    let mut argv = vec![in_pod("hubtrust").display().to_string()];
    argv.extend(
        in_cluster::probe_args(probe, ns, None, &ready.ips, &files, &ready.lab_ports)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let target = &deployment.target;
    eprintln!(
        "· probing from inside the cluster: hubtrust copied into pod {}",
        probe.pod
    );
    command::run(&copy_into_pod_command(
        target,
        ns,
        &probe.pod,
        &staged,
        PROBE_DIR_IN_POD,
    ))
    .map_err(|e| {
        anyhow::anyhow!(
            "{e} (fix: the prober pods run the hub's image, whose `tar` kubectl cp needs)"
        )
    })?;
    let _ = std::fs::remove_dir_all(&staged);
    // A probe that found failures exits 1 and still wrote its report.
    let ended = match command::run(&exec_in_pod_command(
        "run hubtrust probe",
        target,
        ns,
        &probe.pod,
        &argv,
    )) {
        Ok(_) => ProbeEnded {
            success: true,
            said: "exit status: 0".into(),
        },
        Err(command::CommandFailure::Failed { status, output, .. }) => ProbeEnded {
            success: false,
            said: format!(
                "{status} ({})",
                output.lines().last().unwrap_or("no output")
            ),
        },
        Err(other) => anyhow::bail!("{other}"),
    };
    // kubectl cp makes `report` itself, as a copy of the pod's directory.
    let _ = std::fs::remove_dir_all(report);
    if let Some(parent) = report.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let copied = command::run(&copy_from_pod_command(
        target,
        ns,
        &probe.pod,
        &in_pod("report").display().to_string(),
        report,
    ));
    match copied {
        Ok(_) => Ok(ended),
        // A probe that never ran leaves no report: its own words say why,
        // not kubectl cp's.
        Err(_) if !ended.success => anyhow::bail!("{}", no_report_from(&probe.pod, &ended)),
        Err(e) => anyhow::bail!("{e}"),
    }
}

/// What every in-cluster probe is given.
struct ProbeInputs {
    token_file: PathBuf,
    proxy_token_file: PathBuf,
    foreign: (PathBuf, PathBuf),
    ips: BTreeMap<String, std::net::IpAddr>,
    lab_ports: Vec<(String, SocketAddr)>,
}

fn prepare_probes(deployment: &Deployment, plan: &KubernetesPlan) -> anyhow::Result<ProbeInputs> {
    let probe_dir = deployment.run_dir.join("probe");
    std::fs::create_dir_all(&probe_dir)?;
    hubtrust_harness::pki::set_mode(&probe_dir, 0o700)?;
    let token_file = probe_dir.join("service-token");
    hubtrust_harness::pki::write_with_mode(
        &token_file,
        deployment.service_token.expose().as_bytes(),
        0o600,
    )?;
    let proxy_token_file = probe_dir.join("proxy-token");
    hubtrust_harness::pki::write_with_mode(
        &proxy_token_file,
        deployment.proxy_token.expose().as_bytes(),
        0o600,
    )?;
    in_cluster::issue_another_labs_certificate(&deployment.run_dir.join("internal-ssl"))?;
    let foreign_ca = hubtrust_harness::pki::CertificateAuthority::root("hubtrust-foreign")?;
    let foreign = foreign_ca
        .issue(
            "foreign",
            &["foreign"],
            hubtrust_harness::pki::Usage::Client,
            hubtrust_harness::pki::Validity::fresh(1),
        )?
        .write_to(&probe_dir)?;
    let ips = command::run(&kubernetes::plan::cluster_ips_command(
        &deployment.target,
        &deployment.namespace,
    ))
    .map_err(|e| anyhow::anyhow!("the Services' addresses: {e}"))?;
    Ok(ProbeInputs {
        token_file,
        proxy_token_file,
        foreign,
        ips: in_cluster::parse_cluster_ips(&ips.stdout),
        // The lab pod's own sockets are read on this machine: kind only.
        lab_ports: match plan.probes_run {
            ProbesRun::FromThisMachine => pods::lab_ports_closed(deployment)?,
            ProbesRun::CopiedIntoThePod => Vec::new(),
        },
    })
}

/// The scenarios of a report.json that `hubtrust probe` wrote.
fn read_scenarios(file: &Path) -> anyhow::Result<Vec<ScenarioResult>> {
    let text = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    let mut written: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("parse {}", file.display()))?;
    serde_json::from_value(written["scenarios"].take())
        .with_context(|| format!("read the scenarios of {}", file.display()))
}

/// A `hubtrust capture` running in a pod's network namespace; stopped
/// (its stdin closed, so it drains and exits) however the bring-up goes.
struct PodCapture {
    pod: String,
    out: PathBuf,
    expected: Vec<kubernetes::in_cluster::ExpectedFlow>,
    child: Option<std::process::Child>,
}

impl PodCapture {
    /// Starts capturing `eth0` of the pod `capture` selects, as root, into
    /// `dir/<pod>/`, and returns once the capture says its socket is open.
    fn start(
        deployment: &Deployment,
        capture: &kubernetes::in_cluster::WireCapture,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        let pod = pods::running_pod(deployment, &capture.selector, &capture.what)
            .context("the wire evidence")?;
        let pid = pods::pod_process(deployment, &pod)?;
        eprintln!(
            "· capturing on the interface of {}'s pod {pod} (pid {pid})",
            capture.what
        );
        let out = dir.join(&pod);
        let mut child = hubtrust_as_root()?
            .args([
                "capture",
                "--netns-of",
                &pid.to_string(),
                "--interface",
                "eth0",
            ])
            .args(["--name", &format!("{pod}-eth0"), "--out"])
            .arg(&out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start hubtrust capture")?;
        let stdout = child
            .stdout
            .take()
            .context("hubtrust capture has no stdout")?;
        let running = PodCapture {
            pod,
            out,
            expected: capture.expected.clone(),
            child: Some(child),
        };
        let (said, heard) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = said.send(line);
        });
        let started = heard.recv_timeout(std::time::Duration::from_secs(30));
        anyhow::ensure!(
            matches!(&started, Ok(line) if line.trim() == crate::capture::CAPTURING),
            "the capture in pod {}'s network namespace did not start within 30 s (it said {started:?})",
            running.pod
        );
        Ok(running)
    }

    /// Stops the capture and reads what it saw.
    fn finish(mut self) -> anyhow::Result<hubtrust_harness::capture::LinkEvidence> {
        let status = self.stop().context("wait for hubtrust capture")?;
        anyhow::ensure!(
            status.success(),
            "the capture in pod {}'s network namespace failed: {status}",
            self.pod
        );
        let file = self.out.join(crate::capture::EVIDENCE_FILE);
        Ok(serde_json::from_slice(
            &std::fs::read(&file).with_context(|| format!("read {}", file.display()))?,
        )?)
    }

    /// Closes the capture's stdin, which asks it to stop; [`Self::finish`]
    /// then waits for it. Captures asked together drain together.
    fn ask_to_stop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            drop(child.stdin.take());
        }
    }

    /// Its stdin closed, the capture drains what crossed the interface
    /// (bounded by its own drain limit), writes its evidence and exits.
    fn stop(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| std::io::Error::other("already stopped"))?;
        drop(child.stdin.take());
        child.wait()
    }
}

impl Drop for PodCapture {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Where the bring-up's own captures go.
fn wire_dir(deployment: &Deployment) -> PathBuf {
    deployment.artifacts_dir.join("wire")
}

/// The `@wire` scenarios' captures: the hub's, the proxy's and the first
/// lab's pods, each as the wire row captures them.
struct ScenarioPodCaptures {
    deployment: Deployment,
    pods: Vec<kubernetes::in_cluster::WireCapture>,
}

#[async_trait::async_trait]
impl CapturePods for ScenarioPodCaptures {
    async fn start(&self, dir: &Path) -> hubtrust_harness::Result<Box<dyn RunningCapture>> {
        let (deployment, pods, dir) = (
            self.deployment.clone(),
            self.pods.clone(),
            dir.to_path_buf(),
        );
        let started = tokio::task::spawn_blocking(move || {
            let names = census_names(&deployment)?;
            let captures = pods
                .iter()
                .map(|pod| PodCapture::start(&deployment, pod, &dir))
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::Ok(RunningPodCaptures { captures, names })
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|started| started);
        match started {
            Ok(running) => Ok(Box::new(running)),
            Err(e) => Err(hubtrust_harness::HarnessError::Cluster {
                what: "the captures on the hub's, the proxy's and the lab's pods".into(),
                message: format!("{e:#}"),
                fix: "see the pods' logs kept beside the report".into(),
            }),
        }
    }
}

struct RunningPodCaptures {
    captures: Vec<PodCapture>,
    names: BTreeMap<std::net::Ipv4Addr, String>,
}

#[async_trait::async_trait]
impl RunningCapture for RunningPodCaptures {
    async fn finish(self: Box<Self>) -> WireCensus {
        let RunningPodCaptures { captures, names } = *self;
        let unread = |link: String, pcap: PathBuf, why: String| LinkEvidence {
            link,
            pcap,
            packets_captured: None,
            packets_on_interface: None,
            inconclusive: Some(why),
        };
        let evidence = tokio::task::spawn_blocking(move || {
            let mut captures = captures;
            captures.iter_mut().for_each(PodCapture::ask_to_stop);
            captures
                .into_iter()
                .map(|capture| {
                    let (pod, out) = (capture.pod.clone(), capture.out.clone());
                    capture.finish().unwrap_or_else(|e| {
                        unread(
                            format!("{pod}-eth0"),
                            out,
                            format!("the capture in pod {pod}'s network namespace: {e:#}"),
                        )
                    })
                })
                .collect()
        })
        .await
        .unwrap_or_else(|e| {
            vec![unread(
                "the pods' captures".into(),
                PathBuf::new(),
                format!("stopping them failed: {e}"),
            )]
        });
        WireCensus::build(evidence, &names)
    }
}

/// Starts the captures that span the first lab's spawn (the hub's pod).
fn wire_before_spawn(
    deployment: &Deployment,
    plan: &KubernetesPlan,
) -> anyhow::Result<Vec<PodCapture>> {
    plan.wire
        .iter()
        .filter(|capture| capture.across_spawn)
        .map(|capture| PodCapture::start(deployment, capture, &wire_dir(deployment)))
        .collect()
}

/// Wire evidence from inside the cluster: the hub's pod captured since
/// before the spawn (`early`), the first user's lab pod from now, while
/// the hub API and the lab are asked through the proxy; each capture is
/// `hubtrust capture` in the pod's network namespace, as root. A
/// plaintext flow fails the bring-up; evidence that cannot be trusted, or
/// that misses an expected connection, is said to be inconclusive, with
/// why: never a pass. The pcaps, their evidence and the verdict go to
/// `<artifacts>/wire/`.
fn wire_from_inside(
    runtime: &tokio::runtime::Runtime,
    deployment: &Deployment,
    plan: &KubernetesPlan,
    early: Vec<PodCapture>,
) -> anyhow::Result<Outcome> {
    let mut running = early;
    for capture in plan.wire.iter().filter(|c| !c.across_spawn) {
        running.push(PodCapture::start(
            deployment,
            capture,
            &wire_dir(deployment),
        )?);
    }
    let reached = runtime.block_on(public_check::reach_hub_and_lab_through_proxy(deployment));
    let mut evidence = Vec::new();
    let mut expected = Vec::new();
    running.iter_mut().for_each(PodCapture::ask_to_stop);
    for capture in running {
        expected.push((capture.pod.clone(), capture.expected.clone()));
        evidence.push(capture.finish()?);
    }
    reached?;
    let names = census_names(deployment)?;
    let census = WireCensus::build(evidence, &names);
    let verdict = in_cluster::judge_wire(&census, &expected);
    let dir = deployment.artifacts_dir.join("wire");
    let said = match &verdict {
        in_cluster::PodWire::Encrypted(flows) => {
            format!("every connection captured on the hub's, the proxy's and the lab's pods was TLS: {flows}")
        }
        in_cluster::PodWire::Inconclusive(why) => {
            format!("the wire evidence inside the cluster is inconclusive: {why}")
        }
        in_cluster::PodWire::Plaintext(flows) => format!(
            "plaintext on the wire inside the cluster:\n  {}",
            flows.join("\n  ")
        ),
    };
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("verdict.txt"), format!("{said}\n"))?;
    match verdict {
        in_cluster::PodWire::Encrypted(_) => {
            eprintln!("· {said}");
            Ok(Outcome::Passed)
        }
        in_cluster::PodWire::Inconclusive(why) => Ok(Outcome::Inconclusive(format!(
            "{why} (pcaps in {})",
            dir.display()
        ))),
        in_cluster::PodWire::Plaintext(_) => anyhow::bail!("{said} (pcaps in {})", dir.display()),
    }
}

/// Pods by their addresses, Services by their ClusterIPs (as a pod's own
/// interface sees a connection to a Service, before any node rewrites
/// it): how a census of pod captures names the hosts.
fn census_names(deployment: &Deployment) -> anyhow::Result<BTreeMap<std::net::Ipv4Addr, String>> {
    use hubtrust_harness::backend::kubernetes::plan;
    let ns = &deployment.namespace;
    let read = |command: plan::PlannedCommand| {
        command::run(&command)
            .map(|out| in_cluster::parse_cluster_ips(&out.stdout))
            .map_err(|e| anyhow::anyhow!("the wire evidence: {e}"))
    };
    let mut names = BTreeMap::new();
    for (name, ip) in read(plan::cluster_ips_command(&deployment.target, ns))?
        .into_iter()
        .chain(read(plan::pod_ips_command(&deployment.target, ns))?)
    {
        if let std::net::IpAddr::V4(v4) = ip {
            names.insert(v4, name);
        }
    }
    Ok(names)
}

/// The capture on the inspecting proxy's pod, stopped once the lab's
/// fetches ran, judged by [`proxy_wire::judge`].
fn judge_proxy_wire(
    deployment: &Deployment,
    capture: PodCapture,
    runs: Option<&Result<Vec<ToolRun>, String>>,
    found: &mut Option<Result<ProxyPaths, String>>,
) -> anyhow::Result<Outcome> {
    use hubtrust_harness::backend::kubernetes::{inspecting_proxy, outbound, proxy_wire};
    let proxy_pod = capture.pod.clone();
    let evidence = capture.finish()?;
    let runs = match runs.context("the lab's cell reported no tool runs")? {
        Ok(runs) => runs,
        Err(why) => anyhow::bail!("{why}"),
    };
    let names = census_names(deployment)?;
    let address_of = |name: &str| {
        names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(ip, _)| *ip)
            .with_context(|| format!("`{name}` has no address in the namespace"))
    };
    let places = proxy_wire::ProxyPlaces {
        proxy_ip: address_of(&proxy_pod)?,
        proxy_pod,
        internet_service: outbound::INTERNET_SERVICE.into(),
        internet_ip: address_of(outbound::INTERNET_SERVICE)?,
    };
    let census = hubtrust_harness::capture::WireCensus::build(vec![evidence], &names);
    let ns = &deployment.namespace;
    let lab_env: BTreeMap<String, String> =
        inspecting_proxy::lab_env(ns, &outbound::REACHED_DIRECTLY)
            .into_iter()
            .collect();
    let targets = outbound::targets(ns, true);
    let judged = proxy_wire::judge(runs, &targets, &census, &places, &lab_env);
    *found = Some(judged.clone());
    match judged {
        Ok(paths) => {
            eprintln!(
                "· {} fetches through the inspecting proxy were each seen arriving with their own CONNECT, and the proxy went on to {} on ports {:?}",
                paths.tunnelled_runs,
                outbound::INTERNET_SERVICE,
                paths.legs.keys().collect::<Vec<_>>()
            );
            Ok(Outcome::Passed)
        }
        Err(why) => match why.strip_prefix("inconclusive: ") {
            Some(why) => Ok(Outcome::Inconclusive(why.to_string())),
            None => anyhow::bail!("{why}"),
        },
    }
}

/// The inventory of the running hub's store (kept in `taken` for the
/// report and the scenarios, whatever the verdict), with the lab's own
/// certificate, made at spawn.
fn check_inventory(
    deployment: &Deployment,
    taken: &mut Option<hubtrust_harness::inventory::Inventory>,
) -> anyhow::Result<Outcome> {
    let inventory = taken.insert(pods::hub_store_inventory(deployment)?);
    let user = &deployment.user;
    let lab_cert = format!("user-{user}/user-{user}.crt");
    anyhow::ensure!(
        inventory.certificates.iter().any(|c| c.path == lab_cert),
        "the hub's store holds no {lab_cert}: the certificate JupyterHub makes for the lab at spawn"
    );
    eprintln!(
        "· {} certificates in the hub's store, {user}'s lab certificate among them",
        inventory.certificates.len()
    );
    Ok(Outcome::Passed)
}

/// Every secret file of the hub's, the proxy's and the first lab's pods,
/// read as root through the component's own `/proc/<pid>/root` on kind,
/// from inside its container elsewhere, and judged against the
/// component's own user and groups. Findings an upstream is
/// known for (`fixtures/known-defects.toml`, `secret-modes`) are said, not
/// failed; an entry that no longer reproduces fails.
fn check_secret_files(
    deployment: &Deployment,
    plan: &KubernetesPlan,
    known_hits: &mut Vec<hubtrust_harness::known_defects::KnownDefectHit>,
) -> anyhow::Result<Outcome> {
    let seen = pods::check_secrets(deployment, &plan.secret_files, SECRETS)?;
    for line in &seen.read {
        eprintln!("· {line}");
    }
    for hit in &seen.known {
        eprintln!("· known defect {}: {}", hit.id, hit.finding);
    }
    let problems = seen.failures(crate::world::STRICT.load(std::sync::atomic::Ordering::SeqCst));
    known_hits.extend(seen.known);
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(Outcome::Passed)
}

/// hubtrust itself, as root: through `sudo -n` when it is not root (the
/// GitHub runner's passwordless sudo), to enter a pod's namespaces.
fn hubtrust_as_root() -> anyhow::Result<std::process::Command> {
    let exe = std::env::current_exe().context("find hubtrust's own executable")?;
    Ok(pods::as_root(exe))
}

/// `hubtrust ca-certs OUT --kubernetes-namespace NS`: the store a z2jh
/// deployment keeps in a Secret, made and checked as a run makes it.
pub fn ca_certs_command(out: &Path, namespace: &str) -> ExitCode {
    let made = || -> anyhow::Result<Vec<String>> {
        let components = provision::ensure(&mut std::io::stderr())?;
        // A run directory, so the CAs' keys go with it even when this is
        // killed outright: the next run sweeps it.
        let scratch = RunDir::create(&std::env::temp_dir())?;
        hubtrust_harness::pki::set_mode(scratch.path(), 0o700)?;
        let internal = scratch.path().join("internal-ssl");
        let names = kubernetes::names::trusted_alt_names(namespace);
        tokio::runtime::Runtime::new()?.block_on(hpc::make_internal_store(
            &components,
            &names,
            &internal,
        ))?;
        let missing = kubernetes::names::missing_sans(&internal, None, namespace)?;
        anyhow::ensure!(
            missing.is_empty(),
            "the certificates JupyterHub made miss Service names: {}",
            missing
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        kubernetes::run::retarget_store(&internal, out)?;
        Ok(names)
    };
    match made() {
        Ok(names) => {
            println!(
                "wrote {} (mode 0600) for namespace {namespace}; the hub and proxy-api certificates list {}",
                out.display(),
                names.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(e),
    }
}

fn wait_for_stop_signal() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        Ok(())
    })
}

/// A shell in its own process group that, when its stdin closes, runs the
/// plan's teardown if it was armed and not stood down, then removes the
/// run's directory (its keys among it). Its stdin closes when hubtrust
/// ends by any path, SIGKILL included. It starts before the run's
/// directory is made, and is armed just before anything is made on a
/// cluster; once hubtrust has torn down itself, it stands down.
struct Reaper {
    stdin: ChildStdin,
}

const ARMED: &str = "armed";
const STAND_DOWN: &str = "torn-down";

impl Reaper {
    fn start(plan: &KubernetesPlan, run_dir: &Path) -> anyhow::Result<Self> {
        let teardown: Vec<String> = plan.teardown.iter().map(|c| c.shell_line()).collect();
        let run_dir = run_dir.display().to_string().replace('\'', r"'\''");
        let script = format!(
            "armed=; while read -r said; do case \"$said\" in {ARMED}) armed=1;; {STAND_DOWN}) armed=;; esac; done; \
             [ -z \"$armed\" ] || {{ {}; }}; rm -rf -- '{run_dir}'",
            teardown.join("; ")
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .context("start the Kubernetes reaper")?;
        let stdin = child.stdin.take().context("the reaper's stdin")?;
        Ok(Reaper { stdin })
    }

    fn arm(&mut self) {
        let _ = writeln!(self.stdin, "{ARMED}");
    }

    fn stand_down(&mut self) {
        let _ = writeln!(self.stdin, "{STAND_DOWN}");
    }
}

#[cfg(test)]
mod tests {
    /// A probe that could not start in its pod is reported in its own
    /// words, with the fix for a C library older than hubtrust's.
    #[test]
    fn a_probe_that_left_no_report_is_named_with_its_own_words() {
        let ended = super::ProbeEnded {
            success: false,
            said: "exit status: 1 (/tmp/hubtrust/hubtrust: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.39' not found (required by /tmp/hubtrust/hubtrust))".into(),
        };
        let said = super::no_report_from("hubtrust-prober-bare", &ended);
        assert!(
            said.starts_with("hubtrust probe in pod hubtrust-prober-bare ended exit status: 1"),
            "{said}"
        );
        assert!(said.contains("GLIBC_2.39' not found"), "{said}");
        assert!(said.contains("debian:bookworm"), "{said}");
        let other = super::ProbeEnded {
            success: false,
            said: "exit status: 2 (error: no such file)".into(),
        };
        assert!(!super::no_report_from("p", &other).contains("fix:"));
    }

    use hubtrust_harness::backend::kubernetes::under_test::Observation;
    use hubtrust_harness::matrix::TrustMatrix;
    use hubtrust_harness::report::ProxyApiCall;
    use hubtrust_harness::tls_scan::EndpointScan;

    use super::*;

    /// The default stack on kind, prepared as `--plan` prepares it.
    fn kind_plan<'a>(artifacts: Option<PathBuf>) -> KubernetesArgs<'a> {
        KubernetesArgs {
            backend: BackendChoice::Kind,
            stack: None,
            images: None,
            kubeconfig: None,
            namespace: None,
            values: &[],
            manifests: &[],
            plan: true,
            artifacts,
            features: None,
        }
    }

    #[test]
    fn the_tools_scenario_gets_the_runs_and_their_wire_or_says_why_not() {
        use hubtrust_harness::backend::kubernetes::inspecting_proxy;
        let prepared = prepare(&kind_plan(None)).unwrap();
        let mut deployment = prepared.deployment.clone();
        let mut plan = prepared.plan.clone();
        let runs = || Some(Ok(Vec::new()));
        deployment.outbound_servers = false;
        assert!(matches!(
            tools_observed(&deployment, &plan, runs(), None),
            Observation::NotMade(why) if why.contains("no outbound test servers")
        ));
        deployment.outbound_servers = true;
        plan.proxy_wire = None;
        deployment.proxy_image = None;
        assert!(matches!(
            tools_observed(&deployment, &plan, runs(), None),
            Observation::NotMade(why) if why.contains("no inspecting proxy runs")
        ));
        // A proxy on a cluster of the user's own: its wire is not seen.
        deployment.proxy_image = Some(ProxyImage {
            reference: "docker.io/mitmproxy/mitmproxy:11.0.2".into(),
            mitmdump: "mitmdump".into(),
            extra_args: Vec::new(),
            listed: true,
            replacement: None,
        });
        assert!(matches!(
            tools_observed(&deployment, &plan, runs(), None),
            Observation::NotMade(why) if why.contains("only on kind")
        ));
        plan.proxy_wire = Some(inspecting_proxy::wire_capture());
        assert!(matches!(
            tools_observed(&deployment, &plan, None, None),
            Observation::Failed(why) if why.contains("no tool runs")
        ));
        // A capture that was never judged is inconclusive, never a path.
        match tools_observed(&deployment, &plan, runs(), None) {
            Observation::Seen(seen) => {
                let why = seen.proxy_paths.unwrap().unwrap_err();
                assert!(why.starts_with("inconclusive: "), "{why}");
            }
            _ => panic!("the runs were not handed on"),
        }
    }

    #[test]
    fn the_probers_observations_are_read_from_their_reports_or_said_missing() {
        let dir = std::env::temp_dir().join(format!("hubtrust-saw-{}", std::process::id()));
        let prepared = prepare(&kind_plan(Some(dir.clone()))).unwrap();
        let (deployment, plan) = (&prepared.deployment, &prepared.plan);
        let failed = |seen: Observation<TrustMatrix>| match seen {
            Observation::Failed(why) => why,
            other => panic!("expected a failure, got {other:?}"),
        };
        let why = failed(labelled_probe_saw(deployment, plan, "/trust_matrix", "-"));
        assert!(why.contains("left no report"), "{why}");

        let pod = &plan.probes.iter().find(|p| p.labelled).unwrap().pod;
        std::fs::create_dir_all(dir.join(pod)).unwrap();
        std::fs::write(
            dir.join(pod).join("report.json"),
            r#"{"trust_matrix": {"endpoints": ["hub API"], "identities": ["none"], "cells": [
                {"endpoint": "hub API", "identity": "none", "expected": "client-cert-required",
                 "reason": "mutual TLS", "observed": "client-cert-required", "detail": "",
                 "protocol": "TLSv1_3", "matches": true}]}}"#,
        )
        .unwrap();
        match labelled_probe_saw::<TrustMatrix>(deployment, plan, "/trust_matrix", "-") {
            Observation::Seen(matrix) => assert_eq!(matrix.cells.len(), 1),
            other => panic!("the matrix was not read: {other:?}"),
        }
        // A section the prober did not write is a failure, never an empty
        // list that a step could pass.
        match labelled_probe_saw::<Vec<ProxyApiCall>>(deployment, plan, "/proxy_api_calls", "-") {
            Observation::Failed(why) => assert!(why.contains("`/proxy_api_calls`"), "{why}"),
            other => panic!("a missing section was read as {other:?}"),
        }
        match labelled_probe_saw::<Vec<EndpointScan>>(deployment, plan, "/tls_scan/endpoints", "-")
        {
            Observation::Failed(why) => assert!(why.contains("`/tls_scan/endpoints`"), "{why}"),
            other => panic!("a missing scan was read as {other:?}"),
        }

        // The reachability cells are both probers', each from its place;
        // one prober's missing report fails them all.
        let cell = |endpoint: &str, expected: bool| {
            format!(
                r#"{{"reachability": [{{"endpoint": "{endpoint}", "endpoint_host": "10.96.0.9",
                   "from": "where hubtrust probe runs", "addr": "10.96.0.9:8081",
                   "expected": {expected}, "answered": {expected}, "seen": "connected"}}]}}"#
            )
        };
        let bare = &plan.probes.iter().find(|p| !p.labelled).unwrap().pod;
        match probers_reached(deployment, plan, "-") {
            Observation::Failed(why) => assert!(why.contains("`/reachability`"), "{why}"),
            other => panic!("a missing section was read as {other:?}"),
        }
        std::fs::write(dir.join(pod).join("report.json"), cell("hub API", true)).unwrap();
        match probers_reached(deployment, plan, "-") {
            Observation::Failed(why) => assert!(why.contains(bare.as_str()), "{why}"),
            other => panic!("a prober's missing report was read as {other:?}"),
        }
        std::fs::create_dir_all(dir.join(bare)).unwrap();
        std::fs::write(dir.join(bare).join("report.json"), cell("hub API", false)).unwrap();
        match probers_reached(deployment, plan, "-") {
            Observation::Seen(cells) => {
                let from: Vec<(&str, bool)> = cells
                    .iter()
                    .map(|c| (c.from.as_str(), c.expected))
                    .collect();
                assert_eq!(
                    from,
                    [
                        ("a pod the chart's network-access labels admit (hubtrust-prober-labelled)", true),
                        ("a pod without those labels (hubtrust-prober-bare)", false),
                    ]
                );
            }
            other => panic!("the cells were not read: {other:?}"),
        }

        let mut without_probers = plan.clone();
        without_probers.probes.clear();
        assert!(matches!(
            labelled_probe_saw::<TrustMatrix>(deployment, &without_probers, "/trust_matrix", "no pod here"),
            Observation::NotMade(why) if why == "no pod here"
        ));
        assert!(matches!(
            probers_reached(deployment, &without_probers, "no pod here"),
            Observation::NotMade(why) if why == "no pod here"
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
