//! The docker backend's stack: a container per host, a network per
//! link, and the run that owns them.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use bollard::Docker;
use futures::StreamExt;

use super::{
    daemon_socket, lab_spawner_config, remove_run, DockerEngine, LabContainer, SharedVolume,
    COMPONENT_LABEL, RUN_LABEL, USER_LABEL,
};
use crate::backend::{
    Backend, BackendRun, Host, HostPlan, HostRuntime, InitStep, LabPlacement, Link, NetworkRequest,
    RunOutput, StackNetwork,
};
use crate::error::{HarnessError, Result};
use crate::process::{LaunchSpec, ManagedProcess};
use crate::spec::{ContainerRole, DockerImages};

/// The docker backend: the daemon, and the image for each host and
/// component.
pub struct DockerBackend {
    pub engine: DockerEngine,
    pub images: DockerImages,
}

/// A docker host: its container, and the component containers in its
/// namespaces.
struct ContainerHost {
    engine: DockerEngine,
    name: String,
    volumes: Vec<SharedVolume>,
    /// The components with a container of their own in this host's
    /// namespaces: the container's name.
    components: BTreeMap<ContainerRole, String>,
    /// The image init steps run from: the labs' where labs run here, else
    /// the host's.
    init_image: String,
}

impl ContainerHost {
    /// The container a launch runs in: its component's own, else the
    /// host's.
    fn container_for(&self, role: Option<ContainerRole>) -> &str {
        role.and_then(|r| self.components.get(&r))
            .map_or(&self.name, String::as_str)
    }
}

/// Where an init container finds its inputs.
const INIT_INPUTS: &str = "/hubtrust-init";

#[async_trait::async_trait]
impl HostRuntime for ContainerHost {
    fn backend(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, _host: &Host, spec: &LaunchSpec) -> Result<ManagedProcess> {
        let exec = self
            .engine
            .exec(self.container_for(spec.role), spec)
            .await?;
        Ok(ManagedProcess::started_elsewhere(spec, Box::new(exec)))
    }

    async fn run_to_end(
        &self,
        _host: &Host,
        role: Option<ContainerRole>,
        argv: &[String],
        cwd: &Path,
    ) -> Result<RunOutput> {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (code, output) = self
            .engine
            .run_to_end(self.container_for(role), &argv, Some(cwd))
            .await?;
        Ok(RunOutput {
            code,
            stdout: output,
            stderr: String::new(),
        })
    }

    /// A real init container, as in a Kubernetes pod: the labs' image, no
    /// network, the inputs copied in, the host's volumes mounted; what it
    /// wrote is copied back here.
    async fn run_init_step(&self, host: &Host, step: &InitStep) -> Result<RunOutput> {
        let inside = |name: &str| Path::new(INIT_INPUTS).join(name);
        // A missing input stays missing, as it would in the pod.
        let inputs: Vec<(PathBuf, PathBuf)> = step
            .inputs
            .iter()
            .filter(|(_, source)| source.exists())
            .map(|(name, source)| (source.clone(), inside(name)))
            .collect();
        let argv = step.argv(|name, _| inside(name));
        let ran = tokio::time::timeout(
            step.timeout,
            self.engine.run_init_container(
                &step.name,
                &self.init_image,
                &argv,
                &inputs,
                &self.volumes,
            ),
        )
        .await
        .map_err(|_| HarnessError::Spawn {
            component: step.name.clone(),
            message: format!(
                "init container `{}` did not finish within {}s",
                argv.join(" "),
                step.timeout.as_secs()
            ),
        })??;
        let (code, stdout, stderr) = ran;
        if code == 0 {
            for dir in &step.outputs {
                self.copy_out(host, dir).await?;
            }
        }
        Ok(RunOutput {
            code,
            stdout,
            stderr,
        })
    }

    async fn install_file(&self, _host: &Host, source: &Path, target: &Path) -> Result<()> {
        let containers = std::iter::once(&self.name).chain(self.components.values());
        for container in containers {
            self.engine.copy_file_in(container, source, target).await?;
        }
        Ok(())
    }

