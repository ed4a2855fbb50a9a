//! A running JupyterHub stack: hub with `internal_ssl`, the proxy the hub
//! starts, and one lab per user spawned through the REST API.
//!
//! `StackSpec` is the data; `Stack` owns the running hosts and processes and
//! tears them down on drop. Scenarios only ever talk to `Stack`.

pub mod sites;
mod under_test;
mod up;

pub use sites::Site;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::backend::HostNetwork;
use crate::backend::{Host, RunOutput, StackNetwork};
use crate::component::{builtin, py, render, ComponentManifest};
use crate::error::{HarnessError, Result};
use crate::inventory::{file_mode, Inventory};
use crate::pki::{CertificateAuthority, Identity, OrgPki, Usage, Validity, Zoo, ZooDefect};
use crate::probe::{probe, HttpRequest, ProbeOutcome, ProbeSpec, Verdict};
use crate::process::{last_lines, sweep_marked, ManagedProcess};
use crate::provision::Components;
use crate::reachability::{probe_reach, Reach};
use crate::ready::{wait_ready, ReadyCheck, ReadyContext};
use crate::secret::Secret;
use crate::spec::StackSpec;
use crate::trust::{ClientAuth, IdentityOrigin, InternalCa};

/// Environment variable every process of a stack carries, so teardown and
/// leak checks can find them all.
pub const STACK_MARKER_ENV: &str = "HUBTRUST_STACK";

/// Environment variable naming one whole `hubtrust` invocation; every
/// process it starts, labs included, carries it.
pub const RUN_MARKER_ENV: &str = "HUBTRUST_RUN_ID";

const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// Something a client connects to.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub name: String,
    /// The host the endpoint's real clients connect from.
    pub from_host: String,
    pub addr: SocketAddr,
    /// The name real clients verify the certificate against.
    pub server_name: String,
    pub client_auth: ClientAuth,
    #[serde(skip)]
    pub request: HttpRequest,
}

/// A client identity the trust matrix presents.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub label: String,
    pub origin: IdentityOrigin,
    pub identity: Option<Identity>,
}

/// A real client of a server, for "chain verifies under the bundle its real
/// clients use, for the name they use".
#[derive(Debug, Clone, Serialize)]
pub struct RealClientPath {
    pub server: String,
    pub client: String,
    /// File name of the bundle the client verifies with.
    pub bundle: String,
    pub server_name: String,
}

/// A secret file and its mode, for the 0600 check.
#[derive(Debug, Clone, Serialize)]
pub struct SecretFile {
    pub path: PathBuf,
    pub mode: String,
}

#[derive(Debug, Clone)]
struct Lab {
    addr: SocketAddr,
    identity: Identity,
    /// From the spawn request to the lab answering through the proxy.
    ready_after: Duration,
}

pub struct Stack {
    pub spec: StackSpec,
    pub run_dir: PathBuf,
    pub marker: String,
    pub service_token: Secret,
    pub proxy_token: Secret,
    /// The password every user logs in with (DummyAuthenticator).
    pub user_password: Secret,
    pub(crate) network: StackNetwork,
    hub: Option<ManagedProcess>,
    hub_log: PathBuf,
    /// The proxy, when hubtrust starts it apart from the hub (docker: a
    /// container of its own); otherwise the hub starts and owns it.
    proxy: Option<ManagedProcess>,
    org: OrgPki,
    zoo: Zoo,
    public_addr: SocketAddr,
    pub(crate) http: reqwest::Client,
    labs: BTreeMap<String, Lab>,
    /// The add-ons the stack holds (an HPC site, an enterprise outbound
    /// side), in the order they were brought up.
    sites: Vec<Box<dyn Site>>,
    /// Each stock component's version (see [`crate::known_defects`]).
    pub component_versions: BTreeMap<String, String>,
    /// Settings of the deployment's own config files that ended up with
    /// another value (`[hub] config_files`).
    pub deployment_overridden: Vec<OverriddenSetting>,
    /// A CA browsers trust beside the org root (HPC: proxy-client-ca).
    browser_extra_root: Option<String>,
    /// The capture running since the links were made (HPC stacks), until
    /// a wire scenario takes it.
    life_capture: std::sync::Mutex<Option<WireCapture>>,
    /// Each user's kernel, which later cells run in, as a notebook's do.
    kernels: std::sync::Mutex<BTreeMap<String, String>>,
}

