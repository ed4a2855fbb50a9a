//! A host, its links and a stack's network: what every backend makes.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use tokio::net::TcpStream;
use tokio::process::Command;

use super::{BackendRun, HostRuntime};
use crate::error::{HarnessError, Result};
use crate::process::{LaunchSpec, ManagedProcess};
use crate::spec::ContainerRole;

/// One host: Linux namespaces this machine can enter, and the backend
/// that runs things there.
pub struct Host {
    pub name: String,
    netns: File,
    netns_path: String,
    /// Set when the host has a mount namespace of its own.
    mntns_path: Option<String>,
    /// The process whose namespaces these are; `None` for the operator.
    pid: Option<u32>,
    runtime: Box<dyn HostRuntime>,
}

/// How a finished command ended.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn succeeded(&self) -> bool {
        self.code == 0
    }

    /// Stdout then stderr.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// An init step as data: a program, its arguments, the files it reads and
/// the directories it writes. A backend places the inputs where its step
/// runs ([`InitArg::Input`] becomes their path there).
#[derive(Debug, Clone)]
pub struct InitStep {
    pub name: String,
    pub args: Vec<InitArg>,
    /// `(name, file here)`; a file that does not exist stays missing.
    pub inputs: Vec<(String, PathBuf)>,
    /// Directories the step writes, seen by the host at the same paths
    /// afterwards.
    pub outputs: Vec<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum InitArg {
    Literal(String),
    /// The path an input (by name) has where the step runs.
    Input(String),
}

impl InitStep {
    /// The step's argv, each input at `place(name, source)`.
    pub fn argv(&self, place: impl Fn(&str, &Path) -> PathBuf) -> Vec<String> {
        self.args
            .iter()
            .map(|arg| match arg {
                InitArg::Literal(text) => text.clone(),
                InitArg::Input(name) => {
                    let source = self
                        .inputs
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or_else(PathBuf::new, |(_, s)| s.clone());
                    place(name, &source).display().to_string()
                }
            })
            .collect()
    }
}

/// A host's own view of the filesystem, where the backend gives hosts the
/// operator's files. Every host gets its own system CA store, as separate
/// machines have; HPC login and compute nodes also get fresh, empty `/run`,
/// `/home` and `/opt`, with directories of the operator's bound in
/// read-only.
#[derive(Debug, Clone, Default)]
pub struct HostFilesystem {
    /// Fresh `/run`, `/home` and `/opt` (a node of its own).
    pub fresh_dirs: bool,
    /// `(source on the operator's side, target inside the host)`; targets
    /// must lie under `/opt`.
    pub read_only_binds: Vec<(PathBuf, PathBuf)>,
    /// Bound read-only over the distribution's CA bundle.
    pub system_store: Option<PathBuf>,
}

/// How one host of a stack is made.
#[derive(Debug, Clone)]
pub struct HostPlan {
    pub name: String,
    /// Its own view of the filesystem; `None` shares the operator's.
    pub filesystem: Option<HostFilesystem>,
    /// Whether the operator has a direct link to it. Hosts without one are
    /// reached only through other hosts, as an HPC compute node is.
    pub operator_link: bool,
}

impl HostPlan {
    pub fn plain(name: &str) -> Self {
        Self {
            name: name.into(),
            filesystem: None,
            operator_link: true,
        }
    }
}

/// Runs `work` on a short-lived thread inside `netns`, so no pooled thread
/// is ever left in the wrong namespace; what it makes (a socket) stays in
/// the namespace it was made in.
async fn in_netns<T: Send + 'static>(
    netns: &File,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let netns = netns.try_clone()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)
            .and_then(|_| work());
        let _ = tx.send(result);
    });
    rx.await
        .map_err(|_| std::io::Error::other("the thread inside the namespace died"))?
}

impl Host {
    /// The namespace hubtrust itself runs in, where the operator's tools
    /// (reqwest, the browser a developer points at `hubtrust up`) live.
    pub async fn operator() -> Result<Self> {
        let host = Self::here()?;
        run_ip("operator", &[], &["link", "set", "lo", "up"]).await?;
        Ok(host)
    }

    /// This process's own namespaces, as they are.
    pub fn here() -> Result<Self> {
        let netns_path = "/proc/self/ns/net".to_string();
        let netns =
            File::open(&netns_path).map_err(|e| HarnessError::io("open the operator netns", e))?;
        Ok(Self {
            name: "operator".into(),
            netns,
            netns_path,
            mntns_path: None,
            pid: None,
            runtime: Box::new(ThisMachine),
        })
    }

