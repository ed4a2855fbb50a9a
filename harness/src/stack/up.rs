//! Bringing a stack up, phase by phase: the run directory and the org
//! PKI, the network, the public side, the hub's config, the hub, the
//! proxy, readiness, the labs. Each phase is a function of what the ones
//! before it made; once the hub runs, `Stack` owns everything and an early
//! return tears it down.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use super::sites::{Site, SiteContext, SitePlan};
use super::{
    capture_links, check_deployment_config_files, component_version, deployment_config_copies,
    external_proxy_args, hub_config_for, io, manifest_with_overrides, overridden_settings,
    place_kernels_on, template_values, Stack, WireCapture, OVERRIDDEN_MARKER, STACK_MARKER_ENV,
};
use crate::backend::{
    Backend, HostFilesystem, HostPlan, LabPlacement, NetworkRequest, StackNetwork,
};
use crate::component::{builtin, ComponentManifest};
use crate::error::{HarnessError, Result};
use crate::pki::{OrgPki, Usage, Validity, Zoo};
use crate::process::{LaunchSpec, ManagedProcess};
use crate::provision::Components;
use crate::ready::ReadyCheck;
use crate::secret::Secret;
use crate::spec::{ContainerRole, StackSpec};
use crate::trust::InternalCa;

type Progress<'a> = &'a (dyn Fn(&str) + Sync);

/// The add-ons `spec` asks for, in the order they are brought up.
fn plans_for(spec: &StackSpec) -> Vec<Box<dyn SitePlan>> {
    let mut plans: Vec<Box<dyn SitePlan>> = Vec::new();
    if spec.topology.hpc.is_some() {
        plans.push(Box::new(crate::hpc::add_on::HpcPlan::new(&spec.topology)));
    }
    if spec.enterprise.is_some() {
        plans.push(Box::new(crate::enterprise::add_on::OutboundPlan));
    }
    plans
}

/// The public side: the proxy's certificate and key, and the extra root
/// browsers trust.
struct PublicSide {
    cert: PathBuf,
    key: PathBuf,
    extra_root: Option<String>,
    addr: SocketAddr,
}

/// The secrets of one run.
struct RunSecrets {
    service_token: Secret,
    proxy_token: Secret,
    user_password: Secret,
}

/// The three components' manifests, with the stack file's overrides, and
/// the values their templates were rendered with.
struct Manifests {
    hub: ComponentManifest,
    proxy: ComponentManifest,
    lab: ComponentManifest,
    values: BTreeMap<&'static str, String>,
}

/// What the hub's config phase decided and started beside it.
struct HubPlan {
    /// The add-ons, running.
    sites: Vec<Box<dyn Site>>,
    /// Whether hubtrust starts the proxy (components run apart).
    proxy_apart: bool,
}