/// `<program> --version`, run where the component runs: the version it
/// prints (`6.1.1`), or `None` when it prints none.
async fn component_version(
    host: &Host,
    role: crate::spec::ContainerRole,
    command: &[String],
) -> Option<String> {
    let program = command.first()?;
    // `jupyterhub --version` imports the whole app (2 s); the venv's own
    // python reads the installed distribution's version in milliseconds.
    let python = Path::new(program).with_file_name("python");
    let distribution = Path::new(program).file_name()?.to_str()?;
    let script = format!("import importlib.metadata as m; print(m.version({distribution:?}))");
    let python = python.display().to_string();
    let argv: Vec<&str> = match role == crate::spec::ContainerRole::Hub && python.starts_with('/') {
        true => vec![&python, "-c", &script],
        false => vec![program, "--version"],
    };
    let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    let output = host
        .run_to_end(Some(role), &argv, Path::new("/"))
        .await
        .ok()
        .filter(RunOutput::succeeded)?
        .stdout;
    output
        .split_whitespace()
        .find(|word| {
            word.contains('.')
                && word
                    .split('.')
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        })
        .map(str::to_string)
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> HarnessError {
    move |e| HarnessError::io(context, e)
}

impl Stack {
    /// Each component's and host's image, with its id: what a conformance
    /// report says was tested. Empty where nothing runs from an image.
    pub fn images_used(&self) -> BTreeMap<String, String> {
        self.network.run.images_used()
    }

    /// What the backend had to work around so far, for the report.
    pub fn backend_notes(&self) -> Vec<String> {
        self.network.run.notes()
    }

    /// Leaves what the backend made in place after this stack is gone;
    /// the run id `hubtrust down` takes, if anything outlives the process.
    pub fn keep_backend_objects(&self) -> Option<String> {
        self.network.run.keep()
    }

    /// On docker, what the hub wrote (internal-ssl, the labs' certificates,
    /// the cookie secret) is copied back here, where every check reads it.
    async fn copy_hub_files_out(&self) -> Result<()> {
        self.network
            .host(&self.spec.topology.hub_host)?
            .copy_out(&self.run_dir.join("hub"))
            .await
    }

    /// A hub API failure is explained by the hub's log and, where labs log
    /// apart from the hub (docker: `logs/lab-<user>.log`), by theirs, all
    /// gone once the run is torn down: their last lines go into the error.
    fn with_hub_log(&self, e: HarnessError) -> HarnessError {
        match e {
            HarnessError::HubApi { call, message } => {
                let mut message = format!(
                    "{message}\n  last lines of the hub's log:\n    {}",
                    last_lines(&self.hub_log, 15).join("\n    ")
                );
                for (user, log) in self.lab_logs() {
                    message.push_str(&format!(
                        "\n  last lines of {user}'s lab's log:\n    {}",
                        last_lines(&log, 15).join("\n    ")
                    ));
                }
                HarnessError::HubApi { call, message }
            }
            other => other,
        }
    }

    /// A lab that never became ready is explained by its own log too,
    /// where it is kept apart from the hub's.
    fn with_lab_log(&self, user: &str, e: HarnessError) -> HarnessError {
        match e {
            HarnessError::NotReady {
                component,
                check,
                seconds,
                mut last_lines,
            } => {
                // On the local backend the lab's output is in the hub's log.
                let mut lab_lines = crate::process::last_lines(&self.hub_log, 5000);
                for (_, log) in self.lab_logs().into_iter().filter(|(u, _)| u == user) {
                    lab_lines.extend(crate::process::last_lines(&log, 5000));
                    last_lines.push(format!("— last lines of {user}'s lab's log:"));
                    last_lines.extend(crate::process::last_lines(&log, 15));
                }
                if let Some(cause) = crate::diagnosis::cause_in_log(&lab_lines) {
                    return HarnessError::DeploymentDefect {
                        component: format!("the lab of {user}"),
                        check,
                        finding: cause,
                        last_lines,
                    };
                }
                HarnessError::NotReady {
                    component,
                    check,
                    seconds,
                    last_lines,
                }
            }
            HarnessError::DeploymentDefect {
                component: _,
                check,
                finding,
                mut last_lines,
            } => {
                let component = format!("the lab of {user}");
                for (_, log) in self.lab_logs().into_iter().filter(|(u, _)| u == user) {
                    last_lines.push(format!("— last lines of {user}'s lab's log:"));
                    last_lines.extend(crate::process::last_lines(&log, 15));
                }
                HarnessError::DeploymentDefect {
                    component,
                    check,
                    finding,
                    last_lines,
                }
            }
            other => other,
        }
    }

    /// Copies labs' logs kept outside the run directory (an HPC site's
    /// compute nodes) beside the hub's log, for errors and artifacts.
    pub fn gather_lab_logs(&self) {
        for site in &self.sites {
            site.gather_lab_logs(self);
        }
    }

    /// The labs' own logs, by user, where they are kept apart from the
    /// hub's.
    fn lab_logs(&self) -> Vec<(String, PathBuf)> {
        self.gather_lab_logs();
        let logs = self
            .hub_log
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut found: Vec<_> = std::fs::read_dir(&logs)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_str()?.to_string();
                let user = name.strip_prefix("lab-")?.strip_suffix(".log")?;
                Some((user.to_string(), entry.path()))
            })
            .collect();
        found.sort();
        found
    }

    /// Waits for `checks`, watching the process that runs `component`: the
    /// proxy's own when hubtrust started it, else the hub (which starts
    /// the proxy otherwise).
    async fn await_ready(&mut self, component: &str, checks: &[ReadyCheck]) -> Result<()> {
        let Self {
            network,
            http,
            hub,
            proxy,
            spec,
            public_addr,
            ..
        } = self;
        let watched = match proxy {
            Some(proxy) if component == "configurable-http-proxy" => proxy,
            _ => hub.as_mut().ok_or_else(|| HarnessError::Spawn {
                component: component.into(),
                message: "the hub is not running".into(),
            })?,
        };
        let log = watched.log.clone();
        let names = [(spec.topology.public_name.clone(), *public_addr)];
        let ctx = ReadyContext {
            network: &*network,
            http: &*http,
            log: log.as_path(),
            names: &names,
        };
        for check in checks {
            wait_ready(component, check, &ctx, watched).await?;
        }
        Ok(())
    }

    async fn spawn_lab(
        &mut self,
        user: &str,
        _version: &str,
        values: &BTreeMap<&str, String>,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let base = self.public_base();
        let api = crate::hub_api::HubApi {
            http: &self.http,
            base,
        };
        api.create_user(user).await?;
        // The hub tried and the lab failed: a defect of the deployment, as
        // when the lab dies after a slow spawn (see with_lab_log).
        if let crate::hub_api::ServerStart::SpawnerFailed { message } =
            api.start_server(user).await?
        {
            return Err(self.with_lab_log(
                user,
                HarnessError::DeploymentDefect {
                    component: format!("the lab of {user}"),
                    check: format!("POST /users/{user}/server"),
                    finding: format!("the hub could not start it: {message}"),
                    last_lines: crate::process::last_lines(&self.hub_log, 15),
                },
            ));
        }
        let mut values = values.clone();
        values.insert("user", user.to_string());
        let lab_manifest =
            manifest_with_overrides("jupyterlab", builtin::LAB, &values, &self.spec.lab)?;
        self.await_ready(&format!("jupyterlab ({user})"), &lab_manifest.ready)
            .await
            .map_err(|e| self.with_lab_log(user, e))?;

        let addr = self.lab_address(user).await?;
        self.copy_hub_files_out().await?;
        let identity = self.lab_identity(user)?;
        self.labs.insert(
            user.to_string(),
            Lab {
                addr,
                identity,
                ready_after: started.elapsed(),
            },
        );
        Ok(())
    }

    /// The lab's real address, read from the proxy's routing table.
    pub(crate) async fn lab_address(&self, user: &str) -> Result<SocketAddr> {
        let hub_identity = self.internal_identity("hub-internal")?;
        let outcome = self
            .probe_at(
                &self.spec.topology.hub_host,
                SocketAddr::from((Ipv4Addr::LOCALHOST, self.spec.ports.proxy_api)),
                "127.0.0.1",
                &self.trust_bundle(InternalCa::Hub)?,
                Some(hub_identity),
                HttpRequest::get("/api/routes").with_token(self.proxy_token.clone()),
            )
            .await;
        let body = outcome
            .http
            .as_ref()
            .map(|h| h.body.clone())
            .unwrap_or_default();
        let routes: serde_json::Value =
            serde_json::from_str(body.trim()).map_err(|e| HarnessError::Probe {
                endpoint: "proxy API /api/routes".into(),
                message: format!("{} ({}): {e}", outcome.verdict, outcome.detail),
            })?;
        // CHP may store the prefix with or without its trailing slash.
        let target = routes
            .as_object()
            .and_then(|all| {
                all.iter()
                    .find(|(k, _)| k.trim_end_matches('/') == format!("/user/{user}"))
            })
            .and_then(|(_, r)| r.get("target"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| HarnessError::Probe {
                endpoint: "proxy API /api/routes".into(),
                message: format!("no route for /user/{user}/ among {}", body.trim()),
            })?;
        let authority = target
            .split("://")
            .nth(1)
            .map(|rest| rest.split('/').next().unwrap_or(rest))
            .unwrap_or(target);
        authority.parse().map_err(|_| HarnessError::Probe {
            endpoint: "proxy API /api/routes".into(),
            message: format!("route target {target:?} is not an IP:port address"),
        })
    }

    /// The certificate JupyterHub issued for a user's lab (`user-<name>`).
    fn lab_identity(&self, user: &str) -> Result<Identity> {
        let name = format!("user-{user}");
        let cert = find_file(&self.run_dir, &format!("{name}.crt")).ok_or_else(|| {
            HarnessError::Probe {
                endpoint: format!("lab of {user}"),
                message: format!(
                    "JupyterHub wrote no {name}.crt under {}",
                    self.run_dir.display()
                ),
            }
        })?;
        Identity::load(&name, &cert, &cert.with_extension("key"))
    }

    pub fn internal_ssl_dir(&self) -> PathBuf {
        self.run_dir.join("hub").join("internal-ssl")
    }

    pub fn hub_log(&self) -> &Path {
        &self.hub_log
    }

    /// The rendered `jupyterhub_config.py` (no secrets inside).
    pub fn hub_config(&self) -> PathBuf {
        self.run_dir.join("hub").join("jupyterhub_config.py")
    }

    /// Adopts one of JupyterHub's CAs so the harness can issue under it.
    fn internal_ca(&self, ca: InternalCa) -> Result<CertificateAuthority> {
        let dir = self.internal_ssl_dir().join(ca.dir_name());
        let read = |ext: &str| {
            let path = dir.join(format!("{}.{ext}", ca.dir_name()));
            std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))
        };
        CertificateAuthority::adopt(ca.dir_name(), &read("crt")?, &read("key")?)
    }

    /// A leaf JupyterHub generated (`hub-internal`, `proxy-api`, `proxy-client`).
    pub fn internal_identity(&self, name: &str) -> Result<Identity> {
        let dir = self.internal_ssl_dir().join(name);
        Identity::load(
            name,
            &dir.join(format!("{name}.crt")),
            &dir.join(format!("{name}.key")),
        )
    }

    /// The PEM of an internal `<ca>_trust.crt` bundle.
    pub fn trust_bundle(&self, ca: InternalCa) -> Result<String> {
        let path = self.internal_ssl_dir().join(ca.trust_bundle_file());
        std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))
    }

    /// What browsers trust: the org root, and on an HPC site the internal
    /// proxy-client-ca that signs the proxy's certificate.
    pub fn org_bundle(&self) -> String {
        let mut pem = self.org.root.cert_pem();
        if let Some(extra) = &self.browser_extra_root {
            pem.push_str(extra);
        }
        pem
    }

    fn bundle_by_file(&self, file: &str) -> Result<String> {
        if file == "org-root.crt" {
            return Ok(self.org_bundle());
        }
        let path = self.internal_ssl_dir().join(file);
        std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))
    }

    pub fn users(&self) -> Vec<String> {
        self.labs.keys().cloned().collect()
    }

    /// Where the hub and proxy reach labs from: the lab's host, or on an
    /// HPC site the hub's host, where the broker's tunnels end.
    fn lab_reached_from(&self) -> String {
        match self.site_places_labs() {
            true => self.spec.topology.hub_host.clone(),
            false => self.spec.topology.lab_host.clone(),
        }
    }

    /// Whether an add-on places the labs (an HPC site's batch spawner)
    /// rather than the backend.
    pub(crate) fn site_places_labs(&self) -> bool {
        self.sites.iter().any(|s| s.places_labs())
    }

    /// How long `user`'s lab took from the spawn request to answering
    /// through the proxy.
    pub fn lab_ready_after(&self, user: &str) -> Option<Duration> {
        self.labs.get(user).map(|l| l.ready_after)
    }

    /// Every secret of the stack that must never reach a log or report:
    /// the service and proxy tokens, the users' password, the broker's
    /// token.
    pub fn secrets(&self) -> Vec<&Secret> {
        let mut all = vec![&self.service_token, &self.proxy_token, &self.user_password];
        for site in self.sites() {
            all.extend(site.secrets());
        }
        all
    }

    /// The site add-ons this stack holds.
    pub fn sites(&self) -> Vec<&dyn Site> {
        self.sites.iter().map(|s| s.as_ref()).collect()
    }

    /// The add-on of type `S`, for its own steps.
    pub fn site<S: Site + 'static>(&self) -> Option<&S> {
        self.sites
            .iter()
            .find_map(|s| s.as_any().downcast_ref::<S>())
    }

    /// What each site says explains a failure that crossed it, each on
    /// lines of its own after a newline; empty when none says anything.
    pub fn site_diagnoses(&self) -> String {
        self.sites()
            .iter()
            .filter_map(|site| site.diagnosis(self))
            .map(|d| format!("\n{d}"))
            .collect()
    }

    /// Restores every site a scenario may have disturbed; the first
    /// failure names its site.
    pub async fn restore_sites(&self) -> Result<()> {
        for site in self.sites() {
            site.restore(self)
                .await
                .map_err(|e| HarnessError::SiteNotRestored {
                    site: site.name().into(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Stops and discards the capture an HPC stack runs from its start
    /// (benchmarks: recording every packet is not part of the system
    /// under test). A later wire capture starts from then.
    pub fn discard_start_up_capture(&self) {
        let capture = self.life_capture.lock().ok().and_then(|mut c| c.take());
        if let Some(capture) = capture {
            let pcaps: Vec<PathBuf> = capture.captures.iter().map(|c| c.pcap.clone()).collect();
            // Dropping the captures closes their wake pipes; the threads end.
            drop(capture);
            for pcap in pcaps {
                let _ = std::fs::remove_file(pcap);
            }
        }
    }

    /// Tries `port` on every address `to` has, from `from`, as a process on
    /// `from` would. A refused connection still proves a route.
    pub async fn reach(&self, from: &str, to: &str, port: u16) -> Result<Vec<(Ipv4Addr, Reach)>> {
        let source = self.network.host(from)?;
        // All addresses at once: where a network drops rather than refuses
        // (docker's isolation rules), each probe waits out its timeout.
        let probes = self
            .network
            .addresses_of(to)
            .into_iter()
            .map(|addr| async move {
                (
                    addr,
                    probe_reach(source, SocketAddr::from((addr, port))).await,
                )
            });
        Ok(futures::future::join_all(probes).await)
    }

    /// Every endpoint of the stack, as its real clients reach it.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let hub_host = self.spec.topology.hub_host.clone();
        let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut endpoints = vec![
            Endpoint {
                name: "hub API".into(),
                from_host: hub_host.clone(),
                addr: local(self.spec.ports.hub),
                server_name: "127.0.0.1".into(),
                client_auth: ClientAuth::Required(InternalCa::Hub),
                request: HttpRequest::get("/hub/api/"),
            },
            Endpoint {
                name: "proxy API".into(),
                from_host: hub_host.clone(),
                addr: local(self.spec.ports.proxy_api),
                server_name: "127.0.0.1".into(),
                client_auth: ClientAuth::Required(InternalCa::ProxyApi),
                request: HttpRequest::get("/api/routes"),
            },
            Endpoint {
                name: "proxy public".into(),
                from_host: "operator".into(),
                addr: self.public_addr,
                server_name: self.spec.topology.public_name.clone(),
                client_auth: ClientAuth::NotRequested,
                request: HttpRequest::get("/hub/health"),
            },
        ];
        for (user, lab) in &self.labs {
            endpoints.push(Endpoint {
                name: format!("lab of {user}"),
                from_host: self.lab_reached_from(),
                addr: lab.addr,
                server_name: "127.0.0.1".into(),
                client_auth: ClientAuth::Required(InternalCa::Notebooks),
                request: HttpRequest::get(format!("/user/{user}/api")),
            });
        }
        endpoints
    }

    /// Every TLS endpoint the stack exposes, each with an identity it
    /// accepts where it requires one: the endpoints of the trust matrix,
    /// the HPC broker, the enterprise outbound servers.
    pub fn tls_scan_targets(&self) -> Result<Vec<crate::tls_scan::ScanTarget>> {
        let identities = self.client_identities()?;
        let mut targets = Vec::new();
        for endpoint in self.endpoints() {
            let client = match endpoint.client_auth {
                ClientAuth::NotRequested => None,
                ClientAuth::Required(_) => identities
                    .iter()
                    .find(|id| {
                        matches!(id.origin, IdentityOrigin::Internal(_))
                            && crate::trust::expected_verdict(endpoint.client_auth, id.origin).0
                                == crate::probe::Verdict::Accepted
                    })
                    .and_then(|id| id.identity.clone()),
            };
            targets.push(crate::tls_scan::ScanTarget {
                endpoint: endpoint.name,
                from_host: endpoint.from_host,
                addr: endpoint.addr,
                server_name: endpoint.server_name,
                client,
            });
        }
        for site in &self.sites {
            targets.extend(site.tls_targets(&self.spec));
        }
        Ok(targets)
    }

    /// Scans every TLS endpoint, all at once.
    pub async fn tls_scan(&self) -> Result<Vec<crate::tls_scan::EndpointScan>> {
        let targets = self.tls_scan_targets()?;
        for target in &targets {
            self.network.host(&target.from_host)?;
        }
        Ok(futures::future::join_all(
            targets
                .iter()
                .map(|target| crate::tls_scan::scan(&self.network, target)),
        )
        .await)
    }

    /// The internal endpoints and the hosts their clients run on, from the
    /// topology's design.
    pub fn internal_endpoints(&self) -> Vec<crate::reachability::InternalEndpoint> {
        use crate::reachability::InternalEndpoint;
        let topology = &self.spec.topology;
        let hub = topology.hub_host.clone();
        let only_hub: std::collections::BTreeSet<String> = [hub.clone()].into();
        let labs_apart = !self.site_places_labs() && topology.lab_host != hub;
        let mut endpoints = vec![
            InternalEndpoint {
                name: "hub API".into(),
                host: hub.clone(),
                port: self.spec.ports.hub,
                answers_from: match labs_apart {
                    // The hub listens on every interface so labs on their
                    // own host reach it (hub_connect_ip).
                    true => self.network.hosts.keys().cloned().collect(),
                    false => only_hub.clone(),
                },
                why: "the proxy and the labs on the hub's host are its clients".into(),
            },
            InternalEndpoint {
                name: "proxy API".into(),
                host: hub.clone(),
                port: self.spec.ports.proxy_api,
                answers_from: only_hub.clone(),
                why: "the hub is its only client".into(),
            },
        ];
        if !self.site_places_labs() {
            let lab_host = &topology.lab_host;
            for (user, lab) in &self.labs {
                endpoints.push(InternalEndpoint {
                    name: format!("lab of {user}"),
                    host: lab_host.clone(),
                    port: lab.addr.port(),
                    answers_from: [hub.clone(), lab_host.clone()].into(),
                    why: "the hub and the proxy are its clients".into(),
                });
            }
        }
        for site in &self.sites {
            endpoints.extend(site.internal_endpoints(&self.spec));
        }
        endpoints
    }

    /// A running kernel's ZeroMQ ports as internal endpoints: the lab
    /// server on the lab's host is their only client.
    pub async fn kernel_endpoints(
        &self,
        user: &str,
    ) -> Result<Vec<crate::reachability::InternalEndpoint>> {
        let run = self.run_cell(user, "print('hubtrust')").await?;
        let (_, ports) = self.kernel_ports(&run.kernel_id).await?;
        let lab_host = &self.spec.topology.lab_host;
        Ok(ports
            .into_iter()
            .map(|(channel, port)| crate::reachability::InternalEndpoint {
                name: format!("kernel {channel} port of {user}"),
                host: lab_host.clone(),
                port,
                answers_from: [lab_host.clone()].into(),
                why: "the lab server next to the kernel is its only client".into(),
            })
            .collect())
    }

    /// Every internal endpoint probed from every host of the topology (all
    /// at once: where a network drops rather than refuses, each probe waits
    /// out its timeout).
    pub async fn reachability_matrix(&self) -> Result<Vec<crate::reachability::ReachCell>> {
        let mut endpoints = self.internal_endpoints();
        // A kernel's connection file lies on the lab's host; HPC compute
        // nodes keep it in their own /home, out of reach here.
        if !self.site_places_labs() {
            if let Some(user) = self.labs.keys().next() {
                endpoints.extend(self.kernel_endpoints(user).await?);
            }
        }
        let mut plan = Vec::new();
        for endpoint in endpoints {
            for from in self.network.hosts.keys() {
                let mut addrs = self.network.addresses_of(&endpoint.host);
                if *from == endpoint.host {
                    addrs.insert(0, Ipv4Addr::LOCALHOST);
                }
                for addr in addrs {
                    plan.push((endpoint.clone(), from.clone(), addr));
                }
            }
        }
        let mut probes = Vec::new();
        for (endpoint, from, addr) in &plan {
            let source = self.network.host(from)?;
            probes.push(async move {
                probe_reach(source, SocketAddr::from((*addr, endpoint.port))).await
            });
        }
        let seen = futures::future::join_all(probes).await;
        Ok(plan
            .iter()
            .zip(seen)
            .map(|((endpoint, from, addr), reach)| {
                crate::reachability::ReachCell::new(
                    endpoint,
                    from,
                    *addr,
                    &reach,
                    endpoint.answers_from.contains(from),
                )
            })
            .collect())
    }

    /// Every client identity of the trust matrix.
    pub fn client_identities(&self) -> Result<Vec<ClientIdentity>> {
        let mut ids = vec![ClientIdentity {
            label: "none".into(),
            origin: IdentityOrigin::Anonymous,
            identity: None,
        }];
        for (name, ca) in [
            ("hub-internal", InternalCa::Hub),
            ("proxy-client", InternalCa::ProxyClient),
            ("proxy-api", InternalCa::ProxyApi),
        ] {
            ids.push(ClientIdentity {
                label: name.into(),
                origin: IdentityOrigin::Internal(ca),
                identity: Some(self.internal_identity(name)?),
            });
        }
        if let Some((user, lab)) = self.labs.iter().next() {
            ids.push(ClientIdentity {
                label: format!("lab cert ({user})"),
                origin: IdentityOrigin::Internal(InternalCa::Notebooks),
                identity: Some(lab.identity.clone()),
            });
        }
        let org_client = self.org.issuing.issue(
            "org-client",
            &["client.hubtrust.test"],
            Usage::Client,
            Validity::fresh(1),
        )?;
        let foreign_client = self.org.foreign.issue(
            "foreign-client",
            &["client.hubtrust.test"],
            Usage::Client,
            Validity::fresh(1),
        )?;
        ids.push(ClientIdentity {
            label: "org-CA cert".into(),
            origin: IdentityOrigin::Org,
            identity: Some(org_client),
        });
        ids.push(ClientIdentity {
            label: "public-CA cert".into(),
            origin: IdentityOrigin::Public,
            identity: Some(self.org.public.issue(
                "public-client",
                &["client.hubtrust.test"],
                Usage::Client,
                Validity::fresh(1),
            )?),
        });
        ids.push(ClientIdentity {
            label: "foreign-CA cert".into(),
            origin: IdentityOrigin::Foreign,
            identity: Some(foreign_client),
        });
        for defect in ZooDefect::ALL {
            ids.push(ClientIdentity {
                label: defect.label().into(),
                origin: IdentityOrigin::Zoo(defect),
                identity: Some(self.zoo.get(defect).clone()),
            });
        }
        Ok(ids)
    }

    /// The trust anchors a probe of `endpoint` verifies the server with.
    pub fn server_trust_for(&self, endpoint: &Endpoint) -> Result<String> {
        match endpoint.client_auth {
            ClientAuth::NotRequested => Ok(self.org_bundle()),
            ClientAuth::Required(_) => self.trust_bundle(InternalCa::Hub),
        }
    }

    /// Probes `endpoint` presenting `identity`.
    pub async fn probe(&self, endpoint: &Endpoint, identity: Option<&Identity>) -> ProbeOutcome {
        let trust = match self.server_trust_for(endpoint) {
            Ok(t) => t,
            Err(e) => return ProbeOutcome::failed(Verdict::Other, e.to_string()),
        };
        self.probe_at(
            &endpoint.from_host,
            endpoint.addr,
            &endpoint.server_name,
            &trust,
            identity.cloned(),
            endpoint.request.clone(),
        )
        .await
    }

    /// The lowest-level probe: from a host, to an address, with a trust
    /// store, identity and request of the caller's choosing.
    pub async fn probe_at(
        &self,
        from_host: &str,
        addr: SocketAddr,
        server_name: &str,
        trust_pem: &str,
        client: Option<Identity>,
        request: HttpRequest,
    ) -> ProbeOutcome {
        let stream = match self.network.connect_from(from_host, addr).await {
            Ok(s) => s,
            Err(e) => {
                return ProbeOutcome::failed(
                    Verdict::ConnectFailed,
                    format!("{addr} from {from_host}: {e}"),
                )
            }
        };
        let spec = ProbeSpec {
            server_name: server_name.into(),
            trust_pem: trust_pem.into(),
            client,
            request,
            timeout: PROBE_TIMEOUT,
        };
        probe(stream, &spec).await
    }

    /// Each server with each of its real clients: the bundle that client
    /// verifies with and the name it connects to.
    pub fn real_client_paths(&self) -> Vec<RealClientPath> {
        let path = |server: &str, client: &str, bundle: String, name: &str| RealClientPath {
            server: server.into(),
            client: client.into(),
            bundle,
            server_name: name.into(),
        };
        let mut paths = vec![
            path(
                "hub API",
                "proxy-client",
                InternalCa::ProxyClient.trust_bundle_file(),
                "127.0.0.1",
            ),
            path(
                "proxy API",
                "hub-internal",
                InternalCa::Hub.trust_bundle_file(),
                "127.0.0.1",
            ),
            path(
                "proxy public",
                "browser",
                "org-root.crt".into(),
                &self.spec.topology.public_name,
            ),
        ];
        for user in self.labs.keys() {
            let lab = format!("lab of {user}");
            paths.push(path(
                "hub API",
                &format!("lab cert ({user})"),
                InternalCa::Notebooks.trust_bundle_file(),
                "127.0.0.1",
            ));
            paths.push(path(
                &lab,
                "hub-internal",
                InternalCa::Hub.trust_bundle_file(),
                "127.0.0.1",
            ));
            paths.push(path(
                &lab,
                "proxy-client",
                InternalCa::ProxyClient.trust_bundle_file(),
                "127.0.0.1",
            ));
        }
        paths
    }

    /// Probes one real client path, as that client: its bundle, its name,
    /// its own certificate.
    pub async fn probe_real_client(&self, path: &RealClientPath) -> ProbeOutcome {
        let Some(endpoint) = self.endpoints().into_iter().find(|e| e.name == path.server) else {
            return ProbeOutcome::failed(
                Verdict::Other,
                format!("no endpoint named {}", path.server),
            );
        };
        let trust = match self.bundle_by_file(&path.bundle) {
            Ok(t) => t,
            Err(e) => return ProbeOutcome::failed(Verdict::Other, e.to_string()),
        };
        let identity = match path.client.as_str() {
            "browser" => None,
            name => match self.client_identities() {
                Ok(ids) => ids
                    .into_iter()
                    .find(|i| i.label == name)
                    .and_then(|i| i.identity),
                Err(e) => return ProbeOutcome::failed(Verdict::Other, e.to_string()),
            },
        };
        self.probe_at(
            &endpoint.from_host,
            endpoint.addr,
            &path.server_name,
            &trust,
            identity,
            endpoint.request,
        )
        .await
    }

    /// The proxy's REST API, as the hub calls it (hub-internal certificate),
    /// with or without the auth token.
    pub async fn call_proxy_api(&self, token: Option<Secret>) -> ProbeOutcome {
        let identity = self.internal_identity("hub-internal").ok();
        let trust = self.trust_bundle(InternalCa::Hub).unwrap_or_default();
        let mut request = HttpRequest::get("/api/routes");
        request.token = token;
        self.probe_at(
            &self.spec.topology.hub_host,
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.spec.ports.proxy_api)),
            "127.0.0.1",
            &trust,
            identity,
            request,
        )
        .await
    }

    /// GET a path on the public proxy as the operator (service token sent).
    pub async fn get_via_proxy(&self, path: &str) -> Result<u16> {
        let url = format!(
            "https://{}:{}{path}",
            self.spec.topology.public_name, self.spec.ports.public
        );
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| HarnessError::HubApi {
                call: format!("GET {path}"),
                message: e.to_string(),
            })?;
        Ok(response.status().as_u16())
    }

    /// Every certificate on disk: JupyterHub's `internal-ssl/` and ours.
    pub fn inventory(&self) -> Result<Inventory> {
        let pki = self.run_dir.join("pki");
        let internal = self.internal_ssl_dir();
        Inventory::scan(&[
            ("internal-ssl", internal.as_path()),
            ("hubtrust-pki", pki.as_path()),
        ])
    }

    /// Private keys and the cookie secret, with their modes.
    pub fn secret_files(&self) -> Vec<SecretFile> {
        let mut files = Vec::new();
        collect_secret_files(&self.run_dir, &mut files);
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
    }

    /// Kills every process of the stack, then removes the hosts.
    pub async fn shutdown(mut self) {
        // Killed at once, the hub included: the run's findings are in hand by
        // now and none of its files is kept, while a graceful stop costs about
        // a second a run (the hub waits on each lab with a jittered
        // back-off, and on its own exit).
        crate::process::signal_marked(
            STACK_MARKER_ENV,
            &self.marker,
            nix::sys::signal::Signal::SIGKILL,
            None,
        );
        if let Some(hub) = self.hub.take() {
            hub.stop(STOP_GRACE).await;
        }
        if let Some(proxy) = self.proxy.take() {
            proxy.stop(STOP_GRACE).await;
        }
        for site in &mut self.sites {
            site.stop().await;
        }
        sweep_marked(STACK_MARKER_ENV, &self.marker);
    }

    pub fn public_url(&self) -> String {
        format!(
            "https://{}:{}/",
            self.spec.topology.public_name, self.spec.ports.public
        )
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn hosts(&self) -> Vec<&Host> {
        self.network.hosts.values().collect()
    }
}

/// Captures of every link of a stack, running.
pub struct WireCapture {
    captures: Vec<crate::capture::LinkCapture>,
    hosts: BTreeMap<Ipv4Addr, String>,
    /// Where the pcaps go once stopped, when they were written elsewhere
    /// (a capture started with the stack).
    deliver_to: Option<PathBuf>,
}

impl WireCapture {
    /// Stops every capture and builds the census. The captures stop
    /// together: each waits for its link to fall quiet, and those waits
    /// overlap rather than add up.
    pub async fn finish(self) -> crate::capture::WireCensus {
        let mut evidence = Vec::new();
        let stopped =
            futures::future::join_all(self.captures.into_iter().map(|capture| capture.finish()))
                .await;
        for mut link in stopped {
            if let Some(dir) = &self.deliver_to {
                let target = dir.join(link.pcap.file_name().unwrap_or_default());
                let moved =
                    std::fs::create_dir_all(dir).and_then(|_| std::fs::rename(&link.pcap, &target));
                match moved {
                    Ok(()) => link.pcap = target,
                    Err(e) => {
                        link.inconclusive =
                            Some(format!("cannot move the pcap into {}: {e}", dir.display()))
                    }
                }
            }
            evidence.push(link);
        }
        crate::capture::WireCensus::build(evidence, &self.hosts)
    }
}

fn host_addresses(network: &StackNetwork) -> BTreeMap<Ipv4Addr, String> {
    network
        .links
        .iter()
        .flat_map(|l| [(l.a.1, l.a.0.clone()), (l.b.1, l.b.0.clone())])
        .collect()
}

async fn capture_links(network: &StackNetwork, dir: &Path) -> Result<WireCapture> {
    let mut captures = Vec::new();
    for link in &network.links {
        let host = network.host(&link.a.0)?;
        captures
            .push(crate::capture::LinkCapture::start(host, link, &link.interfaces.0, dir).await?);
    }
    Ok(WireCapture {
        captures,
        hosts: host_addresses(network),
        deliver_to: None,
    })
}

impl Stack {
    /// The running hub's environment, read from /proc.
    pub fn hub_environment(&self) -> Result<BTreeMap<String, String>> {
        let pid = self
            .hub
            .as_ref()
            .and_then(ManagedProcess::pid)
            .ok_or_else(|| HarnessError::Spawn {
                component: "jupyterhub".into(),
                message: "the hub is not running".into(),
            })?;
        let path = format!("/proc/{pid}/environ");
        let bytes = std::fs::read(&path).map_err(io(format!("read {path}")))?;
        Ok(crate::process::parse_environ(&bytes))
    }

    /// Every address of the topology, named by host.
    pub fn host_addresses(&self) -> BTreeMap<Ipv4Addr, String> {
        host_addresses(&self.network)
    }

    /// Flows the topology declares may cross a link in plaintext, by server
    /// port, with the reason. The default topology declares none.
    pub fn plaintext_exceptions(&self) -> Vec<(u16, String)> {
        self.spec
            .topology
            .plaintext_exceptions
            .iter()
            .map(|e| (e.port, e.reason.clone()))
            .collect()
    }

    /// Starts capturing every link into `dir`, one pcap per link.
    ///
    /// On an HPC stack the first call hands over the capture that has run
    /// since the links were made: the SSH connections of the tunnels are
    /// opened at start-up and live on, and only a capture that saw them
    /// begin can classify them. Later calls capture from now on.
    pub async fn start_wire_capture(&self, dir: &Path) -> Result<WireCapture> {
        let since_start = self
            .life_capture
            .lock()
            .ok()
            .and_then(|mut life| life.take());
        if let Some(mut capture) = since_start {
            capture.deliver_to = Some(dir.to_path_buf());
            return Ok(capture);
        }
        capture_links(&self.network, dir).await
    }

    fn public_base(&self) -> String {
        format!(
            "https://{}:{}",
            self.spec.topology.public_name, self.spec.ports.public
        )
    }

    /// Runs `code` in `user`'s kernel (started by the first cell), through
    /// the proxy.
    pub async fn run_cell(&self, user: &str, code: &str) -> Result<crate::lab::CellRun> {
        self.run_cell_within(user, code, Duration::from_secs(60))
            .await
    }

    /// Runs `code` in a kernel started for it, which later cells then use:
    /// the wire checks see the kernel start and its channels connect.
    pub async fn run_cell_in_new_kernel(
        &self,
        user: &str,
        code: &str,
    ) -> Result<crate::lab::CellRun> {
        self.run_cell_in(user, code, Duration::from_secs(60), true)
            .await
    }

    /// [`Stack::run_cell`] with a deadline for the cell. The session uses a
    /// token of the user's own, minted through the hub API, as the user's
    /// browser session would.
    pub async fn run_cell_within(
        &self,
        user: &str,
        code: &str,
        deadline: Duration,
    ) -> Result<crate::lab::CellRun> {
        self.run_cell_in(user, code, deadline, false).await
    }

    async fn run_cell_in(
        &self,
        user: &str,
        code: &str,
        deadline: Duration,
        new_kernel: bool,
    ) -> Result<crate::lab::CellRun> {
        let token = self.user_token(user).await?;
        let stream = self
            .network
            .connect_from("operator", self.public_addr)
            .await
            .map_err(|e| HarnessError::io("connect to the public proxy", e))?;
        let known = (!new_kernel)
            .then(|| self.kernels.lock().ok().and_then(|k| k.get(user).cloned()))
            .flatten();
        let mut session = crate::lab::LabSession {
            http: &self.http,
            base_url: self.public_base(),
            public_name: self.spec.topology.public_name.clone(),
            trust_pem: self.org_bundle(),
            token,
            user: user.to_string(),
            stream,
            kernel_id: None,
        };
        if let Some(id) = known {
            if session.kernel_alive(&id).await {
                session.kernel_id = Some(id);
            }
        }
        let run = session.run_cell_within(code, deadline).await;
        // A cell that failed or timed out may hold its kernel busy: the
        // next cell gets a kernel of its own rather than waiting behind it.
        if let Ok(mut kernels) = self.kernels.lock() {
            match &run {
                Ok(run) => kernels.insert(user.to_string(), run.kernel_id.clone()),
                Err(_) => kernels.remove(user),
            };
        }
        run
    }

    /// What an outsider can do knowing only the public URL, the public CA
    /// and the service token: the checks a chart-started deployment gets.
    pub async fn check_from_outside(
        &self,
        user: &str,
        code: &str,
    ) -> Result<crate::hub_api::PublicSideReport> {
        use crate::backend::HostNetwork as _;
        let connect =
            || -> futures::future::BoxFuture<'_, std::io::Result<tokio::net::TcpStream>> {
                Box::pin(self.network.connect_from("operator", self.public_addr))
            };
        let side = crate::hub_api::PublicSide {
            http: &self.http,
            base: self.public_base(),
            public_name: self.spec.topology.public_name.clone(),
            roots_pem: self.org_bundle(),
            connect: &connect,
        };
        let (report, _) = crate::hub_api::check_public_side(
            &side,
            user,
            code,
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
        .await?;
        Ok(report)
    }

    /// A short-lived API token of `user`'s own.
    async fn user_token(&self, user: &str) -> Result<Secret> {
        crate::hub_api::HubApi {
            http: &self.http,
            base: self.public_base(),
        }
        .user_token(user)
        .await
    }

    /// Logs `user` in through the login form, as a browser does, then opens
    /// the hub's home page with the session. Returns the login cookie.
    pub async fn log_in(&self, user: &str) -> Result<Secret> {
        crate::hub_api::log_in_through_form(
            &crate::hub_api::PublicEntry {
                base: self.public_base(),
                name: self.spec.topology.public_name.clone(),
                addr: self.public_addr,
                roots_pem: self.org_bundle(),
            },
            user,
            &self.user_password,
        )
        .await
    }

    /// The self-test: a plain HTTP request carrying `canary` from the
    /// operator to a listener on the hub's host, across their link.
    pub async fn send_plaintext_canary(&self, canary: &str) -> Result<SocketAddr> {
        let hub_host = &self.spec.topology.hub_host;
        let host = self.network.host(hub_host)?;
        let (listener, port) = host.listen_on_free_port(Ipv4Addr::UNSPECIFIED).await?;
        let ip = self
            .network
            .address_of(hub_host)
            .ok_or_else(|| HarnessError::Network {
                host: hub_host.clone(),
                message: "no address".into(),
            })?;
        let target = SocketAddr::from((ip, port));
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        let mut stream = self
            .network
            .connect_from("operator", target)
            .await
            .map_err(|e| HarnessError::io("connect to the self-test listener", e))?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!("POST /hubtrust-self-test HTTP/1.1\r\nHost: {target}\r\nContent-Length: {}\r\n\r\n{canary}", canary.len());
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| HarnessError::io("send the self-test request", e))?;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let _ = server.await;
        Ok(target)
    }

    /// The ZeroMQ ports of a running kernel, from its connection file.
    pub async fn kernel_ports(&self, kernel_id: &str) -> Result<(String, Vec<(String, u16)>)> {
        // The connection file lies in the lab user's home, on the lab host.
        self.network
            .host(&self.spec.topology.lab_host)?
            .copy_out(&self.run_dir.join("home"))
            .await?;
        let name = format!("kernel-{kernel_id}.json");
        let path = find_file(&self.run_dir, &name).ok_or_else(|| HarnessError::Probe {
            endpoint: format!("kernel {kernel_id}"),
            message: format!("no connection file {name} under {}", self.run_dir.display()),
        })?;
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
        let info: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| HarnessError::Probe {
                endpoint: format!("kernel {kernel_id}"),
                message: e.to_string(),
            })?;
        let ports = [
            "shell_port",
            "iopub_port",
            "stdin_port",
            "control_port",
            "hb_port",
        ]
        .iter()
        .filter_map(|k| {
            Some((
                k.trim_end_matches("_port").to_string(),
                u16::try_from(info[k].as_u64()?).ok()?,
            ))
        })
        .collect();
        Ok((info["ip"].as_str().unwrap_or("").to_string(), ports))
    }

    /// Tries each kernel port from `from_host` at the lab host's address. A
    /// port that answers gets a ZMTP greeting, so the wire shows what an
    /// attacker on the link would see. Returns the ports that answered.
    pub async fn kernel_ports_reachable(
        &self,
        kernel_id: &str,
        from_host: &str,
    ) -> Result<Vec<String>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_, ports) = self.kernel_ports(kernel_id).await?;
        let lab_host = &self.spec.topology.lab_host;
        let ip = self
            .network
            .address_of(lab_host)
            .ok_or_else(|| HarnessError::Network {
                host: lab_host.clone(),
                message: "no address".into(),
            })?;
        let mut reachable = Vec::new();
        for (channel, port) in ports {
            let addr = SocketAddr::from((ip, port));
            let Ok(Ok(mut stream)) = tokio::time::timeout(
                Duration::from_secs(3),
                self.network.connect_from(from_host, addr),
            )
            .await
            else {
                continue;
            };
            let mut greeting = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 1];
            greeting.extend(b"NULL");
            greeting.resize(64, 0);
            let _ = stream.write_all(&greeting).await;
            // The whole 64-byte greeting back (libzmq sends its signature
            // first and the rest once it has seen ours), so the wire holds
            // the server's version too.
            let mut answer = [0u8; 64];
            let _ =
                tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut answer)).await;
            reachable.push(format!("{channel} port {port} at {addr}"));
        }
        Ok(reachable)
    }
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("name", &self.spec.name)
            .field("run_dir", &self.run_dir)
            .field("service_token", &self.service_token)
            .finish_non_exhaustive()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Dropping the hub kills its process group; the sweep catches the
        // proxy and labs, which JupyterHub starts in sessions of their own.
        drop(self.hub.take());
        drop(self.proxy.take());
        sweep_marked(STACK_MARKER_ENV, &self.marker);
    }
}