    /// A host in the namespaces of process `pid` (its network namespace,
    /// and its mount namespace when `own_mounts`), run by `runtime`.
    pub fn in_namespaces_of(
        name: &str,
        pid: u32,
        own_mounts: bool,
        runtime: Box<dyn HostRuntime>,
    ) -> std::io::Result<Self> {
        let netns_path = format!("/proc/{pid}/ns/net");
        let netns = File::open(&netns_path)?;
        Ok(Self {
            name: name.into(),
            netns,
            netns_path,
            mntns_path: own_mounts.then(|| format!("/proc/{pid}/ns/mnt")),
            pid: Some(pid),
            runtime,
        })
    }

    pub fn backend(&self) -> &'static str {
        self.runtime.backend()
    }

    /// Starts a component on this host.
    pub async fn start(&self, spec: &LaunchSpec) -> Result<ManagedProcess> {
        self.runtime.start(self, spec).await
    }

    /// Runs `argv` to its end where `role` runs (the host itself for
    /// `None`), in `cwd`.
    pub async fn run_to_end(
        &self,
        role: Option<ContainerRole>,
        argv: &[String],
        cwd: &Path,
    ) -> Result<RunOutput> {
        self.runtime.run_to_end(self, role, argv, cwd).await
    }

    /// Runs an init step to its end (see [`InitStep`]).
    pub async fn run_init_step(&self, step: &InitStep) -> Result<RunOutput> {
        self.runtime.run_init_step(self, step).await
    }

    /// Makes `source` (a file here) this host's `target`.
    pub async fn install_file(&self, source: &Path, target: &Path) -> Result<()> {
        self.runtime.install_file(self, source, target).await
    }

    /// Makes `dir` here this host's `dir`, modes kept.
    pub async fn copy_in(&self, dir: &Path) -> Result<()> {
        self.runtime.copy_in(self, dir).await
    }

    /// Makes this host's `dir` this machine's `dir`.
    pub async fn copy_out(&self, dir: &Path) -> Result<()> {
        self.runtime.copy_out(self, dir).await
    }

    /// Whether programs started here come from this machine's own files.
    pub fn runs_this_machines_files(&self) -> bool {
        self.runtime.runs_this_machines_files()
    }

    /// Runs this machine's `ip ARGS` in this host's network namespace
    /// only (a container's own filesystem need not have `ip`).
    pub async fn ip(&self, args: &[&str]) -> Result<()> {
        let wrapper = match self.pid {
            None => Vec::new(),
            Some(_) => vec![
                "nsenter".to_string(),
                format!("--net={}", self.netns_path),
                "--".into(),
            ],
        };
        run_ip(&self.name, &wrapper, args).await
    }

    /// The argv prefix that runs a program of this machine inside this
    /// host's namespaces.
    pub fn wrapper(&self) -> Vec<String> {
        self.wrapper_in(None)
    }

    /// [`Host::wrapper`], starting in `cwd`: entering a mount namespace
    /// resets the working directory, so nsenter sets it again afterwards.
    pub fn wrapper_in(&self, cwd: Option<&Path>) -> Vec<String> {
        if self.pid.is_none() {
            return Vec::new();
        }
        let mut argv = vec!["nsenter".to_string(), format!("--net={}", self.netns_path)];
        if let Some(mntns) = &self.mntns_path {
            argv.push(format!("--mount={mntns}"));
            if let Some(cwd) = cwd {
                argv.push(format!("--wd={}", cwd.display()));
            }
        }
        argv.push("--".into());
        argv
    }

    /// A handle on this host's network namespace, for threads that enter it.
    pub fn netns(&self) -> std::io::Result<File> {
        self.netns.try_clone()
    }

    /// The path programs use to enter this host's network namespace.
    pub fn netns_path(&self) -> &str {
        &self.netns_path
    }

    /// This host's `/proc/…/net/dev`: interface counters of its namespace,
    /// readable without spawning anything.
    pub fn net_dev_path(&self) -> String {
        match self.pid {
            Some(pid) => format!("/proc/{pid}/net/dev"),
            None => "/proc/self/net/dev".into(),
        }
    }

    /// The process whose namespaces this host is (`None`: the operator).
    pub fn anchor_pid(&self) -> Option<u32> {
        self.pid
    }

    /// This host's root directory as this machine sees it.
    pub fn root(&self) -> PathBuf {
        match self.pid {
            Some(pid) => PathBuf::from(format!("/proc/{pid}/root")),
            None => PathBuf::from("/"),
        }
    }

    /// Connects to `addr` from inside this host.
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        let stream = in_netns(&self.netns, move || {
            std::net::TcpStream::connect_timeout(&addr, timeout)
        })
        .await?;
        stream.set_nonblocking(true)?;
        TcpStream::from_std(stream)
    }

    /// The name of this host's interface that holds `addr`: docker names a
    /// container's interfaces itself, in the order networks were attached.
    pub async fn interface_with(&self, addr: Ipv4Addr) -> std::io::Result<Option<String>> {
        in_netns(&self.netns, move || {
            let addresses = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
            Ok(addresses
                .filter(|a| {
                    a.address
                        .as_ref()
                        .and_then(|sa| sa.as_sockaddr_in())
                        .is_some_and(|sin| sin.ip() == addr)
                })
                .map(|a| a.interface_name)
                .next())
        })
        .await
    }

    /// Binds a listener inside this host.
    pub async fn listen(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        let listener = in_netns(&self.netns, move || std::net::TcpListener::bind(addr)).await?;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }

    /// A listener inside this host on `ip` and a port the kernel picks, and
    /// that port.
    pub async fn listen_on_free_port(
        &self,
        ip: Ipv4Addr,
    ) -> Result<(tokio::net::TcpListener, u16)> {
        let failed = |e| HarnessError::io(format!("listen on {ip} on host `{}`", self.name), e);
        let listener = self
            .listen(SocketAddr::from((ip, 0)))
            .await
            .map_err(failed)?;
        let port = listener.local_addr().map_err(failed)?.port();
        Ok((listener, port))
    }

    /// Whether something already listens on `port` inside this host.
    pub async fn port_in_use(&self, port: u16) -> bool {
        self.connect(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(1),
        )
        .await
        .is_ok()
    }
}

