//! What runs inside the private namespace: the stack, the scenarios, the
//! reports, and `up`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cucumber::World as _;
use hubtrust_harness::images::list::{ImageList, ImageLock};
use hubtrust_harness::report::RunReport;
use hubtrust_harness::spec::StackSpec;

use crate::bring_up::bring_up_on;
use crate::measure::peak_rss_kb;
use crate::progress::ProgressWriter;
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
    let cli = cucumber::cli::Opts::<_, _, _, cucumber::cli::Empty> {
        tags_filter: tags,
        ..Default::default()
    };
    crate::world::STRICT.store(args.strict, std::sync::atomic::Ordering::SeqCst);
    let _ = crate::world::REPORT_DIR
        .set(std::path::absolute(&args.report).unwrap_or(args.report.clone()));
    let cucumber_run = Operator::cucumber()
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
        .with_writer(ProgressWriter::new(results.clone(), keep))
        .fail_on_skipped()
        .max_concurrent_scenarios(1)
        .with_cli(cli)
        .run(features_dir);
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
