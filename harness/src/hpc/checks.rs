//! What the HPC scenarios check, as data: reachability between nodes, what
//! the tunnel keys may do, where the lab's certificates landed, and what
//! the lab itself sees through the login nodes.

use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;

use super::HpcSite;
use crate::backend::StackNetwork;
use crate::error::{HarnessError, Result};

/// Whose SSH key a command is run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshRole {
    /// The tunnel broker's key (forced command: start, status, stop).
    Broker,
    /// The hub spawner's key (jump through login nodes; batch actions on
    /// compute nodes).
    Spawner,
}

#[derive(Debug, Clone)]
pub struct SshOutcome {
    pub exit: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl SshOutcome {
    pub fn describe(&self) -> String {
        format!(
            "exit {:?}, stdout {:?}, stderr {:?}",
            self.exit,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// One staged file on a compute node.
#[derive(Debug, Clone)]
pub struct StagedFile {
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
}

/// What the lab reported about one login node, from inside a kernel.
#[derive(Debug, Clone, Deserialize)]
pub struct LoginNodeView {
    pub bind: String,
    /// "ok", or the TLS error the lab's own client raised.
    pub tls: String,
    /// The hub API's answer for the lab's own user through this node.
    pub hub_api: String,
}

impl HpcSite {
    /// Runs `ssh` from the hub's host with `role`'s key to `node`;
    /// `command = None` asks for a shell.
    pub async fn ssh(
        &self,
        network: &StackNetwork,
        hub_host: &str,
        role: SshRole,
        node: &str,
        command: Option<&str>,
    ) -> Result<SshOutcome> {
        let mut argv = network.host(hub_host)?.wrapper();
        argv.push("ssh".into());
        argv.push("-T".into());
        match role {
            SshRole::Spawner => {
                argv.extend(["-F".into(), self.spawner_ssh_config.display().to_string()]);
                argv.push(node.into());
            }
            SshRole::Broker => {
                let all = self.all_login_nodes();
                let login =
                    all.iter()
                        .find(|l| l.name == node)
                        .ok_or_else(|| HarnessError::Network {
                            host: node.into(),
                            message: "the broker's key is for login nodes only".into(),
                        })?;
                argv.extend(super::broker::ssh_options(
                    &self.broker_key,
                    &self.known_hosts,
                    node,
                    "root",
                ));
                argv.push(login.hub_facing.to_string());
            }
        }
        if let Some(command) = command {
            argv.push(command.into());
        }
        let output = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .map_err(|_| HarnessError::Network {
            host: node.into(),
            message: "ssh did not finish within 30 s".into(),
        })?
        .map_err(|e| HarnessError::io("run ssh", e))?;
        Ok(SshOutcome {
            exit: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// The files staged for `user`'s lab on `compute`, as that node sees
    /// them (through its own mount namespace).
    pub fn staged_files(
        &self,
        network: &StackNetwork,
        compute: &str,
        user: &str,
    ) -> Result<Vec<StagedFile>> {
        let pid = network
            .host(compute)?
            .anchor_pid()
            .ok_or_else(|| HarnessError::Network {
                host: compute.into(),
                message: "the node is gone".into(),
            })?;
        let inside = PathBuf::from(format!("/home/{user}/.jupyterhub-ssl"));
        let dir = Path::new(&format!("/proc/{pid}/root"))
            .join(inside.strip_prefix("/").unwrap_or(&inside));
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| HarnessError::io(format!("list {} on {compute}", inside.display()), e))?;
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let meta = entry
                .metadata()
                .map_err(|e| HarnessError::io("stat a staged file", e))?;
            files.push(StagedFile {
                path: inside.join(entry.file_name()),
                mode: meta.permissions().mode() & 0o7777,
                uid: meta.uid(),
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }
}

/// Kernel code that, from inside the lab, connects to every login node's
/// bind address with the lab's own TLS settings (the client CA bundle the
/// hub gave it, the address as the server name) and asks the hub API who
/// the lab's token belongs to. One JSON line per login node.
pub fn lab_view_code(binds: &[Ipv4Addr], port: u16) -> String {
    let binds: Vec<String> = binds
        .iter()
        .map(|b| format!("{:?}", b.to_string()))
        .collect();
    format!(
        r#"
import json, os, ssl, urllib.request
ctx = ssl.create_default_context(cafile=os.environ["JUPYTERHUB_SSL_CLIENT_CA"])
ctx.load_cert_chain(os.environ["JUPYTERHUB_SSL_CERTFILE"], os.environ["JUPYTERHUB_SSL_KEYFILE"])
for bind in [{binds}]:
    view = {{"bind": bind, "tls": "ok", "hub_api": ""}}
    try:
        req = urllib.request.Request(
            f"https://{{bind}}:{port}/hub/api/user",
            headers={{"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}},
        )
        with urllib.request.urlopen(req, context=ctx, timeout=15) as r:
            view["hub_api"] = json.loads(r.read()).get("name", "")
    except Exception as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ssl.SSLCertVerificationError):
            message = reason.verify_message or str(reason)
            view["tls"] = "name-mismatch" if "mismatch" in message else f"untrusted: {{message}}"
        else:
            view["tls"] = f"error: {{reason}}"
    print("HPCVIEW " + json.dumps(view))
import time
print("HPCENV " + json.dumps({{"uid": os.getuid(), "api_url": os.environ.get("JUPYTERHUB_API_URL", ""), "time": time.time()}}))
"#,
        binds = binds.join(", ")
    )
}

/// The lab's environment as the probe cell saw it.
#[derive(Debug, Clone, Deserialize)]
pub struct LabEnvironment {
    pub uid: u32,
    pub api_url: String,
    /// The lab's clock (seconds since the epoch) when it looked.
    #[serde(default)]
    pub time: f64,
}

pub fn parse_lab_view(
    stdout: &str,
) -> std::result::Result<(Vec<LoginNodeView>, LabEnvironment), String> {
    let mut views = Vec::new();
    let mut env = None;
    for line in stdout.lines() {
        if let Some(json) = line.strip_prefix("HPCVIEW ") {
            views.push(serde_json::from_str(json).map_err(|e| format!("{e}: {line}"))?);
        } else if let Some(json) = line.strip_prefix("HPCENV ") {
            env = Some(serde_json::from_str(json).map_err(|e| format!("{e}: {line}"))?);
        }
    }
    let env = env.ok_or_else(|| format!("the probe cell printed no environment: {stdout}"))?;
    Ok((views, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_view_parses_and_a_missing_environment_is_an_error() {
        let out = "HPCVIEW {\"bind\": \"10.0.0.1\", \"tls\": \"ok\", \"hub_api\": \"alice\"}\nHPCENV {\"uid\": 2001, \"api_url\": \"https://10.0.0.1:8443/hub/api\"}\n";
        let (views, env) = parse_lab_view(out).unwrap();
        assert_eq!(views[0].hub_api, "alice");
        assert_eq!(env.uid, 2001);
        assert!(parse_lab_view("HPCVIEW {}\n").is_err());
    }

    #[test]
    fn the_lab_view_code_names_every_bind_address() {
        let code = lab_view_code(
            &[Ipv4Addr::new(10, 77, 3, 2), Ipv4Addr::new(10, 77, 5, 2)],
            8443,
        );
        assert!(code.contains("\"10.77.3.2\", \"10.77.5.2\""), "{code}");
        assert!(code.contains(":8443/hub/api/user"));
    }
}

/// What crossed the cleartext last hop (login node ↔ compute node).
#[derive(Debug, Clone, Default)]
pub struct LastHop {
    /// The lab's own TLS: login node → lab, and lab → login node's tunnel.
    pub tls_to_lab: usize,
    pub tls_to_login: usize,
    pub ssh: usize,
    /// Anything else, described.
    pub other: Vec<String>,
}

impl HpcChecks<'_> {
    /// A client of the tunnel broker's REST contract.
    pub fn broker(&self) -> Option<&crate::hpc::BrokerClient> {
        self.site.broker_client.as_ref()
    }

    /// Sorts every census flow between a login node and a compute node.
    pub fn last_hop(&self, census: &crate::capture::WireCensus) -> Result<LastHop> {
        let site = self.site;
        let logins: Vec<String> = site.all_login_nodes().into_iter().map(|l| l.name).collect();
        let is_login = |h: &str| logins.iter().any(|l| l == h);
        let is_compute = |h: &str| site.compute_nodes.iter().any(|c| c == h);
        let mut hop = LastHop::default();
        for flow in &census.flows {
            let (c, s) = (flow.client_host.as_str(), flow.server_host.as_str());
            if !((is_login(c) && is_compute(s)) || (is_compute(c) && is_login(s))) {
                continue;
            }
            let modern_tls = matches!(&flow.class, crate::capture::FlowClass::Tls { version, .. }
                if version == "TLS 1.2" || version == "TLS 1.3");
            match &flow.class {
                crate::capture::FlowClass::Ssh { .. } if flow.server_port == 22 => hop.ssh += 1,
                _ if modern_tls && is_compute(s) => hop.tls_to_lab += 1,
                _ if modern_tls && is_login(s) && flow.server_port == site.login_port => {
                    hop.tls_to_login += 1
                }
                crate::capture::FlowClass::Empty => {}
                _ => hop.other.push(flow.describe()),
            }
        }
        Ok(hop)
    }
}

/// One reachability probe between HPC hosts and what the design expects.
#[derive(Debug, Clone)]
pub struct ReachFinding {
    pub from: String,
    pub to: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub reach: crate::reachability::Reach,
    /// The design's expectation: a route (login nodes) or none.
    pub must_route: bool,
}

impl ReachFinding {
    pub fn as_designed(&self) -> bool {
        let routed = !matches!(self.reach, crate::reachability::Reach::NoRoute(_));
        routed == self.must_route
    }

    pub fn describe(&self) -> String {
        format!(
            "{} → {} ({}:{}): {:?}, expected {}",
            self.from,
            self.to,
            self.addr,
            self.port,
            self.reach,
            if self.must_route {
                "a route"
            } else {
                "no route"
            }
        )
    }
}

/// Sends `bytes` through `stream` to the next connection `sink` accepts;
/// the rate is what the sink received, first byte to end of stream.
async fn transfer(
    sink: &tokio::net::TcpListener,
    mut stream: tokio::net::TcpStream,
    bytes: u64,
) -> Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let send = async move {
        let chunk = vec![0x5a_u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            stream.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        stream.shutdown().await
    };
    let receive = async {
        let (mut conn, _) = sink.accept().await?;
        let mut buf = vec![0_u8; 1 << 20];
        let mut got = 0_u64;
        let mut first = None;
        loop {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(std::time::Instant::now);
            got += n as u64;
        }
        let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
        Ok::<_, std::io::Error>((got, secs))
    };
    let (sent, received) = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        tokio::join!(send, receive)
    })
    .await
    .map_err(|_| HarnessError::Network {
        host: "throughput".into(),
        message: "the transfer did not finish within 120 s".into(),
    })?;
    sent.map_err(|e| HarnessError::io("send the bulk data", e))?;
    let (got, secs) = received.map_err(|e| HarnessError::io("receive the bulk data", e))?;
    if got != bytes {
        return Err(HarnessError::Network {
            host: "throughput".into(),
            message: format!("the sink received {got} of {bytes} bytes"),
        });
    }
    Ok(got as f64 / secs)
}

/// libfaketime, which shifts a process's clock without touching the
/// machine's (time namespaces shift only the monotonic clocks).
pub(crate) fn faketime_library() -> Result<std::path::PathBuf> {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime").join("libfaketime.so.1"))
        .find(|p| p.is_file());
    found.ok_or_else(|| HarnessError::MissingPrerequisite {
        what: "libfaketime".into(),
        why: "the clock-skew scenarios run the compute node's clock behind".into(),
        fix: "apt-get install -y faketime".into(),
    })
}

fn find_pid(matches: impl Fn(u32) -> bool) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| matches(*pid))
}

/// The HPC site's checks and faults on a running stack: what the HPC
/// steps talk to (`stack.hpc()?`), apart from the stack itself.
pub struct HpcChecks<'a> {
    stack: &'a crate::Stack,
    site: &'a HpcSite,
}

impl std::ops::Deref for HpcChecks<'_> {
    type Target = crate::Stack;

    fn deref(&self) -> &crate::Stack {
        self.stack
    }
}

impl crate::Stack {
    /// The HPC site's checks, on a stack that has one.
    pub fn hpc(&self) -> Result<HpcChecks<'_>> {
        let site =
            self.site::<HpcSite>().ok_or_else(|| {
                HarnessError::Network {
            host: self.spec.topology.lab_host.clone(),
            message:
                "this stack has no HPC site (fix: run @hpc with --stack fixtures/stacks/hpc.toml)"
                    .into(),
        }
            })?;
        Ok(HpcChecks { stack: self, site })
    }
}

impl HpcChecks<'_> {
    /// Probes from `from` to every address of the login nodes (sshd, must
    /// connect: the positive control) and of `forbidden` hosts on `ports`
    /// (must find no route).
    pub async fn reachability_from(&self, from: &str) -> Result<Vec<ReachFinding>> {
        let site = self.site;
        let hub = self.spec.topology.hub_host.clone();
        let forbidden: Vec<(String, Vec<u16>)> = if from == hub {
            site.compute_nodes
                .iter()
                .map(|c| (c.clone(), vec![22, 8888]))
                .collect()
        } else {
            vec![(
                hub,
                vec![
                    self.spec.ports.public,
                    self.spec.ports.hub,
                    site.broker_port,
                ],
            )]
        };
        let mut findings = Vec::new();
        let mut plan: Vec<(String, u16, bool)> = site
            .login_nodes
            .iter()
            .map(|l| (l.name.clone(), 22, true))
            .collect();
        for (host, ports) in forbidden {
            plan.extend(ports.into_iter().map(|p| (host.clone(), p, false)));
        }
        // Every probe at once (see [`crate::Stack::reach`]).
        let probed = futures::future::try_join_all(
            plan.iter().map(|(to, port, _)| self.reach(from, to, *port)),
        )
        .await?;
        for ((to, port, must_route), results) in plan.into_iter().zip(probed) {
            // A login node is probed where the host's own link reaches it;
            // forbidden hosts on every address they have.
            let only = must_route
                .then(|| self.network.address_towards(&to, from))
                .flatten();
            for (addr, reach) in results {
                if only.is_some_and(|a| a != addr) {
                    continue;
                }
                findings.push(ReachFinding {
                    from: from.into(),
                    to: to.clone(),
                    addr,
                    port,
                    reach,
                    must_route,
                });
            }
        }
        if from != self.spec.topology.hub_host {
            findings.extend(self.machine_reachability_from(from).await?);
        }
        Ok(findings)
    }

    /// Probes from a node to this machine where docker puts it on the
    /// node's links (their gateways): a listener of hubtrust's own there,
    /// so a route would show as a connection, not depend on what else this
    /// machine happens to run.
    async fn machine_reachability_from(&self, from: &str) -> Result<Vec<ReachFinding>> {
        let source = self.network.host(from)?;
        let mut findings = Vec::new();
        for addr in self.network.machine_addresses_near(from).await? {
            let listener = tokio::net::TcpListener::bind((addr, 0))
                .await
                .map_err(|e| HarnessError::io(format!("listen on {addr} on this machine"), e))?;
            let port = listener
                .local_addr()
                .map_err(|e| HarnessError::io("read a listener's port", e))?
                .port();
            let reach = crate::reachability::probe_reach(source, (addr, port).into()).await;
            findings.push(ReachFinding {
                from: from.into(),
                to: "this machine".into(),
                addr,
                port,
                reach,
                must_route: false,
            });
        }
        Ok(findings)
    }

    pub fn compute_nodes(&self) -> Result<Vec<String>> {
        Ok(self.site.compute_nodes.clone())
    }

    pub fn login_nodes(&self) -> Result<Vec<String>> {
        Ok(self
            .site
            .all_login_nodes()
            .iter()
            .map(|l| l.name.clone())
            .collect())
    }

    pub async fn ssh(
        &self,
        role: SshRole,
        node: &str,
        command: Option<&str>,
    ) -> Result<SshOutcome> {
        self.site
            .ssh(
                &self.network,
                &self.spec.topology.hub_host,
                role,
                node,
                command,
            )
            .await
    }

    /// The lab's staged certificates on its compute node, and the uid it
    /// should run as.
    pub fn staged_files(&self, user: &str) -> Result<(Vec<StagedFile>, u32)> {
        let site = self.site;
        let uid = *site
            .lab_uids
            .get(user)
            .ok_or_else(|| HarnessError::Network {
                host: self.spec.topology.lab_host.clone(),
                message: format!("no lab uid for {user}"),
            })?;
        Ok((
            site.staged_files(&self.network, &self.spec.topology.lab_host, user)?,
            uid,
        ))
    }

    /// Every login node's bind address, and the SANs of the proxy's
    /// certificate.
    pub fn proxy_certificate(&self) -> Result<(Vec<Ipv4Addr>, Vec<String>)> {
        let site = self.site;
        let record = crate::inventory::describe_file("hpc", &site.dir, &site.proxy_cert)?
            .ok_or_else(|| {
                HarnessError::Pki(format!(
                    "{} holds no certificate",
                    site.proxy_cert.display()
                ))
            })?;
        Ok((site.bind_addresses(), record.sans))
    }

    /// From inside `user`'s lab: every login node's bind address with the
    /// lab's own TLS settings, and the hub API through each.
    pub async fn lab_view(&self, user: &str) -> Result<(Vec<LoginNodeView>, LabEnvironment)> {
        let site = self.site;
        let code = lab_view_code(&site.bind_addresses(), site.login_port);
        let run = self.run_cell(user, &code).await?;
        parse_lab_view(&run.stdout).map_err(|message| HarnessError::Probe {
            endpoint: format!("lab of {user}"),
            message,
        })
    }

    pub fn kill_ssh_master(&self, login: &str) -> Result<Vec<u32>> {
        self.site
            .kill_ssh_master(&self.network, &self.spec.topology.hub_host, login)
    }

    pub async fn restart_broker(&self) -> Result<()> {
        self.site
            .restart_broker(&self.network, &self.http, &self.spec.topology.hub_host)
            .await
    }

    /// A new host key for `node` (`fresh`), or its pinned one back.
    pub async fn set_host_key(&self, node: &str, fresh: bool) -> Result<()> {
        self.site
            .set_host_key(&self.network, &self.http, node, fresh)
            .await
    }

    /// Adds login node `name` to the running site (see
    /// [`HpcSite::add_login_node`]).
    pub async fn add_login_node(&self, name: &str) -> Result<()> {
        let broker = self.broker().ok_or_else(|| HarnessError::Network {
            host: name.into(),
            message: "no tunnel broker".into(),
        })?;
        self.site
            .add_login_node(name, &self.network, &self.http, &self.spec, broker)
            .await
            .map(|_| ())
    }

    /// Re-issues the proxy's certificate in place: for every login node
    /// but `omit`, from the proxy-client-ca or (`new_ca`) a brand-new CA.
    /// `skew_allowance = false` mints it valid from this very second, as
    /// certipy does.
    pub fn reissue_proxy_cert(
        &self,
        omit: Option<&str>,
        new_ca: bool,
        skew_allowance: bool,
    ) -> Result<()> {
        let site = self.site;
        let binds: Vec<Ipv4Addr> = site
            .all_login_nodes()
            .iter()
            .filter(|l| Some(l.name.as_str()) != omit)
            .flat_map(|l| l.towards_compute.values().map(|(bind, _)| *bind))
            .collect();
        let rotated = match new_ca {
            true => Some(crate::pki::CertificateAuthority::root(
                "rotated proxy-client-ca",
            )?),
            false => None,
        };
        let validity = match skew_allowance {
            true => crate::pki::Validity::fresh(365),
            false => crate::pki::Validity::from_this_second(365),
        };
        site.reissue_proxy_cert(
            &self.spec,
            &self.network,
            &binds,
            rotated.as_ref(),
            validity,
        )?;
        site.proxy_cert_disturbed.store(
            omit.is_some() || new_ca || !skew_allowance,
            std::sync::atomic::Ordering::SeqCst,
        );
        Ok(())
    }

    /// After a scenario: every sshd running with its pinned key, and the
    /// standard proxy certificate served, whatever the scenario did or
    /// where it failed. A no-op on stacks without an HPC site.
    pub async fn restore_site(&self) -> Result<()> {
        let site = self.site;
        site.restore_sshds(&self.network, &self.http).await?;
        if site
            .proxy_cert_disturbed
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.reissue_proxy_cert(None, false, true)?;
            self.restart_proxy().await?;
        }
        self.await_site_whole(std::time::Duration::from_secs(60))
            .await
    }

    /// Waits until the site is whole: every login node's remote tunnel
    /// answers from every compute node, and the broker reports healthy, in
    /// the same look. A restarted sshd alone is not enough: the broker
    /// notices a dead remote tunnel only on its next liveness tick and
    /// re-creates it on the one after, and a scenario started in between
    /// sees "connection refused" on that login node.
    pub async fn await_site_whole(&self, timeout: std::time::Duration) -> Result<()> {
        let site = self.site;
        let broker = self.broker().ok_or_else(|| HarnessError::Network {
            host: self.spec.topology.hub_host.clone(),
            message: "the HPC site has no tunnel broker client".into(),
        })?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut missing = Vec::new();
            for login in site.all_login_nodes() {
                for (compute, (bind, _)) in &login.towards_compute {
                    let target = std::net::SocketAddr::from((*bind, site.login_port));
                    let source = self.network.host(compute)?;
                    if !matches!(
                        crate::reachability::probe_reach(source, target).await,
                        crate::reachability::Reach::Connected
                    ) {
                        missing.push(format!(
                            "{} ({bind}) does not answer on its remote tunnel port {} from {compute}",
                            login.name, site.login_port
                        ));
                    }
                }
            }
            let health = broker.get("/api/health/").await;
            let healthy = matches!(&health, Ok(answer) if answer.status == 200);
            if missing.is_empty() && healthy {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let health = match health {
                    Ok(answer) => format!("HTTP {} {}", answer.status, answer.body),
                    Err(e) => e,
                };
                missing.push(format!("the broker's health answers {health}"));
                return Err(HarnessError::NotReady {
                    component: "HPC site (restored after a disturbing scenario)".into(),
                    check: missing.join("; "),
                    seconds: timeout.as_secs(),
                    last_lines: crate::process::last_lines(&site.broker_log, 10)
                        .into_iter()
                        .map(|l| format!("[tunnel broker] {l}"))
                        .collect(),
                });
            }
            // Bounded poll interval while the broker re-creates its tunnels.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Restarts only the proxy: SIGTERM to configurable-http-proxy; the hub
    /// notices within its check interval, starts it again (it then reads
    /// the certificate anew) and restores the routes. Waits until the hub
    /// and every lab answer through it again.
    pub async fn restart_proxy(&self) -> Result<()> {
        // On docker the (re-issued) certificate is copied into the hub's
        // host first, where the restarted proxy reads it.
        self.network
            .host(&self.spec.topology.hub_host)?
            .copy_in(&self.site.dir.join("proxy"))
            .await?;
        let marker = format!("{}={}", crate::stack::STACK_MARKER_ENV, self.marker);
        let is_proxy = |pid: u32| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            memchr::memmem::find(&cmdline, b"configurable-http-proxy").is_some()
                && environ.split(|b| *b == 0).any(|e| e == marker.as_bytes())
        };
        let old = find_pid(is_proxy).ok_or_else(|| HarnessError::Spawn {
            component: "configurable-http-proxy".into(),
            message: "no running proxy of this stack".into(),
        })?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(|e| HarnessError::io("stop the proxy", e.into()))?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let restarted = find_pid(|pid| pid != old && is_proxy(pid)).is_some();
            if restarted {
                // Routes restored, read through the proxy API (its own CA,
                // whatever certificate the public side now serves).
                let mut routed = true;
                for user in self.users() {
                    routed &= self.lab_address(&user).await.is_ok();
                }
                if routed {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(HarnessError::NotReady {
                    component: "configurable-http-proxy (restarted by the hub)".into(),
                    check: "every lab's route back in the restarted proxy".into(),
                    seconds: 60,
                    last_lines: crate::process::last_lines(self.hub_log(), 15),
                });
            }
            // Bounded readiness-poll interval while the hub restarts the proxy.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The pid and start time of `user`'s lab process on its compute node:
    /// unchanged means the lab was not restarted.
    pub fn lab_process(&self, user: &str) -> Option<(u32, u64)> {
        let wanted = format!("JUPYTERHUB_USER={user}");
        let marker = format!("{}={}", crate::stack::STACK_MARKER_ENV, self.marker);
        let pid = find_pid(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            memchr::memmem::find(&cmdline, b"jupyterhub.singleuser").is_some()
                && environ.split(|b| *b == 0).any(|e| e == wanted.as_bytes())
                && environ.split(|b| *b == 0).any(|e| e == marker.as_bytes())
        })?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let started = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(19)?
            .parse()
            .ok()?;
        Some((pid, started))
    }

    /// Stops (`running = false`) or starts again `node`'s sshd.
    pub async fn set_sshd(&self, node: &str, running: bool) -> Result<()> {
        let site = self.site;
        if running {
            site.start_sshd_again(&self.network, &self.http, node).await
        } else {
            site.stop_sshd(&self.network, node).await;
            Ok(())
        }
    }

    /// A tunnel request for `user`'s lab through `login`.
    pub fn tunnel_request(&self, user: &str, login: &str) -> Result<serde_json::Value> {
        let site = self.site;
        let all = site.all_login_nodes();
        let node = all
            .iter()
            .find(|l| l.name == login)
            .ok_or_else(|| HarnessError::Network {
                host: login.into(),
                message: "no such login node".into(),
            })?;
        let (_, compute) = node
            .towards_compute
            .get(&self.spec.topology.lab_host)
            .ok_or_else(|| HarnessError::Network {
                host: login.into(),
                message: "no link to the lab's compute node".into(),
            })?;
        Ok(serde_json::json!({
            "servername": format!("{user}-via-{login}"),
            "hostname": login,
            "svc_name": "jupyterlab",
            "svc_port": 8888,
            "target_node": compute.to_string(),
            "target_port": 8888,
        }))
    }

    /// Bulk TCP throughput to the lab's compute node (bytes per second):
    /// through a broker tunnel from the hub's host (hub → SSH → login node →
    /// compute node), and directly over the veth from the first login node,
    /// measured back to back with the same sink.
    /// A listener on the lab's compute node for bulk transfers: the
    /// listener, the node's address towards `login`, and its port.
    async fn throughput_sink(
        &self,
        login: &crate::hpc::LoginNodeInfo,
    ) -> Result<(tokio::net::TcpListener, Ipv4Addr, u16)> {
        let compute = &self.spec.topology.lab_host;
        let (_, compute_addr) = login.towards_compute[compute];
        let (sink, port) = self
            .network
            .host(compute)?
            .listen_on_free_port(Ipv4Addr::UNSPECIFIED)
            .await?;
        Ok((sink, compute_addr, port))
    }

    /// Throughput of a bare `ssh -N -L` from the hub's host through the
    /// first login node to the lab's compute node, with the broker's key
    /// and options (the same cipher): what OpenSSH itself manages on the
    /// path the broker's tunnels take.
    pub async fn bare_ssh_throughput(&self, bytes: u64) -> Result<f64> {
        use tokio::io::AsyncBufReadExt;
        let site = self.site;
        let login = &site.login_nodes[0];
        let (sink, compute_addr, port) = self.throughput_sink(login).await?;
        let hub = self.network.host(&self.spec.topology.hub_host)?;
        // A port free on the hub's loopback, for ssh to listen on.
        let (_, local_port) = hub.listen_on_free_port(Ipv4Addr::LOCALHOST).await?;
        let mut argv = hub.wrapper();
        argv.extend([
            "ssh".to_string(),
            "-v".into(),
            "-N".into(),
            "-o".into(),
            "ExitOnForwardFailure=yes".into(),
            "-L".into(),
            format!("127.0.0.1:{local_port}:{compute_addr}:{port}"),
        ]);
        argv.extend(super::broker::ssh_options(
            &site.broker_key,
            &site.known_hosts,
            &login.name,
            "root",
        ));
        argv.push(login.hub_facing.to_string());
        let mut ssh = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| HarnessError::io("run ssh -L", e))?;
        let stderr = ssh.stderr.take().ok_or_else(|| HarnessError::Network {
            host: login.name.clone(),
            message: "ssh -L gave no stderr".into(),
        })?;
        // ssh -v says so once the forward listens (after authentication).
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let listening = tokio::time::timeout(std::time::Duration::from_secs(15), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Local forwarding listening on") {
                    return true;
                }
                said.push(line);
            }
            false
        })
        .await
        .unwrap_or(false);
        if !listening {
            let _ = ssh.kill().await;
            return Err(HarnessError::Network {
                host: login.name.clone(),
                message: format!(
                    "a bare ssh -L to {compute_addr} through {} never listened; it said:\n  {}",
                    login.name,
                    said.iter()
                        .rev()
                        .take(8)
                        .rev()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n  ")
                ),
            });
        }
        // Keep draining ssh's chatter so it never blocks on a full pipe,
        // and keep the last of it for a failure.
        let chatter = std::sync::Arc::new(std::sync::Mutex::new(said));
        let drained = chatter.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut said) = drained.lock() {
                    said.push(line);
                }
            }
        });
        let stream = match hub
            .connect(
                (Ipv4Addr::LOCALHOST, local_port).into(),
                std::time::Duration::from_secs(5),
            )
            .await
        {
            Ok(stream) => stream,
            Err(e) => {
                let status = ssh.try_wait().ok().flatten();
                let _ = ssh.kill().await;
                let said = chatter.lock().map(|s| s.clone()).unwrap_or_default();
                return Err(HarnessError::Network {
                    host: login.name.clone(),
                    message: format!(
                        "connect to the ssh -L forward on 127.0.0.1:{local_port}: {e} (ssh {}); it said:\n  {}",
                        status.map_or("still running".to_string(), |s| s.to_string()),
                        said.iter().rev().take(12).rev().cloned().collect::<Vec<_>>().join("\n  ")
                    ),
                });
            }
        };
        let rate = transfer(&sink, stream, bytes).await;
        let _ = ssh.kill().await;
        rate
    }

    pub async fn tunnel_throughput(&self, bytes: u64) -> Result<(f64, f64)> {
        let site = self.site;
        let broker = self.broker().ok_or_else(|| HarnessError::Network {
            host: self.spec.topology.hub_host.clone(),
            message: "no tunnel broker".into(),
        })?;
        let login = &site.login_nodes[0];
        let (sink, compute_addr, port) = self.throughput_sink(login).await?;
        let direct = self
            .network
            .host(&login.name)?
            .connect(
                (compute_addr, port).into(),
                std::time::Duration::from_secs(5),
            )
            .await
            .map_err(|e| HarnessError::io("connect directly to the compute node", e))?;
        let direct_rate = transfer(&sink, direct, bytes).await?;
        let request = serde_json::json!({
            "servername": "hubtrust-throughput",
            "hostname": login.name,
            "svc_name": "bench",
            "svc_port": port,
            "target_node": compute_addr.to_string(),
            "target_port": port,
        });
        let answer = broker
            .post("/api/tunnel/", &request)
            .await
            .and_then(|a| a.expect_success())
            .map_err(|m| site.tunnel_error(&login.name, m))?;
        let local_port = answer.body["local_port"].as_u64().unwrap_or_default() as u16;
        let tunnel = self
            .network
            .host(&self.spec.topology.hub_host)?
            .connect(
                (Ipv4Addr::LOCALHOST, local_port).into(),
                std::time::Duration::from_secs(5),
            )
            .await
            .map_err(|e| HarnessError::io("connect to the tunnel", e))?;
        let tunnel_rate = transfer(&sink, tunnel, bytes).await;
        let _ = broker.delete("/api/tunnel/hubtrust-throughput/").await;
        Ok((tunnel_rate?, direct_rate))
    }

    /// On an HPC stack, the broker's and every login node's sshd's last log
    /// lines: what a failure that crossed a tunnel is explained by.
    pub fn tunnel_log_tail(&self) -> Option<String> {
        let site = self.site;
        let mut lines: Vec<String> = crate::process::last_lines(&site.broker_log, 8)
            .into_iter()
            .map(|l| format!("  [tunnel broker] {l}"))
            .collect();
        for login in site.all_login_nodes() {
            let log = site
                .dir
                .parent()?
                .join("logs")
                .join(format!("sshd-{}.log", login.name));
            lines.extend(
                crate::process::last_lines(&log, 4)
                    .into_iter()
                    .map(|l| format!("  [sshd ({})] {l}", login.name)),
            );
        }
        Some(format!(
            "the tunnels' last log lines:\n{}",
            lines.join("\n")
        ))
    }

    /// The site as it stands, for the report.
    pub fn report(&self) -> Result<crate::report::HpcSection> {
        let site = self.site;
        let (_, sans) = self.proxy_certificate()?;
        Ok(crate::report::HpcSection {
            login_nodes: site
                .all_login_nodes()
                .iter()
                .map(|l| crate::report::HpcLoginNode {
                    name: l.name.clone(),
                    hub_facing: l.hub_facing.to_string(),
                    bind_addresses: l
                        .towards_compute
                        .values()
                        .map(|(bind, _)| bind.to_string())
                        .collect(),
                })
                .collect(),
            compute_nodes: site.compute_nodes.clone(),
            proxy_sans: sans,
            proxy_not_before: self.proxy_not_before()?,
            lab_views: Vec::new(),
        })
    }

    /// The proxy certificate's notBefore, as the inventory prints it.
    pub fn proxy_not_before(&self) -> Result<String> {
        let site = self.site;
        crate::inventory::describe_file("hpc", &site.dir, &site.proxy_cert)?
            .map(|r| r.not_before)
            .ok_or_else(|| HarnessError::Pki("no proxy certificate".into()))
    }

    /// The notBefore of every certificate a lab verifies the proxy with:
    /// the proxy's own and its CA's, so a clock-skew finding names the one
    /// that was not yet valid rather than assuming it was the leaf.
    pub fn proxy_chain_not_before(&self) -> Result<String> {
        let site = self.site;
        let ca = site
            .dir
            .parent()
            .unwrap_or(&site.dir)
            .join("hub/internal-ssl/proxy-client-ca/proxy-client-ca.crt");
        let ca_not_before = crate::inventory::describe_file("hpc", &site.dir, &ca)?
            .map(|r| r.not_before)
            .unwrap_or_else(|| "unknown".into());
        Ok(format!(
            "the proxy certificate's notBefore is {}, its CA proxy-client-ca's is {ca_not_before}",
            self.proxy_not_before()?
        ))
    }

    /// `login-2 (10.77.5.2)` for a bind address, as operators name nodes.
    pub fn name_of(&self, addr: &str) -> String {
        self.site
            .all_login_nodes()
            .iter()
            .find(|l| {
                l.hub_facing.to_string() == addr
                    || l.towards_compute
                        .values()
                        .any(|(b, _)| b.to_string() == addr)
            })
            .map(|l| format!("{} ({addr})", l.name))
            .unwrap_or_else(|| addr.to_string())
    }

    /// The bind addresses of one login node.
    pub fn bind_addresses_of(&self, login: &str) -> Result<Vec<Ipv4Addr>> {
        Ok(self
            .site
            .all_login_nodes()
            .iter()
            .filter(|l| l.name == login)
            .flat_map(|l| l.towards_compute.values().map(|(bind, _)| *bind))
            .collect())
    }

    /// [`Stack::hpc_lab_view`], run on the compute node itself as the lab's
    /// user with the lab's own environment, for when nothing can reach the
    /// lab through the proxy any more (a proxy certificate nobody trusts).
    ///
    /// `clock_behind_secs` runs the probe with the node's clock that far
    /// behind (libfaketime), as on a compute node whose clock lags.
    pub async fn lab_view_on_node(
        &self,
        user: &str,
        clock_behind_secs: Option<u32>,
    ) -> Result<(Vec<LoginNodeView>, LabEnvironment)> {
        let site = self.site;
        let (pid, _) = self.lab_process(user).ok_or_else(|| HarnessError::Probe {
            endpoint: format!("lab of {user}"),
            message: "no lab process on the compute node".into(),
        })?;
        let uid = site.lab_uids.get(user).copied().unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ"))
            .map_err(|e| HarnessError::io("read the lab's environment", e))?;
        let env: Vec<(String, String)> = environ
            .split(|b| *b == 0)
            .filter_map(|entry| {
                let text = String::from_utf8_lossy(entry);
                let (k, v) = text.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        // The lagging clock is the lab's alone: `env` (already the lab's
        // user) preloads libfaketime into python only, not into the root
        // tools that enter the node, whose shared state the user could not
        // open.
        let mut clock: Vec<String> = Vec::new();
        if let Some(secs) = clock_behind_secs {
            clock = vec![
                "env".into(),
                format!("LD_PRELOAD={}", faketime_library()?.display()),
                format!("FAKETIME=-{secs}s"),
                "FAKETIME_DISABLE_SHM=1".into(),
            ];
        }
        let python = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map_err(|e| HarnessError::io("find the lab's python", e))?;
        let code = lab_view_code(&site.bind_addresses(), site.login_port);
        let output = tokio::time::timeout(
            std::time::Duration::from_secs(90),
            tokio::process::Command::new("nsenter")
                .args([
                    "-t",
                    &pid.to_string(),
                    "-n",
                    "-m",
                    "--wd=/",
                    "--",
                    "setpriv",
                ])
                .args([format!("--reuid={uid}"), format!("--regid={uid}")])
                .args(["--clear-groups", "--"])
                .args(clock)
                .arg(python)
                .args(["-c", &code])
                .env_clear()
                .envs(env)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .map_err(|_| HarnessError::Probe {
            endpoint: format!("lab of {user}"),
            message: "the probe on the compute node did not finish within 90 s".into(),
        })?
        .map_err(|e| HarnessError::io("run the probe on the compute node", e))?;
        parse_lab_view(&String::from_utf8_lossy(&output.stdout)).map_err(|message| {
            HarnessError::Probe {
                endpoint: format!("lab of {user}"),
                message: format!(
                    "{message}; stderr: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            }
        })
    }

    pub fn bind_addresses(&self) -> Result<Vec<Ipv4Addr>> {
        Ok(self.site.bind_addresses())
    }
}