impl Stack {
    /// Brings the stack up and waits until hub, proxy and every lab are
    /// ready. On error everything started so far is torn down.
    pub async fn up(
        spec: StackSpec,
        components: &Components,
        backend: Box<dyn Backend>,
        run_dir: &Path,
        progress: Progress<'_>,
    ) -> Result<Self> {
        let marker = format!(
            "{}-{}-{}",
            spec.name,
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        );
        let run_dir = run_dir.to_path_buf();
        for dir in ["hub", "pki", "logs", "home"] {
            std::fs::create_dir_all(run_dir.join(dir))
                .map_err(io(format!("create {}/{dir}", run_dir.display())))?;
        }
        check_deployment_config_files(&spec).await?;

        progress("generating the org PKI");
        let org = OrgPki::generate()?;
        let system_store = crate::pki::system_store_file(&run_dir);
        crate::pki::write_with_mode(&system_store, org.public.cert_pem().as_bytes(), 0o644)?;

        let mut plans = plans_for(&spec);
        let (network, life_capture) = build_network(
            &spec,
            components,
            backend,
            &run_dir,
            &system_store,
            &plans,
            progress,
        )
        .await?;
        let marker_env = BTreeMap::from([(STACK_MARKER_ENV.to_string(), marker.clone())]);
        let ctx = SiteContext {
            spec: &spec,
            network: &network,
            components,
            org: &org,
            run_dir: &run_dir,
            marker_env,
            progress,
        };
        let public = public_side(&ctx, &mut plans).await?;
        let secrets = RunSecrets {
            service_token: Secret::generate(),
            proxy_token: Secret::generate(),
            user_password: Secret::generate(),
        };
        let org_root = org.root.cert_pem();
        let roots: Vec<&str> = std::iter::once(org_root.as_str())
            .chain(public.extra_root.as_deref())
            .collect();
        let http = crate::hub_api::operator_client(
            &roots,
            &spec.topology.public_name,
            public.addr,
            &secrets.service_token,
        )?;
        check_ports_free(&spec, &network).await?;

        let mut manifests = manifests(&spec, components, &run_dir, &public, &marker)?;
        let component_versions = component_versions(&spec, &network, &manifests).await?;
        let PublicSide {
            cert: public_cert,
            key: public_key,
            extra_root,
            addr: public_addr,
        } = public;
        let plan =
            write_hub_config(&ctx, &http, &marker, &system_store, plans, &mut manifests).await?;
        let hub = start_hub(
            &spec, &network, &run_dir, &marker, &secrets, &manifests, &plan, progress,
        )
        .await?;

        let HubPlan { sites, proxy_apart } = plan;
        let hub_log = run_dir.join("logs").join("jupyterhub.log");
        let mut stack = Stack {
            spec,
            run_dir,
            marker,
            service_token: secrets.service_token,
            proxy_token: secrets.proxy_token,
            user_password: secrets.user_password,
            network,
            hub: Some(hub),
            hub_log,
            proxy: None,
            org,
            zoo: Zoo {
                entries: Vec::new(),
            },
            public_addr,
            http,
            labs: BTreeMap::new(),
            sites,
            browser_extra_root: extra_root,
            life_capture: std::sync::Mutex::new(life_capture),
            kernels: Default::default(),
            component_versions,
            deployment_overridden: Vec::new(),
        };
        // From here on, an early return drops `stack`, which tears down.
        if proxy_apart {
            stack
                .start_proxy_apart(&manifests.proxy, &public_cert, &public_key, progress)
                .await?;
        }
        stack.await_hub(&manifests.hub, progress).await?;
        progress(&format!(
            "hub ready; checking configurable-http-proxy {}",
            manifests.proxy.version
        ));
        stack
            .await_ready("configurable-http-proxy", &manifests.proxy.ready)
            .await?;
        stack.copy_hub_files_out().await?;
        stack.issue_zoo()?;
        for user in stack.spec.users.clone() {
            progress(&format!("spawning a lab for `{user}` through the hub API"));
            if let Err(e) = stack
                .spawn_lab(&user, &manifests.lab.version, &manifests.values)
                .await
            {
                return Err(stack.with_hub_log(e));
            }
        }
        stack.network.run.mark_started();
        progress("stack ready");
        Ok(stack)
    }

    /// The proxy in a container of its own, started by hubtrust, as Zero
    /// to JupyterHub runs it: the hub only talks to its API, which it
    /// waits for.
    async fn start_proxy_apart(
        &mut self,
        proxy: &ComponentManifest,
        public_cert: &Path,
        public_key: &Path,
        progress: Progress<'_>,
    ) -> Result<()> {
        // The hub writes the proxy's certificates before it says this,
        // then gives the proxy's API 30 s to answer.
        let certificates_written = ReadyCheck::LogLine {
            pattern: "Not starting proxy".into(),
            timeout_secs: 90,
        };
        self.await_ready("jupyterhub", &[certificates_written])
            .await?;
        progress(&format!(
            "starting configurable-http-proxy {} in its own container",
            proxy.version
        ));
        let launch = LaunchSpec {
            name: "configurable-http-proxy".into(),
            program: proxy.command[0].clone(),
            args: proxy.command[1..]
                .iter()
                .chain(&proxy.args)
                .cloned()
                .chain(external_proxy_args(
                    &self.spec,
                    &self.internal_ssl_dir(),
                    public_cert,
                    public_key,
                ))
                .collect(),
            env: proxy
                .env
                .clone()
                .into_iter()
                .chain([(
                    "CONFIGPROXY_AUTH_TOKEN".to_string(),
                    self.proxy_token.expose().to_string(),
                )])
                .collect(),
            cwd: self.run_dir.join("hub"),
            log: self
                .run_dir
                .join("logs")
                .join("configurable-http-proxy.log"),
            role: Some(ContainerRole::Proxy),
        };
        let host = self.network.host(&self.spec.topology.hub_host)?;
        self.proxy = Some(host.start(&launch).await?);
        Ok(())
    }

