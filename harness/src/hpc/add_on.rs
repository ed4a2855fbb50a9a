//! The HPC site as an add-on of the stack: its nodes' plans, what it
//! prepares before the hub (sshd, the internal CAs, the proxy's
//! certificate) and starts beside it (the broker), what it adds to the
//! hub, and the endpoints it brings.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{lab_command_on_nodes, node_plan, HpcSite};
use crate::backend::HostPlan;
use crate::component::ComponentManifest;
use crate::error::{HarnessError, Result};
use crate::provision::Components;
use crate::reachability::InternalEndpoint;
use crate::secret::Secret;
use crate::spec::{StackSpec, Topology};
use crate::stack::sites::{Site, SiteContext, SitePlan, SitePublicSide};
use crate::stack::Stack;
use crate::tls_scan::ScanTarget;

/// The HPC site before the stack runs.
pub struct HpcPlan {
    nodes: BTreeSet<String>,
    site: Option<HpcSite>,
    run_dir: PathBuf,
}

impl HpcPlan {
    pub fn new(topology: &Topology) -> Self {
        let nodes = topology
            .all_hosts()
            .into_iter()
            .filter(|h| topology.is_hpc_node(h))
            .collect();
        HpcPlan {
            nodes,
            site: None,
            run_dir: PathBuf::new(),
        }
    }
}

fn not_prepared() -> HarnessError {
    HarnessError::Network {
        host: "hpc".into(),
        message: "the HPC site was started before it was prepared".into(),
    }
}

#[async_trait::async_trait]
impl SitePlan for HpcPlan {
    /// Login and compute nodes: fresh directories, the components
    /// read-only, the run's system store.
    fn plan_host(
        &self,
        name: &str,
        components: &Components,
        system_store: &Path,
    ) -> Option<HostPlan> {
        self.nodes
            .contains(name)
            .then(|| node_plan(name, components, system_store))
    }

    /// hubtrust's reference broker is its own executable, run on the hub's
    /// host.
    fn operator_files(&self, spec: &StackSpec) -> Result<Vec<(String, PathBuf)>> {
        if spec.hpc.broker_command.is_some() {
            return Ok(Vec::new());
        }
        let exe = std::env::current_exe()
            .map_err(|e| HarnessError::io("find hubtrust's own executable", e))?;
        Ok(vec![(spec.topology.hub_host.clone(), exe)])
    }

    /// The tunnels are long-lived SSH connections opened during start-up:
    /// the wire checks must see them begin.
    fn captures_from_start(&self) -> bool {
        true
    }

    async fn prepare(&mut self, ctx: &SiteContext<'_>) -> Result<()> {
        self.run_dir = ctx.run_dir.to_path_buf();
        self.site = Some(
            HpcSite::prepare(
                ctx.spec,
                ctx.network,
                ctx.components,
                &reqwest::Client::new(),
                ctx.run_dir,
                ctx.progress,
            )
            .await?,
        );
        Ok(())
    }

    /// The proxy's certificate comes from the internal proxy-client-ca,
    /// which labs trust through their client CA bundle; browsers are given
    /// that CA.
    fn public_side(&self) -> Result<Option<SitePublicSide>> {
        let site = self.site.as_ref().ok_or_else(not_prepared)?;
        let ca = self
            .run_dir
            .join("hub/internal-ssl/proxy-client-ca/proxy-client-ca.crt");
        let browser_root = std::fs::read_to_string(&ca)
            .map_err(|e| HarnessError::io("read proxy-client-ca", e))?;
        Ok(Some(SitePublicSide {
            cert: site.proxy_cert.clone(),
            key: site.proxy_key.clone(),
            browser_root,
        }))
    }

    /// Labs run on compute nodes as their own users, from the components'
    /// read-only mount there; the broker starts and opens every tunnel.
    async fn start(
        self: Box<Self>,
        ctx: &SiteContext<'_>,
        http: &reqwest::Client,
        lab: &mut ComponentManifest,
    ) -> Result<Box<dyn Site>> {
        let mut site = self.site.ok_or_else(not_prepared)?;
        lab.command = lab_command_on_nodes(&lab.command, ctx.components);
        lab.args.retain(|a| a != "--allow-root");
        let client = site
            .start_broker(
                ctx.spec,
                ctx.network,
                ctx.org,
                http,
                ctx.marker_env.clone(),
                ctx.progress,
            )
            .await?;
        site.broker_client = Some(client);
        Ok(Box::new(site))
    }
}