    async fn copy_in(&self, _host: &Host, dir: &Path) -> Result<()> {
        self.engine.copy_in(&self.name, dir).await
    }

    async fn copy_out(&self, _host: &Host, dir: &Path) -> Result<()> {
        self.engine.copy_out(&self.name, dir).await
    }

    fn runs_this_machines_files(&self) -> bool {
        false
    }
}

/// The docker objects of one run, owned: dropping it removes every one of
/// them, unless the run is kept for inspection (`hubtrust down` removes it
/// then). The out-of-process reaper covers the paths where no drop runs.
pub struct DockerRun {
    engine: DockerEngine,
    images: DockerImages,
    /// Every host's shared volumes.
    volumes: Vec<SharedVolume>,
    keep: AtomicBool,
    /// Set once the stack is up: before that, a failure keeps the run if
    /// the engine says so.
    started: AtomicBool,
    lab_logs: Option<LabLogs>,
}

impl DockerRun {
    fn host_volumes(&self, host: &str) -> Vec<SharedVolume> {
        self.volumes
            .iter()
            .filter(|v| v.host == host)
            .cloned()
            .collect()
    }
}

#[async_trait::async_trait]
impl BackendRun for DockerRun {
    fn backend(&self) -> &'static str {
        "docker"
    }

    /// A container from `like`'s image with a run volume of its own at
    /// the same path as `like`'s, on a new network to each of `peers`. The
    /// run's labels see to its removal.
    async fn add_host(
        &self,
        network: &StackNetwork,
        plan: &HostPlan,
        like: &str,
        peers: &[String],
    ) -> Result<(Host, Vec<Link>)> {
        let name = plan.name.as_str();
        let engine = &self.engine;
        let image = self
            .images
            .hosts
            .get(like)
            .ok_or_else(|| HarnessError::Docker {
                what: format!("add host `{name}` like `{like}`"),
                message: format!("no image is named for `{like}`"),
            })?;
        let volumes: Vec<SharedVolume> = self
            .host_volumes(like)
            .into_iter()
            .map(|v| SharedVolume {
                name: format!("run-{name}"),
                host: name.into(),
                path: v.path,
            })
            .collect();
        for volume in &volumes {
            engine.create_volume(&volume.name).await?;
        }
        let links: Vec<String> = peers.iter().map(|peer| format!("{peer}--{name}")).collect();
        let mut machine_on_link = HashMap::new();
        for link in &links {
            let created = engine.create_network(link).await?;
            machine_on_link.insert(link.clone(), created.gateway);
        }
        let first = links.first().ok_or_else(|| HarnessError::Network {
            host: name.into(),
            message: "a host needs at least one link".into(),
        })?;
        let container = engine
            .create_host(name, image, first, &volumes, &[])
            .await?;
        for (peer, link) in peers.iter().zip(&links) {
            if link != first {
                engine.attach(&container, link).await?;
            }
            engine.attach(&engine.name(peer), link).await?;
        }
        let (pid, by_link) = engine.inspect_host(&container).await?;
        let host = container_host(
            name,
            pid,
            ContainerHost {
                engine: engine.clone(),
                name: container.clone(),
                volumes,
                components: BTreeMap::new(),
                init_image: image.clone(),
            },
        )?;
        let mut made = Vec::new();
        for (peer, link) in peers.iter().zip(links) {
            let (_, peer_addresses) = engine.inspect_host(&engine.name(peer)).await?;
            let no_address = |host: &str| HarnessError::Network {
                host: host.into(),
                message: format!("docker gave it no address on {link}"),
            };
            let peer_address = *peer_addresses.get(&link).ok_or_else(|| no_address(peer))?;
            let own_address = *by_link.get(&link).ok_or_else(|| no_address(name))?;
            let machine = machine_on_link.get(&link).copied().flatten();
            made.push(
                link_between(
                    (network.host(peer)?, peer_address),
                    (&host, own_address),
                    link.clone(),
                    machine,
                )
                .await?,
            );
        }
        Ok((host, made))
    }

    /// Docker gives each network an address on this machine.
    async fn machine_addresses_near(
        &self,
        network: &StackNetwork,
        host: &str,
    ) -> Result<Vec<Ipv4Addr>> {
        let mut addresses = Vec::new();
        for link in &network.links {
            let ends = [&link.a.0, &link.b.0];
            if ends.contains(&&host.to_string()) && !ends.contains(&&"operator".to_string()) {
                let name = self.engine.name(&link.name);
                addresses.extend(self.engine.gateway_of(&name).await?);
            }
        }
        Ok(addresses)
    }

    fn components_apart(&self) -> bool {
        true
    }

    /// Each lab gets a container of its own from the lab image, made by
    /// the hub's spawner in the lab host's namespaces.
    fn hub_config_for_labs(
        &self,
        network: &StackNetwork,
        labs: &LabPlacement,
    ) -> Result<Vec<String>> {
        let image = self
            .images
            .components
            .get(&ContainerRole::Lab)
            .map(|(_, image)| image.clone())
            .unwrap_or_default();
        std::fs::create_dir_all(&labs.spawner_dir)
            .map_err(|e| HarnessError::io(format!("create {}", labs.spawner_dir.display()), e))?;
        crate::pki::write_with_mode(
            &labs.spawner_dir.join("hubtrust_pod_spawner.py"),
            crate::component::builtin::POD_SPAWNER.as_bytes(),
            0o644,
        )?;
        let (lab_host, hub_host) = (&labs.lab_host, &labs.hub_host);
        let mut lines = Vec::new();
        // A lab on a host of its own reaches the hub, and is reached,
        // across their link, by addresses their certificates name.
        let lab_ip = match lab_host != hub_host {
            true => {
                let no_link = || HarnessError::Network {
                    host: lab_host.clone(),
                    message: format!("no link to the hub's host `{hub_host}`"),
                };
                let hub_end = network
                    .address_towards(hub_host, lab_host)
                    .ok_or_else(no_link)?;
                let lab_end = network
                    .address_towards(lab_host, hub_host)
                    .ok_or_else(no_link)?;
                lines.extend([
                    "c.JupyterHub.hub_ip = \"0.0.0.0\"".to_string(),
                    format!("c.JupyterHub.hub_connect_ip = \"{hub_end}\""),
                    format!("c.JupyterHub.trusted_alt_names.append(\"IP:{hub_end}\")"),
                ]);
                Some(lab_end)
            }
            false => None,
        };
        let kernel_bind = labs
            .kernel_netns
            .as_ref()
            .map(|netns| (PathBuf::from(netns), self.path_in_labs(Path::new(netns))));
        let lab = LabContainer {
            ip: lab_ip,
            // The hub calls the lab by its address; the proxy checks the
            // lab's certificate against the public name it forwards.
            alt_names: lab_ip
                .iter()
                .flat_map(|ip| [format!("DNS:{}", labs.public_name), format!("IP:{ip}")])
                .collect(),
            image,
            files: vec![(
                PathBuf::from(crate::pki::SYSTEM_STORE),
                labs.system_store.clone(),
            )],
            // Entering the kernel host's namespace takes CAP_SYS_ADMIN.
            cap_add: kernel_bind
                .iter()
                .map(|_| "SYS_ADMIN".to_string())
                .collect(),
            binds: kernel_bind.into_iter().collect(),
        };
        lines.extend(lab_spawner_config(
            &self.engine,
            lab_host,
            &lab,
            &self.volumes,
            &labs.home_template,
            &labs.spawner_dir,
        ));
        Ok(lines)
    }

    fn path_in_labs(&self, path: &Path) -> PathBuf {
        // A lab container sees this machine's files only where they are
        // bound; the kernel host's namespace is bound here.
        let name = path.display().to_string().replace('/', "-");
        PathBuf::from(format!("/run/hubtrust-bind{name}"))
    }

    fn images_used(&self) -> BTreeMap<String, String> {
        self.images.table()
    }

    fn notes(&self) -> Vec<String> {
        match self.engine.copies_refetched() {
            0 => Vec::new(),
            n => vec![format!(
                "the docker daemon sent {n} cut-short cop{} of a directory out of a container (a file changed size while it read it); each was fetched again until whole",
                if n == 1 { "y" } else { "ies" }
            )],
        }
    }

    fn mark_started(&self) {
        self.started.store(true, SeqCst);
    }

    fn keep(&self) -> Option<String> {
        self.keep.store(true, SeqCst);
        Some(self.engine.run.clone())
    }
}