    /// Waits for the hub, then reads which of the deployment's own
    /// settings it overrode.
    async fn await_hub(&mut self, hub: &ComponentManifest, progress: Progress<'_>) -> Result<()> {
        self.await_ready("jupyterhub", &hub.ready).await?;
        if self.spec.hub.config_files.is_empty() {
            return Ok(());
        }
        self.deployment_overridden =
            overridden_settings(&self.hub_log).ok_or_else(|| HarnessError::Spawn {
                component: "jupyterhub".into(),
                message: format!(
                    "the hub ran the deployment's config files but logged no {OVERRIDDEN_MARKER}line, so what hubtrust overrode cannot be shown"
                ),
            })?;
        for o in &self.deployment_overridden {
            progress(&format!(
                "the deployment's config sets {} = {}; the hub runs with {}",
                o.setting, o.deployment, o.final_value
            ));
        }
        Ok(())
    }

    /// The client identities the trust matrix presents, issued by the
    /// hub's own internal CA once the hub has made it.
    fn issue_zoo(&mut self) -> Result<()> {
        let hub_ca = self.internal_ca(InternalCa::Hub)?;
        let zoo_dir = self.run_dir.join("pki").join("zoo");
        self.zoo = Zoo::issue(&hub_ca, &["127.0.0.1", "localhost"])?;
        for (_, identity) in &self.zoo.entries {
            identity.write_to(&zoo_dir)?;
        }
        Ok(())
    }
}

/// The hosts and links, each host with the run's system store, and (HPC)
/// the capture that watches every link from the start.
async fn build_network(
    spec: &StackSpec,
    components: &Components,
    backend: Box<dyn Backend>,
    run_dir: &Path,
    system_store: &Path,
    sites: &[Box<dyn SitePlan>],
    progress: Progress<'_>,
) -> Result<(StackNetwork, Option<WireCapture>)> {
    // Each host gets the run's system store as its own system CA store; an
    // add-on plans the hosts it owns.
    let plans = spec
        .topology
        .all_hosts()
        .iter()
        .map(|name| {
            sites
                .iter()
                .find_map(|site| site.plan_host(name, components, system_store))
                .unwrap_or_else(|| HostPlan {
                    filesystem: Some(HostFilesystem {
                        system_store: Some(system_store.to_path_buf()),
                        ..Default::default()
                    }),
                    ..HostPlan::plain(name)
                })
        })
        .collect();
    let mut operator_files = Vec::new();
    for site in sites {
        operator_files.extend(site.operator_files(spec)?);
    }
    progress(&format!(
        "making the hosts and links ({} backend)",
        backend.name()
    ));
    let request = NetworkRequest {
        plans,
        links: spec.topology.all_links(),
        run_dir: run_dir.to_path_buf(),
        shared_dirs: sites
            .iter()
            .flat_map(|site| site.shared_dirs(spec, run_dir))
            .collect(),
        operator_files,
        logs_dir: run_dir.join("logs"),
    };
    let network = backend.build(&request).await?;
    // Every host of the deployment has the run's system store.
    for (name, host) in &network.hosts {
        if name != "operator" {
            host.install_file(system_store, Path::new(crate::pki::SYSTEM_STORE))
                .await?;
        }
    }
    let life_capture = match sites.iter().any(|site| site.captures_from_start()) {
        true => Some(capture_links(&network, &run_dir.join("capture")).await?),
        false => None,
    };
    Ok((network, life_capture))
}

