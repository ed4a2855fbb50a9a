//! The HPC site: login nodes running real OpenSSH `sshd`, compute nodes the
//! hub cannot reach, the tunnel broker between them, and the internal CAs
//! prepared before the hub starts so the proxy's certificate can list every
//! login node (REFERENCE.md flows 8 and 9).

pub mod add_on;
pub mod broker;
pub mod checks;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::{Host, HostFilesystem, HostPlan, Link, StackNetwork};
use crate::error::{HarnessError, Result};
use crate::pki::{set_mode, write_with_mode, CertificateAuthority, OrgPki, Usage, Validity};
use crate::process::{LaunchSpec, ManagedProcess};
use crate::provision::Components;
use crate::ready::{wait_ready, ReadyCheck, ReadyContext};
use crate::secret::Secret;
use crate::spec::{HpcNodes, StackSpec, Topology};

/// Where HPC nodes see hubtrust's components (read-only): their own `/opt`,
/// so a lab user can reach them whoever owns the operator's cache.
pub const COMPONENTS_ON_NODES: &str = "/opt/hubtrust";

const TUNNEL_ACTION: &str = include_str!("../../../fixtures/hpc/tunnel-action.sh");
const COMPUTE_BATCH: &str = include_str!("../../../fixtures/hpc/compute-batch.py");
const SPAWNER: &str = include_str!("../../../fixtures/hpc/hubtrust_hpc_spawner.py");

fn node_plan(name: &str, components: &Components, system_store: &Path) -> HostPlan {
    HostPlan {
        name: name.into(),
        filesystem: Some(HostFilesystem {
            fresh_dirs: true,
            read_only_binds: vec![(components.root.clone(), COMPONENTS_ON_NODES.into())],
            system_store: Some(system_store.to_path_buf()),
        }),
        operator_link: false,
    }
}

/// `path` under the components root, as HPC nodes see it.
pub fn on_nodes(path: &str, components: &Components) -> String {
    let root = components.root.display().to_string();
    match path.strip_prefix(&root) {
        Some(rest) => format!("{COMPONENTS_ON_NODES}{rest}"),
        None => path.to_string(),
    }
}

/// The lab's command as compute nodes run it. The venv's console scripts
/// carry the operator's cache path in their shebang, which a lab user may
/// not be able to traverse (root's home is 0700), so the venv's own
/// `jupyterhub-singleuser` becomes `python -m jupyterhub.singleuser`.
pub fn lab_command_on_nodes(command: &[String], components: &Components) -> Vec<String> {
    let singleuser = components.venv.join("bin").join("jupyterhub-singleuser");
    match command.split_first() {
        Some((program, rest)) if Path::new(program) == singleuser => {
            let python = components.venv.join("bin").join("python");
            [
                on_nodes(&python.display().to_string(), components),
                "-m".into(),
                "jupyterhub.singleuser".into(),
            ]
            .into_iter()
            .chain(rest.iter().cloned())
            .collect()
        }
        _ => command
            .iter()
            .map(|part| on_nodes(part, components))
            .collect(),
    }
}

/// One login node as the rest of the site sees it.
#[derive(Debug, Clone)]
pub struct LoginNodeInfo {
    pub name: String,
    /// Where the hub's host reaches its sshd.
    pub hub_facing: Ipv4Addr,
    /// Per compute node: (login node's address there = the bind address
    /// labs call, the compute node's own address on that link).
    pub towards_compute: BTreeMap<String, (Ipv4Addr, Ipv4Addr)>,
}

/// A login node added while the stack runs: its own host and links, which
/// live as long as the site.
struct AddedLoginNode {
    info: LoginNodeInfo,
    host: std::sync::Arc<Host>,
    _links: Vec<Link>,
}

/// One host as a [`crate::backend::HostNetwork`], for readiness checks on
/// hosts the stack's network does not hold.
struct SingleHost<'a>(&'a Host);

impl crate::backend::HostNetwork for SingleHost<'_> {
    async fn connect_from(
        &self,
        _host: &str,
        addr: SocketAddr,
    ) -> std::io::Result<tokio::net::TcpStream> {
        self.0.connect(addr, Duration::from_secs(5)).await
    }
}

/// SSH material of one run: keys generated per run, host keys pinned.
struct SshMaterial {
    broker_key: PathBuf,
    spawner_key: PathBuf,
    known_hosts: PathBuf,
}

/// The running HPC site. Dropping it kills its sshds and broker.
pub struct HpcSite {
    pub dir: PathBuf,
    pub login_nodes: Vec<LoginNodeInfo>,
    pub compute_nodes: Vec<String>,
    /// Each node's sshd, and how it was started (a fault restarts it).
    sshd: std::sync::Mutex<BTreeMap<String, ManagedProcess>>,
    sshd_launch: std::sync::Mutex<BTreeMap<String, LaunchSpec>>,
    /// Nodes whose sshd a fault scenario stopped or re-keyed, and whether
    /// the proxy's certificate is not the standard one: what
    /// [`HpcSite::restore_sshds`] and the stack put back after a scenario.
    disturbed_sshd: std::sync::Mutex<std::collections::BTreeSet<String>>,
    pub(crate) proxy_cert_disturbed: std::sync::atomic::AtomicBool,
    /// How HPC nodes see the filesystem (for nodes added later).
    node_filesystem: HostFilesystem,
    /// Login nodes added while the stack runs, with their own hosts.
    added: std::sync::Mutex<Vec<AddedLoginNode>>,
    broker: std::sync::Mutex<Option<ManagedProcess>>,
    broker_launch: Option<LaunchSpec>,
    pub broker_log: PathBuf,
    pub broker_port: u16,
    /// Where the broker listens: the hub's operator-facing address.
    pub broker_ip: Ipv4Addr,
    pub broker_token: Secret,
    /// The CA that signed the broker's certificate (the org root).
    pub broker_ca: PathBuf,
    /// The internal CAs, packed as operators keep them (`ca_certs.tar.gz`).
    pub ca_certs: PathBuf,
    /// The proxy's public certificate and key, signed by proxy-client-ca.
    pub proxy_cert: PathBuf,
    pub proxy_key: PathBuf,
    pub spawner_ssh_config: PathBuf,
    pub known_hosts: PathBuf,
    pub broker_key: PathBuf,
    pub spawner_key: PathBuf,
    pub lab_uids: BTreeMap<String, u32>,
    pub login_port: u16,
    /// A client of the broker's REST contract, once it runs.
    pub broker_client: Option<BrokerClient>,
}