/// Host `name` in container `container`'s namespaces.
fn container_host(name: &str, pid: u32, runtime: ContainerHost) -> Result<Host> {
    let container = runtime.name.clone();
    Host::in_namespaces_of(name, pid, true, Box::new(runtime)).map_err(|e| HarnessError::Docker {
        what: format!("enter container {container}"),
        message: format!(
            "{e} (fix: the docker backend enters containers' namespaces, so it needs root and the daemon on this machine)"
        ),
    })
}

#[async_trait::async_trait]
impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    /// One container per host, from the image `images` names for it,
    /// each on a network of its own shared with this machine (the
    /// operator's link; HPC nodes have none), plus a network per direct
    /// link; then each component's own container in its host's
    /// namespaces. A host's containers share the run directory through a
    /// volume, as a pod's containers share an emptyDir: the proxy reads
    /// the certificates the hub writes. On error, the run's drop removes
    /// what was made.
    async fn build(self: Box<Self>, request: &NetworkRequest) -> Result<StackNetwork> {
        let DockerBackend { engine, images } = *self;
        let volumes: Vec<SharedVolume> = request
            .plans
            .iter()
            .map(|plan| SharedVolume {
                name: format!("run-{}", plan.name),
                host: plan.name.clone(),
                path: request.run_dir.clone(),
            })
            .chain(request.shared_dirs.iter().map(|(host, path)| SharedVolume {
                name: format!(
                    "{host}-{}",
                    path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
                ),
                host: host.clone(),
                path: path.clone(),
            }))
            .collect();
        let mut binds: BTreeMap<&str, Vec<PathBuf>> = BTreeMap::new();
        for (host, path) in &request.operator_files {
            binds.entry(host.as_str()).or_default().push(path.clone());
        }
        let mut run = DockerRun {
            engine: engine.clone(),
            images: images.clone(),
            volumes: volumes.clone(),
            keep: AtomicBool::new(false),
            started: AtomicBool::new(false),
            lab_logs: None,
        };
        // From here on, an early return drops the run, which removes what
        // it labelled.
        run.lab_logs = Some(LabLogs::follow(engine.clone(), request.logs_dir.clone()));
        let extra_links = &request.links;
        let mut hosts = BTreeMap::new();
        hosts.insert("operator".to_string(), Host::operator().await?);
        let mut containers = Vec::new();
        let mut gateways = HashMap::new();
        for volume in &volumes {
            engine.create_volume(&volume.name).await?;
        }
        // Each link's address on this machine, which its ends are kept from.
        let mut machine_on_link = HashMap::new();
        for [a, b] in extra_links {
            let link = format!("{a}--{b}");
            let created = engine.create_network(&link).await?;
            machine_on_link.insert(link, created.gateway);
        }
        for plan in &request.plans {
            // A host starts on its link to the operator, or, if it has
            // none (an HPC node), on its first link to another host. Its
            // own filesystem ([`HostPlan::filesystem`]) is the container's.
            let first = match plan.operator_link {
                true => format!("operator--{}", plan.name),
                false => extra_links
                    .iter()
                    .find(|link| link.contains(&plan.name))
                    .map(|[a, b]| format!("{a}--{b}"))
                    .ok_or_else(|| HarnessError::Network {
                        host: plan.name.clone(),
                        message: "it has no link to the operator or to any other host".into(),
                    })?,
            };
            if plan.operator_link {
                let created = engine.create_network(&first).await?;
                let gateway = created.gateway.ok_or_else(|| HarnessError::Docker {
                    what: format!("create network {}", engine.name(&first)),
                    message: "docker gave the network no gateway address".into(),
                })?;
                gateways.insert(plan.name.clone(), (gateway, created.bridge));
            }
            let own = run.host_volumes(&plan.name);
            let image = images
                .hosts
                .get(&plan.name)
                .ok_or_else(|| HarnessError::Docker {
                    what: format!("place host `{}` in a container", plan.name),
                    message: "no image is named for it".into(),
                })?;
            let host_binds = binds.get(plan.name.as_str()).map_or(&[][..], Vec::as_slice);
            let container = engine
                .create_host(&plan.name, image, &first, &own, host_binds)
                .await?;
            for [a, b] in extra_links {
                let link = format!("{a}--{b}");
                if (a == &plan.name || b == &plan.name) && link != first {
                    engine.attach(&container, &link).await?;
                }
            }
            containers.push((plan.name.clone(), container, image.clone(), own));
        }
        let mut runtimes = BTreeMap::new();
        let mut addresses = HashMap::new();
        for (name, container, image, own) in &containers {
            let (pid, by_link) = engine.inspect_host(container).await?;
            let runtime = ContainerHost {
                engine: engine.clone(),
                name: container.clone(),
                volumes: own.clone(),
                components: BTreeMap::new(),
                init_image: image.clone(),
            };
            runtimes.insert(name.clone(), (pid, runtime));
            addresses.insert(name.clone(), by_link);
        }
        for (role, (host, image)) in &images.components {
            let Some((_, runtime)) = runtimes.get_mut(host) else {
                return Err(HarnessError::Docker {
                    what: format!("place the {} container", role.as_str()),
                    message: format!("its host `{host}` is not in the topology"),
                });
            };
            if *role == ContainerRole::Lab {
                // The hub's spawner makes a lab's container when it spawns
                // it; the lab's init steps run from its image.
                runtime.init_image = image.clone();
                continue;
            }
            // The hub's spawner makes the labs' containers through the
            // daemon's socket, as DockerSpawner does.
            let socket = (*role == ContainerRole::Hub).then(daemon_socket);
            let container = engine
                .create_component(
                    host,
                    role.as_str(),
                    image,
                    &runtime.volumes,
                    socket.as_deref(),
                )
                .await?;
            runtime.components.insert(*role, container);
        }
        for (name, (pid, runtime)) in runtimes {
            let container = runtime.name.clone();
            let host = match container_host(&name, pid, runtime) {
                Ok(host) => host,
                // It ran for a moment, then its entrypoint died: the
                // container's state says so better than a missing /proc,
                // once the daemon has noticed.
                Err(e) => return Err(engine.why_it_stopped(&container).await.unwrap_or(e)),
            };
            hosts.insert(name, host);
        }
        let mut network = StackNetwork {
            hosts,
            links: Vec::new(),
            run: Box::new(run),
        };
        let address = |host: &str, link: &str| {
            addresses
                .get(host)
                .and_then(|by_link| by_link.get(link))
                .copied()
                .ok_or_else(|| HarnessError::Network {
                    host: host.into(),
                    message: format!("docker gave it no address on {link}"),
                })
        };
        for (name, ..) in &containers {
            let Some((gateway, bridge)) = gateways.get(name).cloned() else {
                continue;
            };
            let link = format!("operator--{name}");
            network.links.push(Link {
                // The operator's end is the bridge: capture there sees the
                // link whole. The container's end is its first interface.
                interfaces: (bridge, "eth0".into()),
                a: ("operator".into(), gateway),
                b: (name.clone(), address(name, &link)?),
                name: link,
            });
        }
        for [a, b] in extra_links {
            let link = format!("{a}--{b}");
            let (a_address, b_address) = (address(a, &link)?, address(b, &link)?);
            let machine = machine_on_link.get(&link).copied().flatten();
            let made = link_between(
                (network.host(a)?, a_address),
                (network.host(b)?, b_address),
                link,
                machine,
            )
            .await?;
            network.links.push(made);
        }
        Ok(network)
    }
}