/// Makes the labs start their kernels on `kernel_host`: a kernelspec whose
/// argv enters that host's network namespace, bound to its address on the
/// link to the lab host. Returns the namespace's path here; a lab sees it
/// at [`crate::backend::BackendRun::path_in_labs`].
fn place_kernels_on(
    kernel_host: &str,
    spec: &StackSpec,
    network: &StackNetwork,
    components: &Components,
    run_dir: &Path,
    lab: &mut ComponentManifest,
) -> Result<String> {
    let lab_host = &spec.topology.lab_host;
    let no_link = || HarnessError::Network {
        host: kernel_host.into(),
        message: format!("no link to the lab host `{lab_host}`"),
    };
    let kernel_ip = network
        .address_towards(kernel_host, lab_host)
        .ok_or_else(no_link)?;
    let netns = network.netns_path(kernel_host).ok_or_else(no_link)?;
    let in_labs = network.run.path_in_labs(Path::new(&netns));
    let data = run_dir.join("jupyter-data");
    let spec_dir = data.join("kernels").join("remote-python");
    std::fs::create_dir_all(&spec_dir).map_err(io(format!("create {}", spec_dir.display())))?;
    let kernel_json = serde_json::json!({
        "argv": [
            "nsenter", format!("--net={}", in_labs.display()), "--",
            components.venv.join("bin/python3").display().to_string(),
            "-m", "ipykernel_launcher", "-f", "{connection_file}",
        ],
        "display_name": format!("Python 3 on {kernel_host}"),
        "language": "python",
    });
    crate::pki::write_with_mode(
        &spec_dir.join("kernel.json"),
        kernel_json.to_string().as_bytes(),
        0o644,
    )?;
    let python = run_dir.join("python");
    std::fs::create_dir_all(&python).map_err(io(format!("create {}", python.display())))?;
    crate::pki::write_with_mode(
        &python.join("hubtrust_remote_kernel.py"),
        builtin::REMOTE_KERNEL_MODULE.as_bytes(),
        0o644,
    )?;
    lab.args.extend([
        "--AsyncMappingKernelManager.kernel_manager_class=hubtrust_remote_kernel.RemoteKernelManager".to_string(),
        "--AsyncMappingKernelManager.default_kernel_name=remote-python".to_string(),
        format!("--KernelManager.ip={kernel_ip}"),
    ]);
    lab.env
        .insert("PYTHONPATH".into(), python.display().to_string());
    lab.env
        .insert("JUPYTER_PATH".into(), data.display().to_string());
    Ok(netns)
}

