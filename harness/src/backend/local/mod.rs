//! The local backend: hosts are network namespaces inside the private user,
//! network, mount and PID namespace hubtrust re-executes itself in.
//!
//! The private PID namespace is what makes cleanup unconditional: hubtrust's
//! inner process is its init, so when it dies, for whatever reason, the
//! kernel kills everything else in it, and the host namespaces go with it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{
    run_ip, Backend, BackendRun, Host, HostFilesystem, HostPlan, HostRuntime, InitStep,
    LabPlacement, Link, NetworkRequest, RunOutput, StackNetwork, ThisMachine,
};
use crate::error::{HarnessError, Result};
use crate::process::{LaunchSpec, ManagedProcess};
use crate::spec::ContainerRole;

/// Set in the re-executed process so it knows it is already inside.
pub const INSIDE_ENV: &str = "HUBTRUST_INSIDE_NAMESPACE";

/// True when this process runs inside hubtrust's private namespace.
pub fn inside_private_namespace() -> bool {
    std::env::var_os(INSIDE_ENV).is_some()
}

/// The command that re-runs `exe args` inside a fresh private user, network,
/// mount and PID namespace.
///
/// `setpriv --pdeathsig KILL` ties `unshare` to its parent, and
/// `unshare --kill-child` ties the namespace's init to `unshare`: SIGKILL of
/// the outer hubtrust therefore takes the whole namespace down.
///
/// Run by real root, no user namespace is made: OpenSSH's `sshd` calls
/// `setgroups`, which a `--map-root-user` namespace refuses, and the HPC
/// topology needs real `sshd`. The network, mount and PID namespaces still
/// confine everything hubtrust starts. Run by anyone else, the user
/// namespace maps them to root inside.
pub fn private_namespace_command(exe: &Path, args: &[String]) -> std::process::Command {
    let mut command = std::process::Command::new("setpriv");
    command.args(["--pdeathsig", "KILL", "--", "unshare"]);
    if !nix::unistd::geteuid().is_root() {
        command.args(["--user", "--map-root-user"]);
    }
    command
        .args(["--net", "--mount", "--pid"])
        .args(["--fork", "--kill-child", "--mount-proc", "--"])
        .arg(exe)
        .args(args)
        .env(INSIDE_ENV, "1");
    command
}

/// The shell that prepares a host's mounts, run by its anchor inside its
/// new mount namespace before it reports ready.
fn mount_script(filesystem: &HostFilesystem) -> String {
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    let mut script = String::from("set -e; mount --make-rprivate /; ");
    if filesystem.fresh_dirs {
        script.push_str(
            "for d in /run /home /opt; do mount -t tmpfs -o mode=0755 hubtrust \"$d\"; done; \
             mkdir -m 0755 /run/sshd; ",
        );
    }
    for (source, target) in &filesystem.read_only_binds {
        script.push_str(&format!(
            "mkdir -p {t}; mount --bind {s} {t}; mount -o remount,bind,ro {t}; ",
            s = quote(source),
            t = quote(target)
        ));
    }
    if let Some(store) = &filesystem.system_store {
        script.push_str(&format!(
            "mount --bind {s} {t}; mount -o remount,bind,ro {t}; ",
            s = quote(store),
            t = crate::pki::SYSTEM_STORE
        ));
    }
    script.push_str("echo ready; exec cat");
    script
}

/// A host of the local backend: the anchor process whose namespaces it
/// is. Dropping it closes the anchor's stdin, it exits, and the
/// namespaces are freed.
struct Anchored {
    _anchor: Child,
}

