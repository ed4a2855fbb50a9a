//! The local backend: hosts are network namespaces inside the private user,
//! network, mount and PID namespace hubtrust re-executes itself in.
//!
//! The private PID namespace is what makes cleanup unconditional: hubtrust's
//! inner process is its init, so when it dies, for whatever reason, the
//! kernel kills everything else in it, and the host namespaces go with it.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

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

async fn run_ip(host: &str, wrapper: &[String], args: &[&str]) -> Result<()> {
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

/// One host: a network namespace held open by an anchor process. Dropping
/// the host closes the anchor's stdin, it exits, and the namespace is freed.
pub struct Host {
    pub name: String,
    /// `None` for the operator's own namespace, which needs no anchor, and
    /// for a docker host, whose container holds its namespaces.
    anchor: Option<Child>,
    /// Set when the host is a container of the docker backend.
    container: Option<ContainerHost>,
    netns: File,
    netns_path: String,
    /// Set when the host has its own mount namespace ([`HostFilesystem`]).
    mntns_path: Option<String>,
}

/// A host's own view of the filesystem. Every host gets its own system CA
/// store, as separate machines have; HPC login and compute nodes also get
/// fresh, empty `/run`, `/home` and `/opt`, with directories of the
/// operator's bound in read-only. Everything else is shared with the
/// operator, so run directories stay reachable.
#[derive(Debug, Clone, Default)]
pub struct HostFilesystem {
    /// Fresh `/run`, `/home` and `/opt` (a node of its own).
    pub fresh_dirs: bool,
    /// `(source on the operator's side, target inside the host)`; targets
    /// must lie under `/opt`.
    pub read_only_binds: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    /// Bound read-only over the distribution's CA bundle.
    pub system_store: Option<std::path::PathBuf>,
}

impl HostFilesystem {
    /// The shell that prepares the mounts, run by the anchor inside its new
    /// mount namespace before it reports ready.
    fn setup_script(&self) -> String {
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
        let mut script = String::from("set -e; mount --make-rprivate /; ");
        if self.fresh_dirs {
            script.push_str(
                "for d in /run /home /opt; do mount -t tmpfs -o mode=0755 hubtrust \"$d\"; done; \
                 mkdir -m 0755 /run/sshd; ",
            );
        }
        for (source, target) in &self.read_only_binds {
            script.push_str(&format!(
                "mkdir -p {t}; mount --bind {s} {t}; mount -o remount,bind,ro {t}; ",
                s = quote(source),
                t = quote(target)
            ));
        }
        if let Some(store) = &self.system_store {
            script.push_str(&format!(
                "mount --bind {s} {t}; mount -o remount,bind,ro {t}; ",
                s = quote(store),
                t = crate::pki::SYSTEM_STORE
            ));
        }
        script.push_str("echo ready; exec cat");
        script
    }
}

/// A docker host: its container, and the pid of the container's init as
/// this machine sees it (the namespaces hubtrust enters).
#[derive(Clone)]
struct ContainerHost {
    engine: super::docker::DockerEngine,
    name: String,
    pid: u32,
    /// The image it was made from.
    image: String,
    volumes: Vec<super::docker::SharedVolume>,
    /// The components with a container of their own in this host's
    /// namespaces: the container's name and image.
    components: BTreeMap<ContainerRole, (String, String)>,
    /// The labs' image, when labs run on this host.
    lab_image: Option<String>,
}

impl ContainerHost {
    /// The container a launch runs in: its component's own, else the
    /// host's.
    fn container_for(&self, role: Option<ContainerRole>) -> &str {
        role.and_then(|r| self.components.get(&r))
            .map_or(&self.name, |(container, _)| container)
    }

    /// The image labs run from (their init containers too).
    fn lab_image(&self) -> &str {
        self.lab_image.as_deref().unwrap_or(&self.image)
    }
}

impl Host {
    /// The namespace hubtrust itself runs in, where the operator's tools
    /// (reqwest, the browser a developer points at `hubtrust up`) live.
    pub async fn operator() -> Result<Self> {
        let netns_path = "/proc/self/ns/net".to_string();
        let netns =
            File::open(&netns_path).map_err(|e| HarnessError::io("open the operator netns", e))?;
        let host = Self {
            name: "operator".into(),
            anchor: None,
            container: None,
            netns,
            netns_path,
            mntns_path: None,
        };
        run_ip("operator", &[], &["link", "set", "lo", "up"]).await?;
        Ok(host)
    }

    pub async fn create(name: &str) -> Result<Self> {
        Self::create_with(name, None).await
    }

    /// A host with its own network namespace and, given a filesystem, its
    /// own mount namespace too.
    pub async fn create_with(name: &str, filesystem: Option<&HostFilesystem>) -> Result<Self> {
        let mut command = Command::new("unshare");
        match filesystem {
            None => command.args(["--net", "--", "cat"]),
            Some(fs) => command.args(["--net", "--mount", "--", "sh", "-c", &fs.setup_script()]),
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
        let netns = File::open(&netns_path)
            .map_err(|e| HarnessError::io(format!("open {netns_path}"), e))?;
        let host = Self {
            name: name.into(),
            anchor: Some(anchor),
            container: None,
            netns,
            netns_path,
            mntns_path: filesystem.map(|_| format!("/proc/{pid}/ns/mnt")),
        };
        run_ip(name, &host.wrapper(), &["link", "set", "lo", "up"]).await?;
        Ok(host)
    }

    /// A running container of the docker backend as a host: its network
    /// and mount namespaces are entered through its init's pid.
    pub fn in_container(
        name: &str,
        engine: &super::docker::DockerEngine,
        container: &str,
        pid: u32,
        image: &str,
        volumes: Vec<super::docker::SharedVolume>,
    ) -> Result<Self> {
        let netns_path = format!("/proc/{pid}/ns/net");
        let netns = File::open(&netns_path).map_err(|e| HarnessError::Docker {
            what: format!("enter container {container}"),
            message: format!(
                "{e} (fix: the docker backend enters containers' namespaces, so it needs root and the daemon on this machine)"
            ),
        })?;
        Ok(Self {
            name: name.into(),
            anchor: None,
            container: Some(ContainerHost {
                engine: engine.clone(),
                name: container.into(),
                pid,
                image: image.into(),
                volumes,
                components: BTreeMap::new(),
                lab_image: None,
            }),
            netns,
            netns_path,
            mntns_path: Some(format!("/proc/{pid}/ns/mnt")),
        })
    }

    /// Records a component's own container in this host (docker only).
    pub fn add_component(&mut self, role: ContainerRole, container: String, image: String) {
        if let Some(c) = self.container.as_mut() {
            c.components.insert(role, (container, image));
        }
    }

    /// Records the labs' image for a host labs run on (docker only).
    pub fn set_lab_image(&mut self, image: String) {
        if let Some(c) = self.container.as_mut() {
            c.lab_image = Some(image);
        }
    }

    /// On docker: the engine, the host container's image and its volumes,
    /// to make another host like it.
    pub(super) fn docker_parts(
        &self,
    ) -> Option<(
        super::docker::DockerEngine,
        String,
        Vec<super::docker::SharedVolume>,
    )> {
        let c = self.container.as_ref()?;
        Some((c.engine.clone(), c.image.clone(), c.volumes.clone()))
    }

    /// Whether this host is a container of the docker backend.
    pub fn is_container(&self) -> bool {
        self.container.is_some()
    }

    /// On a docker host, runs `argv` to its end in an init container of
    /// this host's labs (their image, the host's volumes, no network), with `inputs`
    /// copied in first. `None` on the local backend, which has no such thing.
    pub async fn run_init_container(
        &self,
        name: &str,
        argv: &[String],
        inputs: &[(std::path::PathBuf, std::path::PathBuf)],
    ) -> Option<Result<(i64, String, String)>> {
        let c = self.container.as_ref()?;
        Some(
            c.engine
                .run_init_container(name, c.lab_image(), argv, inputs, &c.volumes)
                .await,
        )
    }

    /// On a docker host, runs `argv` to its end in `role`'s container (the
    /// host's own without one): its exit code and output. `None` on the
    /// local backend, whose callers run the tool here.
    pub async fn run_to_end(
        &self,
        role: Option<ContainerRole>,
        argv: &[&str],
    ) -> Option<Result<(i64, String)>> {
        let c = self.container.as_ref()?;
        Some(c.engine.run_to_end(c.container_for(role), argv).await)
    }

    /// On a docker host, writes `source` (a file here) into each of its
    /// containers at `target`. `None` on the local backend, whose hosts
    /// share this machine's files.
    pub async fn install_file(&self, source: &Path, target: &Path) -> Option<Result<()>> {
        let c = self.container.as_ref()?;
        let containers = std::iter::once(&c.name).chain(c.components.values().map(|(n, _)| n));
        for container in containers {
            if let Err(e) = c.engine.copy_file_in(container, source, target).await {
                return Some(Err(e));
            }
        }
        Some(Ok(()))
    }

    /// Copies `dir` into the host at the same path. Hosts of the local
    /// backend share the operator's filesystem, so there it is a no-op.
    pub async fn copy_in(&self, dir: &Path) -> Result<()> {
        match &self.container {
            Some(c) => c.engine.copy_in(&c.name, dir).await,
            None => Ok(()),
        }
    }

    /// Copies `dir` of the host back to the same path here (no-op locally).
    pub async fn copy_out(&self, dir: &Path) -> Result<()> {
        match &self.container {
            Some(c) => c.engine.copy_out(&c.name, dir).await,
            None => Ok(()),
        }
    }

    /// Runs this machine's `ip ARGS` in this host's network namespace
    /// only (a container's own filesystem need not have `ip`).
    pub async fn ip(&self, args: &[&str]) -> Result<()> {
        let wrapper = match self.name.as_str() {
            "operator" => Vec::new(),
            _ => vec![
                "nsenter".to_string(),
                format!("--net={}", self.netns_path),
                "--".into(),
            ],
        };
        run_ip(&self.name, &wrapper, args).await
    }

    /// The argv prefix that runs a program inside this host.
    pub fn wrapper(&self) -> Vec<String> {
        self.wrapper_in(None)
    }

    /// [`Host::wrapper`], starting in `cwd`: entering a mount namespace
    /// resets the working directory, so nsenter sets it again afterwards.
    pub fn wrapper_in(&self, cwd: Option<&Path>) -> Vec<String> {
        if self.name == "operator" {
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

    /// This host's `/proc/…/net/dev`: interface counters of its namespace,
    /// readable without spawning anything.
    pub fn net_dev_path(&self) -> String {
        match self.anchor_pid() {
            Some(pid) => format!("/proc/{pid}/net/dev"),
            None => "/proc/self/net/dev".into(),
        }
    }

    pub fn anchor_pid(&self) -> Option<u32> {
        match &self.container {
            Some(c) => Some(c.pid),
            None => self.anchor.as_ref().and_then(Child::id),
        }
    }

    /// Starts a component in this host: through its namespaces locally,
    /// by exec in its container on docker.
    pub async fn start(&self, spec: &LaunchSpec) -> Result<ManagedProcess> {
        match &self.container {
            Some(c) => Ok(ManagedProcess::in_container(
                spec,
                c.engine.exec(c.container_for(spec.role), spec).await?,
            )),
            None => ManagedProcess::start(spec, &self.wrapper_in(Some(&spec.cwd))),
        }
    }

    /// Connects to `addr` from inside this host. A short-lived thread enters
    /// the namespace, so no pooled thread is ever left in the wrong one; the
    /// socket stays in the namespace it was created in.
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        let netns = self.netns.try_clone()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let result = setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
                .and_then(|_| std::net::TcpStream::connect_timeout(&addr, timeout));
            let _ = tx.send(result);
        });
        let stream = rx
            .await
            .map_err(|_| std::io::Error::other("the connecting thread died"))??;
        stream.set_nonblocking(true)?;
        TcpStream::from_std(stream)
    }

    /// The name of this host's interface that holds `addr` (the same
    /// namespace trick as [`Host::connect`]): docker names a container's
    /// interfaces itself, in the order networks were attached.
    pub async fn interface_with(&self, addr: Ipv4Addr) -> std::io::Result<Option<String>> {
        let netns = self.netns.try_clone()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let result = setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
                .and_then(|_| nix::ifaddrs::getifaddrs())
                .map(|addresses| {
                    addresses
                        .filter(|a| {
                            a.address
                                .as_ref()
                                .and_then(|sa| sa.as_sockaddr_in())
                                .is_some_and(|sin| sin.ip() == addr)
                        })
                        .map(|a| a.interface_name)
                        .next()
                })
                .map_err(std::io::Error::from);
            let _ = tx.send(result);
        });
        rx.await
            .map_err(|_| std::io::Error::other("the looking-up thread died"))?
    }

    /// Binds a listener inside this host (the same namespace trick as
    /// [`Host::connect`]).
    pub async fn listen(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        let netns = self.netns.try_clone()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let result = setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
                .and_then(|_| std::net::TcpListener::bind(addr));
            let _ = tx.send(result);
        });
        let listener = rx
            .await
            .map_err(|_| std::io::Error::other("the binding thread died"))??;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
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
/// inside the private namespace.
#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    /// Interface names of the `a` and `b` ends.
    pub interfaces: (String, String),
    pub a: (String, Ipv4Addr),
    pub b: (String, Ipv4Addr),
}

