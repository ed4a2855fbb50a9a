//! What runs inside the private namespace: the stack, the scenarios, the
//! reports, and `up`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cucumber::gherkin::tagexpr::TagOperation;
use cucumber::World as _;
use hubtrust_harness::images::list::{ImageList, ImageLock};
use hubtrust_harness::report::{RunReport, ScenarioResult};
use hubtrust_harness::spec::StackSpec;

use crate::bring_up::bring_up_on;
use crate::measure::peak_rss_kb;
use crate::progress::{KeepArtifacts, ProgressWriter};
use crate::world::{report, Operator, STACK};
use crate::{artifacts, features, BackendChoice, BenchArgs, RunArgs, UpArgs};

pub enum Inside {
    Run(RunArgs),
    Up(UpArgs),
    Bench(BenchArgs),
    Nothing,
}

pub fn inside(what: Inside) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        let mut interrupts = match Interrupts::listen() {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: failed to listen for signals: {e}");
                return ExitCode::from(2);
            }
        };
        match what {
            Inside::Run(args) => run(args, &mut interrupts).await,
            Inside::Up(args) => up(args, &mut interrupts).await,
            Inside::Bench(args) => crate::bench::bench(args).await,
            Inside::Nothing => ExitCode::SUCCESS,
        }
    })
}

/// SIGINT (the outer hubtrust forwards Ctrl-C as SIGINT) and SIGTERM,
/// listened for from the very start: this process is PID 1 of its
/// namespace, which drops any signal it has no handler for, so a listener
/// created late could miss one for good.
pub struct Interrupts {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Sends `signal` to the init of the namespace `unshare` (pid `unshare_pid`)
/// forked.
pub fn signal_namespace_init(unshare_pid: Option<u32>, signal: nix::sys::signal::Signal) {
    let Some(pid) = unshare_pid else { return };
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), signal);
    }
}

/// The stack file (or the default stack), with an image list's pinned
/// images put in when one is given.
fn load_spec(path: Option<&PathBuf>, images: Option<&PathBuf>) -> anyhow::Result<StackSpec> {
    let mut spec = match path {
        Some(p) => StackSpec::load(p)?,
        None => StackSpec::default(),
    };
    if let Some(list_path) = images {
        let list = ImageList::load(list_path)?;
        let lock = ImageLock::load_for(list_path)?;
        for (role, image) in list.apply(&lock, list_path, &mut spec)? {
            eprintln!("· {} from {image}", role.as_str());
        }
    }
    Ok(spec)
}