#[async_trait::async_trait]
impl Site for HpcSite {
    fn name(&self) -> &'static str {
        "HPC site"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    /// The batch spawner's: where it finds the nodes, the tunnels, the
    /// labs' users.
    fn hub_config_lines(&self, components: &Components) -> Vec<String> {
        HpcSite::hub_config_lines(self, components)
    }

    /// The spawner's module, and the broker's token for the spawner's
    /// calls.
    fn hub_environment(&self, _spec: &StackSpec) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "PYTHONPATH".into(),
                self.dir.join("bin").display().to_string(),
            ),
            (
                "HUBTRUST_BROKER_TOKEN".into(),
                self.broker_token.expose().into(),
            ),
        ])
    }

    /// The batch spawner starts labs on compute nodes, and the hub starts
    /// the proxy itself: the fault scenarios restart the proxy through it.
    fn places_labs(&self) -> bool {
        true
    }

    fn tls_targets(&self, spec: &StackSpec) -> Vec<ScanTarget> {
        vec![ScanTarget {
            endpoint: "tunnel broker".into(),
            from_host: spec.topology.hub_host.clone(),
            addr: SocketAddr::from((self.broker_ip, self.broker_port)),
            server_name: self.broker_ip.to_string(),
            client: None,
        }]
    }

    fn internal_endpoints(&self, spec: &StackSpec) -> Vec<InternalEndpoint> {
        let hub = spec.topology.hub_host.clone();
        let mut endpoints = vec![InternalEndpoint {
            name: "tunnel broker".into(),
            host: hub.clone(),
            port: self.broker_port,
            answers_from: [hub.clone(), "operator".to_string()].into(),
            why: "the hub's spawner and the operator (hubtrust's REST checks, an admin) are its clients, no login or compute node".into(),
        }];
        let login: BTreeSet<String> = self.all_login_nodes().into_iter().map(|l| l.name).collect();
        for node in &login {
            let mut clients: BTreeSet<String> = self.compute_nodes.iter().cloned().collect();
            clients.extend([hub.clone(), node.clone()]);
            endpoints.push(InternalEndpoint {
                name: format!("sshd on {node}"),
                host: node.clone(),
                port: 22,
                answers_from: clients,
                why: "the broker and the spawner on the hub's host, and the compute nodes' users, log in there".into(),
            });
        }
        for node in &self.compute_nodes {
            let mut clients = login.clone();
            clients.insert(node.clone());
            endpoints.push(InternalEndpoint {
                name: format!("sshd on {node}"),
                host: node.clone(),
                port: 22,
                answers_from: clients,
                why: "the spawner reaches it only by jumping through a login node".into(),
            });
        }
        endpoints
    }

    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.broker_token]
    }

    /// Each lab logs on its compute node (`~/lab.log`, which the batch
    /// script opens), outside the run directory: its content so far is
    /// copied to `logs/lab-<user>.log`, beside the hub's log, so errors and
    /// artifacts carry it as they carry a docker lab's.
    fn gather_lab_logs(&self, stack: &Stack) {
        let logs = stack.run_dir.join("logs");
        for node in &self.compute_nodes {
            let Some(pid) = stack.network.host(node).ok().and_then(|h| h.anchor_pid()) else {
                continue;
            };
            for user in &stack.spec.users {
                // The node's own view of its files, through its mount
                // namespace, as the staged-files check reads them.
                let on_node = format!("/proc/{pid}/root/home/{user}/lab.log");
                if let Ok(bytes) = std::fs::read(&on_node) {
                    let _ = crate::pki::write_with_mode(
                        &logs.join(format!("lab-{user}.log")),
                        &bytes,
                        0o600,
                    );
                }
            }
        }
    }

    fn diagnosis(&self, stack: &Stack) -> Option<String> {
        stack.hpc().ok()?.tunnel_log_tail()
    }

    /// Restarts what a fault scenario stopped, puts a rotated proxy
    /// certificate back, and waits until every tunnel answers again.
    async fn restore(&self, stack: &Stack) -> Result<()> {
        stack.hpc()?.restore_site().await
    }
}
