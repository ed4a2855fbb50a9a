//! `hubtrust`: the conformance suite's command line. A thin edge over the
//! harness: parse, validate, provision, then run inside the private
//! namespace. Exit codes: 0 all passed, 1 a check failed, 2 usage or
//! environment error.

mod artifacts;
mod bench;
mod bench_docker;
mod bench_hpc;
mod bench_profiles;
mod bench_wire;
mod bring_up;
mod capture;
mod checklist;
mod docker;
mod features;
mod image_pull;
mod kubernetes;
mod measure;
mod probe;
mod progress;
mod repeat;
mod run;
mod steps;
mod tag_expression;
mod world;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hubtrust_harness::backend::local::{inside_private_namespace, private_namespace_command};
use hubtrust_harness::stack::RUN_MARKER_ENV;
use hubtrust_harness::{doctor, provision, spec::StackSpec};

#[derive(Parser, Debug)]
#[command(
    name = "hubtrust",
    version,
    about = "Conformance suite for JupyterHub deployments: real components, real evidence."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug, Clone)]
enum Command {
    /// Run conformance scenarios against a stack brought up from real components.
    Run(RunArgs),
    /// List features and scenarios with their tags; with --tags, only
    /// those the expression selects, as `run --tags` would run them.
    List {
        #[arg(long)]
        features: Option<PathBuf>,
        #[arg(long)]
        tags: Option<String>,
    },
    /// Check every prerequisite and say how to install what is missing.
    Doctor {
        /// The cluster to ask (whether it answers, what runs left on it):
        /// the kubeconfig `--backend kubernetes` is given. Without it,
        /// kubectl's current context.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Bring a stack up, print its endpoints, and keep it until Ctrl-C.
    Up(UpArgs),
    /// Read-only checks of a running deployment hubtrust did not start:
    /// the TLS scan, chains, the identities each endpoint accepts, the hub
    /// API's tokens, endpoints closed to this place, and with a user token
    /// the view from inside their lab. Contacts only the addresses given.
    Probe(probe::ProbeArgs),
    /// Measure start-up against a plain baseline, the core profile, and the
    /// cost of wire capture.
    Bench(BenchArgs),
    /// Serve hubtrust's reference HPC tunnel broker (HPC stacks start it on
    /// the hub's host). The token comes from $HUBTRUST_BROKER_TOKEN.
    Broker {
        /// The broker's JSON config (login nodes, SSH files, certificate);
        /// $HUBTRUST_BROKER_CONFIG when not given, as for a vendor's broker.
        #[arg(long, env = "HUBTRUST_BROKER_CONFIG")]
        config: PathBuf,
    },
    /// Make the internal CAs a site keeps and reuses: JupyterHub's own
    /// `--generate-certs`, packed as ca_certs.tar.gz (mode 0600: it holds
    /// the CA keys). Give it to an HPC stack with `hpc.ca_certs`, or, with
    /// --kubernetes-namespace, to a Zero to JupyterHub hub pod as a Secret.
    CaCerts {
        /// Where to write ca_certs.tar.gz.
        out: PathBuf,
        /// A DNS name the internal certificates list besides the defaults.
        #[arg(
            long,
            default_value = "hub.hubtrust.test",
            conflicts_with = "kubernetes_namespace"
        )]
        public_name: String,
        /// Make them for z2jh in this namespace: every name of the hub and
        /// proxy-api Services, checked after they are made, and the store's
        /// paths those of the hub pod (/srv/jupyterhub/internal-ssl).
        #[arg(long)]
        kubernetes_namespace: Option<String>,
    },
    /// The docker backend's images.
    Images {
        #[command(subcommand)]
        action: ImagesAction,
    },
    /// Remove a docker run's containers, networks and volumes (a run kept
    /// with --keep, or one whose reaper could not finish).
    Down {
        /// The run id hubtrust printed when the run started.
        run: String,
    },
    /// The docker reaper (started by hubtrust itself): waits for its stdin
    /// to close, then removes everything labelled with RUN.
    #[command(hide = true)]
    Reap { run: String },
    /// Started by hubtrust itself: captures an interface of another
    /// process's network namespace until its stdin closes.
    #[command(hide = true)]
    Capture(capture::CaptureArgs),
}