/// The task that follows a run's lab containers' logs; dropping it stops
/// every follower.
struct LabLogs(tokio::task::JoinHandle<()>);

impl LabLogs {
    fn follow(engine: DockerEngine, logs_dir: std::path::PathBuf) -> Self {
        // Events are replayed from `since`, so a lab that starts before the
        // subscription is answered is still seen.
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(1))
            .unwrap_or(0)
            .to_string();
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["start".to_string()]),
            (
                "label".to_string(),
                vec![
                    format!("{RUN_LABEL}={}", engine.run),
                    format!("{COMPONENT_LABEL}=lab"),
                ],
            ),
        ]);
        let options = bollard::query_parameters::EventsOptionsBuilder::default()
            .since(&since)
            .filters(&filters)
            .build();
        Self(tokio::spawn(async move {
            // Aborting this task drops the set, which aborts each follower.
            let mut followers = tokio::task::JoinSet::new();
            let mut events = engine.docker.events(Some(options));
            while let Some(Ok(event)) = events.next().await {
                let Some(actor) = event.actor else { continue };
                let (Some(id), Some(attributes)) = (actor.id, actor.attributes) else {
                    continue;
                };
                let user = attributes
                    .get(USER_LABEL)
                    .map(|u| file_safe(u))
                    .unwrap_or_else(|| file_safe(&id));
                let log = logs_dir.join(format!("lab-{user}.log"));
                followers.spawn(follow_container_log(engine.docker.clone(), id, log));
            }
        }))
    }
}