fn collect_secret_files(dir: &Path, out: &mut Vec<SecretFile>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_secret_files(&path, out);
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".key") || name == "jupyterhub_cookie_secret" {
            out.push(SecretFile {
                mode: file_mode(&path).unwrap_or_default(),
                path,
            });
        }
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().and_then(|n| n.to_str()) == Some(name) {
            return Some(path);
        }
    }
    None
}

fn template_values(
    spec: &StackSpec,
    components: &Components,
    run_dir: &Path,
    config_path: &Path,
    public_cert: &Path,
    public_key: &Path,
    marker: &str,
) -> BTreeMap<&'static str, String> {
    let d = |p: &Path| p.display().to_string();
    BTreeMap::from([
        ("venv", d(&components.venv)),
        ("node_modules", d(&components.node_modules)),
        ("config", d(config_path)),
        ("run_dir", d(run_dir)),
        ("public_name", spec.topology.public_name.clone()),
        ("public_port", spec.ports.public.to_string()),
        ("hub_port", spec.ports.hub.to_string()),
        ("proxy_api_port", spec.ports.proxy_api.to_string()),
        ("hub_host", spec.topology.hub_host.clone()),
        ("stack_name", spec.name.clone()),
        ("public_cert", d(public_cert)),
        ("public_key", d(public_key)),
        ("marker", marker.to_string()),
        ("user", String::new()),
    ])
}