impl Link {
    /// Creates the veth pair, moves each end into its host and brings it up.
    pub async fn create(index: u8, a: &Host, b: &Host) -> Result<Self> {
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
        Ok(Self {
            name,
            interfaces: (a_if, b_if),
            a: (a.name.clone(), a_addr),
            b: (b.name.clone(), b_addr),
        })
    }
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

/// The hosts and links of one stack.
pub struct StackNetwork {
    pub hosts: BTreeMap<String, Host>,
    pub links: Vec<Link>,
    /// On the docker backend, the run whose containers and networks these
    /// are; dropping it removes them.
    pub docker: Option<super::docker::DockerRun>,
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

impl StackNetwork {
    /// One namespace per host, linked to the operator's namespace where the
    /// plan says so, plus the direct host-to-host `extra_links`.
    pub async fn build(plans: &[HostPlan], extra_links: &[[String; 2]]) -> Result<Self> {
        let mut network = Self {
            hosts: BTreeMap::new(),
            links: Vec::new(),
            docker: None,
        };
        network
            .hosts
            .insert("operator".to_string(), Host::operator().await?);
        for plan in plans {
            network.add_host(plan, &[]).await?;
        }
        for link in extra_links {
            network.add_link(link).await?;
        }
        Ok(network)
    }

    /// Adds a host to a running network, with its links: a login node
    /// joining an HPC cluster is one call, nothing restarts.
    pub async fn add_host(&mut self, plan: &HostPlan, links: &[[String; 2]]) -> Result<()> {
        if self.hosts.contains_key(&plan.name) {
            return Err(HarnessError::Network {
                host: plan.name.clone(),
                message: "a host of that name already exists".into(),
            });
        }
        let host = Host::create_with(&plan.name, plan.filesystem.as_ref()).await?;
        if plan.operator_link {
            let link = Link::create(next_link_index()?, &self.hosts["operator"], &host).await?;
            self.links.push(link);
        }
        self.hosts.insert(plan.name.clone(), host);
        for link in links {
            self.add_link(link).await?;
        }
        Ok(())
    }

    async fn add_link(&mut self, [a, b]: &[String; 2]) -> Result<()> {
        let (Some(host_a), Some(host_b)) = (self.hosts.get(a), self.hosts.get(b)) else {
            return Err(HarnessError::Network {
                host: format!("{a}--{b}"),
                message: "a link names a host that does not exist".into(),
            });
        };
        let link = Link::create(next_link_index()?, host_a, host_b).await?;
        self.links.push(link);
        Ok(())
    }

    /// The link directly joining `a` and `b`, if there is one.
    pub fn link_between(&self, a: &str, b: &str) -> Option<&Link> {
        self.links
            .iter()
            .find(|l| (l.a.0 == a && l.b.0 == b) || (l.a.0 == b && l.b.0 == a))
    }

    /// The netns path programs use to enter `host` (for kernel launchers).
    pub fn netns_path(&self, host: &str) -> Option<String> {
        let pid = self.hosts.get(host)?.anchor_pid()?;
        Some(format!("/proc/{pid}/ns/net"))
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