#[derive(Subcommand, Debug, Clone)]
enum ImagesAction {
    /// Build hubtrust's runtime image without any registry: Debian from its
    /// mirror (debootstrap), the pinned PyPI and npm packages, `docker
    /// import`. Reused while its inputs are unchanged.
    Build,
    /// Resolve each image of a list (e.g. fixtures/images/upstream.toml) to
    /// the digest its registry serves now, and write the lock beside it
    /// that `--images` runs use.
    Pin {
        /// The image list.
        list: PathBuf,
        /// Only compare: exit 1 naming every image whose registry now
        /// serves another digest than the lock's, and write nothing.
        #[arg(long)]
        check: bool,
    },
    /// Put each image of a list into the docker daemon at the lock's
    /// digest, tagged as listed, as a kind run needs them; exit 1 naming
    /// any that is not the pinned image afterwards.
    Pull {
        /// The image list (e.g. fixtures/kubernetes/images.toml).
        list: PathBuf,
        /// Load each image from DIR/<component>.tar when that is the pinned
        /// image, and save it there after a pull: a cache for CI.
        #[arg(long, value_name = "DIR")]
        archives: Option<PathBuf>,
    },
}

/// Where a stack's hosts are made.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// Network namespaces in hubtrust's private namespace.
    #[default]
    Local,
    /// A container per host and a network per link, on the docker daemon
    /// at DOCKER_HOST or the default socket.
    Docker,
    /// A kind cluster made for the run and deleted after it, with the Zero
    /// to JupyterHub chart (needs kind, docker, kubectl and helm).
    Kind,
    /// A fresh namespace of an existing cluster (--kubeconfig or kubectl's
    /// current context), removed after the run; nothing else is touched.
    Kubernetes,
}

impl BackendChoice {
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Local => "local",
            BackendChoice::Docker => "docker",
            BackendChoice::Kind => "kind",
            BackendChoice::Kubernetes => "kubernetes",
        }
    }

    /// The chart starts the components, not hubtrust host by host.
    pub fn deploys_a_chart(self) -> bool {
        matches!(self, BackendChoice::Kind | BackendChoice::Kubernetes)
    }
}