/// The arguments the hub gives the proxy it starts under internal_ssl
/// (`ConfigurableHTTPProxy.start`), for a proxy started apart from it:
/// listeners, the public certificate, and mutual TLS on the API and
/// towards the hub with the certificates the hub wrote.
fn external_proxy_args(
    spec: &StackSpec,
    internal_ssl: &Path,
    public_cert: &Path,
    public_key: &Path,
) -> Vec<String> {
    let file = |relative: &str| internal_ssl.join(relative).display().to_string();
    let mut args: Vec<String> = [
        // The hub's bind_url names no address: every interface.
        ("--ip", String::new()),
        ("--port", spec.ports.public.to_string()),
        ("--api-ip", "127.0.0.1".into()),
        ("--api-port", spec.ports.proxy_api.to_string()),
        (
            "--error-target",
            format!("https://127.0.0.1:{}/hub/error", spec.ports.hub),
        ),
        ("--log-level", "info".into()),
        ("--ssl-key", public_key.display().to_string()),
        ("--ssl-cert", public_cert.display().to_string()),
        ("--api-ssl-key", file("proxy-api/proxy-api.key")),
        ("--api-ssl-cert", file("proxy-api/proxy-api.crt")),
        ("--api-ssl-ca", file("proxy-api-ca_trust.crt")),
        ("--client-ssl-key", file("proxy-client/proxy-client.key")),
        ("--client-ssl-cert", file("proxy-client/proxy-client.crt")),
        ("--client-ssl-ca", file("proxy-client-ca_trust.crt")),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .collect();
    args.extend(
        [
            "--api-ssl-request-cert",
            "--api-ssl-reject-unauthorized",
            "--client-ssl-request-cert",
            "--client-ssl-reject-unauthorized",
        ]
        .map(String::from),
    );
    args
}

fn manifest_with_overrides(
    name: &str,
    text: &str,
    values: &BTreeMap<&str, String>,
    overrides: &crate::spec::ComponentOverride,
) -> Result<ComponentManifest> {
    let mut manifest = ComponentManifest::load(name, text, values)?;
    if let Some(command) = &overrides.command {
        if command.is_empty() {
            return Err(HarnessError::ManifestInvalid {
                name: name.into(),
                message: "the stack file's command is empty".into(),
            });
        }
        manifest.command = command
            .iter()
            .map(|part| render(part, values, name))
            .collect::<Result<_>>()?;
    }
    if let Some(args) = &overrides.args {
        manifest.args = args.clone();
    }
    manifest.env.extend(overrides.env.clone());
    if let Some(ready) = &overrides.ready {
        manifest.ready = stack_file_ready_checks(name, ready, values)?;
    }
    Ok(manifest)
}

/// The stack file's readiness checks for `name`, placeholders filled in.
fn stack_file_ready_checks(
    name: &str,
    ready: &[toml::Table],
    values: &BTreeMap<&str, String>,
) -> Result<Vec<ReadyCheck>> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Checks<T> {
        ready: Vec<T>,
    }
    let invalid = |message: String| {
        HarnessError::ManifestInvalid {
        name: name.into(),
        message: format!("the stack file's `ready` checks: {message} (fix: each needs `kind` = \"tcp\", \"tls-handshake\", \"http\" or \"log-line\" and that kind's keys, as in fixtures/components/)"),
    }
    };
    if ready.is_empty() {
        return Err(invalid(
            "the list is empty, so nothing would prove the component is up".into(),
        ));
    }
    let text = toml::to_string(&Checks {
        ready: ready.to_vec(),
    })
    .map_err(|e| invalid(e.to_string()))?;
    let rendered = render(&text, values, name)?;
    toml::from_str::<Checks<ReadyCheck>>(&rendered)
        .map(|c| c.ready)
        .map_err(|e| invalid(e.to_string()))
}

