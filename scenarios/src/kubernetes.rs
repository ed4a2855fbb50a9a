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
use hubtrust_harness::backend::kubernetes::{
    self, plan::KubernetesPlan, preflight, run::KubernetesRun, ChartImage, ChartPins,
    ClusterTarget, Deployment, OrgTrust, RuntimeImage, BUILTIN_IMAGE_LIST, BUILTIN_IMAGE_LOCK,
    DEFAULT_IMAGE_LIST,
};
use hubtrust_harness::error::HarnessError;
use hubtrust_harness::images::list::{ImageList, ImageLock};
use hubtrust_harness::pki::OrgPki;
use hubtrust_harness::secret::Secret;
use hubtrust_harness::spec::{ContainerRole, StackSpec};
use hubtrust_harness::{hpc, provision};

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
    pub plan: bool,
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
            plan: cluster.plan,
        }
    }
}

/// `hubtrust run --backend kind|kubernetes`.
pub fn run_command(args: KubernetesArgs<'_>) -> ExitCode {
    let outcome = prepare(&args).and_then(|(deployment, plan, _)| {
        if args.plan {
            print!("{}", plan.render());
            return Ok(());
        }
        preflight::check(&deployment)?;
        Err(HarnessError::NotSupported {
            backend: deployment.target.backend_name(),
            what: "running the scenarios: they need the in-cluster prober, which is not built yet".into(),
            fix: format!(
                "`hubtrust up --backend {}` brings the deployment up for inspection; `--plan` shows what it applies; the local and docker backends run the scenarios",
                deployment.target.backend_name()
            ),
        }
        .into())
    });
    finish(outcome)
}

/// `hubtrust up --backend kind|kubernetes`: the deployment, until Ctrl-C.
pub fn up_command(args: KubernetesArgs<'_>) -> ExitCode {
    let outcome = prepare(&args).and_then(|(deployment, plan, org)| {
        if args.plan {
            print!("{}", plan.render());
            return Ok(());
        }
        preflight::check(&deployment)?;
        bring_up(&deployment, &plan, org.as_ref())
    });
    finish(outcome)
}