impl Drop for LabLogs {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Appends a container's output, from its start until it ends, to `log`.
async fn follow_container_log(docker: Docker, container: String, log: std::path::PathBuf) {
    use std::io::Write;
    let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    else {
        return;
    };
    let options = bollard::query_parameters::LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut output = docker.logs(&container, Some(options));
    while let Some(Ok(chunk)) = output.next().await {
        let _ = file.write_all(&chunk.into_bytes());
    }
}

/// `name` with anything but letters, digits, `-`, `_` and `.` replaced.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Drop for DockerRun {
    fn drop(&mut self) {
        let failed_to_start = !self.started.load(SeqCst);
        if self.keep.load(SeqCst) || failed_to_start && self.engine.keep_if_start_fails {
            return;
        }
        // Drop cannot await, and the caller's runtime may be shutting down:
        // a thread with a runtime and a connection of its own removes them.
        let run = self.engine.run.clone();
        let removal = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let engine = DockerEngine::connect(&run).await.ok()?;
                remove_run(engine.client(), &run).await.ok()
            })
        });
        if let Ok(None) | Err(_) = removal.join() {
            eprintln!(
                "warning: could not remove the docker objects of run {} (fix: `hubtrust down {}`)",
                self.engine.run, self.engine.run
            );
        }
    }
}