/// The hub's config for `spec`. The enterprise setup adds to the labs'
/// environment (the five CA variables when the merge step ran, the proxy
/// variables with an egress host) what the stack file's `[lab] env` does
/// not set itself; nothing else changes, so with neither
/// the config is byte for byte the plain stack's.
fn hub_config_for(
    spec: &StackSpec,
    values: &BTreeMap<&str, String>,
    proxy: &ComponentManifest,
    lab: &ComponentManifest,
    marker: &str,
    lab_extra_env: Vec<(String, String)>,
) -> Result<String> {
    let mut lab = lab.clone();
    // The stack file's own [lab] env wins: a deployment's NO_PROXY is what
    // its labs run with, and what the checks then judge.
    lab.env.extend(
        lab_extra_env
            .into_iter()
            .filter(|(name, _)| !spec.lab.env.contains_key(name)),
    );
    render_hub_config(spec, values, proxy, &lab, marker)
}

/// Where the deployment's own hub config files are copied for the run
/// (so a container's hub reads them too): `(source, copy)`, in order.
fn deployment_config_copies(spec: &StackSpec, run_dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    spec.hub
        .config_files
        .iter()
        .enumerate()
        .map(|(i, source)| {
            let name = source
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "config.py".into());
            (
                source.clone(),
                run_dir
                    .join("hub")
                    .join("deployment")
                    .join(format!("{i:02}-{name}")),
            )
        })
        .collect()
}