fn finish(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
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

/// The deployment and its plan, from the stack file and the pins; nothing
/// is made yet. The org bundle (when the stack has `[enterprise]`) is the
/// stack's own file or, as on the other backends, a fresh org PKI's root.
fn prepare(
    args: &KubernetesArgs<'_>,
) -> anyhow::Result<(Deployment, KubernetesPlan, Option<OrgCa>)> {
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
                cluster: format!("hubtrust-{id}"),
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
    let images = pinned_images(args.images, args.plan)?;
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
    let run_dir = std::env::temp_dir().join(format!("hubtrust-{}-{id}", target.backend_name()));
    let outbound_servers = org.as_ref().is_some_and(|o| o.pki.is_some());
    // The inspecting proxy runs from hubtrust's own image, which only a
    // kind cluster can be given (loaded from this machine's daemon).
    let runtime_image =
        (outbound_servers && matches!(target, ClusterTarget::Kind { .. })).then(|| {
            use hubtrust_harness::backend::docker::images;
            RuntimeImage {
                reference: images::runtime_image(),
                mitmdump: images::components_in_image()
                    .mitmproxy_venv
                    .join("bin/mitmdump")
                    .display()
                    .to_string(),
            }
        });
    let deployment = Deployment {
        target,
        namespace,
        chart,
        node_image: pins.kind.node_image,
        images,
        public_node_port: PUBLIC_NODE_PORT,
        public_host_port: free_loopback_port()?,
        org_trust,
        run_dir,
        service_token: Secret::generate(),
        user: spec
            .users
            .first()
            .cloned()
            .unwrap_or_else(|| "alice".into()),
        tls_policy: spec.tls_policy.clone(),
        outbound_servers,
        runtime_image,
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
    Ok((deployment, plan, org))
}

/// The chart images with their locked digests. A plan may show an image
/// the lock lacks, marked; a run refuses it.
fn pinned_images(
    list_path: Option<&Path>,
    for_plan: bool,
) -> anyhow::Result<BTreeMap<ContainerRole, ChartImage>> {
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
    Ok(list
        .components
        .iter()
        .map(|(role, listed)| {
            let image = ChartImage {
                tagged: listed.image.clone(),
                digest: lock.digests.get(&listed.image).cloned(),
            };
            (*role, image)
        })
        .collect())
}

/// Makes the certificates, starts the reaper, applies the plan, and holds
/// the deployment until Ctrl-C or SIGTERM.
fn bring_up(
    deployment: &Deployment,
    plan: &KubernetesPlan,
    org: Option<&OrgCa>,
) -> anyhow::Result<()> {
    let run_dir = &deployment.run_dir;
    std::fs::create_dir_all(run_dir).with_context(|| format!("create {}", run_dir.display()))?;
    hubtrust_harness::pki::set_mode(run_dir, 0o700)?;
    let _run_dir_removed = RemoveOnDrop(run_dir.clone());

    eprintln!("· making the internal CAs (jupyterhub --generate-certs) and the public leaf");
    let components = provision::ensure(&mut std::io::stderr())?;
    let internal = run_dir.join("internal-ssl");
    tokio::runtime::Runtime::new()?.block_on(hpc::make_internal_store(
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
            eprintln!("· hubtrust's runtime image, for the inspecting proxy (built once, offline)");
            crate::docker::ensure_runtime_image()?;
        }
    }
    kubernetes::run::write_files(plan)?;
    std::fs::write(run_dir.join(TLS_POLICY_FILE), plan.tls_policy.to_toml())?;

    let mut reaper = Reaper::start(plan)?;
    let mut progress = |step: &str| eprintln!("· {step}");
    let mut run = KubernetesRun::apply(plan, &deployment.target, &mut progress)?;
    let progress_line = |line: &str| eprintln!("· {line}");
    // The hub's pod is captured from before the spawn, so the spawn's own
    // connections are seen; the probes come after every capture stopped,
    // so their TLS scan's old-version handshakes are never judged as the
    // deployment's traffic.
    let checked = wire_before_spawn(deployment, plan).and_then(|early| {
        let public = tokio::runtime::Runtime::new()?.block_on(kubernetes::public_check::check(
            deployment,
            org.map(|o| o.pem.as_str()),
            &progress_line,
        ))?;
        wire_from_inside(deployment, plan, early)?;
        probe_from_inside(deployment, plan)?;
        Ok(public)
    });
    let failed = checked.is_err();
    let outcome = match checked {
        Ok(public) => {
            // For a probe from outside under the same policy (the kind
            // job's scripts/kind-up-and-down reads it).
            println!("TLS policy: {}", run_dir.join(TLS_POLICY_FILE).display());
            println!(
                "ready: {public} (CA {}); Ctrl-C tears it down",
                run_dir.join("public/public-ca.crt").display()
            );
            let _ = std::io::stdout().flush();
            wait_for_stop_signal()
        }
        Err(e) => Err(e.context(format!(
            "{}{}",
            "the deployment came up but does not work through its public side",
            run.pods_state()
        ))),
    };
    if let Some(dir) = run.keep_logs(failed) {
        eprintln!(
            "· every pod's log and the namespace's events kept in {}",
            dir.display()
        );
    }
    eprintln!("· tearing down");
    let failures = run.tear_down();
    reaper.stand_down();
    outcome?;
    anyhow::ensure!(
        failures.is_empty(),
        "teardown left something behind: {}",
        failures
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(())
}

/// The stack's `[tls_policy]` in the run directory, as `hubtrust probe
/// --policy-file` takes it.
const TLS_POLICY_FILE: &str = "tls-policy.toml";

/// Where each in-cluster probe's reports go, per namespace and pod.
const IN_CLUSTER_REPORTS: &str = kubernetes::in_cluster::REPORTS_DIR;

/// `hubtrust probe` from each prober pod's network namespace, as root
/// (through `sudo -n` when hubtrust is not): the labelled pod's trust
/// matrix and TLS scan against the Services, the bare pod's closed
/// endpoints. Any finding, or a probe that could not run, fails the
/// bring-up, naming the report.
fn probe_from_inside(deployment: &Deployment, plan: &KubernetesPlan) -> anyhow::Result<()> {
    use hubtrust_harness::backend::kubernetes::{command, in_cluster, plan};
    if plan.probes.is_empty() {
        return Ok(());
    }
    let run_dir = &deployment.run_dir;
    let ns = &deployment.namespace;
    let probe_dir = run_dir.join("probe");
    std::fs::create_dir_all(&probe_dir)?;
    hubtrust_harness::pki::set_mode(&probe_dir, 0o700)?;
    let token_file = probe_dir.join("service-token");
    hubtrust_harness::pki::write_with_mode(
        &token_file,
        deployment.service_token.expose().as_bytes(),
        0o600,
    )?;
    let policy_file = run_dir.join(TLS_POLICY_FILE);
    let foreign_ca = hubtrust_harness::pki::CertificateAuthority::root("hubtrust-foreign")?;
    let foreign = foreign_ca
        .issue(
            "foreign",
            &["foreign"],
            hubtrust_harness::pki::Usage::Client,
            hubtrust_harness::pki::Validity::fresh(1),
        )?
        .write_to(&probe_dir)?;
    let ips = command::run(&plan::cluster_ips_command(&deployment.target, ns))
        .map_err(|e| anyhow::anyhow!("the in-cluster probe: {e}"))?;
    let ips = in_cluster::parse_cluster_ips(&ips.stdout);
    let lab_ports = lab_ports_closed(deployment)?;
    let mut failed = Vec::new();
    for probe in &plan.probes {
        let pid = pod_process(deployment, &probe.pod)?;
        let report = PathBuf::from(IN_CLUSTER_REPORTS).join(ns).join(&probe.pod);
        let files = in_cluster::ProbeFiles {
            public_ca: &run_dir.join("public/public-ca.crt"),
            internal: &run_dir.join("internal-ssl"),
            foreign: (&foreign.0, &foreign.1),
            token_file: &token_file,
            policy: &policy_file,
            report: report.clone(),
        };
        let args = in_cluster::probe_args(probe, ns, pid, &ips, &files, &lab_ports)
            .map_err(|e| anyhow::anyhow!("the in-cluster probe from {}: {e}", probe.pod))?;
        eprintln!(
            "· probing from inside the cluster: pod {} (pid {pid})",
            probe.pod
        );
        let mut command = hubtrust_as_root()?;
        let status = command
            .args(&args)
            .stdin(Stdio::null())
            .status()
            .context("run hubtrust probe")?;
        if !status.success() {
            failed.push(format!(
                "from pod {} ({}): {status}, report in {}",
                probe.pod,
                if probe.labelled {
                    "with the network-access labels"
                } else {
                    "without labels"
                },
                report.display()
            ));
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "the in-cluster probe failed {}",
        failed.join("; ")
    );
    Ok(())
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
    /// Starts capturing `eth0` of the pod `capture` selects, as root, and
    /// returns once the capture says its socket is open.
    fn start(
        deployment: &Deployment,
        capture: &kubernetes::in_cluster::WireCapture,
    ) -> anyhow::Result<Self> {
        use hubtrust_harness::backend::kubernetes::{command, plan};
        use std::io::BufRead as _;
        let pod = command::run(&plan::pod_named_by_command(
            &deployment.target,
            &deployment.namespace,
            &capture.selector,
        ))
        .map_err(|e| anyhow::anyhow!("the wire evidence: {e}"))?
        .stdout
        .trim()
        .to_string();
        anyhow::ensure!(
            !pod.is_empty(),
            "the wire evidence: no pod of {} (-l {}) is running",
            capture.what,
            capture.selector
        );
        let pid = pod_process(deployment, &pod)?;
        eprintln!(
            "· capturing on the interface of {}'s pod {pod} (pid {pid})",
            capture.what
        );
        let out = PathBuf::from(IN_CLUSTER_REPORTS)
            .join(&deployment.namespace)
            .join("wire")
            .join(&pod);
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

/// Starts the captures that span the first lab's spawn (the hub's pod).
fn wire_before_spawn(
    deployment: &Deployment,
    plan: &KubernetesPlan,
) -> anyhow::Result<Vec<PodCapture>> {
    plan.wire
        .iter()
        .filter(|capture| capture.across_spawn)
        .map(|capture| PodCapture::start(deployment, capture))
        .collect()
}

/// Wire evidence from inside the cluster: the hub's pod captured since
/// before the spawn (`early`), the first user's lab pod from now, while
/// the hub API and the lab are asked through the proxy; each capture is
/// `hubtrust capture` in the pod's network namespace, as root. A
/// plaintext flow fails the bring-up; evidence that cannot be trusted, or
/// that misses an expected connection, is said to be inconclusive, with
/// why: never a pass. The pcaps, their evidence and the verdict go to
/// `hubtrust-in-cluster/<ns>/wire/`.
fn wire_from_inside(
    deployment: &Deployment,
    plan: &KubernetesPlan,
    early: Vec<PodCapture>,
) -> anyhow::Result<()> {
    use hubtrust_harness::backend::kubernetes::{command, in_cluster, plan, public_check};
    use hubtrust_harness::capture::WireCensus;
    if plan.wire.is_empty() {
        return Ok(());
    }
    let ns = &deployment.namespace;
    let mut running = early;
    for capture in plan.wire.iter().filter(|c| !c.across_spawn) {
        running.push(PodCapture::start(deployment, capture)?);
    }
    let reached = tokio::runtime::Runtime::new()?
        .block_on(public_check::reach_hub_and_lab_through_proxy(deployment));
    let mut evidence = Vec::new();
    let mut expected = Vec::new();
    for capture in running {
        expected.push((capture.pod.clone(), capture.expected.clone()));
        evidence.push(capture.finish()?);
    }
    reached?;
    // Pods by their addresses, Services by their ClusterIPs (as a pod's
    // own interface sees a connection to a Service, before any node
    // rewrites it).
    let read = |command: plan::PlannedCommand| {
        command::run(&command)
            .map(|out| in_cluster::parse_cluster_ips(&out.stdout))
            .map_err(|e| anyhow::anyhow!("the wire evidence: {e}"))
    };
    let mut names = std::collections::BTreeMap::new();
    for (name, ip) in read(plan::cluster_ips_command(&deployment.target, ns))?
        .into_iter()
        .chain(read(plan::pod_ips_command(&deployment.target, ns))?)
    {
        if let std::net::IpAddr::V4(v4) = ip {
            names.insert(v4, name);
        }
    }
    let census = WireCensus::build(evidence, &names);
    let verdict = in_cluster::judge_wire(&census, &expected);
    let dir = PathBuf::from(IN_CLUSTER_REPORTS).join(ns).join("wire");
    let said = match &verdict {
        in_cluster::PodWire::Encrypted(flows) => {
            format!("every connection captured on the hub's and the lab's pods was TLS: {flows}")
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
    eprintln!("· {said}");
    anyhow::ensure!(
        !matches!(verdict, in_cluster::PodWire::Plaintext(_)),
        "{said} (pcaps in {})",
        dir.display()
    );
    Ok(())
}

/// hubtrust itself, as root: through `sudo -n` when it is not root (the
/// GitHub runner's passwordless sudo), to enter a pod's namespaces.
fn hubtrust_as_root() -> anyhow::Result<std::process::Command> {
    let exe = std::env::current_exe().context("find hubtrust's own executable")?;
    Ok(if nix::unistd::geteuid().is_root() {
        std::process::Command::new(exe)
    } else {
        let mut sudo = std::process::Command::new("sudo");
        sudo.arg("-n").arg(exe);
        sudo
    })
}

/// The pid, on this machine, of a process of `pod`.
fn pod_process(deployment: &Deployment, pod: &str) -> anyhow::Result<u32> {
    use hubtrust_harness::backend::kubernetes::{command, in_cluster, plan};
    let uid = command::run(&plan::pod_uid_command(
        &deployment.target,
        &deployment.namespace,
        pod,
    ))
    .map_err(|e| anyhow::anyhow!("the in-cluster probe: {e}"))?;
    let uid = uid.stdout.trim();
    in_cluster::pod_process(Path::new("/proc"), uid).ok_or_else(|| {
        anyhow::anyhow!(
            "the in-cluster probe: no process of pod {pod} (UID {uid}) is on this machine: it enters a pod's network namespace from the machine that runs the kind node"
        )
    })
}

/// Every port the first user's lab pod listens on besides the lab's own
/// (its kernel's among them), at the pod's address: no prober may reach
/// them. Read from the pod's own `/proc/<pid>/net/tcp`, as the kernel
/// opened them, so a port the kernel binds wide is caught too.
fn lab_ports_closed(deployment: &Deployment) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    use hubtrust_harness::backend::kubernetes::{command, in_cluster, plan};
    let user = &deployment.user;
    let pod = in_cluster::lab_service(user);
    let pid = pod_process(deployment, &pod)?;
    let tables: Vec<String> = ["tcp", "tcp6"]
        .iter()
        .map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).unwrap_or_default())
        .collect();
    let listening =
        in_cluster::listening_ports(&tables.iter().map(String::as_str).collect::<Vec<_>>());
    anyhow::ensure!(
        !listening.is_empty(),
        "the in-cluster probe: {user}'s lab pod {pod} (pid {pid}) shows no listening port, not even the lab's: its sockets could not be read"
    );
    let ip = command::run(&plan::pod_ip_command(
        &deployment.target,
        &deployment.namespace,
        &pod,
    ))
    .map_err(|e| anyhow::anyhow!("the in-cluster probe: {e}"))?;
    let ip: std::net::IpAddr = ip.stdout.trim().parse().map_err(|e| {
        anyhow::anyhow!(
            "the in-cluster probe: the lab pod {pod} has no address ({:?}: {e})",
            ip.stdout.trim()
        )
    })?;
    Ok(in_cluster::lab_ports_closed(user, ip, &listening))
}

/// `hubtrust ca-certs OUT --kubernetes-namespace NS`: the store a z2jh
/// deployment keeps in a Secret, made and checked as a run makes it.
pub fn ca_certs_command(out: &Path, namespace: &str) -> ExitCode {
    let made = || -> anyhow::Result<Vec<String>> {
        let components = provision::ensure(&mut std::io::stderr())?;
        let scratch = std::env::temp_dir().join(format!("hubtrust-ca-certs-{}", run_id()));
        std::fs::create_dir_all(&scratch)?;
        hubtrust_harness::pki::set_mode(&scratch, 0o700)?;
        let _scratch_removed = RemoveOnDrop(scratch.clone());
        let internal = scratch.join("internal-ssl");
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

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A shell in its own process group that runs the plan's teardown when its
/// stdin closes, which happens when hubtrust ends by any path, SIGKILL
/// included; it stands down once hubtrust has torn down itself.
struct Reaper {
    stdin: Option<ChildStdin>,
}

const STAND_DOWN: &str = "torn-down";

impl Reaper {
    fn start(plan: &KubernetesPlan) -> anyhow::Result<Self> {
        let teardown: Vec<String> = plan.teardown.iter().map(|c| c.shell_line()).collect();
        let script = format!(
            "read -r said; [ \"$said\" = {STAND_DOWN} ] || {{ {}; }}",
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
        Ok(Reaper {
            stdin: child.stdin.take(),
        })
    }

    fn stand_down(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{STAND_DOWN}");
        }
    }
}