/// A link between two containers on a network of their own, as capture
/// sees it: named after its ends, on the interfaces holding their
/// addresses (capture listens on `a`'s).
///
/// Docker gives every network an address on this machine (its gateway,
/// `machine`), which a link between two hosts has no business reaching: a
/// compute node could otherwise talk to the machine the whole site runs
/// on. Both ends get an `unreachable` route to it, in their own
/// namespaces, so it goes when their containers go.
async fn link_between(
    (a, a_address): (&Host, Ipv4Addr),
    (b, b_address): (&Host, Ipv4Addr),
    name: String,
    machine: Option<Ipv4Addr>,
) -> Result<Link> {
    if let Some(machine) = machine {
        for end in [a, b] {
            end.ip(&["route", "add", "unreachable", &format!("{machine}/32")])
                .await?;
        }
    }
    let interface = a
        .interface_with(a_address)
        .await
        .ok()
        .flatten()
        .ok_or_else(|| HarnessError::Network {
            host: a.name.clone(),
            message: format!("no interface of its container holds {a_address} ({name})"),
        })?;
    let other = b
        .interface_with(b_address)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    Ok(Link {
        interfaces: (interface, other),
        a: (a.name.clone(), a_address),
        b: (b.name.clone(), b_address),
        name,
    })
}