async fn run(args: RunArgs, interrupts: &mut Interrupts) -> ExitCode {
    let started = Instant::now();
    let features_dir = features::locate(args.features.as_deref());
    let prepared = (|| -> anyhow::Result<_> {
        let scenarios = features::scenarios(&features_dir)?;
        let op = args
            .tags
            .as_deref()
            .map(|t| features::parse_tags(t, &scenarios))
            .transpose()?;
        Ok((
            op,
            load_spec(args.stack.as_ref(), args.images.as_ref())?,
            scenarios,
        ))
    })();
    let (tags, spec, all_scenarios) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Refused before anything starts: a flat stack would come up only to
    // fail every scenario of a site it does not have.
    if let Some(why) = features::missing_site(
        &features::selected(&all_scenarios, tags.as_ref()),
        spec.topology.hpc.is_some(),
        spec.enterprise.is_some(),
    ) {
        eprintln!("error: stack `{}`: {why}", spec.name);
        return ExitCode::from(2);
    }
    let stack_name = spec.name.clone();
    let work = match hubtrust_harness::workdir::RunDir::create(&std::env::temp_dir()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: failed to create a working directory: {e}");
            return ExitCode::from(2);
        }
    };
    let stack = tokio::select! {
        stack = bring_up_on(spec, work.path(), args.backend, args.keep) => stack,
        _ = interrupts.recv() => {
            eprintln!("interrupted while the stack was starting; nothing was checked");
            return ExitCode::from(130);
        }
    };
    let stack_ready_seconds = started.elapsed().as_secs_f64();
    let stack = match stack {
        Ok(stack) => Arc::new(stack),
        Err(e) => {
            // Fail closed: without a stack no check ran, so nothing passed.
            eprintln!("error: failed to bring the stack up: {e:#}");
            match args.keep.then(crate::docker::keep_run).flatten() {
                Some(run) => eprintln!(
                    "no scenario ran; docker run {run} is kept for inspection, its containers and volumes in place (fix: `hubtrust down {run}` removes it)"
                ),
                None => {
                    eprintln!("no scenario ran; everything started so far has been stopped")
                }
            }
            // CI shows a report, not a terminal: every selected scenario is
            // failed with the reason, and the logs are kept beside it.
            let selected = features::selected(&all_scenarios, tags.as_ref());
            let artifacts = artifacts::keep_unstarted(
                work.path(),
                &args.report.join("artifacts").join("stack-start-up"),
            )
            .ok()
            .map(|p| p.display().to_string());
            let report = RunReport {
                tool: format!("hubtrust {}", env!("CARGO_PKG_VERSION")),
                tags: args.tags.clone(),
                stack: stack_name,
                backend: backend_name(args.backend),
                scenarios: selected
                    .iter()
                    .map(|s| hubtrust_harness::report::ScenarioResult {
                        feature: s.feature.clone(),
                        scenario: s.name.clone(),
                        tags: s.tags.clone(),
                        status: hubtrust_harness::report::Status::Failed,
                        failure: Some(format!(
                            "the stack did not come up, so this scenario could not run: {e:#}"
                        )),
                        seconds: 0.0,
                        artifacts: artifacts.clone(),
                    })
                    .collect(),
                seconds: started.elapsed().as_secs_f64(),
                peak_rss_kb: peak_rss_kb(),
                ..RunReport::default()
            };
            match report.write_all(&args.report) {
                Ok(()) => eprintln!(
                    "reports written to {} (every selected scenario failed: the stack did not come up)",
                    args.report.display()
                ),
                Err(e) => eprintln!("error: failed to write the reports: {e}"),
            }
            // A deployment that was probed and found broken is a finding
            // (exit 1); anything else kept the run from judging (exit 2).
            return ExitCode::from(if is_deployment_defect(&e) { 1 } else { 2 });
        }
    };
    let images_used = stack.images_used();
    let deployment_overridden = stack.deployment_overridden.clone();
    if let Ok(mut s) = STACK.lock() {
        *s = Some(stack);
    }

    let results = Arc::new(Mutex::new(Vec::new()));
    let report_dir = args.report.clone();
    let keep_all = args.keep;
    let keep = Box::new(move |scenario: &str, failed: bool| {
        if !(failed || keep_all) {
            return None;
        }
        let stack = crate::world::shared_stack()?;
        let dest = report_dir.join("artifacts").join(artifacts::slug(scenario));
        artifacts::keep(&stack, &dest)
            .ok()
            .map(|p| p.display().to_string())
    });
    crate::world::STRICT.store(args.strict, std::sync::atomic::Ordering::SeqCst);
    let _ = crate::world::REPORT_DIR
        .set(std::path::absolute(&args.report).unwrap_or(args.report.clone()));
    let cucumber_run = run_scenarios(features_dir, tags, results.clone(), keep);
    let interrupted = tokio::select! {
        _ = cucumber_run => false,
        _ = interrupts.recv() => true,
    };

    // Teardown before reporting, so a report never describes a stack that
    // is still running.
    let any_failed = results
        .lock()
        .map(|r| {
            r.iter()
                .any(|s| s.status != hubtrust_harness::report::Status::Passed)
        })
        .unwrap_or(true);
    let stack = STACK.lock().ok().and_then(|mut s| s.take());
    let backend_notes = stack
        .as_ref()
        .map(|s| s.backend_notes())
        .unwrap_or_default();
    if let Some(stack) = stack {
        let kept = (args.keep && any_failed)
            .then(|| stack.keep_backend_objects())
            .flatten();
        if let Some(run) = kept {
            let _ = crate::docker::keep_run();
            eprintln!(
                "kept docker run {run} for inspection, its components still running (fix: `hubtrust down {run}` removes it)"
            );
            // Its processes live on in the containers; nothing here may
            // stop them.
            std::mem::forget(stack);
        } else {
            match Arc::try_unwrap(stack) {
                Ok(stack) => stack.shutdown().await,
                Err(shared) => drop(shared),
            }
        }
    }

    let mut report = report()
        .lock()
        .map(|r| r.clone())
        .unwrap_or_else(|_| RunReport::default());
    report.tool = format!("hubtrust {}", env!("CARGO_PKG_VERSION"));
    report.tags = args.tags.clone();
    report.stack = stack_name;
    report.backend = backend_name(args.backend);
    report.scenarios = results.lock().map(|r| r.clone()).unwrap_or_default();
    report.seconds = started.elapsed().as_secs_f64();
    report.stack_ready_seconds = Some(stack_ready_seconds);
    report.images = images_used;
    report.deployment_overridden = deployment_overridden;
    report.backend_notes = backend_notes;
    report.peak_rss_kb = peak_rss_kb();
    if let Err(e) = report.write_all(&args.report) {
        eprintln!("error: failed to write the reports: {e}");
        return ExitCode::from(2);
    }
    let (passed, failed) = (report.passed(), report.failed());
    let skipped = report.scenarios.len() - passed - failed;
    eprintln!("reports written to {}", args.report.display());
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if interrupted {
        eprintln!("interrupted: the run is incomplete");
        return ExitCode::from(130);
    }
    if report.scenarios.is_empty() {
        eprintln!("error: no scenario ran, so nothing was shown to work");
        return ExitCode::from(1);
    }
    if failed > 0 || skipped > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs the scenarios `tags` selects, one at a time, against the run's
