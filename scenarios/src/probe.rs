//! `hubtrust probe`: the command line over the harness's read-only checks
//! of a running deployment (`hubtrust_harness::probe_deployment`).

use std::path::PathBuf;
use std::process::ExitCode;

use hubtrust_harness::probe_deployment::{self, ProbeTarget};
use hubtrust_harness::report::Status;
use hubtrust_harness::secret::Secret;
use hubtrust_harness::tls_scan::{PolicyName, TlsPolicySpec};

#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    /// The public URL users open: https://<name>[:port].
    #[arg(long)]
    pub url: String,
    /// The address to reach the URL's name at (IP:PORT), instead of
    /// resolving it; nothing else is contacted for the public side.
    #[arg(long)]
    pub connect: Option<std::net::SocketAddr>,
    /// The CA bundle the public side must chain to (PEM).
    #[arg(long)]
    pub ca: PathBuf,
    /// An internal TLS endpoint to scan and to present identities to:
    /// `NAME=IP:PORT[,name=SERVER_NAME]`. Repeatable.
    #[arg(long = "endpoint", value_name = "NAME=IP:PORT[,name=SERVER_NAME]")]
    pub endpoints: Vec<String>,
    /// The CA bundle internal certificates chain to (PEM); needed with
    /// --endpoint.
    #[arg(long)]
    pub internal_ca: Option<PathBuf>,
    /// A client identity to present to every endpoint:
    /// `LABEL=CERT,KEY[,accepted-by=ENDPOINT+ENDPOINT]`; every internal
    /// endpoint it does not list must refuse it. The key must be 0600.
    #[arg(long = "identity", value_name = "LABEL=CERT,KEY[,accepted-by=...]")]
    pub identities: Vec<String>,
    /// An endpoint that must not answer from where the probe runs:
    /// `NAME=IP:PORT`. Repeatable.
    #[arg(long = "closed", value_name = "NAME=IP:PORT")]
    pub closed: Vec<String>,
    /// A file holding a hub API token ($HUBTRUST_HUB_TOKEN otherwise);
    /// tokens are never taken on the command line.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A file holding a user's token, for the checks inside their running
    /// lab ($HUBTRUST_USER_TOKEN otherwise).
    #[arg(long)]
    pub user_token_file: Option<PathBuf>,
    /// The --endpoint that is CHP's REST API: with an identity it accepts,
    /// it must refuse a call without its token and accept one with it.
    #[arg(long, value_name = "NAME")]
    pub proxy_api: Option<String>,
    /// An internal endpoint as one of its real clients reaches it: the
    /// client's `--identity`, the bundle it verifies with and the name it
    /// asks for (`ENDPOINT=IDENTITY,bundle=FILE,name=SERVER_NAME`). Each
    /// must be accepted over TLS 1.2 or newer. Repeatable.
    #[arg(
        long = "real-client",
        value_name = "ENDPOINT=IDENTITY,bundle=FILE,name=NAME"
    )]
    pub real_clients: Vec<String>,
    /// A file holding the proxy API's auth token, for --proxy-api
    /// ($HUBTRUST_PROXY_TOKEN otherwise).
    #[arg(long)]
    pub proxy_token_file: Option<PathBuf>,
    /// The TLS policy endpoints are judged by.
    #[arg(long, value_enum, default_value_t = PolicyChoice::Intermediate)]
    pub policy: PolicyChoice,
    /// A TLS policy with per-endpoint exceptions: a TOML file with the keys
    /// of a stack file's `[tls_policy]` (`name`, `exceptions`).
    #[arg(long, value_name = "FILE", conflicts_with = "policy")]
    pub policy_file: Option<PathBuf>,
    /// Known upstream defects fail too.
    #[arg(long)]
    pub strict: bool,
    /// The version of a component the public side does not report, for
    /// the known-defects list: `NAME=VERSION` (e.g.
    /// `zero-to-jupyterhub=4.4.0`). Repeatable.
    #[arg(long = "component", value_name = "NAME=VERSION")]
    pub components: Vec<String>,
    /// Where report.md, report.json and report.xml go.
    #[arg(long, default_value = "hubtrust-report")]
    pub report: PathBuf,
    /// Probe from the network namespace of process PID on this machine
    /// (a pod on a kind node, a container), as that process's peers see
    /// it; needs root.
    #[arg(long, value_name = "PID")]
    pub from_netns_of: Option<u32>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum PolicyChoice {
    Intermediate,
    Modern,
}