impl HpcSite {
    /// Keys, sshd on every login and compute node, the internal CAs and the
    /// proxy's certificate. The broker starts later ([`HpcSite::start_broker`])
    /// because it needs the hub host's address only.
    pub async fn prepare(
        spec: &StackSpec,
        network: &StackNetwork,
        components: &Components,
        http: &reqwest::Client,
        run_dir: &Path,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Self> {
        let topology = &spec.topology;
        let nodes = topology.hpc.as_ref().ok_or_else(|| HarnessError::Network {
            host: topology.lab_host.clone(),
            message: "not an HPC topology".into(),
        })?;
        running_as_real_root()?;
        let hub_host = network.host(&topology.hub_host)?;
        // Nodes that run this machine's installation need its modes to
        // let the lab users in.
        if hub_host.runs_this_machines_files() {
            lab_users_can_run(components)?;
        }
        let dir = run_dir.join("hpc");
        for sub in ["bin", "ssh", "broker"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| HarnessError::io(format!("create {}/{sub}", dir.display()), e))?;
        }
        for (name, text) in [
            ("tunnel-action.sh", TUNNEL_ACTION),
            ("compute-batch.py", COMPUTE_BATCH),
            ("hubtrust_hpc_spawner.py", SPAWNER),
        ] {
            write_with_mode(&dir.join("bin").join(name), text.as_bytes(), 0o755)?;
        }
        let login_nodes = login_node_infos(topology, nodes, network)?;

        progress("generating SSH host and client keys for this run");
        let all_nodes: Vec<&String> = nodes
            .login_nodes
            .iter()
            .chain(&nodes.compute_nodes)
            .collect();
        let ssh = generate_ssh_material(&dir.join("ssh"), &all_nodes).await?;

        let lab_uids = spec
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.clone(), spec.hpc.first_lab_uid + i as u32))
            .collect();
        let mut site = Self {
            broker_log: run_dir.join("logs").join("tunnel-broker.log"),
            dir: dir.clone(),
            login_nodes,
            compute_nodes: nodes.compute_nodes.clone(),
            sshd: std::sync::Mutex::new(BTreeMap::new()),
            sshd_launch: std::sync::Mutex::new(BTreeMap::new()),
            added: std::sync::Mutex::new(Vec::new()),
            disturbed_sshd: std::sync::Mutex::new(Default::default()),
            proxy_cert_disturbed: std::sync::atomic::AtomicBool::new(false),
            node_filesystem: node_plan("node", components, &crate::pki::system_store_file(run_dir))
                .filesystem
                .unwrap_or_default(),
            broker: std::sync::Mutex::new(None),
            broker_launch: None,
            broker_port: spec.hpc.broker_port,
            broker_ip: Ipv4Addr::LOCALHOST,
            broker_token: Secret::generate(),
            broker_ca: run_dir.join("pki").join("org-root.crt"),
            ca_certs: dir.join("ca_certs.tar.gz"),
            proxy_cert: PathBuf::new(),
            proxy_key: PathBuf::new(),
            spawner_ssh_config: dir.join("ssh").join("spawner_config"),
            known_hosts: ssh.known_hosts.clone(),
            broker_key: ssh.broker_key.clone(),
            spawner_key: ssh.spawner_key.clone(),
            lab_uids,
            login_port: spec.hpc.login_port,
            broker_client: None,
        };
        site.write_spawner_ssh_config()?;
        // The internal CAs take JupyterHub a few seconds to make; the nodes'
        // sshd start meanwhile.
        progress("preparing the internal CAs (ca_certs.tar.gz)");
        let internal = run_dir.join("hub").join("internal-ssl");
        let cas = async {
            match &spec.hpc.ca_certs {
                Some(tarball) => unpack_ca_certs(tarball, &internal).await,
                None => {
                    generate_internal_cas(
                        &[format!("DNS:{}", spec.topology.public_name)],
                        components,
                        &internal,
                        Some(hub_host),
                    )
                    .await
                }
            }
        };
        let sshds = async {
            for node in &all_nodes {
                progress(&format!("starting sshd on `{node}`"));
                site.start_sshd(node, network, http).await?;
            }
            Ok::<(), HarnessError>(())
        };
        let (cas, sshds) = tokio::join!(cas, sshds);
        sshds?;
        cas?;
        pack_ca_certs(&internal, &site.ca_certs).await?;
        let (cert, key) =
            site.issue_proxy_cert(spec, network, &internal, &site.bind_addresses())?;
        site.proxy_cert = cert;
        site.proxy_key = key;
        Ok(site)
    }

    /// Every login node's bind address, as labs call them.
    pub fn bind_addresses(&self) -> Vec<Ipv4Addr> {
        self.all_login_nodes()
            .iter()
            .flat_map(|l| l.towards_compute.values().map(|(bind, _)| *bind))
            .collect()
    }

    /// The login nodes the site started with, then those added since.
    pub fn all_login_nodes(&self) -> Vec<LoginNodeInfo> {
        let mut all = self.login_nodes.clone();
        if let Ok(added) = self.added.lock() {
            all.extend(added.iter().map(|a| a.info.clone()));
        }
        all
    }

    fn added_host(&self, node: &str) -> Option<std::sync::Arc<Host>> {
        self.added
            .lock()
            .ok()?
            .iter()
            .find(|a| a.info.name == node)
            .map(|a| a.host.clone())
    }

    /// Adds a login node to the running site, as an operator would: a new
    /// host linked to the hub and every compute node, its sshd with a host
    /// key pinned in known_hosts, and the broker told through its config
    /// file, then asked for the node's remote tunnel. Nothing else restarts.
    pub async fn add_login_node(
        &self,
        name: &str,
        network: &StackNetwork,
        http: &reqwest::Client,
        spec: &StackSpec,
        broker: &BrokerClient,
    ) -> Result<LoginNodeInfo> {
        if self.all_login_nodes().iter().any(|l| l.name == name) {
            return Err(HarnessError::Network {
                host: name.into(),
                message: "a login node of that name already exists".into(),
            });
        }
        let hub_host = &spec.topology.hub_host;
        let peers: Vec<String> = std::iter::once(hub_host.clone())
            .chain(self.compute_nodes.iter().cloned())
            .collect();
        let plan = HostPlan {
            name: name.into(),
            filesystem: Some(self.node_filesystem.clone()),
            operator_link: false,
        };
        let like = &self.login_nodes[0].name;
        let (host, links) = network.add_host(&plan, like, &peers).await?;
        let host = std::sync::Arc::new(host);
        // Links run from each peer (the hub's host first) to the new node.
        let towards_compute = links
            .iter()
            .filter(|l| self.compute_nodes.contains(&l.a.0))
            .map(|l| (l.a.0.clone(), (l.b.1, l.a.1)))
            .collect();
        let hub_facing = links
            .iter()
            .find(|l| &l.a.0 == hub_host)
            .map(|l| l.b.1)
            .ok_or_else(|| HarnessError::Network {
                host: name.into(),
                message: format!("no link to the hub's host `{hub_host}`"),
            })?;
        let info = LoginNodeInfo {
            name: name.into(),
            hub_facing,
            towards_compute,
        };
        let ssh_dir = self.dir.join("ssh");
        let key = ssh_dir.join(format!("{name}_host_key"));
        ssh_keygen(&key, &format!("host key of {name}")).await?;
        append_known_host(&self.known_hosts, name, &key)?;
        let launch = self.write_sshd_files(name, Some(&info))?;
        let process = launch_sshd(
            &host,
            &SingleHost(&host),
            http,
            &launch,
            &self.node_files(name),
        )
        .await?;
        self.remember_sshd(name, launch, process);
        if let Ok(mut added) = self.added.lock() {
            added.push(AddedLoginNode {
                info: info.clone(),
                host,
                _links: links,
            });
        }
        self.rewrite_broker_config(spec)?;
        for file in [
            self.dir.join("broker").join("config.json"),
            self.known_hosts.clone(),
        ] {
            network.host(hub_host)?.install_file(&file, &file).await?;
        }
        broker
            .post("/api/remote/", &serde_json::json!({ "hostname": name }))
            .await
            .and_then(|r| r.expect_success())
            .map_err(|message| self.tunnel_error(name, message))?;
        Ok(info)
    }

    /// The broker's config file, with every login node the site has now.
    fn rewrite_broker_config(&self, spec: &StackSpec) -> Result<()> {
        let path = self.dir.join("broker").join("config.json");
        let text = std::fs::read(&path)
            .map_err(|e| HarnessError::io(format!("read {}", path.display()), e))?;
        let mut config: broker::BrokerConfig =
            serde_json::from_slice(&text).map_err(|e| HarnessError::Provision {
                what: "broker config".into(),
                message: e.to_string(),
            })?;
        config.login_nodes = self
            .all_login_nodes()
            .iter()
            .map(|l| self.broker_view(l, spec))
            .collect();
        let text = serde_json::to_vec_pretty(&config).map_err(|e| HarnessError::Provision {
            what: "broker config".into(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("tmp");
        write_with_mode(&tmp, &text, 0o600)?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| HarnessError::io(format!("replace {}", path.display()), e))
    }

    /// Re-issues the proxy's certificate in place for `binds`, signed by
    /// the internal proxy-client-ca, or by `other_ca` (a rotation).
    pub fn reissue_proxy_cert(
        &self,
        spec: &StackSpec,
        network: &StackNetwork,
        binds: &[Ipv4Addr],
        other_ca: Option<&CertificateAuthority>,
        validity: Validity,
    ) -> Result<()> {
        let internal = self
            .dir
            .parent()
            .unwrap_or(&self.dir)
            .join("hub")
            .join("internal-ssl");
        let own;
        let ca = match other_ca {
            Some(ca) => ca,
            None => {
                own = load_internal_ca(&internal, "proxy-client-ca")?;
                &own
            }
        };
        let (cert, key) = self.issue_proxy_cert_from(ca, spec, network, binds, validity)?;
        if cert != self.proxy_cert || key != self.proxy_key {
            return Err(HarnessError::Pki(
                "the re-issued proxy certificate landed elsewhere".into(),
            ));
        }
        Ok(())
    }

    /// Issues the proxy's public certificate from the internal
    /// proxy-client-ca: the public name, the hub's addresses and every
    /// login node's bind address (`extra` lets a re-issue add or omit one).
    pub fn issue_proxy_cert(
        &self,
        spec: &StackSpec,
        network: &StackNetwork,
        internal: &Path,
        binds: &[Ipv4Addr],
    ) -> Result<(PathBuf, PathBuf)> {
        let ca = load_internal_ca(internal, "proxy-client-ca")?;
        self.issue_proxy_cert_from(&ca, spec, network, binds, Validity::fresh(365))
    }

    pub fn issue_proxy_cert_from(
        &self,
        ca: &CertificateAuthority,
        spec: &StackSpec,
        network: &StackNetwork,
        binds: &[Ipv4Addr],
        validity: Validity,
    ) -> Result<(PathBuf, PathBuf)> {
        let mut sans: Vec<String> = vec![
            spec.topology.public_name.clone(),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
        sans.extend(
            network
                .addresses_of(&spec.topology.hub_host)
                .iter()
                .map(ToString::to_string),
        );
        sans.extend(binds.iter().map(ToString::to_string));
        let refs: Vec<&str> = sans.iter().map(String::as_str).collect();
        let identity = ca.issue("proxy", &refs, Usage::ServerAndClient, validity)?;
        identity.write_to(&self.dir.join("proxy"))
    }

    fn write_spawner_ssh_config(&self) -> Result<()> {
        let mut text = String::from(
            "# Written by hubtrust: the hub's spawner reaches compute nodes through login nodes.\n",
        );
        let first = &self.login_nodes[0];
        for login in &self.login_nodes {
            text.push_str(&format!(
                "Host {name}\n  HostName {addr}\n  HostKeyAlias {name}\n",
                name = login.name,
                addr = login.hub_facing
            ));
        }
        for compute in &self.compute_nodes {
            let (_, compute_addr) = first.towards_compute[compute];
            text.push_str(&format!(
                "Host {compute}\n  HostName {compute_addr}\n  HostKeyAlias {compute}\n  ProxyJump {}\n",
                first.name
            ));
        }
        text.push_str(&format!(
            "Host *\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n",
            self.spawner_key.display(),
            self.known_hosts.display()
        ));
        write_with_mode(&self.spawner_ssh_config, text.as_bytes(), 0o644)
    }

    /// sshd on `node` with a config and authorized_keys of this run.
    async fn start_sshd(
        &mut self,
        node: &str,
        network: &StackNetwork,
        http: &reqwest::Client,
    ) -> Result<()> {
        let login = self.login_nodes.iter().find(|l| l.name == node).cloned();
        let launch = self.write_sshd_files(node, login.as_ref())?;
        let process = launch_sshd(
            network.host(node)?,
            network,
            http,
            &launch,
            &self.node_files(node),
        )
        .await?;
        self.remember_sshd(node, launch, process);
        if let Ok(mut disturbed) = self.disturbed_sshd.lock() {
            disturbed.remove(node);
        }
        Ok(())
    }

    /// What a node's sshd needs of the site's files: its own directory
    /// (config, host key, authorized_keys) and the forced commands. Keys
    /// of the broker and the spawner stay on the hub's host.
    fn node_files(&self, node: &str) -> [PathBuf; 2] {
        [self.dir.join("bin"), self.dir.join("ssh").join(node)]
    }

    fn remember_sshd(&self, node: &str, launch: LaunchSpec, process: ManagedProcess) {
        if let Ok(mut launches) = self.sshd_launch.lock() {
            launches.insert(node.to_string(), launch);
        }
        if let Ok(mut sshd) = self.sshd.lock() {
            sshd.insert(node.to_string(), process);
        }
    }

    /// Writes `node`'s sshd config and authorized_keys (a login node's when
    /// `login` is given, else a compute node's) and says how to start it.
    fn write_sshd_files(&self, node: &str, login: Option<&LoginNodeInfo>) -> Result<LaunchSpec> {
        let run_dir = self.dir.parent().unwrap_or(&self.dir).to_path_buf();
        let node_dir = self.dir.join("ssh").join(node);
        std::fs::create_dir_all(&node_dir)
            .map_err(|e| HarnessError::io(format!("create {}", node_dir.display()), e))?;
        let host_key = node_dir.join("ssh_host_ed25519_key");
        std::fs::copy(
            self.dir.join("ssh").join(format!("{node}_host_key")),
            &host_key,
        )
        .map_err(|e| HarnessError::io("stage a host key", e))?;
        set_mode(&host_key, 0o600)?;
        let bin = self.dir.join("bin");
        let read_pub = |key: &Path| {
            std::fs::read_to_string(key.with_extension("pub"))
                .map(|s| s.trim().to_string())
                .map_err(|e| HarnessError::io(format!("read {}.pub", key.display()), e))
        };
        let (broker_pub, spawner_pub) = (read_pub(&self.broker_key)?, read_pub(&self.spawner_key)?);
        let (authorized, forwarding) = if let Some(login) = login {
            let opens: Vec<String> = login
                .towards_compute
                .values()
                .map(|(_, compute)| format!("permitopen=\"{compute}:*\""))
                .collect();
            let jumps: Vec<String> = login
                .towards_compute
                .values()
                .map(|(_, compute)| format!("permitopen=\"{compute}:22\""))
                .collect();
            (
                format!(
                    "restrict,port-forwarding,{},permitlisten=\"0.0.0.0:{}\",command=\"{}\" {broker_pub}\n\
                     restrict,port-forwarding,{},command=\"/bin/false\" {spawner_pub}\n",
                    opens.join(","),
                    self.login_port,
                    bin.join("tunnel-action.sh").display(),
                    jumps.join(","),
                ),
                "AllowTcpForwarding yes\nGatewayPorts clientspecified\n",
            )
        } else {
            let from: Vec<String> = self
                .login_nodes
                .iter()
                .filter_map(|l| {
                    l.towards_compute
                        .get(node)
                        .map(|(bind, _)| bind.to_string())
                })
                .collect();
            (
                format!(
                    "restrict,from=\"{}\",command=\"/usr/bin/python3 {}\" {spawner_pub}\n",
                    from.join(","),
                    bin.join("compute-batch.py").display()
                ),
                "AllowTcpForwarding no\n",
            )
        };
        let authorized_keys = node_dir.join("authorized_keys");
        write_with_mode(&authorized_keys, authorized.as_bytes(), 0o600)?;
        // StrictModes would refuse files under /tmp (world-writable); the
        // run directory is root's and 0700, which is what it protects.
        let config = format!(
            "# sshd of `{node}`, written by hubtrust for one run.\n\
             ListenAddress 0.0.0.0:22\nHostKey {}\nAuthorizedKeysFile {}\n\
             PermitRootLogin forced-commands-only\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPidFile none\nLogLevel VERBOSE\nX11Forwarding no\nPermitTunnel no\n\
             ClientAliveInterval 5\nClientAliveCountMax 3\n{forwarding}",
            host_key.display(),
            authorized_keys.display()
        );
        let config_path = node_dir.join("sshd_config");
        write_with_mode(&config_path, config.as_bytes(), 0o600)?;
        let launch = LaunchSpec {
            name: format!("sshd ({node})"),
            program: "/usr/sbin/sshd".into(),
            args: vec![
                "-D".into(),
                "-e".into(),
                "-f".into(),
                config_path.display().to_string(),
            ],
            env: BTreeMap::new(),
            cwd: node_dir.clone(),
            log: run_dir.join("logs").join(format!("sshd-{node}.log")),
            role: None,
        };
        Ok(launch)
    }
}

impl HpcSite {
    /// Starts the tunnel broker on the hub's host (hubtrust's reference
    /// broker, or the stack file's `hpc.broker_command`), waits for it,
    /// and opens every login node's remote tunnel through its REST API.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_broker(
        &mut self,
        spec: &StackSpec,
        network: &StackNetwork,
        org: &OrgPki,
        http: &reqwest::Client,
        env: BTreeMap<String, String>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<BrokerClient> {
        let hub_host = &spec.topology.hub_host;
        let mut sans = vec![
            "tunnel-broker".to_string(),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
        sans.extend(
            network
                .addresses_of(hub_host)
                .iter()
                .map(ToString::to_string),
        );
        let refs: Vec<&str> = sans.iter().map(String::as_str).collect();
        let identity =
            org.issuing
                .issue("tunnel-broker", &refs, Usage::Server, Validity::fresh(30))?;
        let broker_dir = self.dir.join("broker");
        let (cert, key) = identity.write_to(&broker_dir)?;
        // Its clients are the hub's spawner and the operator (hubtrust's
        // REST checks, an admin): it listens on the hub's operator-facing
        // address only, which no login or compute node can route to.
        let hub_ip = network.operator_reaches(hub_host)?;
        self.broker_ip = hub_ip;
        let listen = SocketAddr::from((hub_ip, self.broker_port));
        if network.host(hub_host)?.port_in_use(self.broker_port).await {
            return Err(HarnessError::PortInUse {
                host: hub_host.clone(),
                port: self.broker_port,
            });
        }
        let config = broker::BrokerConfig {
            listen,
            cert: cert.clone(),
            key: key.clone(),
            state_file: broker_dir.join("state.json"),
            control_dir: broker_dir.join("control"),
            identity: self.broker_key.clone(),
            known_hosts: self.known_hosts.clone(),
            login_nodes: self
                .login_nodes
                .iter()
                .map(|l| self.broker_view(l, spec))
                .collect(),
        };
        let config_path = broker_dir.join("config.json");
        let text = serde_json::to_vec_pretty(&config).map_err(|e| HarnessError::Provision {
            what: "broker config".into(),
            message: e.to_string(),
        })?;
        write_with_mode(&config_path, &text, 0o600)?;
        let (program, args) = match &spec.hpc.broker_command {
            Some(command) if !command.is_empty() => (command[0].clone(), command[1..].to_vec()),
            _ => (
                std::env::current_exe()
                    .map_err(|e| HarnessError::io("find hubtrust's own executable", e))?
                    .display()
                    .to_string(),
                vec![
                    "broker".into(),
                    "--config".into(),
                    config_path.display().to_string(),
                ],
            ),
        };
        let mut env = env;
        for (name, value) in [
            (
                "HUBTRUST_BROKER_TOKEN",
                self.broker_token.expose().to_string(),
            ),
            ("HUBTRUST_BROKER_LISTEN", listen.to_string()),
            ("HUBTRUST_BROKER_CERT", cert.display().to_string()),
            ("HUBTRUST_BROKER_KEY", key.display().to_string()),
            ("HUBTRUST_BROKER_CONFIG", config_path.display().to_string()),
        ] {
            env.insert(name.into(), value);
        }
        let launch = LaunchSpec {
            name: "tunnel broker".into(),
            program,
            args,
            env,
            cwd: broker_dir.clone(),
            log: self.broker_log.clone(),
            role: None,
        };
        progress("starting the tunnel broker on the hub's host");
        self.launch_broker(network, http, hub_host, &launch).await?;
        self.broker_launch = Some(launch);
        let client = BrokerClient::new(
            &format!("https://{hub_ip}:{}", self.broker_port),
            &org.root.cert_pem(),
            self.broker_token.clone(),
        )?;
        // One SSH connection per login node: opened at once, not in turn.
        let names: Vec<&str> = self.login_nodes.iter().map(|l| l.name.as_str()).collect();
        progress(&format!(
            "opening the remote tunnels on {}",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let opened = futures::future::join_all(names.iter().map(|name| {
            let client = &client;
            async move {
                client
                    .post("/api/remote/", &serde_json::json!({ "hostname": name }))
                    .await
                    .and_then(|r| r.expect_success())
                    .map_err(|message| (name.to_string(), message))
            }
        }))
        .await;
        for result in opened {
            result.map_err(|(name, message)| self.tunnel_error(&name, message))?;
        }
        Ok(client)
    }

    /// How the broker sees a login node.
    pub fn broker_view(&self, login: &LoginNodeInfo, spec: &StackSpec) -> broker::LoginNode {
        broker::LoginNode {
            name: login.name.clone(),
            address: login.hub_facing,
            user: "root".into(),
            remote_bind: format!("0.0.0.0:{}", self.login_port),
            remote_target: format!("127.0.0.1:{}", spec.ports.public),
            remote_check: SocketAddr::from((login.hub_facing, self.login_port)),
        }
    }

    /// A tunnel failure, with the broker's and the login node's sshd's
    /// last log lines.
    pub fn tunnel_error(&self, node: &str, message: String) -> HarnessError {
        let mut last_lines: Vec<String> = crate::process::last_lines(&self.broker_log, 8)
            .into_iter()
            .map(|l| format!("[tunnel broker] {l}"))
            .collect();
        if let Some(sshd) = self.sshd.lock().ok().as_ref().and_then(|m| m.get(node)) {
            last_lines.extend(
                sshd.last_lines(8)
                    .into_iter()
                    .map(|l| format!("[sshd ({node})] {l}")),
            );
        }
        HarnessError::Tunnel {
            node: node.into(),
            message,
            last_lines,
        }
    }

    /// Stops the broker and starts it again with the same configuration:
    /// it comes back knowing its tunnels (state file) but running none.
    pub async fn restart_broker(
        &self,
        network: &StackNetwork,
        http: &reqwest::Client,
        hub_host: &str,
    ) -> Result<()> {
        let old = self.broker.lock().ok().and_then(|mut b| b.take());
        if let Some(old) = old {
            old.stop(Duration::from_secs(5)).await;
        }
        let launch = self
            .broker_launch
            .as_ref()
            .ok_or_else(|| HarnessError::Spawn {
                component: "tunnel broker".into(),
                message: "it was never started".into(),
            })?;
        self.launch_broker(network, http, hub_host, launch).await
    }

    /// Starts the broker and waits until it completes TLS handshakes.
    async fn launch_broker(
        &self,
        network: &StackNetwork,
        http: &reqwest::Client,
        hub_host: &str,
        launch: &LaunchSpec,
    ) -> Result<()> {
        let host = network.host(hub_host)?;
        host.copy_in(&self.dir).await?;
        let mut process = host.start(launch).await?;
        let check = ReadyCheck::TlsHandshake {
            host: hub_host.into(),
            addr: SocketAddr::from((self.broker_ip, self.broker_port)),
            timeout_secs: 15,
        };
        let ctx = ReadyContext {
            network,
            http,
            log: &launch.log,
            names: &[],
        };
        wait_ready("tunnel broker", &check, &ctx, &mut process).await?;
        if let Ok(mut broker) = self.broker.lock() {
            *broker = Some(process);
        }
        Ok(())
    }

    /// SIGKILLs the broker's SSH connections to `login`, as an OOM killer or
    /// an admin would. They are found by the connections themselves, so
    /// any broker's are: every ESTABLISHED TCP connection in the hub host's
    /// network namespace to the node's sshd, owned by a process that
    /// descends from the broker (through a wrapper script, say). Returns
    /// the pids killed.
    pub fn kill_ssh_master(
        &self,
        network: &StackNetwork,
        hub_host: &str,
        login: &str,
    ) -> Result<Vec<u32>> {
        let node = self
            .all_login_nodes()
            .into_iter()
            .find(|l| l.name == login)
            .ok_or_else(|| HarnessError::Network {
                host: login.into(),
                message: "no such login node".into(),
            })?;
        let broker = self
            .broker
            .lock()
            .ok()
            .and_then(|b| b.as_ref().and_then(ManagedProcess::pid))
            .ok_or_else(|| HarnessError::Spawn {
                component: "tunnel broker".into(),
                message: "it is not running".into(),
            })?;
        let anchor = network
            .host(hub_host)?
            .anchor_pid()
            .ok_or_else(|| HarnessError::Network {
                host: hub_host.into(),
                message: "the host has no process to read its connections through".into(),
            })?;
        let sshd = SocketAddr::from((node.hub_facing, 22));
        let table = std::fs::read_to_string(format!("/proc/{anchor}/net/tcp"))
            .map_err(|e| HarnessError::io(format!("read {hub_host}'s TCP connections"), e))?;
        let inodes = established_to(&table, sshd);
        let owners = socket_owners(&inodes, broker);
        if owners.is_empty() {
            return Err(HarnessError::Spawn {
                component: format!("ssh connection to {login} ({})", node.hub_facing),
                message: format!(
                    "the broker (pid {broker}) holds no connection to {sshd} from `{hub_host}`"
                ),
            });
        }
        for pid in &owners {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(owners)
    }

    /// Puts every sshd a fault scenario disturbed back as it was: running,
    /// with its pinned host key.
    pub async fn restore_sshds(
        &self,
        network: &StackNetwork,
        http: &reqwest::Client,
    ) -> Result<()> {
        let disturbed: Vec<String> = self
            .disturbed_sshd
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        for node in disturbed {
            self.set_host_key(network, http, &node, false).await?;
        }
        Ok(())
    }

    /// Stops `node`'s sshd and every session it holds (each session's
    /// sshd runs in a session of its own, beyond the listener's group), as
    /// a crashed login node would.
    pub async fn stop_sshd(&self, network: &StackNetwork, node: &str) {
        if let Ok(mut disturbed) = self.disturbed_sshd.lock() {
            disturbed.insert(node.to_string());
        }
        let old = self.sshd.lock().ok().and_then(|mut m| m.remove(node));
        if let Some(old) = old {
            old.stop(Duration::from_secs(5)).await;
        }
        let Some(anchor) = network.host(node).ok().and_then(|h| h.anchor_pid()) else {
            return;
        };
        let netns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        let node_netns = netns_of(anchor);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let is_sshd = std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe == Path::new("/usr/sbin/sshd"));
            if is_sshd && netns_of(pid) == node_netns {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Starts `node`'s sshd again, as it was first started.
    pub async fn start_sshd_again(
        &self,
        network: &StackNetwork,
        http: &reqwest::Client,
        node: &str,
    ) -> Result<()> {
        let launch = self
            .sshd_launch
            .lock()
            .ok()
            .and_then(|l| l.get(node).cloned())
            .ok_or_else(|| HarnessError::Network {
                host: node.into(),
                message: "no sshd runs there".into(),
            })?;
        let added = self.added_host(node);
        let files = self.node_files(node);
        let process = match added {
            Some(host) => launch_sshd(&host, &SingleHost(&host), http, &launch, &files).await?,
            None => launch_sshd(network.host(node)?, network, http, &launch, &files).await?,
        };
        self.remember_sshd(node, launch, process);
        if let Ok(mut disturbed) = self.disturbed_sshd.lock() {
            disturbed.remove(node);
        }
        Ok(())
    }

    /// Gives `node` a new host key (`fresh`) or its pinned one back, and
    /// restarts its sshd. Clients keep the pinned key in known_hosts.
    pub async fn set_host_key(
        &self,
        network: &StackNetwork,
        http: &reqwest::Client,
        node: &str,
        fresh: bool,
    ) -> Result<()> {
        let ssh_dir = self.dir.join("ssh");
        let staged = ssh_dir.join(node).join("ssh_host_ed25519_key");
        let source = if fresh {
            let replacement = ssh_dir.join(format!("{node}_replacement_host_key"));
            let _ = std::fs::remove_file(&replacement);
            let _ = std::fs::remove_file(replacement.with_extension("pub"));
            ssh_keygen(&replacement, "replacement host key").await?;
            replacement
        } else {
            ssh_dir.join(format!("{node}_host_key"))
        };
        std::fs::copy(&source, &staged).map_err(|e| HarnessError::io("stage a host key", e))?;
        set_mode(&staged, 0o600)?;
        self.stop_sshd(network, node).await;
        self.start_sshd_again(network, http, node).await?;
        if fresh {
            if let Ok(mut disturbed) = self.disturbed_sshd.lock() {
                disturbed.insert(node.to_string());
            }
        }
        Ok(())
    }

    /// Hub-side configuration lines for the batch spawner.
    pub fn hub_config_lines(&self, components: &Components) -> Vec<String> {
        let compute = &self.compute_nodes[0];
        let logins: Vec<serde_json::Value> = self
            .login_nodes
            .iter()
            .map(|l| {
                let (bind, own) = l.towards_compute[compute];
                serde_json::json!({
                    "name": l.name,
                    "bind": bind.to_string(),
                    "compute_address": own.to_string(),
                })
            })
            .collect();
        let json = |v: serde_json::Value| v.to_string();
        vec![
            "# HPC: labs on a compute node, through login nodes and the tunnel broker.".into(),
            "c.JupyterHub.spawner_class = \"hubtrust_hpc_spawner.TunnelBatchSpawner\"".into(),
            format!(
                "c.TunnelBatchSpawner.ssh_config = {}",
                json(self.spawner_ssh_config.display().to_string().into())
            ),
            format!(
                "c.TunnelBatchSpawner.compute_node = {}",
                json(compute.as_str().into())
            ),
            format!("c.TunnelBatchSpawner.login_nodes = {}", json(logins.into())),
            format!("c.TunnelBatchSpawner.login_port = {}", self.login_port),
            format!(
                "c.TunnelBatchSpawner.broker_url = \"https://{}:{}\"",
                self.broker_ip, self.broker_port
            ),
            format!(
                "c.TunnelBatchSpawner.broker_ca = {}",
                json(self.broker_ca.display().to_string().into())
            ),
            format!(
                "c.TunnelBatchSpawner.lab_uids = {}",
                json(serde_json::to_value(&self.lab_uids).unwrap_or_default())
            ),
            format!(
                "c.TunnelBatchSpawner.lab_path = {}",
                json(
                    format!(
                        "{}:/usr/bin:/bin",
                        on_nodes(
                            &components.venv.join("bin").display().to_string(),
                            components
                        )
                    )
                    .into()
                )
            ),
        ]
    }
}

/// A client of the broker's REST contract: what the stack and the scenarios
/// use, so a vendor's broker is judged by the same calls.
#[derive(Clone)]
pub struct BrokerClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

/// One answer of the broker.
#[derive(Debug, Clone)]
pub struct BrokerAnswer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl BrokerAnswer {
    pub fn expect_success(self) -> std::result::Result<Self, String> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(format!("HTTP {}: {}", self.status, self.body))
        }
    }
}

impl BrokerClient {
    pub fn new(base: &str, ca_pem: &str, token: Secret) -> Result<Self> {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())
            .map_err(|e| HarnessError::Pki(format!("the broker's CA: {e}")))?;
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| HarnessError::Pki(format!("the broker client: {e}")))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// The same client with another token (to prove a wrong one is refused).
    pub fn with_token(&self, token: Secret) -> Self {
        Self {
            token,
            ..self.clone()
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> std::result::Result<BrokerAnswer, String> {
        let response = request
            .header("Authorization", format!("token {}", self.token.expose()))
            .send()
            .await
            .map_err(|e| format!("cannot reach the broker: {e}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok(BrokerAnswer { status, body })
    }

    pub async fn get(&self, path: &str) -> std::result::Result<BrokerAnswer, String> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> std::result::Result<BrokerAnswer, String> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> std::result::Result<BrokerAnswer, String> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// Polls `/api/health/` until `accept` likes an answer, within
    /// `timeout`; the last answer otherwise.
    pub async fn await_health(
        &self,
        accept: impl Fn(&BrokerAnswer) -> bool,
        timeout: Duration,
    ) -> std::result::Result<BrokerAnswer, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let answer = self.get("/api/health/").await;
            if let Ok(answer) = &answer {
                if accept(answer) {
                    return Ok(answer.clone());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return match answer {
                    Ok(a) => Err(format!(
                        "after {} s the broker's health is HTTP {} {}",
                        timeout.as_secs(),
                        a.status,
                        a.body
                    )),
                    Err(e) => Err(e),
                };
            }
            // Bounded poll interval while waiting for the broker's state.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Real `sshd` calls setgroups(2) and switches users, which a user
/// namespace mapping one uid refuses: the HPC topology needs real root.
fn running_as_real_root() -> Result<()> {
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let identity =
        map.split_whitespace()
            .collect::<Vec<_>>()
            .starts_with(&["0", "0", "4294967295"]);
    if identity {
        return Ok(());
    }
    Err(HarnessError::MissingPrerequisite {
        what: "root".into(),
        why: "the HPC topology runs real sshd on its login and compute nodes, and labs as their own users; a rootless run maps a single uid".into(),
        fix: "run the @hpc profile as root (sudo), as CI does".into(),
    })
}

/// Labs run as unprivileged users, so the interpreter the components' venv
/// links to must be reachable by anyone: a pyenv build under root's 0700
/// home is not, and every kernel start would fail with "Permission denied".
fn lab_users_can_run(components: &Components) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let python = components.venv.join("bin").join("python");
    let real = std::fs::canonicalize(&python)
        .map_err(|e| HarnessError::io(format!("resolve {}", python.display()), e))?;
    let blocked = real
        .ancestors()
        .skip(1)
        .find(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 == 0));
    match blocked {
        None => Ok(()),
        Some(dir) => Err(HarnessError::MissingPrerequisite {
            what: "a python3 lab users can run".into(),
            why: format!(
                "the components' venv uses {}, inside {}, which users other than its owner cannot enter; labs on compute nodes run as their own users",
                real.display(),
                dir.display()
            ),
            fix: "provision the components with a system python3 (Debian's /usr/bin/python3), e.g. run hubtrust with PATH=/usr/bin:$PATH and a fresh HUBTRUST_CACHE".into(),
        }),
    }
}

/// Starts a node's sshd once the node has `files` (its sshd directory and
/// the forced commands): copied in on docker, shared locally.
async fn launch_sshd(
    host: &Host,
    network: &impl crate::backend::HostNetwork,
    http: &reqwest::Client,
    launch: &LaunchSpec,
    files: &[PathBuf],
) -> Result<ManagedProcess> {
    for dir in files {
        host.copy_in(dir).await?;
    }
    let mut process = host.start(launch).await?;
    let check = ReadyCheck::Tcp {
        host: host.name.clone(),
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 22)),
        timeout_secs: 10,
    };
    let ctx = ReadyContext {
        network,
        http,
        log: &launch.log,
        names: &[],
    };
    wait_ready(&launch.name, &check, &ctx, &mut process).await?;
    Ok(process)
}

fn login_node_infos(
    topology: &Topology,
    nodes: &HpcNodes,
    network: &StackNetwork,
) -> Result<Vec<LoginNodeInfo>> {
    nodes
        .login_nodes
        .iter()
        .map(|login| {
            let missing = |peer: &str| HarnessError::Network {
                host: login.clone(),
                message: format!("no link to `{peer}`"),
            };
            let hub_facing = network
                .address_towards(login, &topology.hub_host)
                .ok_or_else(|| missing(&topology.hub_host))?;
            let mut towards_compute = BTreeMap::new();
            for compute in &nodes.compute_nodes {
                let bind = network
                    .address_towards(login, compute)
                    .ok_or_else(|| missing(compute))?;
                let own = network
                    .address_towards(compute, login)
                    .ok_or_else(|| missing(compute))?;
                towards_compute.insert(compute.clone(), (bind, own));
            }
            Ok(LoginNodeInfo {
                name: login.clone(),
                hub_facing,
                towards_compute,
            })
        })
        .collect()
}

async fn run_tool(what: &str, program: &str, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| HarnessError::MissingPrerequisite {
            what: program.into(),
            why: e.to_string(),
            fix: "apt-get install -y openssh-client openssh-server tar".into(),
        })?;
    if !output.status.success() {
        return Err(HarnessError::Provision {
            what: what.into(),
            message: format!(
                "`{program}` failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A fresh ed25519 key pair at `path` (private key 0600, by ssh-keygen).
async fn ssh_keygen(path: &Path, comment: &str) -> Result<()> {
    let path_text = path.display().to_string();
    run_tool(
        "SSH keys",
        "ssh-keygen",
        &[
            "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", &path_text,
        ],
    )
    .await
    .map(|_| ())
}

async fn generate_ssh_material(dir: &Path, nodes: &[&String]) -> Result<SshMaterial> {
    let broker_key = dir.join("broker_key");
    ssh_keygen(&broker_key, "hubtrust tunnel broker").await?;
    let spawner_key = dir.join("spawner_key");
    ssh_keygen(&spawner_key, "hubtrust hub spawner").await?;
    let known_hosts = dir.join("known_hosts");
    write_with_mode(&known_hosts, b"", 0o644)?;
    for node in nodes {
        let key = dir.join(format!("{node}_host_key"));
        ssh_keygen(&key, &format!("host key of {node}")).await?;
        append_known_host(&known_hosts, node, &key)?;
    }
    Ok(SshMaterial {
        broker_key,
        spawner_key,
        known_hosts,
    })
}

fn append_known_host(known_hosts: &Path, node: &str, key: &Path) -> Result<()> {
    use std::io::Write;
    let public = std::fs::read_to_string(key.with_extension("pub"))
        .map_err(|e| HarnessError::io("read a host key", e))?;
    let mut fields = public.split_whitespace();
    let (kind, blob) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
    std::fs::OpenOptions::new()
        .append(true)
        .open(known_hosts)
        .and_then(|mut f| writeln!(f, "{node} {kind} {blob}"))
        .map_err(|e| HarnessError::io(format!("pin {node}'s host key"), e))
}

fn load_internal_ca(internal: &Path, name: &str) -> Result<CertificateAuthority> {
    let read = |ext: &str| {
        let path = internal.join(name).join(format!("{name}.{ext}"));
        std::fs::read_to_string(&path)
            .map_err(|e| HarnessError::io(format!("read {}", path.display()), e))
    };
    CertificateAuthority::adopt(name, &read("crt")?, &read("key")?)
}

/// JupyterHub's own `--generate-certs`, before the hub starts: the CAs an
/// operator keeps (and reuses) exist up front.
/// `hubtrust ca-certs`: the internal CAs made once, packed for reuse.
pub async fn make_ca_certs(components: &Components, public_name: &str, out: &Path) -> Result<()> {
    // A run directory, so the CAs' keys go with it even when this is killed
    // outright: the next run sweeps it.
    let scratch = crate::workdir::RunDir::create(&std::env::temp_dir())?;
    set_mode(scratch.path(), 0o700)?;
    let internal = scratch.path().join("internal-ssl");
    generate_internal_cas(&[format!("DNS:{public_name}")], components, &internal, None).await?;
    pack_ca_certs(&internal, out).await
}

/// Runs it where the hub runs on `host` (its image holds the components
/// on docker), else here.
/// The internal CAs and certificates, with `trusted_alt_names` (each
/// `DNS:…`) besides JupyterHub's defaults, into `internal` on this machine.
pub async fn make_internal_store(
    components: &Components,
    trusted_alt_names: &[String],
    internal: &Path,
) -> Result<()> {
    generate_internal_cas(trusted_alt_names, components, internal, None).await
}

async fn generate_internal_cas(
    trusted_alt_names: &[String],
    components: &Components,
    internal: &Path,
    host: Option<&Host>,
) -> Result<()> {
    let workdir = internal.parent().unwrap_or(internal).to_path_buf();
    std::fs::create_dir_all(&workdir)
        .map_err(|e| HarnessError::io(format!("create {}", workdir.display()), e))?;
    let config = workdir.join("generate_certs_config.py");
    let names: Vec<String> = trusted_alt_names.iter().map(|n| format!("{n:?}")).collect();
    let text = format!(
        "c = get_config()  # noqa: F821\nc.JupyterHub.internal_ssl = True\nc.JupyterHub.internal_certs_location = {:?}\nc.JupyterHub.trusted_alt_names = [{}]\n",
        internal.display().to_string(),
        names.join(", ")
    );
    write_with_mode(&config, text.as_bytes(), 0o644)?;
    let jupyterhub = components
        .venv
        .join("bin")
        .join("jupyterhub")
        .display()
        .to_string();
    let config = config.display().to_string();
    // certipy makes CAs valid from this very second. A site's CAs predate
    // any run by days; made here seconds before the scenarios, a compute
    // node whose clock lags (the clock-skew scenarios) would find the CA
    // itself not yet valid, whatever the proxy's certificate allows. So
    // they are made as of an hour ago.
    let preload = format!("LD_PRELOAD={}", checks::faketime_library()?.display());
    let argv = [
        "env",
        preload.as_str(),
        "FAKETIME=-1h",
        "FAKETIME_DISABLE_SHM=1",
        jupyterhub.as_str(),
        "--generate-certs",
        "-f",
        &config,
    ];
    let failed = |output: &str| HarnessError::Provision {
        what: "internal CAs".into(),
        message: format!(
            "jupyterhub --generate-certs failed: {}",
            output.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        ),
    };
    let here;
    let host = match host {
        Some(host) => host,
        None => {
            here = Host::here()?;
            &here
        }
    };
    let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    host.copy_in(&workdir).await?;
    let ran = host
        .run_to_end(Some(crate::spec::ContainerRole::Hub), &argv, &workdir)
        .await?;
    if !ran.succeeded() {
        return Err(failed(&ran.combined()));
    }
    host.copy_out(internal).await
}

async fn pack_ca_certs(internal: &Path, tarball: &Path) -> Result<()> {
    let internal_text = internal.display().to_string();
    let tar_text = tarball.display().to_string();
    run_tool(
        "ca_certs.tar.gz",
        "tar",
        &["-czf", &tar_text, "-C", &internal_text, "."],
    )
    .await?;
    // It holds every CA's private key.
    set_mode(tarball, 0o600)
}

async fn unpack_ca_certs(tarball: &Path, internal: &Path) -> Result<()> {
    if !tarball.is_file() {
        return Err(HarnessError::Provision {
            what: "hpc.ca_certs".into(),
            message: format!(
                "{} does not exist (fix: point hpc.ca_certs at a ca_certs.tar.gz an earlier run wrote under its artifacts, or remove the key)",
                tarball.display()
            ),
        });
    }
    std::fs::create_dir_all(internal)
        .map_err(|e| HarnessError::io(format!("create {}", internal.display()), e))?;
    let internal_text = internal.display().to_string();
    let tar_text = tarball.display().to_string();
    run_tool(
        "hpc.ca_certs",
        "tar",
        &["-xzf", &tar_text, "-C", &internal_text],
    )
    .await?;
    relocate_certipy_store(internal)?;
    for ca in ["hub-ca", "proxy-client-ca", "notebooks-ca"] {
        if !internal.join(ca).join(format!("{ca}.key")).is_file() {
            return Err(HarnessError::Provision {
                what: "hpc.ca_certs".into(),
                message: format!(
                    "{} holds no {ca}/{ca}.key: not a ca_certs.tar.gz",
                    tarball.display()
                ),
            });
        }
    }
    Ok(())
}

/// certipy's store (`certipy.json`) records absolute paths, so a
/// ca_certs.tar.gz made elsewhere points at files that are not there. Every
/// recorded path is moved to the same `<name>/<file>` under `internal`.
fn relocate_certipy_store(internal: &Path) -> Result<()> {
    let store = internal.join("certipy.json");
    let text = std::fs::read(&store).map_err(|e| HarnessError::Provision {
        what: "hpc.ca_certs".into(),
        message: format!("the tarball holds no certipy.json ({e}): not a ca_certs.tar.gz"),
    })?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| HarnessError::Provision {
            what: "hpc.ca_certs".into(),
            message: format!("its certipy.json is not JSON: {e}"),
        })?;
    fn relocate(value: &mut serde_json::Value, internal: &Path) {
        match value {
            serde_json::Value::String(path) if path.starts_with('/') => {
                let old = Path::new(path.as_str());
                let (Some(file), Some(dir)) =
                    (old.file_name(), old.parent().and_then(|p| p.file_name()))
                else {
                    return;
                };
                let moved = internal.join(dir).join(file);
                if moved.exists() {
                    *path = moved.display().to_string();
                }
            }
            serde_json::Value::Object(map) => map.values_mut().for_each(|v| relocate(v, internal)),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| relocate(v, internal)),
            _ => {}
        }
    }
    relocate(&mut value, internal);
    let text = serde_json::to_vec_pretty(&value).map_err(|e| HarnessError::Provision {
        what: "hpc.ca_certs".into(),
        message: e.to_string(),
    })?;
    write_with_mode(&store, &text, 0o600)
}

impl Drop for HpcSite {
    fn drop(&mut self) {
        // ManagedProcess kills its group on drop; named here for the order:
        // the broker's ssh clients first, then the sshds.
        if let Ok(mut broker) = self.broker.lock() {
            broker.take();
        }
        if let Ok(mut sshd) = self.sshd.lock() {
            sshd.clear();
        }
    }
}

/// Socket inodes of the ESTABLISHED connections to `peer` in a
/// `/proc/<pid>/net/tcp` table (addresses in hex, in the kernel's byte
/// order).
fn established_to(table: &str, peer: SocketAddr) -> Vec<u64> {
    let SocketAddr::V4(peer) = peer else {
        return Vec::new();
    };
    let wanted = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(peer.ip().octets()),
        peer.port()
    );
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 9 && fields[2] == wanted && fields[3] == "01")
                .then(|| fields[9].parse().ok())
                .flatten()
        })
        .collect()
}

/// Processes holding one of `inodes` open that are `ancestor` or descend
/// from it.
fn socket_owners(inodes: &[u64], ancestor: u32) -> Vec<u32> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let descends = |mut pid: u32| {
        for _ in 0..64 {
            if pid == ancestor {
                return true;
            }
            match parent_of(pid) {
                Some(parent) if parent > 1 => pid = parent,
                _ => return false,
            }
        }
        false
    };
    let mut owners = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let holds = std::fs::read_dir(entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
            });
        if holds && descends(pid) {
            owners.push(pid);
        }
    }
    owners
}

#[cfg(test)]
mod connection_tests {
    use super::*;

    #[test]
    fn an_established_connection_to_the_sshd_is_found_by_its_address() {
        // 10.77.2.2:22 from 10.77.2.1:41234, then one listening, one to
        // another port.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 01024D0A:A112 02024D0A:0016 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 20 4 30 10 -1
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0
   2: 01024D0A:A113 02024D0A:0050 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0 20 4 30 10 -1
";
        let sshd = SocketAddr::from((Ipv4Addr::new(10, 77, 2, 2), 22));
        assert_eq!(established_to(table, sshd), vec![4242]);
    }

    #[test]
    fn only_processes_under_the_ancestor_count_as_owners() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
        let inodes = established_to(&table, listener.local_addr().unwrap());
        assert_eq!(inodes.len(), 1);
        let me = std::process::id();
        assert_eq!(socket_owners(&inodes, me), vec![me]);
        assert!(socket_owners(&inodes, 1).is_empty() || me == 1);
    }
}