/// shared deployment ([`STACK`], else [`crate::world::DEPLOYMENT`]),
/// adding each one's result to `results` as it finishes.
pub async fn run_scenarios(
    features: PathBuf,
    tags: Option<TagOperation>,
    results: Arc<Mutex<Vec<ScenarioResult>>>,
    keep: KeepArtifacts,
) {
    let cli = cucumber::cli::Opts::<_, _, _, cucumber::cli::Empty> {
        tags_filter: tags,
        ..Default::default()
    };
    Operator::cucumber()
        .before(|_, _, scenario, world| {
            // Only names the scenario's artifact directory; setup readers
            // need to see stays in Background steps.
            world.scenario = scenario.name.clone();
            Box::pin(async {})
        })
        .after(|_, _, _, _, world| {
            // Fault scenarios change the shared stack (a stopped sshd, a
            // rotated proxy certificate); put it back whether they passed
            // or not, so the next scenario starts from the designed site.
            let stack = world.and_then(|w| w.stack.clone());
            Box::pin(async move {
                if let Some(stack) = stack {
                    let outcome = stack.restore_sites().await;
                    if let Err(e) = &outcome {
                        eprintln!("error: {e}");
                    }
                    if let Ok(mut not_restored) = crate::world::NOT_RESTORED.lock() {
                        *not_restored = outcome.err().map(|e| e.to_string());
                    }
                }
            })
        })
        .with_writer(ProgressWriter::new(results, keep))
        .fail_on_skipped()
        .max_concurrent_scenarios(1)
        .with_cli(cli)
        .run(features)
        .await;
}

/// A stack that was probed and found broken: a finding, not an environment
/// problem.
fn is_deployment_defect(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<hubtrust_harness::HarnessError>(),
            Some(hubtrust_harness::HarnessError::DeploymentDefect { .. })
        )
    })
}

fn backend_name(backend: BackendChoice) -> String {
    backend.name().into()
}