/// Running programs of this machine in a host's namespaces: the operator's
/// host on every backend, and every host of the local backend.
pub struct ThisMachine;

#[async_trait::async_trait]
impl HostRuntime for ThisMachine {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn start(&self, host: &Host, spec: &LaunchSpec) -> Result<ManagedProcess> {
        ManagedProcess::start(spec, &host.wrapper_in(Some(&spec.cwd)))
    }

    async fn run_to_end(
        &self,
        host: &Host,
        _role: Option<ContainerRole>,
        argv: &[String],
        cwd: &Path,
    ) -> Result<RunOutput> {
        let argv: Vec<String> = host
            .wrapper_in(Some(cwd))
            .into_iter()
            .chain(argv.iter().cloned())
            .collect();
        run_here(&argv, cwd, None).await
    }

    async fn run_init_step(&self, host: &Host, step: &InitStep) -> Result<RunOutput> {
        // This machine's files are the host's: inputs are read in place,
        // and the outputs' directories exist for the step as an emptyDir
        // would.
        for dir in &step.outputs {
            std::fs::create_dir_all(dir)
                .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        }
        let cwd = std::env::temp_dir();
        let argv: Vec<String> = host
            .wrapper()
            .into_iter()
            .chain(step.argv(|_, source| source.to_path_buf()))
            .collect();
        run_here(&argv, &cwd, Some((&step.name, step.timeout))).await
    }

    async fn install_file(&self, host: &Host, source: &Path, target: &Path) -> Result<()> {
        // The host sees this machine's files, its own only where they were
        // bound when it was made: the target must already be the source.
        let seen = host.root().join(target.strip_prefix("/").unwrap_or(target));
        let same = match (std::fs::read(source), std::fs::read(&seen)) {
            (Ok(wanted), Ok(there)) => wanted == there,
            _ => false,
        };
        if same {
            return Ok(());
        }
        Err(HarnessError::NotSupported {
            backend: "local",
            what: format!(
                "install {} as {} on host `{}` after it was made",
                source.display(),
                target.display(),
                host.name
            ),
            fix: "give the file in the host's plan (HostFilesystem), so it is bound when the host is made".into(),
        })
    }

    async fn copy_in(&self, _host: &Host, _dir: &Path) -> Result<()> {
        Ok(())
    }

    async fn copy_out(&self, _host: &Host, _dir: &Path) -> Result<()> {
        Ok(())
    }

    fn runs_this_machines_files(&self) -> bool {
        true
    }
}