/// The public side's certificate: an add-on's when one issues it (an HPC
/// site's, from its internal proxy-client-ca, which labs trust through
/// their client CA bundle); the deployment's own when the stack file names
/// one; else from the org CA. Every add-on prepares first.
async fn public_side(ctx: &SiteContext<'_>, sites: &mut [Box<dyn SitePlan>]) -> Result<PublicSide> {
    let (spec, network, org, run_dir) = (ctx.spec, ctx.network, ctx.org, ctx.run_dir);
    let hub_host = &spec.topology.hub_host;
    let hub_ip = network.operator_reaches(hub_host)?;
    let pki = run_dir.join("pki");
    crate::pki::write_with_mode(
        &pki.join("org-root.crt"),
        org.root.cert_pem().as_bytes(),
        0o644,
    )?;
    let mut issued = None;
    for site in sites.iter_mut() {
        site.prepare(ctx).await?;
        if issued.is_none() {
            issued = site.public_side()?;
        }
    }
    let supplied_root = match &spec.pki.public_ca {
        Some(ca) => {
            Some(std::fs::read_to_string(ca).map_err(io(format!("read {}", ca.display())))?)
        }
        None => None,
    };
    let (cert, key, extra_root) = if let Some(side) = issued {
        (side.cert, side.key, Some(side.browser_root))
    } else if let (Some(cert), Some(key)) = (&spec.pki.public_cert, &spec.pki.public_key) {
        // The deployment's own, copied into the run (modes kept) so a
        // proxy on a host of its own reads it too.
        let dir = pki.join("public");
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let (copy_cert, copy_key) = (dir.join("public.crt"), dir.join("public.key"));
        let read = |p: &Path| std::fs::read(p).map_err(io(format!("read {}", p.display())));
        crate::pki::write_with_mode(&copy_cert, &read(cert)?, 0o644)?;
        crate::pki::write_with_mode(&copy_key, &read(key)?, 0o600)?;
        (copy_cert, copy_key, supplied_root)
    } else {
        let hub_ip_text = hub_ip.to_string();
        let public_identity = org.issuing.issue(
            "hub-public",
            &[
                &spec.topology.public_name,
                &hub_ip_text,
                "localhost",
                "127.0.0.1",
            ],
            Usage::Server,
            Validity::fresh(30),
        )?;
        let (cert, key) = public_identity.write_to(&pki.join("public"))?;
        (cert, key, supplied_root)
    };
    Ok(PublicSide {
        cert,
        key,
        extra_root,
        addr: SocketAddr::new(IpAddr::V4(hub_ip), spec.ports.public),
    })
}

/// Refuses ports something on the hub's host already listens on.
async fn check_ports_free(spec: &StackSpec, network: &StackNetwork) -> Result<()> {
    let hub_host = &spec.topology.hub_host;
    let host = network.host(hub_host)?;
    for port in [spec.ports.public, spec.ports.hub, spec.ports.proxy_api] {
        if host.port_in_use(port).await {
            return Err(HarnessError::PortInUse {
                host: hub_host.clone(),
                port,
            });
        }
    }
    Ok(())
}

fn manifests(
    spec: &StackSpec,
    components: &Components,
    run_dir: &Path,
    public: &PublicSide,
    marker: &str,
) -> Result<Manifests> {
    let config_path = run_dir.join("hub").join("jupyterhub_config.py");
    let values = template_values(
        spec,
        components,
        run_dir,
        &config_path,
        &public.cert,
        &public.key,
        marker,
    );
    Ok(Manifests {
        hub: manifest_with_overrides("jupyterhub", builtin::JUPYTERHUB, &values, &spec.hub)?,
        proxy: manifest_with_overrides(
            "configurable-http-proxy",
            builtin::PROXY,
            &values,
            &spec.proxy,
        )?,
        lab: manifest_with_overrides("jupyterlab", builtin::LAB, &values, &spec.lab)?,
        values,
    })
}

/// What runs, for known-defect ranges: each component asked for its own
/// version (a vendor's build or an upstream image answers for itself); one
/// that cannot say has no version to match.
async fn component_versions(
    spec: &StackSpec,
    network: &StackNetwork,
    manifests: &Manifests,
) -> Result<BTreeMap<String, String>> {
    let hub_on = network.host(&spec.topology.hub_host)?;
    let (hub_version, proxy_version) = futures::future::join(
        component_version(hub_on, ContainerRole::Hub, &manifests.hub.command),
        component_version(hub_on, ContainerRole::Proxy, &manifests.proxy.command),
    )
    .await;
    Ok([
        ("jupyterhub", hub_version),
        ("configurable-http-proxy", proxy_version),
    ]
    .into_iter()
    .filter_map(|(name, version)| Some((name.to_string(), version?)))
    .collect())
}