#[async_trait::async_trait]
impl HostRuntime for Anchored {
    fn backend(&self) -> &'static str {
        "local"
    }
    async fn start(&self, host: &Host, spec: &LaunchSpec) -> Result<ManagedProcess> {
        ThisMachine.start(host, spec).await
    }
    async fn run_to_end(
        &self,
        host: &Host,
        role: Option<ContainerRole>,
        argv: &[String],
        cwd: &Path,
    ) -> Result<RunOutput> {
        ThisMachine.run_to_end(host, role, argv, cwd).await
    }
    async fn run_init_step(&self, host: &Host, step: &InitStep) -> Result<RunOutput> {
        ThisMachine.run_init_step(host, step).await
    }
    async fn install_file(&self, host: &Host, source: &Path, target: &Path) -> Result<()> {
        ThisMachine.install_file(host, source, target).await
    }
    async fn copy_in(&self, host: &Host, dir: &Path) -> Result<()> {
        ThisMachine.copy_in(host, dir).await
    }
    async fn copy_out(&self, host: &Host, dir: &Path) -> Result<()> {
        ThisMachine.copy_out(host, dir).await
    }
    fn runs_this_machines_files(&self) -> bool {
        true
    }
}

/// A host with its own network namespace and, given a filesystem, its
/// own mount namespace too.
pub async fn create_host(name: &str, filesystem: Option<&HostFilesystem>) -> Result<Host> {
    let mut command = Command::new("unshare");
    match filesystem {
        None => command.args(["--net", "--", "cat"]),
        Some(fs) => command.args(["--net", "--mount", "--", "sh", "-c", &mount_script(fs)]),
    };
    let mut anchor = command
        .stdin(Stdio::piped())
        .stdout(if filesystem.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HarnessError::Network {
            host: name.into(),
            message: format!("cannot run `unshare`: {e} (fix: apt-get install -y util-linux)"),
        })?;
    let pid = anchor.id().ok_or_else(|| HarnessError::Network {
        host: name.into(),
        message: "the namespace anchor exited at once".into(),
    })?;
    if filesystem.is_some() {
        await_mounts(name, &mut anchor).await?;
    }
    let netns_path = format!("/proc/{pid}/ns/net");
    // `unshare` execs `cat` only after entering the namespace; wait until
    // the anchor's netns differs from ours before trusting the path.
    let own =
        std::fs::metadata("/proc/self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let theirs =
            std::fs::metadata(&netns_path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        if theirs.is_ok() && theirs.as_ref().ok() != own.as_ref().ok() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(HarnessError::Network {
                host: name.into(),
                message: "the namespace anchor never entered its own network namespace".into(),
            });
        }
        tokio::task::yield_now().await;
    }
    let runtime = Box::new(Anchored { _anchor: anchor });
    let host = Host::in_namespaces_of(name, pid, filesystem.is_some(), runtime)
        .map_err(|e| HarnessError::io(format!("open {netns_path}"), e))?;
    run_ip(name, &host.wrapper(), &["link", "set", "lo", "up"]).await?;
    Ok(host)
}

/// Waits for a filesystem anchor's "ready" line; its mounts are in place
/// once it is printed. A failed mount ends the anchor, and its stderr says why.
async fn await_mounts(host: &str, anchor: &mut Child) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let stdout = anchor.stdout.take().ok_or_else(|| HarnessError::Network {
        host: host.into(),
        message: "the namespace anchor has no stdout".into(),
    })?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await;
    if matches!(read, Ok(Ok(_))) && line.trim() == "ready" {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut err) = anchor.stderr.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), err.read_to_string(&mut stderr)).await;
    }
    Err(HarnessError::Network {
        host: host.into(),
        message: format!(
            "could not prepare the host's own /run, /home and /opt: {}",
            stderr.trim()
        ),
    })
}