async fn up(args: UpArgs, interrupts: &mut Interrupts) -> ExitCode {
    let spec = match load_spec(args.stack.as_ref(), args.images.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let work = match hubtrust_harness::workdir::RunDir::create(&std::env::temp_dir()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: failed to create a working directory: {e}");
            return ExitCode::from(2);
        }
    };
    let brought_up = tokio::select! {
        stack = bring_up_on(spec, work.path(), args.backend, false) => stack,
        _ = interrupts.recv() => {
            eprintln!("interrupted while the stack was starting");
            return ExitCode::from(130);
        }
    };
    let stack = match brought_up {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: failed to bring the stack up: {e:#}");
            return ExitCode::from(if is_deployment_defect(&e) { 1 } else { 2 });
        }
    };
    let token = |s: &hubtrust_harness::secret::Secret| {
        if args.show_secrets {
            s.expose().to_string()
        } else {
            s.masked()
        }
    };
    println!("stack `{}` is up (Ctrl-C tears it down)", stack.spec.name);
    println!(
        "  public proxy   {} (at {})",
        stack.public_url(),
        stack.public_addr()
    );
    for e in stack.endpoints() {
        println!(
            "  {:<14} {} from host `{}` (verify as {})",
            e.name, e.addr, e.from_host, e.server_name
        );
    }
    println!("  service token  {}", token(&stack.service_token));
    println!("  proxy token    {}", token(&stack.proxy_token));
    println!(
        "  user password  {} (for {})",
        token(&stack.user_password),
        stack.users().join(", ")
    );
    println!(
        "  org root CA    {}",
        stack.run_dir.join("pki/org-root.crt").display()
    );
    println!("  internal-ssl   {}", stack.internal_ssl_dir().display());
    println!("  hub log        {}", stack.hub_log().display());
    interrupts.recv().await;
    eprintln!("tearing down");
    stack.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hubtrust_harness::hub_api::PublicSideReport;
    use std::path::Path;
    use std::time::Duration;

    use hubtrust_harness::capture::WireCensus;
    use hubtrust_harness::enterprise::{self, MergedBundleTexts, OutboundRuns};
    use hubtrust_harness::inventory::Inventory;
    use hubtrust_harness::lab::CellRun;
    use hubtrust_harness::matrix::{MatrixCell, TrustMatrix};
    use hubtrust_harness::pki::CertificateAuthority;
    use hubtrust_harness::probe::{HttpResponse, ProbeOutcome, Verdict};
    use hubtrust_harness::reachability::{Reach, ReachCell};
    use hubtrust_harness::report::{ChainCheck, Status};
    use hubtrust_harness::secret::Secret;
    use hubtrust_harness::stack::SecretFile;
    use hubtrust_harness::tls_scan::{EndpointScan, Offer, TlsPolicySpec, TlsVersion};
    use hubtrust_harness::under_test::{DeploymentUnderTest, MergedOrgBundle, RunningCapture};
    use hubtrust_harness::{HarnessError, Result};
    use std::path::PathBuf;

    use super::*;

    /// A deployment whose answers the test sets: the runner and the steps
    /// are what is under test here.
    struct Answers {
        lab_status: u16,
        matrix_matches: bool,
        proxy_api_guarded: bool,
        /// The hub's CA variables point at the merged bundle (the stack
        /// file here keeps it from the hub).
        hub_has_merged: bool,
        /// The proxy API still accepts TLS 1.0.
        accepts_tls10: bool,
        /// The proxy API answers a pod the design keeps out.
        open_to_any_pod: bool,
        /// The merged bundle holds the system bundle alone.
        merge_drops_the_org_bundle: bool,
        /// No outbound server under a root of the lab's own store is
        /// reached directly (a chart's lab image).
        no_direct_public_endpoint: bool,
        /// The cell's output crosses a link in plaintext.
        leaks_the_cell_output: bool,
        /// The kernel's ports answer from another host.
        kernel_ports_open: bool,
        /// The self-test's plaintext request never crosses a captured link.
        self_test_goes_uncaptured: bool,
        /// No capture of the links can be made (a cluster whose pods this
        /// machine cannot enter).
        no_capture: bool,
        /// The chart's deployment: its version among the components.
        on_the_chart: bool,
        /// The lab takes another user's lab certificate.
        lab_takes_another_lab: bool,
        /// What crossed the wire in plaintext since the capture started.
        plaintext_sent: Arc<Mutex<Vec<String>>>,
    }

    impl Answers {
        /// A deployment that answers every scenario as a healthy one does.
        fn healthy() -> Self {
            Self {
                lab_status: 200,
                matrix_matches: true,
                proxy_api_guarded: true,
                hub_has_merged: false,
                accepts_tls10: false,
                open_to_any_pod: false,
                merge_drops_the_org_bundle: false,
                no_direct_public_endpoint: false,
                leaks_the_cell_output: false,
                kernel_ports_open: false,
                self_test_goes_uncaptured: false,
                no_capture: false,
                on_the_chart: false,
                lab_takes_another_lab: false,
                plaintext_sent: Arc::default(),
            }
        }
    }

    /// A capture of one link, operator to hub: a TLS flow, and a plain
    /// HTTP POST for each text sent in plaintext meanwhile. The pcap is
    /// written, and the census built from it, by the harness's own code.
    struct FakeCapture {
        dir: PathBuf,
        plaintext_sent: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl RunningCapture for FakeCapture {
        async fn finish(self: Box<Self>) -> WireCensus {
            use hubtrust_harness::capture::{pcap, LinkEvidence};
            let operator = (std::net::Ipv4Addr::new(10, 9, 0, 1), 40000);
            let hub = (std::net::Ipv4Addr::new(10, 9, 0, 2), 443);
            let record = [0x17, 3, 3, 0, 4, 1, 2, 3, 4];
            let mut frames = vec![
                pcap::tcp_frame(operator, hub, 1000, 0x02, b""),
                pcap::tcp_frame(hub, operator, 5000, 0x12, b""),
                pcap::tcp_frame(operator, hub, 1001, 0x18, &record),
                pcap::tcp_frame(hub, operator, 5001, 0x18, &record),
            ];
            for (i, text) in self.plaintext_sent.lock().unwrap().iter().enumerate() {
                let client = (operator.0, 41000 + i as u16);
                let server = (hub.0, 8081);
                let request = format!("POST /x HTTP/1.1\r\n\r\n{text}");
                frames.extend([
                    pcap::tcp_frame(client, server, 1000, 0x02, b""),
                    pcap::tcp_frame(server, client, 5000, 0x12, b""),
                    pcap::tcp_frame(client, server, 1001, 0x18, request.as_bytes()),
                ]);
            }
            std::fs::create_dir_all(&self.dir).unwrap();
            let file = self.dir.join("operator--hub.pcap");
            std::fs::write(&file, pcap::write(&frames)).unwrap();
            let evidence = LinkEvidence {
                link: "operator--hub".into(),
                pcap: file,
                packets_captured: Some(frames.len() as u64),
                packets_on_interface: Some(frames.len() as u64),
                inconclusive: None,
            };
            let hosts = [(operator.0, "operator".into()), (hub.0, "hub".into())].into();
            WireCensus::build(vec![evidence], &hosts)
        }
    }

    const MERGED: &str = "/etc/ssl/certs-extra/ca-certificates.crt";

    fn not_observed(what: &str) -> HarnessError {
        HarnessError::NotObserved {
            what: what.into(),
            why: "the test observed nothing".into(),
        }
    }

    #[async_trait::async_trait]
    impl DeploymentUnderTest for Answers {
        fn users(&self) -> Vec<String> {
            vec!["alice".into()]
        }
        /// A version the known defects list applies to: those that name
        /// an identity this matrix did not present must not count as
        /// stale.
        fn component_versions(&self) -> BTreeMap<String, String> {
            let mut versions = BTreeMap::from([("jupyterhub".to_string(), "6.1.1".to_string())]);
            if self.on_the_chart {
                versions.insert("zero-to-jupyterhub".into(), "4.4.0".into());
            }
            versions
        }
        async fn get_via_proxy(&self, path: &str) -> Result<u16> {
            Ok(if path.starts_with("/user/") {
                self.lab_status
            } else {
                200
            })
        }
        async fn check_from_outside(&self, _: &str, _: &str) -> Result<PublicSideReport> {
            Ok(PublicSideReport {
                hub_version: "5.3.0".into(),
                lab_ready_after_seconds: 1.0,
                cell: "hubtrust-outside".into(),
            })
        }
        async fn trust_matrix(&self) -> Result<TrustMatrix> {
            let observed = match self.matrix_matches {
                true => Verdict::ClientCertRequired,
                false => Verdict::Accepted,
            };
            let cell =
                |endpoint: &str, identity: &str, expected: Verdict, observed: Verdict| MatrixCell {
                    endpoint: endpoint.into(),
                    identity: identity.into(),
                    expected,
                    reason: "mutual TLS".into(),
                    observed,
                    detail: String::new(),
                    protocol: None,
                    matches: observed == expected,
                    known_defect: None,
                };
            let another_lab = match self.lab_takes_another_lab {
                true => Verdict::Accepted,
                false => Verdict::ClientCertRejected,
            };
            let required = Verdict::ClientCertRequired;
            let another = "lab cert (another user)";
            Ok(TrustMatrix {
                endpoints: vec!["hub API".into(), "proxy API".into(), "lab of alice".into()],
                identities: vec!["none".into(), another.into()],
                cells: vec![
                    cell("hub API", "none", required, required),
                    cell("proxy API", "none", required, observed),
                    cell("lab of alice", "none", required, required),
                    cell("hub API", another, Verdict::Accepted, Verdict::Accepted),
                    cell("proxy API", another, Verdict::Accepted, Verdict::Accepted),
                    cell(
                        "lab of alice",
                        another,
                        Verdict::ClientCertRejected,
                        another_lab,
                    ),
                ],
            })
        }
        async fn real_client_chains(&self) -> Result<Vec<ChainCheck>> {
            Err(not_observed("the chains"))
        }
        async fn call_proxy_api(&self, with_token: bool) -> Result<ProbeOutcome> {
            let mut outcome = ProbeOutcome::failed(Verdict::Accepted, "");
            outcome.http = Some(HttpResponse {
                status: match (with_token, self.proxy_api_guarded) {
                    (false, true) => 403,
                    _ => 200,
                },
                body: String::new(),
            });
            Ok(outcome)
        }
        fn secret_files(&self) -> Result<Vec<SecretFile>> {
            Err(not_observed("the secret files"))
        }
        fn inventory(&self) -> Result<Inventory> {
            Err(not_observed("the inventory"))
        }
        fn merged_org_bundle(&self) -> Option<MergedOrgBundle> {
            Some(MergedOrgBundle {
                holds_org: true,
                path: MERGED.into(),
                into_hub: false,
            })
        }
        fn hub_environment(&self) -> Result<BTreeMap<String, String>> {
            let value = match self.hub_has_merged {
                true => MERGED,
                false => "/etc/ssl/certs/ca-certificates.crt",
            };
            Ok([("SSL_CERT_FILE".to_string(), value.to_string())].into())
        }
        fn tls_policy(&self) -> TlsPolicySpec {
            TlsPolicySpec::default()
        }
        async fn tls_scan(&self) -> Result<Vec<EndpointScan>> {
            let tls10 = match self.accepts_tls10 {
                true => Offer::Accepted,
                false => Offer::Refused,
            };
            Ok(vec![EndpointScan {
                endpoint: "proxy API".into(),
                addr: "10.96.0.9:8001".into(),
                from_host: "a prober".into(),
                versions: [
                    (TlsVersion::Tls10, tls10),
                    (TlsVersion::Tls12, Offer::Accepted),
                    (TlsVersion::Tls13, Offer::Accepted),
                ]
                .into(),
                tls12_suites: vec!["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()],
                error: None,
            }])
        }
        async fn reachability_matrix(&self) -> Result<Vec<ReachCell>> {
            let addr = "10.96.0.9:8001".parse().unwrap();
            let cell = |from: &str, expected: bool, reach: Reach| {
                ReachCell::at("proxy API", "proxy-api", from, addr, &reach, expected)
            };
            let stranger = match self.open_to_any_pod {
                true => Reach::Connected,
                false => Reach::NoRoute("timed out".into()),
            };
            Ok(vec![
                cell("a client's pod", true, Reach::Connected),
                cell("any other pod", false, stranger),
            ])
        }
        /// A lab that answers the enterprise steps' cells: the five
        /// variables at the merged bundle, and python refusing both direct
        /// servers with its own store.
        async fn run_cell(&self, _: &str, code: &str, _: Duration) -> Result<CellRun> {
            let stdout = if code.contains("HUBTRUST-ENV") {
                let env: BTreeMap<&str, &str> = enterprise::CA_VARIABLES
                    .iter()
                    .map(|v| (*v, MERGED))
                    .collect();
                format!("HUBTRUST-ENV {}", serde_json::to_string(&env).unwrap())
            } else if code.contains(enterprise::STORE_MARKER) {
                let refused = "ssl.SSLCertVerificationError: certificate verify failed: unable to get local issuer certificate";
                let outcomes: BTreeMap<&str, &str> = [
                    ("org-CA server", refused),
                    ("public endpoint", "ok"),
                    ("foreign-CA server", refused),
                ]
                .into();
                format!(
                    "{}{}",
                    enterprise::STORE_MARKER,
                    serde_json::to_string(&outcomes).unwrap()
                )
            } else {
                String::new()
            };
            Ok(CellRun {
                kernel_id: "k".into(),
                stdout,
                status: "ok".into(),
                token: Secret::new("unused"),
            })
        }
        async fn merged_bundle_texts(&self) -> Result<MergedBundleTexts> {
            let system = CertificateAuthority::root("a system root")?.cert_pem();
            let org = CertificateAuthority::root("the org root")?.cert_pem();
            let merged = match self.merge_drops_the_org_bundle {
                true => system.clone(),
                false => format!("{system}{org}"),
            };
            Ok(MergedBundleTexts {
                system,
                org: Some(org),
                merged,
            })
        }
        fn outbound_targets(&self) -> Result<Vec<enterprise::Target>> {
            let target = |name: &str, signer| enterprise::Target {
                name: name.into(),
                url: format!("https://{name}.example/"),
                signer,
                proxy: None,
            };
            let mut targets = vec![
                target("org-CA server", enterprise::Signer::Org),
                target("public endpoint", enterprise::Signer::Public),
                target("foreign-CA server", enterprise::Signer::Foreign),
            ];
            if self.no_direct_public_endpoint {
                targets.retain(|t| t.signer != enterprise::Signer::Public);
            }
            Ok(targets)
        }
        /// Every tool refusing every direct server with either bundle,
        /// but verifying the org's with the merged one; the proxy's
        /// capture sees each proxied run cross it, or one bypass.
        async fn run_outbound_tools(&self, _: &str, _: &Path) -> Result<OutboundRuns> {
            let targets = self.outbound_targets()?;
            let mut runs = Vec::new();
            for tool in enterprise::TOOLS {
                for target in &targets {
                    for bundle in [enterprise::Bundle::Merged, enterprise::Bundle::System] {
                        let verified = target.signer == enterprise::Signer::Public
                            || (target.signer == enterprise::Signer::Org
                                && bundle == enterprise::Bundle::Merged);
                        runs.push(enterprise::ToolRun {
                            tool: tool.into(),
                            target: target.name.clone(),
                            bundle,
                            outcome: if verified { "ok" } else { "failed" }.into(),
                            detail: "certificate verify failed".into(),
                            tag: None,
                        });
                    }
                }
            }
            let problems = match self.merge_drops_the_org_bundle {
                true => vec!["curl → public server via the inspecting proxy with the merged bundle: bypassed the inspecting proxy".to_string()],
                false => Vec::new(),
            };
            Ok(OutboundRuns {
                targets,
                runs,
                proxy_paths: Some(Ok(enterprise::ProxyPaths {
                    tunnelled_runs: 12,
                    legs: Default::default(),
                    problems,
                })),
            })
        }
        async fn start_wire_capture(&self, dir: &Path) -> Result<Box<dyn RunningCapture>> {
            if self.no_capture {
                return Err(not_observed("the captures"));
            }
            self.plaintext_sent.lock().unwrap().clear();
            Ok(Box::new(FakeCapture {
                dir: dir.to_path_buf(),
                plaintext_sent: self.plaintext_sent.clone(),
            }))
        }
        fn plaintext_exceptions(&self) -> Vec<(u16, String)> {
            Vec::new()
        }
        async fn log_in(&self, _: &str) -> Result<Vec<(String, Secret)>> {
            Ok(vec![(
                "the user's login cookie".into(),
                Secret::new("cookie-1"),
            )])
        }
        async fn run_cell_in_new_kernel(&self, _: &str, code: &str) -> Result<CellRun> {
            let stdout = printed(code).unwrap_or_default();
            if self.leaks_the_cell_output {
                self.plaintext_sent.lock().unwrap().push(stdout.clone());
            }
            Ok(CellRun {
                kernel_id: "k1".into(),
                stdout,
                status: "ok".into(),
                token: Secret::new("user-token-1"),
            })
        }
        async fn kernel_ports_answering(&self, _: &str, kernel_id: &str) -> Result<Vec<String>> {
            assert_eq!(kernel_id, "k1");
            Ok(match self.kernel_ports_open {
                true => vec!["shell port 50001 at 10.9.0.3, from the hub's pod".into()],
                false => Vec::new(),
            })
        }
        async fn send_plaintext_canary(&self, canary: &str) -> Result<()> {
            if !self.self_test_goes_uncaptured {
                self.plaintext_sent.lock().unwrap().push(canary.into());
            }
            Ok(())
        }
    }

    /// The output a wire step's cell prints: `print("head" + "tail")`.
    fn printed(code: &str) -> Option<String> {
        let call = code.lines().find_map(|l| l.strip_prefix("print("))?;
        let (head, tail) = call.trim_end_matches(')').split_once(" + ")?;
        let text = |quoted: &str| serde_json::from_str::<String>(quoted).ok();
        Some(text(head)? + &text(tail)?)
    }

    fn run_core(answers: Answers) -> BTreeMap<String, (Status, Option<String>)> {
        let features = crate::features::locate(None);
        let tags = crate::features::parse_tags(
            "@core or @enterprise or @wire",
            &crate::features::scenarios(&features).unwrap(),
        )
        .unwrap();
        // The wire scenarios keep their pcaps under the report: here, a
        // directory of the test's own, removed after each run.
        let report = crate::world::REPORT_DIR.get_or_init(|| {
            std::env::temp_dir().join(format!("hubtrust-runner-test-{}", std::process::id()))
        });
        *crate::world::DEPLOYMENT.lock().unwrap() = Some(Arc::new(answers));
        let results = Arc::new(Mutex::new(Vec::new()));
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(run_scenarios(
                features,
                Some(tags),
                results.clone(),
                Box::new(|_, _| None),
            ));
        *crate::world::DEPLOYMENT.lock().unwrap() = None;
        let _ = std::fs::remove_dir_all(report);
        let results = results.lock().unwrap().clone();
        results
            .into_iter()
            .map(|r| (r.scenario, (r.status, r.failure)))
            .collect()
    }

    /// One test, since the deployment the steps see is the process's.
    #[test]
    fn a_deployment_hubtrust_did_not_start_answers_the_scenarios_it_can_and_the_rest_are_not_run() {
        let ran = run_core(Answers::healthy());
        assert_eq!(ran.len(), 16, "{ran:#?}");
        let status = |name: &str| {
            ran.iter()
                .find(|(scenario, _)| scenario.starts_with(name))
                .map(|(_, said)| said.clone())
                .unwrap_or_else(|| panic!("no scenario {name:?} in {ran:#?}"))
        };
        for passed in [
            "The hub answers its health check",
            "A user's lab answers",
            "The deployment works for a client that knows only its public side",
            "Every endpoint accepts exactly the identities",
            "The proxy API is guarded",
            "Trusting the org CA outbound grants no inbound access",
            "Every TLS endpoint accepts only the versions and suites the policy allows",
            "Every internal endpoint answers from its clients' hosts and from no other",
            "The merged bundle is exactly the system bundle plus the org bundle",
            "User tools trust the org CA with the merged bundle",
            "Only protected flows cross hosts, and no secret is readable",
            "Kernel channels never leave the lab host",
            "The detector catches a plaintext canary (self-test)",
        ] {
            assert_eq!(status(passed).0, Status::Passed, "{passed}: {ran:#?}");
        }
        for not_run in [
            "Every server's chain verifies",
            "Private keys and the cookie secret",
            "Every certificate in the stack is inventoried",
        ] {
            let (said, why) = status(not_run);
            assert_eq!(said, Status::Skipped, "{not_run}: {ran:#?}");
            assert!(
                why.as_deref()
                    .is_some_and(|w| w.starts_with("not run: ") && w.contains("observed nothing")),
                "{not_run}: {why:?}"
            );
        }

        let broken = run_core(Answers {
            lab_status: 503,
            matrix_matches: false,
            proxy_api_guarded: false,
            hub_has_merged: true,
            accepts_tls10: true,
            open_to_any_pod: true,
            merge_drops_the_org_bundle: true,
            leaks_the_cell_output: true,
            kernel_ports_open: true,
            self_test_goes_uncaptured: true,
            ..Answers::healthy()
        });
        let failed = |name: &str| {
            broken
                .iter()
                .find(|(scenario, _)| scenario.starts_with(name))
                .map(|(_, (status, why))| (*status, why.clone().unwrap_or_default()))
                .unwrap()
        };
        let (status, why) = failed("A user's lab answers");
        assert_eq!(status, Status::Failed);
        assert!(why.contains("the lab of alice answered HTTP 503"), "{why}");
        let (status, why) = failed("Every endpoint accepts exactly the identities");
        assert_eq!(status, Status::Failed);
        assert!(why.contains("proxy API × none: observed accepted"), "{why}");
        let (status, why) = failed("Every TLS endpoint accepts only");
        assert_eq!(status, Status::Failed);
        assert!(why.contains("TLSv1.0"), "{why}");
        let (status, why) = failed("Every internal endpoint answers from its clients' hosts");
        assert_eq!(status, Status::Failed);
        assert!(why.contains("from host `any other pod`"), "{why}");
        let (status, why) = failed("The merged bundle is exactly");
        assert_eq!(status, Status::Failed);
        assert!(
            why.contains("expected 2 certificates (1 system + 1 org) in order, found 1"),
            "{why}"
        );
        let (status, why) = failed("Only protected flows cross hosts");
        assert_eq!(status, Status::Failed);
        assert!(
            why.contains("unprotected flows cross hosts") && why.contains("plaintext HTTP POST"),
            "{why}"
        );
        let (status, why) = failed("Kernel channels never leave the lab host");
        assert_eq!(status, Status::Failed);
        assert!(why.contains("shell port 50001 at 10.9.0.3"), "{why}");
        let (status, why) = failed("The detector catches a plaintext canary");
        assert_eq!(status, Status::Failed);
        assert!(why.contains("the detector missed a canary"), "{why}");
        // The lab's own store trusting a public endpoint was never tried:
        // the scenario is not run, though its first steps passed.
        let untried = run_core(Answers {
            no_direct_public_endpoint: true,
            ..Answers::healthy()
        });
        let (said, why) = untried
            .get("The merged bundle is exactly the system bundle plus the org bundle")
            .cloned()
            .unwrap();
        assert_eq!(said, Status::Skipped, "{why:?}");
        assert!(
            why.as_deref().is_some_and(|w| w.starts_with("not run: ")
                && w.contains("an endpoint under a root of the lab's own system store")),
            "{why:?}"
        );
        // Without captures the whole wire feature is not run, its
        // Background unable to start them: never passed.
        let uncaptured = run_core(Answers {
            no_capture: true,
            ..Answers::healthy()
        });
        for scenario in [
            "Only protected flows cross hosts, and no secret is readable",
            "Kernel channels never leave the lab host",
            "The detector catches a plaintext canary (self-test)",
        ] {
            let (said, why) = uncaptured.get(scenario).cloned().unwrap();
            assert_eq!(said, Status::Skipped, "{scenario}: {why:?}");
            assert!(
                why.as_deref()
                    .is_some_and(|w| w.starts_with("not run: ") && w.contains("the captures")),
                "{scenario}: {why:?}"
            );
        }
        let (status, why) = failed("User tools trust the org CA");
        assert_eq!(status, Status::Failed);
        assert!(
            why.contains(
                "curl → public server via the inspecting proxy with the merged bundle: bypassed"
            ),
            "{why}"
        );

        // A lab that takes another user's lab certificate: KubeSpawner's
        // known defect on the chart, a failure anywhere else, and on the
        // chart a lab that refuses it leaves the entry stale, which fails.
        let matrix_of = |answers: Answers| {
            run_core(answers)
                .get("Every endpoint accepts exactly the identities the trust graph allows")
                .cloned()
                .unwrap()
        };
        let (said, why) = matrix_of(Answers {
            on_the_chart: true,
            lab_takes_another_lab: true,
            ..Answers::healthy()
        });
        assert_eq!(said, Status::Passed, "{why:?}");
        let (said, why) = matrix_of(Answers {
            lab_takes_another_lab: true,
            ..Answers::healthy()
        });
        assert_eq!(said, Status::Failed);
        assert!(
            why.as_deref().is_some_and(
                |w| w.contains("lab of alice × lab cert (another user): observed accepted")
            ),
            "{why:?}"
        );
        let (said, why) = matrix_of(Answers {
            on_the_chart: true,
            ..Answers::healthy()
        });
        assert_eq!(said, Status::Failed);
        assert!(
            why.as_deref().is_some_and(|w| w.contains(
                "known defect `kubespawner-lab-trusts-every-internal-ca` no longer reproduces"
            )),
            "{why:?}"
        );
    }
}