/// Refuses a deployment config file that is not Python before anything
/// starts, naming the file and the line.
async fn check_deployment_config_files(spec: &StackSpec) -> Result<()> {
    // This machine's interpreter: on docker the components' lie in the
    // image, and a syntax check needs no JupyterHub.
    let python = crate::provision::python();
    for file in &spec.hub.config_files {
        let output = tokio::process::Command::new(&python)
            .args([
                "-c",
                "import sys; f = sys.argv[1]; compile(open(f, encoding='utf-8').read(), f, 'exec')",
            ])
            .arg(file)
            .output()
            .await
            .map_err(io(format!("run {}", python.display())))?;
        if !output.status.success() {
            let said = String::from_utf8_lossy(&output.stderr);
            let lines: Vec<&str> = said.lines().collect();
            let at = lines
                .iter()
                .rev()
                .find(|l| l.trim_start().starts_with("File "))
                .map(|l| l.trim())
                .unwrap_or_default();
            return Err(HarnessError::DeploymentConfigInvalid {
                path: file.clone(),
                message: format!(
                    "not valid Python: {} ({at}) (fix: [hub] config_files takes jupyterhub_config.py files that `python -m py_compile` accepts)",
                    lines.last().copied().unwrap_or("").trim()
                ),
            });
        }
    }
    Ok(())
}