/// The Kubernetes backends' options.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// The cluster for --backend kubernetes; kubectl's default (KUBECONFIG,
    /// ~/.kube/config) and its current context otherwise.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace to create and remove (--backend kind|kubernetes);
    /// `hubtrust-<run id>` by default. One that exists is refused.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Your deployment's own chart values (YAML), installed before
    /// hubtrust's, which replace yours where both set a key (each such key
    /// is named). Repeatable, in helm's order.
    #[arg(long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Your deployment's own objects (a file or directory of Kubernetes
    /// manifests: the ConfigMaps and Secrets your values name), applied
    /// into the run's namespace before the chart. Only namespaced kinds;
    /// repeatable.
    #[arg(long = "manifests", value_name = "FILE")]
    pub manifests: Vec<PathBuf>,
    /// Print every file, command and manifest a kind or kubernetes run
    /// would apply, in order, and run none of them.
    #[arg(long)]
    pub plan: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Tag expression selecting scenarios, e.g. `@core` or `@core and not @slow`.
    #[arg(long)]
    pub tags: Option<String>,
    /// Stack file (TOML); the built-in default stack otherwise.
    #[arg(long)]
    pub stack: Option<PathBuf>,
    /// Directory for report.xml, report.json, report.md and artifacts.
    #[arg(long, default_value = "hubtrust-report")]
    pub report: PathBuf,
    /// Keep every scenario's artifacts, not only failed ones; on docker,
    /// also keep a failed run's containers (`hubtrust down RUN` removes
    /// them); on kind or kubernetes, a failed run's cluster or namespace
    /// (the run says how to remove it).
    #[arg(long)]
    pub keep: bool,
    /// Where the stack's hosts are made.
    #[arg(long, value_enum, default_value_t)]
    pub backend: BackendChoice,
    /// An image list (e.g. fixtures/images/upstream.toml) whose images,
    /// pinned by digest in the lock beside it, run the components instead
    /// of hubtrust's runtime image (docker only; pulled when missing).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Directory of .feature files.
    #[arg(long)]
    pub features: Option<PathBuf>,
    /// Fail on known upstream defects too (fixtures/known-defects.toml),
    /// instead of showing them as "known defect".
    #[arg(long)]
    pub strict: bool,
    /// Run the selection N times, each round on a fresh stack, and report
    /// each scenario's pass count; a failure in any round fails the run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: Option<u32>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    #[arg(long)]
    pub stack: Option<PathBuf>,
    /// Where the stack's hosts are made.
    #[arg(long, value_enum, default_value_t)]
    pub backend: BackendChoice,
    /// An image list (e.g. fixtures/images/upstream.toml) whose images,
    /// pinned by digest in the lock beside it, run the components instead
    /// of hubtrust's runtime image (docker only; pulled when missing).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Print tokens in full instead of masked.
    #[arg(long)]
    pub show_secrets: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Rounds of each measurement; the report gives the median.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Run only one group: `startup` (stack ready against a plain
    /// baseline, core profile, memory), `wire` (capture overhead, census
    /// throughput), `enterprise` (the discriminator's full table) or `hpc`
    /// (first ready lab against the flat topology, tunnel throughput) or
    /// `docker` (stack ready on docker against the local backend).
    #[arg(long, value_enum)]
    pub only: Option<BenchGroup>,
    /// Bytes of bulk traffic for the census throughput measurement.
    #[arg(long, default_value_t = 1 << 30)]
    pub census_bytes: u64,
    /// Bytes of bulk traffic through the HPC tunnel and the direct link.
    #[arg(long, default_value_t = 256 << 20)]
    pub tunnel_bytes: u64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchGroup {
    Startup,
    Wire,
    Enterprise,
    Hpc,
    Docker,
    /// The HPC site's `@hpc` run on both backends.
    DockerHpc,
    /// The four local profiles one after another, and `@core` with and
    /// without its TLS scan.
    Profiles,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Broker { config } = &cli.command {
        return broker_command(config);
    }
    if let Command::Probe(args) = &cli.command {
        return probe::probe_command(args);
    }
    if let Command::Capture(args) = &cli.command {
        return capture::capture_command(args);
    }
    if let Command::CaCerts {
        out,
        public_name,
        kubernetes_namespace,
    } = &cli.command
    {
        return match kubernetes_namespace {
            Some(namespace) => kubernetes::ca_certs_command(out, namespace),
            None => ca_certs_command(out, public_name),
        };
    }
    match &cli.command {
        Command::Run(args) if args.backend.deploys_a_chart() => {
            return kubernetes::run_command(
                kubernetes::KubernetesArgs {
                    features: args.features.as_deref(),
                    ..kubernetes::KubernetesArgs::from_cli(
                        args.backend,
                        args.stack.as_deref(),
                        args.images.as_deref(),
                        &args.cluster,
                    )
                },
                kubernetes::RunOptions {
                    tags: args.tags.as_deref(),
                    report_dir: &args.report,
                    keep_if_failed: args.keep,
                    strict: args.strict,
                    repeat: args.repeat,
                },
            )
        }
        Command::Up(args) if args.backend.deploys_a_chart() => {
            return kubernetes::up_command(
                kubernetes::KubernetesArgs::from_cli(
                    args.backend,
                    args.stack.as_deref(),
                    args.images.as_deref(),
                    &args.cluster,
                ),
                args.show_secrets,
            )
        }
        Command::Run(RunArgs { cluster, .. }) | Command::Up(UpArgs { cluster, .. })
            if cluster.kubeconfig.is_some()
                || cluster.namespace.is_some()
                || !cluster.values.is_empty()
                || !cluster.manifests.is_empty()
                || cluster.plan =>
        {
            return usage_error(anyhow::anyhow!(
                "--kubeconfig, --namespace, --values, --manifests and --plan are the kind and kubernetes backends' options (fix: add --backend kind or --backend kubernetes)"
            ))
        }
        Command::Reap { run } => return docker::reap_command(run),
        Command::Down { run } => return docker::down_command(run),
        Command::Images {
            action: ImagesAction::Build,
        } => return docker::images_build_command(),
        Command::Images {
            action: ImagesAction::Pin { list, check },
        } => return docker::images_pin_command(list, *check),
        Command::Images {
            action: ImagesAction::Pull { list, archives },
        } => return image_pull::images_pull_command(list, archives.as_ref()),
        Command::Run(RunArgs {
            images: Some(_),
            backend: BackendChoice::Local,
            ..
        })
        | Command::Up(UpArgs {
            images: Some(_),
            backend: BackendChoice::Local,
            ..
        }) => {
            return usage_error(anyhow::anyhow!(
                "--images names the docker backend's component images (fix: add --backend docker)"
            ))
        }
        Command::Run(
            args @ RunArgs {
                repeat: Some(rounds),
                ..
            },
        ) if !inside_private_namespace() => {
            return match preflight_scenarios(args) {
                Ok(()) => repeat::run(args, *rounds),
                Err(e) => usage_error(e),
            }
        }
        _ => {}
    }
    if inside_private_namespace() {
        return run::inside(cli_command_inside(cli.command));
    }
    match cli.command {
        Command::Doctor { kubeconfig } => doctor_command(kubeconfig.as_deref()),
        Command::List { features, tags } => list_command(features, tags.as_deref()),
        // Containers are reached through this machine's network, and their
        // reaper, not a private namespace, cleans up: docker runs stay out.
        Command::Run(args) if args.backend == BackendChoice::Docker => {
            match preflight_scenarios(&args) {
                Ok(()) => run::inside(run::Inside::Run(args)),
                Err(e) => usage_error(e),
            }
        }
        Command::Up(args) if args.backend == BackendChoice::Docker => {
            run::inside(run::Inside::Up(args))
        }
        Command::Bench(args) if args.only == Some(BenchGroup::Profiles) => {
            match bench_profiles::four_profiles(args.rounds) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => usage_error(e),
            }
        }
        // Each round is a whole `hubtrust run` per backend, started from here.
        Command::Bench(args)
            if matches!(args.only, Some(BenchGroup::Docker | BenchGroup::DockerHpc)) =>
        {
            let profile = match args.only {
                Some(BenchGroup::DockerHpc) => &bench_docker::HPC,
                _ => &bench_docker::FLAT,
            };
            match bench_docker::compare_backends(profile, args.rounds) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => usage_error(e),
            }
        }
        Command::Run(ref args) => match preflight_run(args) {
            Ok(()) => relaunch_inside(),
            Err(e) => usage_error(e),
        },
        Command::Up(ref args) => match preflight_stack(args.stack.as_ref()) {
            Ok(()) => relaunch_inside(),
            Err(e) => usage_error(e),
        },
        Command::Bench(_) => match preflight_stack(None) {
            Ok(()) => relaunch_inside(),
            Err(e) => usage_error(e),
        },
        Command::Broker { .. }
        | Command::Probe(_)
        | Command::Capture(_)
        | Command::CaCerts { .. }
        | Command::Images { .. }
        | Command::Down { .. }
        | Command::Reap { .. } => {
            unreachable!("served before the namespace check")
        }
    }
}