/// Runs `argv` here to its end; a step with a timeout is killed at it.
async fn run_here(
    argv: &[String],
    cwd: &Path,
    timeout: Option<(&str, Duration)>,
) -> Result<RunOutput> {
    let program = argv.first().ok_or_else(|| HarnessError::Spawn {
        component: "a command".into(),
        message: "it has no program".into(),
    })?;
    let output = Command::new(program)
        .args(&argv[1..])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match timeout {
        None => output.await,
        Some((name, limit)) => {
            tokio::time::timeout(limit, output)
                .await
                .map_err(|_| HarnessError::Spawn {
                    component: name.into(),
                    message: format!(
                        "`{}` did not finish within {}s",
                        argv.join(" "),
                        limit.as_secs()
                    ),
                })?
        }
    }
    .map_err(|e| HarnessError::io(format!("run {program}"), e))?;
    Ok(RunOutput {
        code: output.status.code().map_or(-1, i64::from),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// This machine's `ip ARGS`, through `wrapper` (nsenter into a host).
pub async fn run_ip(host: &str, wrapper: &[String], args: &[&str]) -> Result<()> {
    let argv: Vec<&str> = wrapper
        .iter()
        .map(String::as_str)
        .chain(["ip"])
        .chain(args.iter().copied())
        .collect();
    let output = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| HarnessError::Network {
            host: host.into(),
            message: format!("cannot run `ip`: {e} (fix: apt-get install -y iproute2)"),
        })?;
    if !output.status.success() {
        return Err(HarnessError::Network {
            host: host.into(),
            message: format!(
                "`ip {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// A link between two hosts, as capture sees it: named after its ends
/// (`a--b`), on the interfaces holding their addresses.
#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    /// Interface names of the `a` and `b` ends.
    pub interfaces: (String, String),
    pub a: (String, Ipv4Addr),
    pub b: (String, Ipv4Addr),
}

/// The hosts and links of one stack, and the backend run that made them.
pub struct StackNetwork {
    pub hosts: BTreeMap<String, Host>,
    pub links: Vec<Link>,
    /// Dropped after the hosts: it removes what the backend made.
    pub run: Box<dyn BackendRun>,
}

impl StackNetwork {
    /// Adds a host to the running network: a login node joining an HPC
    /// cluster is one call, nothing restarts. The host is returned, not
    /// kept, so that its owner decides when it goes.
    pub async fn add_host(
        &self,
        plan: &HostPlan,
        like: &str,
        peers: &[String],
    ) -> Result<(Host, Vec<Link>)> {
        if self.hosts.contains_key(&plan.name) {
            return Err(HarnessError::Network {
                host: plan.name.clone(),
                message: "a host of that name already exists".into(),
            });
        }
        self.run.add_host(self, plan, like, peers).await
    }

    /// This machine's own addresses on `host`'s links to other hosts.
    pub async fn machine_addresses_near(&self, host: &str) -> Result<Vec<Ipv4Addr>> {
        self.run.machine_addresses_near(self, host).await
    }

    /// The link directly joining `a` and `b`, if there is one.
    pub fn link_between(&self, a: &str, b: &str) -> Option<&Link> {
        self.links
            .iter()
            .find(|l| (l.a.0 == a && l.b.0 == b) || (l.a.0 == b && l.b.0 == a))
    }

    /// The netns path programs use to enter `host` (for kernel launchers).
    pub fn netns_path(&self, host: &str) -> Option<String> {
        let host = self.hosts.get(host)?;
        host.anchor_pid().map(|_| host.netns_path().to_string())
    }

    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts.get(name).ok_or_else(|| HarnessError::Network {
            host: name.into(),
            message: "no such host in this topology".into(),
        })
    }

    /// `host`'s address on its direct link to `peer`: where a process on
    /// `peer` reaches it.
    pub fn address_towards(&self, host: &str, peer: &str) -> Option<Ipv4Addr> {
        let link = self.link_between(host, peer)?;
        Some(if link.a.0 == host { link.a.1 } else { link.b.1 })
    }

    /// Every address `host` has on its links.
    pub fn addresses_of(&self, host: &str) -> Vec<Ipv4Addr> {
        self.links
            .iter()
            .flat_map(|l| [&l.a, &l.b])
            .filter(|(h, _)| h == host)
            .map(|(_, addr)| *addr)
            .collect()
    }

    /// [`StackNetwork::address_of`], or an error naming the host.
    pub fn operator_reaches(&self, host: &str) -> Result<Ipv4Addr> {
        self.address_of(host).ok_or_else(|| HarnessError::Network {
            host: host.into(),
            message: "no link to the operator".into(),
        })
    }

    /// The address the operator reaches `host` at.
    pub fn address_of(&self, host: &str) -> Option<Ipv4Addr> {
        self.links
            .iter()
            .find(|l| l.a.0 == "operator" && l.b.0 == host)
            .map(|l| l.b.1)
    }
}

impl super::HostNetwork for StackNetwork {
    async fn connect_from(&self, host: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let host = self.hosts.get(host).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("no host `{host}`"))
        })?;
        host.connect(addr, Duration::from_secs(5)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_init_step_places_each_input_where_its_backend_says() {
        let step = InitStep {
            name: "merge".into(),
            args: vec![
                InitArg::Literal("sh".into()),
                InitArg::Input("script".into()),
                InitArg::Input("absent".into()),
            ],
            inputs: vec![("script".into(), PathBuf::from("/here/merge.sh"))],
            outputs: Vec::new(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(
            step.argv(|_, source| source.to_path_buf()),
            ["sh", "/here/merge.sh", ""]
        );
        assert_eq!(
            step.argv(|name, _| Path::new("/init").join(name)),
            ["sh", "/init/script", "/init/absent"]
        );
    }
}
