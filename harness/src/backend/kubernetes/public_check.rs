//! What `run` and `up` check of a chart-started deployment through its
//! public side only, as an outsider: the hub answers over verified TLS, the first user's lab spawns (KubeSpawner
//! with internal_ssl: its Secret, its Service, the hub and proxy reaching
//! it over mTLS), a kernel cell runs, and the lab shows the org trust
//! bundle as the stack file says.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use super::{lab_trust, outbound, ClusterTarget, Deployment};
use crate::enterprise::{self, ToolRun};
use crate::error::{HarnessError, Result};
use crate::hub_api::{check_public_side, operator_client, HubApi, PublicSide};
use crate::secret::Secret;

fn failed(what: &str, message: String, fix: &str) -> HarnessError {
    HarnessError::Cluster {
        what: what.into(),
        message,
        fix: fix.into(),
    }
}

/// Where this machine reaches proxy-public: kind's loopback nodePort, or
/// a `kubectl port-forward` to a cluster elsewhere, held while this lives.
pub struct PublicAddress {
    pub addr: SocketAddr,
    _forward: Option<PortForward>,
}

impl PublicAddress {
    pub async fn open(deployment: &Deployment) -> Result<Self> {
        Ok(match &deployment.target {
            ClusterTarget::Kind { .. } => PublicAddress {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, deployment.public_host_port)),
                _forward: None,
            },
            ClusterTarget::Existing { .. } => {
                let forward = PortForward::start(deployment).await?;
                PublicAddress {
                    addr: forward.addr,
                    _forward: Some(forward),
                }
            }
        })
    }

    /// The URL users open, as this machine reaches it.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/", self.addr.port())
    }
}

/// What the public side showed: the hub and the first lab working, and
/// the lab's trust judged apart, each as its own verdict.
pub struct PublicSideSeen {
    pub hub_version: String,
    pub lab_ready_after_seconds: f64,
    /// The org bundle in the lab as the stack file says it must be, when
    /// the stack has `[enterprise]`.
    pub org_bundle: Option<Result<String>>,
    /// The lab's own tools against hubtrust's outbound servers (direct,
    /// and through the inspecting proxy on kind), when the stack has
    /// `[enterprise]`.
    pub tools: Option<ToolsVerdict>,
    /// Every tool run of the cell, when the tools ran against hubtrust's
    /// servers, or why they could not be read.
    pub runs: Option<std::result::Result<Vec<ToolRun>, String>>,
}

/// The lab's tools against hubtrust's servers.
pub enum ToolsVerdict {
    /// Not tried, and why.
    NotTried(String),
    /// Their verdict: one line per tool that ran, or what broke.
    Judged(Result<Vec<String>>),
}

/// The hub answers over verified TLS, the first user's lab spawns and
/// runs a cell, through `public`. An error here means the deployment does
/// not work from outside; the trust verdicts come back apart.
pub async fn check(
    deployment: &Deployment,
    public: &PublicAddress,
    org_pem: Option<&str>,
) -> Result<PublicSideSeen> {
    let addr = public.addr;
    let ca_path = deployment.run_dir.join("public/public-ca.crt");
    let ca = std::fs::read_to_string(&ca_path)
        .map_err(|e| HarnessError::io(format!("read {}", ca_path.display()), e))?;
    let http = operator_client(&[&ca], "localhost", addr, &deployment.service_token)?;
    let connect = || -> futures::future::BoxFuture<'_, std::io::Result<tokio::net::TcpStream>> {
        Box::pin(tokio::net::TcpStream::connect(addr))
    };
    let side = PublicSide {
        http: &http,
        base: format!("https://localhost:{}", addr.port()),
        public_name: "localhost".into(),
        roots_pem: ca.clone(),
        connect: &connect,
    };
    let outbound_targets = if deployment.outbound_servers {
        outbound::targets(
            &deployment.namespace,
            deployment.inspecting_proxy().is_some(),
        )
    } else {
        Vec::new()
    };
    let mut cell = match org_pem {
        Some(pem) => lab_trust::cell(&lab_trust::marker(pem)),
        None => "print('hubtrust-' + 'outside')".to_string(),
    };
    if !outbound_targets.is_empty() {
        cell.push('\n');
        cell.push_str(&outbound::cell(&outbound_targets, &deployment.namespace));
    }
    let user = &deployment.user;
    let (report, _) = check_public_side(
        &side,
        user,
        &cell,
        Duration::from_secs(120),
        Duration::from_secs(300),
    )
    .await?;
    // The bundle's report is the cell's first line, the tools' after it.
    let (bundle_line, tool_lines) = report
        .cell
        .split_once('\n')
        .unwrap_or((report.cell.as_str(), ""));
    let runs = (!outbound_targets.is_empty()).then(|| enterprise::parse_results(tool_lines));
    let enterprise_targets =
        outbound::as_enterprise_targets(&outbound_targets, &deployment.namespace);
    let fix = "compare the lab's init container and environment with docs/kubernetes.md's recipe";
    let (org_bundle, tools) = match &deployment.org_trust {
        Some(trust) => {
            let bundle = lab_trust::judge(trust, bundle_line).map_err(|message| {
                failed(
                    &format!("the org trust bundle in {user}'s lab"),
                    message,
                    fix,
                )
            });
            let tools = match &runs {
                None => ToolsVerdict::NotTried("the stack's own org_bundle comes without the key to sign an org-CA server, so only the bundle's contents were checked".to_string()),
                Some(read) => {
                    let judged = read
                        .as_ref()
                        .map_err(Clone::clone)
                        .and_then(|runs| outbound::judge(trust, &enterprise_targets, runs));
                    ToolsVerdict::Judged(judged.map_err(|message| {
                        failed(
                            &format!("the user tools in {user}'s lab against the outbound servers"),
                            message,
                            "compare the lab's CA variables and merged bundle with docs/kubernetes.md's recipe",
                        )
                    }))
                }
            };
            (Some(bundle), Some(tools))
        }
        None if report.cell != "hubtrust-outside" => {
            return Err(failed(
                &format!("the kernel cell in {user}'s lab"),
                format!("it printed {:?}, not \"hubtrust-outside\"", report.cell),
                "read the lab's log (`kubectl logs` of its pod)",
            ))
        }
        None => (None, None),
    };
    Ok(PublicSideSeen {
        hub_version: report.hub_version,
        lab_ready_after_seconds: report.lab_ready_after_seconds,
        org_bundle,
        tools,
        runs,
    })
}