/// Renders the hub's config with what each part of the stack contributes
/// (kernels on a host of their own, each add-on, the backend's lab
/// placement) and writes it, with the deployment's own config files, into
/// the run. The add-ons start here, once the operator's client exists.
async fn write_hub_config(
    ctx: &SiteContext<'_>,
    http: &reqwest::Client,
    marker: &str,
    system_store: &Path,
    plans: Vec<Box<dyn SitePlan>>,
    manifests: &mut Manifests,
) -> Result<HubPlan> {
    let (spec, network, components, run_dir) = (ctx.spec, ctx.network, ctx.components, ctx.run_dir);
    let kernel_netns = match spec
        .topology
        .kernel_host
        .as_ref()
        .filter(|k| **k != spec.topology.lab_host)
    {
        Some(kernel_host) => Some(place_kernels_on(
            kernel_host,
            spec,
            network,
            components,
            run_dir,
            &mut manifests.lab,
        )?),
        None => None,
    };
    let mut sites = Vec::new();
    for plan in plans {
        sites.push(plan.start(ctx, http, &mut manifests.lab).await?);
    }
    let mut render_spec = spec.clone();
    let mut lines: Vec<String> = sites
        .iter()
        .flat_map(|s| s.hub_config_lines(components))
        .collect();
    lines.append(&mut render_spec.hub.extra_config);
    render_spec.hub.extra_config = lines;
    let sites_place_labs = sites.iter().any(|s| s.places_labs());
    let proxy_apart = network.run.components_apart() && !sites_place_labs;
    if proxy_apart {
        render_spec
            .hub
            .extra_config
            .insert(0, "c.ConfigurableHTTPProxy.should_start = False".into());
    }
    if !sites_place_labs {
        let labs = LabPlacement {
            lab_host: spec.topology.lab_host.clone(),
            hub_host: spec.topology.hub_host.clone(),
            public_name: spec.topology.public_name.clone(),
            system_store: system_store.to_path_buf(),
            kernel_netns,
            home_template: format!("{}/home/{{username}}", run_dir.display()),
            spawner_dir: run_dir.join("hub").join("bin"),
        };
        let lines = network.run.hub_config_for_labs(network, &labs)?;
        render_spec.hub.extra_config.splice(0..0, lines);
    }
    let lab_extra_env: Vec<(String, String)> =
        sites.iter().flat_map(|s| s.lab_environment()).collect();
    let config = hub_config_for(
        &render_spec,
        &manifests.values,
        &manifests.proxy,
        &manifests.lab,
        marker,
        lab_extra_env,
    )?;
    let config_path = run_dir.join("hub").join("jupyterhub_config.py");
    crate::pki::write_with_mode(&config_path, config.as_bytes(), 0o644)?;
    for (source, copy) in deployment_config_copies(spec, run_dir) {
        if let Some(dir) = copy.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        }
        std::fs::copy(&source, &copy).map_err(io(format!(
            "copy the deployment's {} into the run",
            source.display()
        )))?;
    }
    Ok(HubPlan { sites, proxy_apart })
}

/// Starts the hub on its host, the run directory made the host's first.
#[allow(clippy::too_many_arguments)]
async fn start_hub(
    spec: &StackSpec,
    network: &StackNetwork,
    run_dir: &Path,
    marker: &str,
    secrets: &RunSecrets,
    manifests: &Manifests,
    plan: &HubPlan,
    progress: Progress<'_>,
) -> Result<ManagedProcess> {
    let hub = &manifests.hub;
    let mut env = hub.env.clone();
    for site in &plan.sites {
        env.extend(site.hub_environment(spec));
    }
    env.insert(
        "CONFIGPROXY_AUTH_TOKEN".into(),
        secrets.proxy_token.expose().into(),
    );
    env.insert(
        "HUBTRUST_SERVICE_TOKEN".into(),
        secrets.service_token.expose().into(),
    );
    env.insert(
        "HUBTRUST_USER_PASSWORD".into(),
        secrets.user_password.expose().into(),
    );
    env.insert(STACK_MARKER_ENV.into(), marker.to_string());
    let launch = LaunchSpec {
        name: "jupyterhub".into(),
        program: hub.command[0].clone(),
        args: hub.command[1..].iter().chain(&hub.args).cloned().collect(),
        env,
        cwd: run_dir.join("hub"),
        log: run_dir.join("logs").join("jupyterhub.log"),
        role: Some(ContainerRole::Hub),
    };
    let hub_host = &spec.topology.hub_host;
    let host = network.host(hub_host)?;
    // The run directory (config, certificates, keys) at the same path,
    // modes kept, on a host with files of its own.
    host.copy_in(run_dir).await?;
    progress(&format!(
        "starting jupyterhub {} on host `{hub_host}`",
        hub.version
    ));
    host.start(&launch).await
}