/// A point-to-point veth link between two hosts, on a /30 that exists only
/// inside the private namespace: the pair made, each end moved into its
/// host and brought up.
pub async fn create_link(index: u8, a: &Host, b: &Host) -> Result<Link> {
    let a_addr = Ipv4Addr::new(10, 77, index, 1);
    let b_addr = Ipv4Addr::new(10, 77, index, 2);
    let a_if = format!("ht{index}a");
    let b_if = format!("ht{index}b");
    let name = format!("{}--{}", a.name, b.name);
    run_ip(
        &name,
        &[],
        &["link", "add", &a_if, "type", "veth", "peer", "name", &b_if],
    )
    .await?;
    for (host, ifname, addr) in [(a, &a_if, a_addr), (b, &b_if, b_addr)] {
        if host.name != "operator" {
            let pid = host.anchor_pid().ok_or_else(|| HarnessError::Network {
                host: host.name.clone(),
                message: "the namespace anchor is gone".into(),
            })?;
            run_ip(
                &host.name,
                &[],
                &["link", "set", ifname, "netns", &pid.to_string()],
            )
            .await?;
        }
        let cidr = format!("{addr}/30");
        run_ip(
            &host.name,
            &host.wrapper(),
            &["addr", "add", &cidr, "dev", ifname],
        )
        .await?;
        run_ip(&host.name, &host.wrapper(), &["link", "set", ifname, "up"]).await?;
    }
    Ok(Link {
        name,
        interfaces: (a_if, b_if),
        a: (a.name.clone(), a_addr),
        b: (b.name.clone(), b_addr),
    })
}

/// Stacks share the private namespace, so link subnets and interface names
/// come from one counter.
pub fn next_link_index() -> Result<u8> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let index = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    u8::try_from(index).map_err(|_| HarnessError::Network {
        host: "operator".into(),
        message: "more than 255 links in one run".into(),
    })
}

/// The local backend: a network namespace per host, veth pairs for links.
pub struct LocalBackend;

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn build(self: Box<Self>, request: &NetworkRequest) -> Result<StackNetwork> {
        let mut network = StackNetwork {
            hosts: BTreeMap::new(),
            links: Vec::new(),
            run: Box::new(LocalRun),
        };
        network
            .hosts
            .insert("operator".to_string(), Host::operator().await?);
        for plan in &request.plans {
            let host = create_host(&plan.name, plan.filesystem.as_ref()).await?;
            if plan.operator_link {
                let link =
                    create_link(next_link_index()?, &network.hosts["operator"], &host).await?;
                network.links.push(link);
            }
            network.hosts.insert(plan.name.clone(), host);
        }
        for [a, b] in &request.links {
            let (Some(host_a), Some(host_b)) = (network.hosts.get(a), network.hosts.get(b)) else {
                return Err(HarnessError::Network {
                    host: format!("{a}--{b}"),
                    message: "a link names a host that does not exist".into(),
                });
            };
            let link = create_link(next_link_index()?, host_a, host_b).await?;
            network.links.push(link);
        }
        Ok(network)
    }
}

/// A local run: its hosts are this process's children, so nothing of it
/// outlives the process.
struct LocalRun;

#[async_trait::async_trait]
impl BackendRun for LocalRun {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn add_host(
        &self,
        network: &StackNetwork,
        plan: &HostPlan,
        _like: &str,
        peers: &[String],
    ) -> Result<(Host, Vec<Link>)> {
        let host = create_host(&plan.name, plan.filesystem.as_ref()).await?;
        let mut links = Vec::new();
        for peer in peers {
            links.push(create_link(next_link_index()?, network.host(peer)?, &host).await?);
        }
        Ok((host, links))
    }

    async fn machine_addresses_near(
        &self,
        _network: &StackNetwork,
        _host: &str,
    ) -> Result<Vec<Ipv4Addr>> {
        // Links between hosts are veth pairs with nothing of this machine
        // on them.
        Ok(Vec::new())
    }

    fn components_apart(&self) -> bool {
        false
    }

    fn hub_config_for_labs(
        &self,
        _network: &StackNetwork,
        _labs: &LabPlacement,
    ) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    fn path_in_labs(&self, path: &Path) -> std::path::PathBuf {
        // Labs run in their host's namespaces, seeing this machine's files.
        path.to_path_buf()
    }

    fn images_used(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn mark_started(&self) {}

    fn keep(&self) -> Option<String> {
        None
    }
}
