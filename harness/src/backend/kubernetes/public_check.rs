//! What `up` checks of a chart-started deployment before it says
//! `ready:`, through its public side only, as an outsider: the hub
//! answers over verified TLS, the first user's lab spawns (KubeSpawner
//! with internal_ssl: its Secret, its Service, the hub and proxy reaching
//! it over mTLS), a kernel cell runs, and the lab shows the org trust
//! bundle as the stack file says.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use super::{lab_trust, outbound, ClusterTarget, Deployment};
use crate::error::{HarnessError, Result};
use crate::hub_api::{check_public_side, operator_client, PublicSide};

fn failed(what: &str, message: String, fix: &str) -> HarnessError {
    HarnessError::Cluster {
        what: what.into(),
        message,
        fix: fix.into(),
    }
}

/// Runs the checks; returns the public URL.
pub async fn check(
    deployment: &Deployment,
    org_pem: Option<&str>,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<String> {
    let forward;
    let addr = match &deployment.target {
        ClusterTarget::Kind { .. } => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, deployment.public_host_port))
        }
        ClusterTarget::Existing { .. } => {
            forward = PortForward::start(deployment).await?;
            forward.addr
        }
    };
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
        cell.push_str(&outbound::cell(&outbound_targets, outbound::SYSTEM_BUNDLE));
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
    progress(&format!(
        "the hub (JupyterHub {}) answers through the proxy over verified TLS",
        report.hub_version
    ));
    progress(&format!(
        "{user}'s lab was ready after {:.1} s and ran a cell through the proxy",
        report.lab_ready_after_seconds
    ));
    // The bundle's report is the cell's first line, the fetches' the next.
    let (bundle_line, fetch_lines) = report
        .cell
        .split_once('\n')
        .unwrap_or((report.cell.as_str(), ""));
    match &deployment.org_trust {
        Some(trust) => {
            let said = lab_trust::judge(trust, bundle_line)
                .map_err(|message| failed(&format!("the org trust bundle in {user}'s lab"), message, "compare the lab's init container and environment with docs/kubernetes.md's recipe"))?;
            progress(&said);
            if outbound_targets.is_empty() {
                progress("the lab's tools were not tried against an org-CA server: the stack's own org_bundle comes without the key to sign one (only the bundle's contents were checked)");
            } else {
                let said = outbound::judge(trust, &outbound_targets, fetch_lines).map_err(|message| {
                    failed(
                        &format!("the user tools in {user}'s lab against the org-CA and foreign-CA servers"),
                        message,
                        "compare the lab's CA variables and merged bundle with docs/kubernetes.md's recipe",
                    )
                })?;
                for line in said {
                    progress(&line);
                }
            }
        }
        None if report.cell != "hubtrust-outside" => {
            return Err(failed(
                &format!("the kernel cell in {user}'s lab"),
                format!("it printed {:?}, not \"hubtrust-outside\"", report.cell),
                "read the lab's log (`kubectl logs` of its pod)",
            ))
        }
        None => {}
    }
    Ok(format!("https://localhost:{}/", addr.port()))
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