fn cli_command_inside(command: Command) -> run::Inside {
    match command {
        Command::Run(args) => run::Inside::Run(args),
        Command::Up(args) => run::Inside::Up(args),
        Command::Bench(args) => run::Inside::Bench(args),
        Command::Doctor { .. }
        | Command::List { .. }
        | Command::Broker { .. }
        | Command::Probe(_)
        | Command::Capture(_)
        | Command::CaCerts { .. }
        | Command::Images { .. }
        | Command::Down { .. }
        | Command::Reap { .. } => run::Inside::Nothing,
    }
}

fn usage_error(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(2)
}

fn ca_certs_command(out: &std::path::Path, public_name: &str) -> ExitCode {
    let run = || -> anyhow::Result<()> {
        let components = provision::ensure(&mut std::io::stderr())?;
        tokio::runtime::Runtime::new()?.block_on(hubtrust_harness::hpc::make_ca_certs(
            &components,
            public_name,
            out,
        ))?;
        println!("wrote {} (mode 0600)", out.display());
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => usage_error(e),
    }
}

fn broker_command(config: &std::path::Path) -> ExitCode {
    let config_path = config;
    let run = || -> anyhow::Result<()> {
        let text = std::fs::read(config)
            .map_err(|e| anyhow::anyhow!("read the broker config {}: {e}", config.display()))?;
        let config: hubtrust_harness::hpc::broker::BrokerConfig = serde_json::from_slice(&text)
            .map_err(|e| anyhow::anyhow!("parse the broker config {}: {e}", config.display()))?;
        let token = std::env::var("HUBTRUST_BROKER_TOKEN").map_err(|_| {
            anyhow::anyhow!(
                "HUBTRUST_BROKER_TOKEN is not set (fix: export the token clients will send)"
            )
        })?;
        tokio::runtime::Runtime::new()?.block_on(hubtrust_harness::hpc::broker::serve(
            config,
            Some(config_path.to_path_buf()),
            token,
        ))?;
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hubtrust broker: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn doctor_command(kubeconfig: Option<&std::path::Path>) -> ExitCode {
    let checks: Vec<_> = doctor::check_all()
        .into_iter()
        .chain(doctor::check_hpc())
        .chain(doctor::check_docker())
        .collect();
    for c in &checks {
        match &c.problem {
            None => println!(
                "ok       {:<40} {}",
                c.name,
                c.found.as_deref().unwrap_or("")
            ),
            Some(problem) => println!(
                "MISSING  {:<40} {problem}\n         needed for {}; install: {}",
                c.name, c.needed_for, c.fix
            ),
        }
    }
    println!("\nKubernetes backends (optional: --backend kind|kubernetes)");
    for c in doctor::check_kubernetes(kubeconfig) {
        match &c.problem {
            None => println!(
                "ok       {:<40} {}",
                c.name,
                c.found.as_deref().unwrap_or("")
            ),
            Some(problem) => println!(
                "warn     {:<40} {problem}\n         needed for {}; fix: {}",
                c.name, c.needed_for, c.fix
            ),
        }
    }
    println!();
    let cache = provision::cached()
        .map(|c| format!("provisioned at {}", c.root.display()))
        .unwrap_or_else(|| {
            format!(
                "not provisioned yet (first `hubtrust run` installs into {})",
                provision::cache_root().display()
            )
        });
    println!(
        "ok       {:<40} {cache}",
        "components (pins {})".replace("{}", &provision::pins_key())
    );
    if checks.iter().all(|c| c.ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn list_command(features: Option<PathBuf>, tags: Option<&str>) -> ExitCode {
    let dir = features::locate(features.as_deref());
    let listed = features::scenarios(&dir).and_then(|scenarios| {
        let op = tags
            .map(|t| features::parse_tags(t, &scenarios))
            .transpose()?;
        Ok((scenarios, op))
    });
    match listed {
        Ok((scenarios, op)) => {
            let mut last_feature = String::new();
            for s in features::selected(&scenarios, op.as_ref()) {
                if s.feature != last_feature {
                    println!("{} ({})", s.feature, s.file.display());
                    last_feature = s.feature.clone();
                }
                let tags: Vec<String> = s.tags.iter().map(|t| format!("@{t}")).collect();
                println!("  {}  [{}]", s.name, tags.join(" "));
            }
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(e),
    }
}

/// Everything that can be checked before any component starts.
fn preflight_run(args: &RunArgs) -> anyhow::Result<()> {
    preflight_scenarios(args)?;
    preflight_stack(args.stack.as_ref())
}

/// The features exist and the tag expression selects some of them.
fn preflight_scenarios(args: &RunArgs) -> anyhow::Result<()> {
    let dir = features::locate(args.features.as_deref());
    let scenarios = features::scenarios(&dir)?;
    let op = args
        .tags
        .as_deref()
        .map(|t| features::parse_tags(t, &scenarios))
        .transpose()?;
    let selected = features::selected(&scenarios, op.as_ref());
    anyhow::ensure!(
        !selected.is_empty(),
        "the tag expression {:?} selects no scenario (fix: `hubtrust list` shows every scenario's tags)",
        args.tags.as_deref().unwrap_or("")
    );
    Ok(())
}

fn preflight_stack(stack: Option<&PathBuf>) -> anyhow::Result<()> {
    let mut checks = doctor::check_all();
    if let Some(path) = stack {
        if StackSpec::load(path)?.topology.hpc.is_some() {
            checks.extend(doctor::check_hpc());
        }
    }
    let missing: Vec<String> = checks
        .into_iter()
        .filter(|c| !c.ok())
        .map(|c| {
            format!(
                "missing prerequisite `{}`: {} (fix: {})",
                c.name,
                c.problem.unwrap_or_default(),
                c.fix
            )
        })
        .collect();
    anyhow::ensure!(missing.is_empty(), "{}", missing.join("\n"));
    provision::ensure(&mut std::io::stderr())?;
    Ok(())
}

/// Re-runs this very command inside the private namespace and relays its
/// exit code. Ctrl-C is forwarded to the inner process so it can tear down
/// and write its reports; if hubtrust itself is killed, the namespace dies
/// with it.
fn relaunch_inside() -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return usage_error(anyhow::anyhow!("cannot find the hubtrust executable: {e}")),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return usage_error(e.into()),
    };
    runtime.block_on(async move {
        let mut command = tokio::process::Command::from(private_namespace_command(&exe, &args));
        if std::env::var_os(RUN_MARKER_ENV).is_none() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            command.env(RUN_MARKER_ENV, format!("run-{}-{nanos:x}", std::process::id()));
        }
        // Its own process group: a terminal's Ctrl-C reaches only us, and
        // we decide how the inside hears of it.
        command.process_group(0);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                return usage_error(anyhow::anyhow!(
                    "cannot enter a private namespace with setpriv and unshare: {e} (fix: apt-get install -y util-linux)"
                ))
            }
        };
        let mut interrupts = 0;
        let (mut int, mut term) = match (
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            _ => return usage_error(anyhow::anyhow!("cannot listen for Ctrl-C")),
        };
        loop {
            tokio::select! {
                status = child.wait() => {
                    return match status.ok().and_then(|s| s.code()) {
                        Some(code) => ExitCode::from(code as u8),
                        None => ExitCode::from(2),
                    };
                }
                _ = async { tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} } } => {
                    interrupts += 1;
                    if interrupts == 1 {
                        eprintln!("interrupted: tearing the stack down (Ctrl-C again to kill at once)");
                        run::signal_namespace_init(child.id(), nix::sys::signal::Signal::SIGINT);
                    } else {
                        let _ = child.start_kill();
                    }
                }
            }
        }
    })
}