/// Python that loads the deployment's config files before hubtrust's own
/// settings, and keeps what they set for [`DEPLOYMENT_OVERRIDES`].
fn deployment_config_loader(copies: &[(PathBuf, PathBuf)]) -> String {
    if copies.is_empty() {
        return String::new();
    }
    let files: Vec<String> = copies
        .iter()
        .map(|(_, copy)| copy.display().to_string())
        .collect();
    format!(
        "# The deployment's own config files, in order; hubtrust's settings follow,\n\
         # and every setting of theirs that ends up otherwise is reported.\n\
         import copy as _hubtrust_copy\n\
         for _hubtrust_file in {}:\n    load_subconfig(_hubtrust_file)  # noqa: F821\n\
         _hubtrust_deployment = _hubtrust_copy.deepcopy(c)\n",
        py(&files)
    )
}

/// The marker of the hub's log line listing the deployment's settings that
/// ended up with another value.
pub const OVERRIDDEN_MARKER: &str = "HUBTRUST-OVERRIDDEN ";

/// Python run last: every setting the deployment's files made whose final
/// value differs, with both values; a value that may hold a secret is
/// masked.
const DEPLOYMENT_OVERRIDES: &str = r#"
import json as _hubtrust_json, re as _hubtrust_re, sys as _hubtrust_sys
def _hubtrust_shown(key, value):
    text = repr(value)
    secret = _hubtrust_re.compile("secret|token|password|api_key", _hubtrust_re.I)
    return "(masked: may hold a secret)" if secret.search(key) or secret.search(text) else text
_hubtrust_overridden = [
    {"setting": "c.%s.%s" % (_s, _k), "deployment": _hubtrust_shown(_k, _v), "final": _hubtrust_shown(_k, c[_s][_k])}
    for _s, _section in _hubtrust_deployment.items() if hasattr(_section, "items")
    for _k, _v in _section.items()
    if repr(c[_s][_k]) != repr(_v)
]
print("HUBTRUST-OVERRIDDEN " + _hubtrust_json.dumps(_hubtrust_overridden), file=_hubtrust_sys.stderr, flush=True)
"#;

/// One setting of the deployment's own config that hubtrust (or the stack
/// file's `extra_config`) gave another value.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct OverriddenSetting {
    pub setting: String,
    pub deployment: String,
    #[serde(rename = "final")]
    pub final_value: String,
}

/// The overridden settings the hub's config logged, if it logged them.
pub fn overridden_settings(log: &Path) -> Option<Vec<OverriddenSetting>> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .find_map(|l| l.split_once(OVERRIDDEN_MARKER).map(|(_, json)| json))?;
    serde_json::from_str(line).ok()
}

fn render_hub_config(
    spec: &StackSpec,
    values: &BTreeMap<&str, String>,
    proxy: &ComponentManifest,
    lab: &ComponentManifest,
    marker: &str,
) -> Result<String> {
    let run_dir = PathBuf::from(&values["run_dir"]);
    let hub_dir = run_dir.join("hub");
    let mut config_values = values.clone();
    let d = |p: PathBuf| py(&p.display().to_string());
    let mut lab_env = lab.env.clone();
    lab_env.insert(STACK_MARKER_ENV.into(), marker.into());
    // The spawner passes labs only the environment it is given, so the run
    // marker every other process inherits is handed on explicitly.
    if let Ok(run_id) = std::env::var(RUN_MARKER_ENV) {
        lab_env.insert(RUN_MARKER_ENV.into(), run_id);
    }
    let proxy_command: Vec<String> = proxy.command.iter().chain(&proxy.args).cloned().collect();
    for (key, value) in [
        ("internal_certs", d(hub_dir.join("internal-ssl"))),
        (
            "trusted_alt_names",
            py(&[format!("DNS:{}", spec.topology.public_name)]),
        ),
        ("public_cert", py(&values["public_cert"])),
        ("public_key", py(&values["public_key"])),
        (
            "cookie_secret_file",
            d(hub_dir.join("jupyterhub_cookie_secret")),
        ),
        (
            "db_url",
            py(&format!(
                "sqlite:///{}",
                hub_dir.join("jupyterhub.sqlite").display()
            )),
        ),
        ("proxy_command", py(&proxy_command)),
        (
            "home_template",
            py(&format!("{}/home/{{username}}", run_dir.display())),
        ),
        ("lab_command", py(&lab.command)),
        ("lab_args", py(&lab.args)),
        ("lab_env", py(&lab_env)),
        ("extra_config", spec.hub.extra_config.join("\n")),
        (
            "deployment_config",
            deployment_config_loader(&deployment_config_copies(spec, &run_dir)),
        ),
        (
            "deployment_overrides",
            match spec.hub.config_files.is_empty() {
                true => String::new(),
                false => DEPLOYMENT_OVERRIDES.to_string(),
            },
        ),
    ] {
        config_values.insert(key, value);
    }
    render(
        builtin::HUB_CONFIG_TEMPLATE,
        &config_values,
        "jupyterhub_config.py",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(spec: &StackSpec, merge: Option<&crate::enterprise::MergeOutcome>) -> String {
        let extra = crate::enterprise::lab_environment(merge);
        let components = Components {
            root: "/c".into(),
            venv: "/c/venv".into(),
            node_modules: "/c/node_modules".into(),
            mitmproxy_venv: "/c/mitmproxy-venv".into(),
        };
        let run = Path::new("/run/x");
        let values = template_values(
            spec,
            &components,
            run,
            &run.join("hub/jupyterhub_config.py"),
            &run.join("pki/public.crt"),
            &run.join("pki/public.key"),
            "marker",
        );
        let proxy = manifest_with_overrides("proxy", builtin::PROXY, &values, &spec.proxy).unwrap();
        let lab = manifest_with_overrides("lab", builtin::LAB, &values, &spec.lab).unwrap();
        hub_config_for(spec, &values, &proxy, &lab, "marker", extra).unwrap()
    }

    #[test]
    fn with_the_merge_off_the_hub_config_is_byte_for_byte_the_plain_one() {
        let plain = StackSpec::default();
        let enterprise = StackSpec {
            enterprise: Some(crate::spec::EnterpriseSpec {
                internet_host: "internet".into(),
                merge_org_bundle: false,
                merge_into_hub: false,
                org_bundle: None,
                egress_host: None,
                proxy_command: None,
                mitmdump: None,
                proxy_args: Vec::new(),
                merge_command: None,
            }),
            ..StackSpec::default()
        };
        assert_eq!(config(&plain, None), config(&enterprise, None));
        let merged = crate::enterprise::MergeOutcome {
            merged: "/run/x/enterprise/certs-extra/ca-bundle.crt".into(),
            degraded: None,
        };
        let on = config(&enterprise, Some(&merged));
        for variable in crate::enterprise::CA_VARIABLES {
            assert!(
                on.contains(&format!(
                    "{variable:?}:\"/run/x/enterprise/certs-extra/ca-bundle.crt\""
                )),
                "{variable} missing:\n{on}"
            );
        }
    }
}