/// A short-lived token of the first user's own, minted through the hub
/// API as hubtrust's service, for a probe of that user's running lab.
pub async fn user_token(deployment: &Deployment, public: &PublicAddress) -> Result<Secret> {
    let ca_path = deployment.run_dir.join("public/public-ca.crt");
    let ca = std::fs::read_to_string(&ca_path)
        .map_err(|e| HarnessError::io(format!("read {}", ca_path.display()), e))?;
    let http = operator_client(&[&ca], "localhost", public.addr, &deployment.service_token)?;
    HubApi {
        http: &http,
        base: format!("https://localhost:{}", public.addr.port()),
    }
    .user_token(&deployment.user)
    .await
}

/// Asks the hub API for `deployment.user`, and that user's lab for its
/// status and its kernels, through the proxy on kind's loopback nodePort:
/// connections from the proxy pod to the hub's and the lab's pods, for
/// captures on their own interfaces to see.
pub async fn reach_hub_and_lab_through_proxy(deployment: &Deployment) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, deployment.public_host_port));
    let ca_path = deployment.run_dir.join("public/public-ca.crt");
    let ca = std::fs::read_to_string(&ca_path)
        .map_err(|e| HarnessError::io(format!("read {}", ca_path.display()), e))?;
    let http = operator_client(&[&ca], "localhost", addr, &deployment.service_token)?;
    let user = &deployment.user;
    for path in [
        format!("hub/api/users/{user}"),
        format!("user/{user}/api/status"),
        format!("user/{user}/api/kernels"),
    ] {
        let url = format!("https://localhost:{}/{path}", addr.port());
        let what = format!("GET /{path} through the proxy");
        let status = http
            .get(&url)
            .send()
            .await
            .map_err(|e| failed(&what, e.to_string(), "read the proxy's and the lab's logs"))?
            .status();
        if !status.is_success() {
            return Err(failed(
                &what,
                format!("HTTP {status}"),
                "read the proxy's and the lab's logs",
            ));
        }
    }
    Ok(())
}

/// `kubectl port-forward` to proxy-public, for a cluster whose nodePort
/// this machine may not reach; killed on drop.
struct PortForward {
    _child: tokio::process::Child,
    addr: SocketAddr,
}

impl PortForward {
    async fn start(deployment: &Deployment) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let what = "kubectl port-forward to svc/proxy-public";
        let fix = "check that kubectl may port-forward in the namespace";
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| HarnessError::io("find a free loopback port for proxy-public", e))?
            .port();
        let mut args = deployment.target.client_flags();
        args.extend(
            [
                "--namespace",
                &deployment.namespace,
                "port-forward",
                "--address",
                "127.0.0.1",
                "svc/proxy-public",
                &format!("{port}:443"),
            ]
            .map(String::from),
        );
        let mut child = tokio::process::Command::new("kubectl")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(what, format!("cannot start: {e}"), fix))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| failed(what, "has no stdout".into(), fix))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let forwarding = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with("Forwarding from") {
                    return Ok::<_, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        if !matches!(forwarding, Ok(Ok(true))) {
            return Err(failed(
                what,
                "did not start forwarding within 30 s".into(),
                fix,
            ));
        }
        Ok(PortForward {
            _child: child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        })
    }
}