/// Exit 0 every check passed, 1 one failed, 2 bad input or a target that
/// does not answer at all.
pub fn probe_command(args: &ProbeArgs) -> ExitCode {
    if let Some(pid) = args.from_netns_of {
        if let Err(e) = enter_network_namespace_of(pid) {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    }
    let target = match target(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let findings = match runtime.block_on(probe_deployment::probe_deployment(&target)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for check in &findings.checks {
        let mark = match check.status {
            Status::Passed => "✔",
            Status::Failed => "✘",
            Status::Skipped => "-",
        };
        println!("{mark} {} ({:.1}s)", check.name, check.seconds);
        if let Some(why) = &check.failure {
            for line in why.lines() {
                println!("    {line}");
            }
        }
        let mut known: std::collections::BTreeMap<&str, usize> = Default::default();
        for line in &check.known {
            *known
                .entry(line.split(':').next().unwrap_or_default())
                .or_default() += 1;
        }
        for (id, count) in known {
            println!("    known defect {id}: {count} finding(s), not failing (report.md lists them; --strict fails them)");
        }
    }
    if let Err(e) = findings.report.write_all(&args.report) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let report = &findings.report;
    let skipped = report
        .scenarios
        .iter()
        .filter(|s| s.status == Status::Skipped)
        .count();
    println!("reports written to {}", args.report.display());
    println!(
        "{} passed, {} failed, {skipped} skipped",
        report.passed(),
        report.failed()
    );
    if report.failed() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Moves this process into `pid`'s network namespace. It runs before the
/// async runtime starts any thread, so every thread the probe uses is
/// made inside it; files are still read from this machine.
fn enter_network_namespace_of(pid: u32) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/ns/net");
    let namespace = std::fs::File::open(&path).map_err(|e| {
        anyhow::anyhow!("--from-netns-of {pid}: cannot open {path}: {e} (fix: the pid of a running process, as root)")
    })?;
    nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        anyhow::anyhow!(
            "--from-netns-of {pid}: cannot enter its network namespace: {e} (fix: run as root)"
        )
    })
}

fn token(file: Option<&PathBuf>, variable: &str) -> anyhow::Result<Option<Secret>> {
    let text =
        match file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the token file {}: {e}", path.display())
            })?),
            None => std::env::var(variable).ok(),
        };
    Ok(text
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .map(Secret::new))
}

fn parse_all<T>(values: &[String], parse: fn(&str) -> Result<T, String>) -> anyhow::Result<Vec<T>> {
    values
        .iter()
        .map(|v| parse(v).map_err(anyhow::Error::msg))
        .collect()
}

fn policy(args: &ProbeArgs) -> anyhow::Result<TlsPolicySpec> {
    let Some(path) = &args.policy_file else {
        return Ok(TlsPolicySpec {
            name: match args.policy {
                PolicyChoice::Intermediate => PolicyName::Intermediate,
                PolicyChoice::Modern => PolicyName::Modern,
            },
            exceptions: Vec::new(),
        });
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--policy-file {}: {e}", path.display()))?;
    TlsPolicySpec::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("--policy-file {}: {e}", path.display()))
}

fn target(args: &ProbeArgs) -> anyhow::Result<ProbeTarget> {
    let (public_name, port) =
        probe_deployment::parse_public_url(&args.url).map_err(anyhow::Error::msg)?;
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))
            .and_then(|pem| {
                anyhow::ensure!(
                    pem.contains("-----BEGIN CERTIFICATE-----"),
                    "{flag} {}: holds no PEM certificate",
                    path.display()
                );
                Ok(pem)
            })
    };
    let public_roots = read("--ca", &args.ca)?;
    let public_addr = match args.connect {
        Some(addr) => addr,
        None => {
            use std::net::ToSocketAddrs;
            (public_name.as_str(), port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--url {}: `{public_name}` does not resolve (fix: --connect IP:PORT)",
                        args.url
                    )
                })?
        }
    };
    let target = ProbeTarget {
        public_name,
        public_port: port,
        public_addr,
        public_roots,
        internal: parse_all(&args.endpoints, probe_deployment::parse_internal)?,
        internal_roots: args
            .internal_ca
            .as_ref()
            .map(|p| read("--internal-ca", p))
            .transpose()?,
        closed: parse_all(&args.closed, probe_deployment::parse_closed)?,
        identities: parse_all(&args.identities, probe_deployment::parse_identity)?,
        hub_token: token(args.token_file.as_ref(), "HUBTRUST_HUB_TOKEN")?,
        user_token: token(args.user_token_file.as_ref(), "HUBTRUST_USER_TOKEN")?,
        proxy_api: match &args.proxy_api {
            None => None,
            Some(name) => Some((
                name.clone(),
                token(args.proxy_token_file.as_ref(), "HUBTRUST_PROXY_TOKEN")?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "--proxy-api {name} needs the proxy's auth token (fix: --proxy-token-file FILE, or $HUBTRUST_PROXY_TOKEN)"
                    )
                })?,
            )),
        },
        real_clients: parse_all(&args.real_clients, probe_deployment::parse_real_client)?,
        policy: policy(args)?,
        strict: args.strict,
        components: parse_all(&args.components, probe_deployment::parse_component)?
            .into_iter()
            .collect(),
    };
    probe_deployment::check_target(&target).map_err(anyhow::Error::msg)?;
    Ok(target)
}
