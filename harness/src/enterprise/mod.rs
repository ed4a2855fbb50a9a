//! Enterprise trust: hubtrust's outbound test servers on an `internet`
//! host, the org-bundle merge step (run for real, as the init step would),
//! byte-level checks of the merged bundle, and the in-lab discriminator that
//! runs each user tool against each target with and without the org CA.

pub mod add_on;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::{Host, InitArg, InitStep, StackNetwork};
use crate::error::{HarnessError, Result};
use crate::pki::{CertificateAuthority, OrgPki, Usage, Validity};
use crate::probe::parse_certs;
use crate::ready::{wait_ready, ReadyCheck, ReadyContext};
use crate::spec::EnterpriseSpec;

pub use crate::pki::{CA_VARIABLES, SYSTEM_STORE};

/// Where the inspecting proxy listens on the egress host.
const PROXY_PORT: u16 = 8080;

/// Who signed an outbound endpoint's certificate, which decides whether a
/// bundle should trust it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signer {
    /// The org CA, through its issuing intermediate.
    Org,
    /// The per-run "public root" that stands in for the system store's roots.
    Public,
    /// A CA nobody trusts.
    Foreign,
    /// The inspecting proxy, re-signing with the org's issuing intermediate.
    InspectingProxy,
    /// Valid in every way but its dates, from the public root.
    Expired,
    /// Valid in every way but its names, from the public root.
    WrongName,
    /// A bad upstream (foreign CA, expired, wrong name) fetched through the
    /// inspecting proxy, which must refuse it rather than re-sign it.
    BadUpstreamViaProxy,
}

/// One outbound endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub url: String,
    pub signer: Signer,
    /// The proxy the lab's tools go through for this target, if any.
    pub proxy: Option<String>,
}

/// Which bundle a tool ran with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bundle {
    /// The lab's default environment: the merged bundle.
    Merged,
    /// The tool's variable overridden to the system bundle alone.
    System,
}

impl Bundle {
    pub fn label(self) -> &'static str {
        match self {
            Bundle::Merged => "merged bundle",
            Bundle::System => "system bundle alone",
        }
    }
}

/// What the merge step did.
#[derive(Debug, Clone, Serialize)]
pub struct MergeOutcome {
    pub merged: PathBuf,
    /// Set when the step degraded (no org bundle), with its own words.
    pub degraded: Option<String>,
}

/// Where the outbound side runs.
pub struct Placement<'a> {
    pub internet: &'a Host,
    /// The internet host's address on its link with the lab's host.
    pub internet_ip: Ipv4Addr,
    pub lab_host: &'a Host,
    /// Names the labs reach without a proxy (hub, loopback).
    pub local_names: Vec<String>,
    pub egress: Option<EgressPlacement<'a>>,
}

/// The inspecting proxy's host and addresses.
pub struct EgressPlacement<'a> {
    pub host: &'a Host,
    /// The egress host's address on its link with the lab's host.
    pub listen_ip: Ipv4Addr,
    /// The internet host's address on its link with the egress host: the
    /// lab has no route to it except through the proxy.
    pub internet_far_ip: Ipv4Addr,
    pub mitmdump: PathBuf,
    /// For the readiness check: the stack's network and HTTP client.
    pub network: &'a StackNetwork,
    pub http: &'a reqwest::Client,
    /// A replacement for mitmproxy, from the stack file.
    pub command: Option<Vec<String>>,
    /// Options appended to mitmproxy's, from the stack file.
    pub extra_args: Vec<String>,
    pub log: PathBuf,
    pub env: std::collections::BTreeMap<String, String>,
}

/// The two legs proxied traffic must take on the wire: the lab's host to
/// the proxy, then the proxy's host to the internet host's far address.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyRoute {
    pub proxy_host: String,
    pub proxy_addr: SocketAddr,
    pub internet_host: String,
    pub internet_far_ip: Ipv4Addr,
}

/// The outbound side of an enterprise stack: servers on the internet host,
/// the system and org bundles, and the merged bundle when the step ran.
/// The servers stop when this is dropped.
pub struct Outbound {
    pub targets: Vec<Target>,
    pub system_bundle: PathBuf,
    pub org_bundle: PathBuf,
    pub merge: Option<MergeOutcome>,
    /// `HTTPS_PROXY` and `NO_PROXY` for the labs, with an egress host.
    pub proxy_env: Vec<(String, String)>,
    /// Where proxied traffic must cross the wire, with an egress host.
    pub proxy_route: Option<ProxyRoute>,
    /// The outbound test servers, for the TLS scan (from the internet host).
    pub tls_servers: Vec<crate::tls_scan::ScanTarget>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    /// The inspecting proxy (killed with its process group on drop).
    proxy: Option<crate::process::ManagedProcess>,
}

impl Drop for Outbound {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

impl Outbound {
    /// Generates the public root and the endpoints' leaves, writes the
    /// bundles, starts the servers on `internet` and, when the spec asks
    /// for it, runs the merge step on `lab_host`.
    pub async fn start(
        spec: &EnterpriseSpec,
        org: &OrgPki,
        placement: Placement<'_>,
        dir: &Path,
        merge_script: &Path,
    ) -> Result<Self> {
        let Placement {
            internet,
            internet_ip,
            lab_host,
            local_names,
            egress,
        } = placement;
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        let public_root = &org.public;
        let system_bundle = dir.join("system-ca-bundle.crt");
        crate::pki::write_with_mode(&system_bundle, public_root.cert_pem().as_bytes(), 0o644)?;
        let org_bundle = match &spec.org_bundle {
            Some(source) => source.clone(),
            None => {
                let path = dir.join("org-ca-bundle.crt");
                crate::pki::write_with_mode(&path, org.root.cert_pem().as_bytes(), 0o644)?;
                path
            }
        };

        let ip = internet_ip.to_string();
        let far_ip = egress.as_ref().map(|e| e.internet_far_ip.to_string());
        // Every address the internet host answers on, for the leaves' SANs.
        let sans: Vec<&str> = std::iter::once(ip.as_str())
            .chain(far_ip.as_deref())
            .collect();
        let mut targets = Vec::new();
        let mut servers = Vec::new();
        let mut tls_servers = Vec::new();
        let wrong_name = ["elsewhere.invalid"];
        for (name, signer, ca, port, validity, names) in [
            (
                "org-CA server",
                Signer::Org,
                &org.issuing,
                8443,
                Validity::fresh(30),
                &sans[..],
            ),
            (
                "public endpoint",
                Signer::Public,
                public_root,
                8444,
                Validity::fresh(30),
                &sans[..],
            ),
            (
                "foreign-CA server",
                Signer::Foreign,
                &org.foreign,
                8445,
                Validity::fresh(30),
                &sans[..],
            ),
            // Bad only in one way each, from the root the system store
            // trusts: what an inspecting proxy must refuse upstream.
            (
                "expired server",
                Signer::Expired,
                public_root,
                8446,
                Validity::expired(),
                &sans[..],
            ),
            (
                "wrong-name server",
                Signer::WrongName,
                public_root,
                8447,
                Validity::fresh(30),
                &wrong_name[..],
            ),
        ] {
            let identity = ca.issue(name, names, Usage::Server, validity)?;
            let config = crate::probe::server_tls_config(&identity)?;
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            let listener = internet
                .listen(addr)
                .await
                .map_err(|e| HarnessError::Network {
                    host: internet.name.clone(),
                    message: format!("cannot serve the {name} on {addr}: {e}"),
                })?;
            tls_servers.push(crate::tls_scan::ScanTarget {
                endpoint: name.into(),
                from_host: internet.name.clone(),
                addr: SocketAddr::from((internet_ip, port)),
                server_name: ip.clone(),
                client: None,
            });
            servers.push(tokio::spawn(serve(
                listener,
                tokio_rustls::TlsAcceptor::from(Arc::new(config)),
                name,
            )));
            targets.push(Target {
                name: name.into(),
                url: format!("https://{ip}:{port}"),
                signer,
                proxy: None,
            });
        }

        let mut proxy = None;
        let mut proxy_env = Vec::new();
        let mut proxy_route = None;
        if let Some(egress) = egress {
            let (process, url) = start_inspecting_proxy(&egress, org, public_root, dir).await?;
            proxy_route = Some(ProxyRoute {
                proxy_host: egress.host.name.clone(),
                proxy_addr: SocketAddr::from((egress.listen_ip, PROXY_PORT)),
                internet_host: internet.name.clone(),
                internet_far_ip: egress.internet_far_ip,
            });
            let far = far_ip.clone().unwrap_or_default();
            targets.push(Target {
                name: "public endpoint via the inspecting proxy".into(),
                url: format!("https://{far}:8444"),
                signer: Signer::InspectingProxy,
                proxy: Some(url.clone()),
            });
            for (name, port) in [
                ("foreign-CA server", 8445),
                ("expired server", 8446),
                ("wrong-name server", 8447),
            ] {
                targets.push(Target {
                    name: format!("{name} via the inspecting proxy"),
                    url: format!("https://{far}:{port}"),
                    signer: Signer::BadUpstreamViaProxy,
                    proxy: Some(url.clone()),
                });
            }
            let no_proxy = local_names
                .iter()
                .cloned()
                .chain([ip.clone()])
                .collect::<Vec<_>>()
                .join(",");
            for (name, value) in [
                ("HTTPS_PROXY", &url),
                ("https_proxy", &url),
                ("NO_PROXY", &no_proxy),
                ("no_proxy", &no_proxy),
            ] {
                proxy_env.push((name.to_string(), value.clone()));
            }
            proxy = Some(process);
        }

        let merge = if spec.merge_org_bundle {
            let merged = dir.join("certs-extra").join("ca-bundle.crt");
            let step = match &spec.merge_command {
                Some(command) if !command.is_empty() => MergeStep::Command(command),
                _ => MergeStep::Script(merge_script),
            };
            Some(run_merge_step(lab_host, step, &system_bundle, &org_bundle, &merged).await?)
        } else {
            None
        };
        Ok(Self {
            targets,
            system_bundle,
            org_bundle,
            merge,
            proxy_env,
            proxy_route,
            tls_servers,
            servers,
            proxy,
        })
    }
}

/// Starts real mitmproxy on the egress host, signing with the org's issuing
/// intermediate (its key, then the intermediate and the root, so the chain
/// is sent) and trusting the public root upstream. Returns the process and
/// the proxy's URL once it accepts connections.
async fn start_inspecting_proxy(
    egress: &EgressPlacement<'_>,
    org: &OrgPki,
    public_root: &CertificateAuthority,
    dir: &Path,
) -> Result<(crate::process::ManagedProcess, String)> {
    let confdir = dir.join("mitmproxy");
    std::fs::create_dir_all(&confdir)
        .map_err(|e| HarnessError::io(format!("create {}", confdir.display()), e))?;
    let signing = format!("{}{}", org.issuing.signing_pem(), org.root.cert_pem());
    crate::pki::write_with_mode(&confdir.join("mitmproxy-ca.pem"), signing.as_bytes(), 0o600)?;
    // mitmproxy reads its CA from confdir; the same file is offered to a
    // replacement proxy through $HUBTRUST_PROXY_CA.
    let upstream = dir.join("egress-upstream-trust.crt");
    crate::pki::write_with_mode(&upstream, public_root.cert_pem().as_bytes(), 0o644)?;
    let addr = SocketAddr::from((egress.listen_ip, PROXY_PORT));
    let ca_file = confdir.join("mitmproxy-ca.pem");
    let mut env = egress.env.clone();
    for (name, value) in [
        ("HUBTRUST_PROXY_LISTEN", addr.to_string()),
        ("HUBTRUST_PROXY_CA", ca_file.display().to_string()),
        (
            "HUBTRUST_PROXY_UPSTREAM_TRUST",
            upstream.display().to_string(),
        ),
    ] {
        env.insert(name.into(), value);
    }
    let (program, args) = match &egress.command {
        Some(command) if !command.is_empty() => (command[0].clone(), command[1..].to_vec()),
        _ => (
            egress.mitmdump.display().to_string(),
            vec![
                "--mode".into(),
                "regular".into(),
                "--listen-host".into(),
                egress.listen_ip.to_string(),
                "--listen-port".into(),
                PROXY_PORT.to_string(),
                "--set".into(),
                format!("confdir={}", confdir.display()),
                "--set".into(),
                format!("ssl_verify_upstream_trusted_ca={}", upstream.display()),
            ]
            .into_iter()
            .chain(egress.extra_args.iter().cloned())
            .collect(),
        ),
    };
    let launch = crate::process::LaunchSpec {
        name: "inspecting proxy".into(),
        program,
        args,
        env,
        cwd: dir.to_path_buf(),
        log: egress.log.clone(),
        role: Some(crate::spec::ContainerRole::Mitmproxy),
    };
    // A docker egress host gets its config and keys copied in.
    egress.host.copy_in(dir).await?;
    let mut process = egress.host.start(&launch).await?;
    let check = ReadyCheck::Tcp {
        host: egress.host.name.clone(),
        addr,
        timeout_secs: 60,
    };
    let ready = ReadyContext {
        network: egress.network,
        http: egress.http,
        log: &egress.log,
        names: &[],
    };
    let program = &launch.program;
    wait_ready("inspecting proxy", &check, &ready, &mut process)
        .await
        .map_err(|e| match e {
            HarnessError::ComponentExited {
                status, last_lines, ..
            } => HarnessError::Spawn {
                component: "inspecting proxy".into(),
                message: format!(
                    "`{program}` exited ({status}) before it accepted connections on {addr}; its last lines:\n  {}\n(fix: check enterprise.proxy_command, or the mitmproxy install in the component cache)",
                    last_lines.join("\n  ")
                ),
            },
            HarnessError::NotReady { last_lines, .. } => HarnessError::Spawn {
                component: "inspecting proxy".into(),
                message: format!(
                    "`{program}` is not accepting connections on {addr} after 60s; its last lines:\n  {}\n(fix: it must listen on $HUBTRUST_PROXY_LISTEN)",
                    last_lines.join("\n  ")
                ),
            },
            other => other,
        })?;
    Ok((process, format!("http://{addr}")))
}

/// The variables the labs get: the five CA variables at the merged bundle
/// when the merge step ran, nothing otherwise.
pub fn lab_environment(merge: Option<&MergeOutcome>) -> Vec<(String, String)> {
    merge
        .iter()
        .flat_map(|m| {
            CA_VARIABLES
                .iter()
                .map(|v| (v.to_string(), m.merged.display().to_string()))
        })
        .collect()
}

impl Outbound {
    /// Stops the inspecting proxy: SIGTERM, a grace period, then SIGKILL.
    /// (Dropping it kills it outright.)
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(proxy) = self.proxy.take() {
            proxy.stop(grace).await;
        }
    }
}

impl Outbound {
    /// Everything the labs' environment gains: the five CA variables when
    /// the merge step ran, the proxy variables with an egress host.
    pub fn lab_environment(&self) -> Vec<(String, String)> {
        let mut env = lab_environment(self.merge.as_ref());
        env.extend(self.proxy_env.iter().cloned());
        env
    }
}

/// A minimal HTTPS server: enough of HTTP for urllib, requests, curl, node,
/// `git ls-remote` (smart-HTTP ref advertisement) and `pip index` (a PEP 503
/// simple index).
async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    name: &'static str,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // Clients that refuse the certificate end here: expected.
            let Ok(Ok(mut tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
            else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
                match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let text = String::from_utf8_lossy(&request);
            let path = text.split_whitespace().nth(1).unwrap_or("/");
            let (content_type, body) = respond(name, path);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = tls.write_all(head.as_bytes()).await;
            let _ = tls.write_all(&body).await;
            let _ = tls.shutdown().await;
        });
    }
}

fn respond(name: &str, path: &str) -> (&'static str, Vec<u8>) {
    if path.contains("/info/refs") {
        let pkt = |s: &str| format!("{:04x}{s}", s.len() + 4);
        let sha = "1b1e5e7a0c4a4f4bbf6f3c3b2a1d0e9f8a7b6c5d";
        let body = format!(
            "{}0000{}{}0000",
            pkt("# service=git-upload-pack\n"),
            pkt(&format!("{sha} HEAD\0symref=HEAD:refs/heads/main\n")),
            pkt(&format!("{sha} refs/heads/main\n")),
        );
        return (
            "application/x-git-upload-pack-advertisement",
            body.into_bytes(),
        );
    }
    if path.starts_with("/simple") {
        let body = if path.trim_end_matches('/') == "/simple" {
            "<!DOCTYPE html><html><body><a href=\"hubtrust-probe/\">hubtrust-probe</a></body></html>"
        } else {
            "<!DOCTYPE html><html><body><a href=\"/files/hubtrust_probe-1.0.tar.gz\">hubtrust_probe-1.0.tar.gz</a></body></html>"
        };
        return ("text/html", body.as_bytes().to_vec());
    }
    ("text/plain", format!("hubtrust {name}\n").into_bytes())
}

/// Which merge step runs: hubtrust's script, or a vendor's command. Either
/// gets three arguments appended: the system bundle, the org bundle (which
/// may be absent) and the output path.
#[derive(Debug, Clone, Copy)]
pub enum MergeStep<'a> {
    Script(&'a Path),
    Command(&'a [String]),
}

/// Runs the merge step on the lab's host as its init step: the lab's
/// image, the two bundles (and hubtrust's script) as inputs, writing the
/// merged bundle where the lab reads it.
pub async fn run_merge_step(
    host: &Host,
    step: MergeStep<'_>,
    system: &Path,
    org: &Path,
    merged: &Path,
) -> Result<MergeOutcome> {
    let input = |name: &str| InitArg::Input(name.into());
    let mut inputs = vec![
        ("system-ca-bundle.crt".to_string(), system.to_path_buf()),
        // A missing org bundle stays missing: the step degrades on it.
        ("org-ca-bundle.crt".to_string(), org.to_path_buf()),
    ];
    let mut args = match step {
        MergeStep::Script(script) => {
            inputs.push(("merge-ca-bundle.sh".into(), script.to_path_buf()));
            vec![InitArg::Literal("sh".into()), input("merge-ca-bundle.sh")]
        }
        MergeStep::Command(command) => command.iter().cloned().map(InitArg::Literal).collect(),
    };
    args.extend([
        input("system-ca-bundle.crt"),
        input("org-ca-bundle.crt"),
        InitArg::Literal(merged.display().to_string()),
    ]);
    let init = InitStep {
        name: "merge-ca-bundle".into(),
        args,
        inputs,
        outputs: merged.parent().map(Path::to_path_buf).into_iter().collect(),
        timeout: Duration::from_secs(30),
    };
    let ran = host.run_init_step(&init).await?;
    merge_outcome(
        "org-bundle merge step",
        ran.code,
        ran.stderr.trim().to_string(),
        merged,
    )
}

/// What a finished merge step did: an error when it failed or wrote
/// nothing, else the output with whatever it said (a degraded merge).
fn merge_outcome(step: &str, code: i64, said: String, merged: &Path) -> Result<MergeOutcome> {
    if code != 0 {
        return Err(HarnessError::Spawn {
            component: step.into(),
            message: format!("it exited with status {code}: {said} (fix: check enterprise.merge_command, or the org bundle)"),
        });
    }
    let written = std::fs::metadata(merged).map(|m| m.len()).unwrap_or(0);
    if written == 0 {
        return Err(HarnessError::Spawn {
            component: step.into(),
            message: format!(
                "it exited 0 but wrote nothing to {} (fix: the step's third argument is where the merged bundle goes)",
                merged.display()
            ),
        });
    }
    Ok(MergeOutcome {
        merged: merged.to_path_buf(),
        degraded: (!said.is_empty()).then_some(said),
    })
}

/// The byte-level check of a merged bundle.
#[derive(Debug, Clone, Serialize)]
pub struct BundleCheck {
    pub system_certs: usize,
    pub org_certs: usize,
    pub merged_certs: usize,
    /// Why the merged file is not exactly system + org, if it is not.
    pub problem: Option<String>,
}

/// A merge's three bundles as text: the system bundle and the org bundle
/// it started from (none when there was none to merge) and what it wrote.
#[derive(Debug, Clone)]
pub struct MergedBundleTexts {
    pub system: String,
    pub org: Option<String>,
    pub merged: String,
}

/// Whether `merged` parses into exactly the system bundle's certificates
/// followed by the org bundle's (none if it is missing), in order.
pub fn check_merged(system: &Path, org: &Path, merged: &Path) -> BundleCheck {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let org = match org.exists() {
        true => read(org).map(Some),
        false => Ok(None),
    };
    check_bundles(read(system), org, read(merged))
}

/// [`check_merged`] of bundles already read.
pub fn check_merged_texts(texts: &MergedBundleTexts) -> BundleCheck {
    check_bundles(
        Ok(texts.system.clone()),
        Ok(texts.org.clone()),
        Ok(texts.merged.clone()),
    )
}

type BundleText = std::result::Result<String, String>;

fn check_bundles(
    system: BundleText,
    org: std::result::Result<Option<String>, String>,
    merged: BundleText,
) -> BundleCheck {
    let parse = |text: BundleText| -> std::result::Result<Vec<Vec<u8>>, String> {
        Ok(parse_certs(&text?)?.iter().map(|c| c.to_vec()).collect())
    };
    let system_certs = parse(system);
    let org_certs = org.and_then(|org| org.map_or(Ok(Vec::new()), |text| parse(Ok(text))));
    let merged_certs = parse(merged);
    let counts = |r: &std::result::Result<Vec<Vec<u8>>, String>| r.as_ref().map_or(0, Vec::len);
    let problem = match (&system_certs, &org_certs, &merged_certs) {
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Some(e.clone()),
        (Ok(s), Ok(o), Ok(m)) => {
            let expected: Vec<&Vec<u8>> = s.iter().chain(o).collect();
            let got: Vec<&Vec<u8>> = m.iter().collect();
            (expected != got).then(|| {
                format!(
                    "expected {} certificates ({} system + {} org) in order, found {}",
                    expected.len(),
                    s.len(),
                    o.len(),
                    m.len()
                )
            })
        }
    };
    BundleCheck {
        system_certs: counts(&system_certs),
        org_certs: counts(&org_certs),
        merged_certs: counts(&merged_certs),
        problem,
    }
}

/// The user tools the discriminator runs, in table order.
pub const TOOLS: [&str; 6] = ["python urllib", "requests", "curl", "git", "node", "pip"];

/// One tool run in the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolRun {
    pub tool: String,
    pub target: String,
    pub bundle: Bundle,
    /// `ok`, `absent`, `timeout`, or `failed` (then see `detail`).
    pub outcome: String,
    #[serde(default)]
    pub detail: String,
    /// For a run through the proxy: the user name the driver put in the
    /// proxy URL, so the run's CONNECT can be told apart on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl ToolRun {
    /// The stable code of the run: `ok`, `absent`, or an error class.
    pub fn code(&self) -> &'static str {
        match self.outcome.as_str() {
            "ok" => "ok",
            "absent" => "absent",
            "timeout" => "timeout",
            _ => error_code(&self.detail),
        }
    }
}

/// Maps a tool's error text to a stable code.
pub fn error_code(text: &str) -> &'static str {
    let t = text.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| t.contains(n));
    if any(&[
        "hostname mismatch",
        "ip address mismatch",
        "err_tls_cert_altname_invalid",
        "no alternative certificate subject name",
        "doesn't match",
    ]) {
        "name-mismatch"
    } else if any(&["certificate has expired", "cert_has_expired"]) {
        "expired"
    } else if any(&[
        "unable to get local issuer certificate",
        "unable_to_get_issuer_cert",
        "self-signed certificate in certificate chain",
        "self signed certificate in certificate chain",
        "self_signed_cert_in_chain",
        "unable to verify the first certificate",
        "unable_to_verify_leaf_signature",
        "certificate verify failed",
        "server certificate verification failed",
        "ssl certificate problem",
        "confirming the ssl certificate",
    ]) {
        "unknown-issuer"
    } else if any(&["connection refused", "econnrefused"]) {
        "connect-refused"
    } else if any(&[
        "network is unreachable",
        "enetunreach",
        "no route to host",
        "ehostunreach",
    ]) {
        "network-unreachable"
    } else if any(&["timed out", "etimedout"]) {
        "timeout"
    } else {
        "error"
    }
}

/// What a bundle should make of a target: `ok` or the error code.
/// `refused` means any failure: what a tool says when a proxy refuses an
/// upstream varies (a 502, a reset, an alert).
pub fn expected(signer: Signer, bundle: Bundle) -> &'static str {
    match (signer, bundle) {
        (Signer::Org | Signer::InspectingProxy, Bundle::Merged) | (Signer::Public, _) => "ok",
        (Signer::Org | Signer::InspectingProxy, Bundle::System) | (Signer::Foreign, _) => {
            "unknown-issuer"
        }
        (Signer::Expired | Signer::WrongName | Signer::BadUpstreamViaProxy, _) => "refused",
    }
}

/// How a discriminator run compares with the expected table.
#[derive(Debug, Default)]
pub struct Judgement {
    /// One line per run that differs from the table, naming the cell.
    pub differences: Vec<String>,
    /// Tools missing from the lab: reported, never passed.
    pub absent: std::collections::BTreeSet<String>,
}

/// Compares `runs` with the expected table for `targets`. A result for a
/// target that does not exist is an error: the run cannot be judged.
pub fn judge(targets: &[Target], runs: &[ToolRun]) -> std::result::Result<Judgement, String> {
    judge_with(targets, runs, true)
}

/// [`judge`], for a lab whose merged bundle holds the org bundle or not
/// (a deployment that merges none, or whose org bundle is absent): without
/// it, the lab's own bundle must do exactly what the system bundle does.
pub fn judge_with(
    targets: &[Target],
    runs: &[ToolRun],
    merged_holds_org: bool,
) -> std::result::Result<Judgement, String> {
    let mut judgement = Judgement::default();
    for run in runs {
        let target = targets
            .iter()
            .find(|t| t.name == run.target)
            .ok_or_else(|| format!("a result for an unknown target {:?}", run.target))?;
        let want = match merged_holds_org {
            true => expected(target.signer, run.bundle),
            false => expected(target.signer, Bundle::System),
        };
        match run.code() {
            "absent" => {
                judgement.absent.insert(run.tool.clone());
            }
            "ok" if want == "refused" && target.signer == Signer::BadUpstreamViaProxy => {
                judgement.differences.push(format!(
                    "{} → {} with the {}: the inspecting proxy re-signed a bad upstream instead of refusing it, and the tool accepted it ({})",
                    run.tool,
                    target.name,
                    run.bundle.label(),
                    target.url,
                ))
            }
            "ok" if want == "refused" => judgement.differences.push(format!(
                "{} → {} with the {}: expected a refusal, got ok",
                run.tool,
                run.target,
                run.bundle.label()
            )),
            _ if want == "refused" => {}
            got if got != want => judgement.differences.push(format!(
                "{} → {} with the {}: expected {want}, got {got} ({})",
                run.tool,
                run.target,
                run.bundle.label(),
                run.detail.lines().last().unwrap_or("")
            )),
            _ => {}
        }
    }
    Ok(judgement)
}

/// How many runs a full table has for `targets`.
pub fn full_table_runs(targets: &[Target]) -> usize {
    TOOLS.len() * targets.len() * 2
}

/// Compares the default-store probe's outcomes (`{target: "ok" or error
/// text}`) with what the system bundle alone should trust; one line per
/// difference.
pub fn judge_default_store(
    targets: &[Target],
    outcomes: &std::collections::BTreeMap<String, String>,
) -> std::result::Result<Vec<String>, String> {
    let mut differences = Vec::new();
    for target in targets.iter().filter(|t| t.proxy.is_none()) {
        let outcome = outcomes
            .get(&target.name)
            .ok_or_else(|| format!("no result for the {}", target.name))?;
        let got = if outcome == "ok" {
            "ok"
        } else {
            error_code(outcome)
        };
        let want = expected(target.signer, Bundle::System);
        if !(got == want || (want == "refused" && got != "ok")) {
            differences.push(format!(
                "{}: expected {want}, got {got} ({outcome})",
                target.name
            ));
        }
    }
    Ok(differences)
}

/// Every tool in a lab fetching every outbound target, with the merged
/// bundle and with the system bundle alone.
#[derive(Debug, Clone)]
pub struct OutboundRuns {
    pub targets: Vec<Target>,
    pub runs: Vec<ToolRun>,
    /// With an inspecting proxy: whether each proxied run crossed it on
    /// the wire (Err says why the capture could not tell).
    pub proxy_paths: Option<std::result::Result<ProxyPaths, String>>,
}

/// The marker before the lab's proxy variables, as the driver saw them.
pub const PROXY_ENV_MARKER: &str = "HUBTRUST-PROXY-ENV ";

/// The marker the driver prints before its JSON results.
pub const RESULTS_MARKER: &str = "HUBTRUST-DISCRIMINATOR ";

/// Python for one kernel cell: runs every tool × target × bundle
/// concurrently as subprocesses of the kernel, so they see exactly the
/// lab's environment, and prints the results as JSON.
pub fn driver_code(targets: &[Target], system_bundle: &Path) -> String {
    let targets = serde_json::to_string(
        &targets
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "url": t.url, "proxy": t.proxy}))
            .collect::<Vec<_>>(),
    )
    .unwrap_or_else(|_| "[]".into());
    let system = serde_json::to_string(&system_bundle.display().to_string())
        .unwrap_or_else(|_| "\"\"".into());
    DRIVER
        .replace("@TARGETS@", &targets)
        .replace("@SYSTEM@", &system)
        .replace(
            "@CA_VARIABLES@",
            &serde_json::to_string(&CA_VARIABLES).unwrap_or_else(|_| "[]".into()),
        )
        .replace("@MARKER@", RESULTS_MARKER)
        .replace("@PROXY_ENV_MARKER@", PROXY_ENV_MARKER)
}

const DRIVER: &str = r#"
import json, os, shutil, subprocess, sys
from concurrent.futures import ThreadPoolExecutor

TARGETS = json.loads(r'''@TARGETS@''')
SYSTEM = @SYSTEM@
CA_VARIABLES = @CA_VARIABLES@
# node's https ignores HTTPS_PROXY, so through a proxy the script opens the
# CONNECT tunnel itself; TLS is verified by node either way.
NODE = r"""
const url = process.argv[1], u = new URL(url), env = process.env;
const fail = e => { console.error((e.code || 'ERROR') + ': ' + e.message); process.exit(1); };
const get = options => require('https').get(url, options, r => {
  // As curl -f and raise_for_status: an error page (a proxy's 502) is a failure.
  if (r.statusCode >= 400) fail({ code: 'HTTP_' + r.statusCode, message: 'the server answered ' + r.statusCode });
  r.resume(); r.on('end', () => process.exit(0));
}).on('error', fail);
// The lab's own proxy variables decide, as for the other tools.
const noProxy = (env.NO_PROXY || env.no_proxy || '').split(',').map(s => s.trim().replace(/^\./, '')).filter(Boolean);
const direct = noProxy.some(n => n === '*' || u.hostname === n || u.hostname.endsWith('.' + n));
const proxy = direct ? null : (env.HTTPS_PROXY || env.https_proxy || null);
if (!proxy) { get({}); } else {
  const p = new URL(proxy);
  const headers = p.username
    ? { 'Proxy-Authorization': 'Basic ' + Buffer.from(decodeURIComponent(p.username) + ':' + decodeURIComponent(p.password)).toString('base64') }
    : {};
  require('http').request({ host: p.hostname, port: p.port, method: 'CONNECT', path: u.host, headers })
    .on('connect', (res, socket) => {
      if (res.statusCode !== 200) fail({ message: 'the proxy answered ' + res.statusCode });
      const agent = new (require('https').Agent)();
      agent.createConnection = () => require('tls').connect({ socket, host: u.hostname });
      get({ agent });
    }).on('error', fail).end();
}
"""
PY = sys.executable
TOOLS = {
    "python urllib": ("SSL_CERT_FILE", lambda u: [PY, "-c", "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10).read()", u]),
    "requests": ("REQUESTS_CA_BUNDLE", lambda u: [PY, "-c", "import sys, requests; requests.get(sys.argv[1], timeout=10).raise_for_status()", u]),
    "curl": ("CURL_CA_BUNDLE", lambda u: ["curl", "-sS", "-f", "-o", "/dev/null", "--max-time", "10", u]),
    "git": ("GIT_SSL_CAINFO", lambda u: ["git", "ls-remote", u + "/probe.git"]),
    "node": ("NODE_EXTRA_CA_CERTS", lambda u: ["node", "-e", NODE, u]),
    "pip": ("REQUESTS_CA_BUNDLE", lambda u: [PY, "-m", "pip", "index", "versions", "hubtrust-probe", "--index-url", u + "/simple/", "--retries", "0", "--timeout", "10", "--disable-pip-version-check", "--no-cache-dir", "--no-color", "-v"]),
}

def present(tool, argv):
    if tool == "requests":
        return subprocess.run([PY, "-c", "import requests"], capture_output=True).returncode == 0
    return argv[0] == PY or shutil.which(argv[0]) is not None

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")

def tagged(proxy_url, tag):
    # A user name in the proxy URL: each tool sends it as Proxy-Authorization
    # in its CONNECT, which ties the tunnel on the wire to this run.
    scheme, _, rest = proxy_url.partition("://")
    return scheme + "://" + tag + ":x@" + rest.rsplit("@", 1)[-1]

def run(job):
    index, (tool, target, bundle) = job
    argv = TOOLS[tool][1](target["url"])
    row = {"tool": tool, "target": target["name"], "bundle": bundle}
    if not present(tool, argv):
        return dict(row, outcome="absent", detail=argv[0] + " is not installed in the lab")
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    if target["proxy"]:
        row["tag"] = "hubtrust-run-%d" % index
        for name in ("HTTPS_PROXY", "https_proxy"):
            if env.get(name):
                env[name] = tagged(env[name], row["tag"])
        # git waits for a 407 before it sends proxy credentials; basic
        # sends them at once (which proxy git uses is unchanged).
        env["GIT_HTTP_PROXY_AUTHMETHOD"] = "basic"
    if bundle == "system":
        # Without the merged bundle means no CA variable names it: a tool
        # may read more than its own (Debian's node also honours
        # SSL_CERT_FILE through OpenSSL's default store).
        for name in CA_VARIABLES:
            env[name] = SYSTEM
    try:
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=40)
    except subprocess.TimeoutExpired as e:
        partial = (e.stderr or b"") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return dict(row, outcome="timeout", detail=" ".join(argv) + ": " + str(partial)[-400:])
    # pip -v logs the underlying TLS error to stdout, the verdict to stderr.
    detail = (p.stdout.strip() + "\n" + p.stderr.strip()).strip()[-4000:]
    return dict(row, outcome="ok" if p.returncode == 0 else "failed", detail=detail)

jobs = [(tool, target, bundle) for tool in TOOLS for target in TARGETS for bundle in ("merged", "system")]
with ThreadPoolExecutor(max_workers=8) as pool:
    results = list(pool.map(run, enumerate(jobs)))
print("@PROXY_ENV_MARKER@" + json.dumps({name: os.environ.get(name) for name in PROXY_VARIABLES}))
print("@MARKER@" + json.dumps(results))
"#;

/// The marker the default-store probe prints before its JSON results.
pub const STORE_MARKER: &str = "HUBTRUST-STORE ";

/// Python for one kernel cell: python's urllib with none of the CA
/// variables set (and no proxy), so it trusts exactly the lab's default
/// system store, against each direct target. Prints `{target: outcome}`.
pub fn default_store_probe_code(targets: &[Target]) -> String {
    let direct: Vec<serde_json::Value> = targets
        .iter()
        .filter(|t| t.proxy.is_none())
        .map(|t| serde_json::json!({"name": t.name, "url": t.url}))
        .collect();
    let targets = serde_json::to_string(&direct).unwrap_or_else(|_| "[]".into());
    let variables = serde_json::to_string(&CA_VARIABLES).unwrap_or_else(|_| "[]".into());
    STORE_PROBE
        .replace("@TARGETS@", &targets)
        .replace("@VARIABLES@", &variables)
        .replace("@MARKER@", STORE_MARKER)
}

const STORE_PROBE: &str = r#"
import json, os, subprocess, sys
hide = set(@VARIABLES@) | {"HTTPS_PROXY", "https_proxy"}
env = {k: v for k, v in os.environ.items() if k not in hide}
out = {}
for t in json.loads(r'''@TARGETS@'''):
    p = subprocess.run([sys.executable, "-c", "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10).read()", t["url"]], env=env, capture_output=True, text=True, timeout=30)
    out[t["name"]] = "ok" if p.returncode == 0 else p.stderr.strip()[-600:]
print("@MARKER@" + json.dumps(out))
"#;

/// Reads the driver's results out of the cell's stdout.
pub fn parse_results(stdout: &str) -> std::result::Result<Vec<ToolRun>, String> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULTS_MARKER))
        .ok_or_else(|| {
            format!(
                "the discriminator printed no results; its output: {}",
                stdout.chars().take(800).collect::<String>()
            )
        })?;
    serde_json::from_str(line).map_err(|e| format!("unreadable discriminator results: {e}"))
}

/// The lab's proxy variables as the driver saw them (unset ones absent).
pub fn parse_proxy_env(
    stdout: &str,
) -> std::result::Result<std::collections::BTreeMap<String, String>, String> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(PROXY_ENV_MARKER))
        .ok_or("the discriminator printed no proxy variables")?;
    let env: std::collections::BTreeMap<String, Option<String>> =
        serde_json::from_str(line).map_err(|e| format!("unreadable proxy variables: {e}"))?;
    Ok(env.into_iter().filter_map(|(k, v)| Some((k, v?))).collect())
}

/// What the wire showed of the runs that should cross the inspecting proxy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProxyPaths {
    /// Runs whose own CONNECT was seen arriving at the proxy.
    pub tunnelled_runs: usize,
    /// Per port of the internet host: the lab's CONNECTs to it, and the
    /// connections the proxy's host opened onward to it.
    pub legs: std::collections::BTreeMap<u16, (usize, usize)>,
    /// One line per run or port the wire contradicts.
    pub problems: Vec<String>,
}

/// Checks on the wire that every run through the proxy took both legs: its
/// CONNECT (told apart by its tag) from the lab to the proxy, then the
/// proxy's own connection to the internet host. A run whose CONNECT never
/// reached the proxy bypassed it, whatever the tool then answered.
pub fn judge_proxy_paths(
    targets: &[Target],
    runs: &[ToolRun],
    census: &crate::capture::WireCensus,
    route: &ProxyRoute,
    lab_env: &std::collections::BTreeMap<String, String>,
) -> std::result::Result<ProxyPaths, String> {
    use base64::Engine as _;
    let inconclusive = census.inconclusive();
    if !inconclusive.is_empty() {
        return Err(format!(
            "inconclusive: the capture cannot be trusted: {}",
            inconclusive.join("; ")
        ));
    }
    let to_proxy: Vec<&crate::capture::Flow> = census
        .flows
        .iter()
        .filter(|f| {
            f.server_host == route.proxy_host
                && f.server_port == route.proxy_addr.port()
                && f.client_host != route.proxy_host
        })
        .collect();
    let mut tunnels: Vec<(String, Option<String>)> = Vec::new();
    let mut headless = Vec::new();
    for flow in &to_proxy {
        let head = flow
            .request_head(4096)
            .map_err(|e| format!("inconclusive: cannot read the capture: {e}"))?;
        match connect_request(&head) {
            Some(request) => tunnels.push(request),
            None if flow.bytes_to_server > 0 => headless.push(flow.describe()),
            None => {}
        }
    }
    // Every run started after the capture did: a connection to the proxy
    // whose first bytes are not a CONNECT lost its start on the wire, and
    // a run's tunnel may be the one that lost it.
    if !headless.is_empty() {
        return Err(format!(
            "inconclusive: the capture holds {} connections to the proxy whose CONNECT is missing: {}",
            headless.len(),
            headless.join("; ")
        ));
    }
    let shown = |name: &str| {
        let value = lab_env.get(name).map(|v| mask_userinfo(v));
        format!("{name}={}", value.as_deref().unwrap_or("(unset)"))
    };
    let lab_proxy_env = format!(
        "the lab has {}, {}",
        shown("HTTPS_PROXY"),
        shown("NO_PROXY")
    );
    let mut paths = ProxyPaths::default();
    for run in runs.iter().filter(|r| r.code() != "absent") {
        let Some(target) = targets.iter().find(|t| t.name == run.target) else {
            return Err(format!("a result for an unknown target {:?}", run.target));
        };
        if target.proxy.is_none() {
            continue;
        }
        let tag = run.tag.as_deref().ok_or_else(|| {
            format!(
                "inconclusive: {} → {} carries no tag to find on the wire",
                run.tool, run.target
            )
        })?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{tag}:x"));
        let authority = target.url.trim_start_matches("https://");
        let own: Vec<&String> = tunnels
            .iter()
            .filter(|(_, auth)| {
                auth.as_deref().is_some_and(|a| {
                    a.split_once(' ').is_some_and(|(scheme, value)| {
                        scheme.eq_ignore_ascii_case("basic") && value.trim() == token
                    })
                })
            })
            .map(|(asked, _)| asked)
            .collect();
        if own.is_empty() {
            let untagged = tunnels
                .iter()
                .filter(|(asked, auth)| asked == authority && auth.is_none())
                .count();
            paths.problems.push(format!(
                "{} → {} with the {}: bypassed the inspecting proxy: no CONNECT of this run reached the proxy at {} ({}), and the tool answered {}; {lab_proxy_env} (the proxy saw {} CONNECTs in all, {untagged} of them for {authority} without a run's tag)",
                run.tool,
                run.target,
                run.bundle.label(),
                route.proxy_host,
                route.proxy_addr,
                run.code(),
                tunnels.len(),
            ));
            continue;
        }
        paths.tunnelled_runs += 1;
        for asked in own {
            if asked != authority {
                paths.problems.push(format!(
                    "{} → {} with the {}: the CONNECT asked the proxy for {asked}, not {authority}",
                    run.tool,
                    run.target,
                    run.bundle.label()
                ));
            }
            if let Some(port) = authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok()) {
                paths.legs.entry(port).or_insert((0, 0)).0 += 1;
            }
        }
    }
    for (port, (connects, onward)) in paths.legs.iter_mut() {
        *onward = census
            .flows
            .iter()
            .filter(|f| {
                f.client_host == route.proxy_host
                    && f.server_host == route.internet_host
                    && f.server_port == *port
            })
            .count();
        if *onward < *connects {
            paths.problems.push(format!(
                "the lab sent {connects} CONNECTs for {}:{port} to the proxy, but only {onward} connections left {} for {} ({}:{port}): traffic did not go on from the proxy to the internet",
                route.internet_far_ip, route.proxy_host, route.internet_host, route.internet_far_ip
            ));
        }
    }
    Ok(paths)
}

/// A CONNECT request's authority and its Proxy-Authorization value.
fn connect_request(head: &[u8]) -> Option<(String, Option<String>)> {
    let text = String::from_utf8_lossy(head);
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let authority = lines
        .next()?
        .strip_prefix("CONNECT ")?
        .split_whitespace()
        .next()?
        .to_string();
    let auth = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_string())
    });
    Some((authority, auth))
}

/// A proxy URL with any credentials in it masked.
fn mask_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// The discriminator's table as Markdown: tool × target × bundle.
pub fn table_markdown(targets: &[Target], runs: &[ToolRun]) -> String {
    let mut out = String::from(
        "| tool | target | merged bundle | system bundle alone |\n|---|---|---|---|\n",
    );
    for tool in TOOLS {
        for target in targets {
            let cell = |bundle: Bundle| {
                runs.iter()
                    .find(|r| r.tool == tool && r.target == target.name && r.bundle == bundle)
                    .map_or("not run".to_string(), |r| {
                        let code = r.code();
                        let want = expected(target.signer, bundle);
                        if code == want || code == "absent" {
                            code.to_string()
                        } else {
                            format!("**{code}** (expected {want})")
                        }
                    })
            };
            out.push_str(&format!(
                "| {tool} | {} | {} | {} |\n",
                target.name,
                cell(Bundle::Merged),
                cell(Bundle::System)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_errors_map_to_stable_codes() {
        for (text, code) in [
            ("curl: (60) SSL certificate problem: unable to get local issuer certificate", "unknown-issuer"),
            ("urllib.error.URLError: <urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in certificate chain (_ssl.c:992)>", "unknown-issuer"),
            ("fatal: unable to access 'https://10.77.2.2:8443/probe.git/': server certificate verification failed. CAfile: /x CRLfile: none", "unknown-issuer"),
            ("UNABLE_TO_GET_ISSUER_CERT_LOCALLY: unable to get local issuer certificate", "unknown-issuer"),
            ("SELF_SIGNED_CERT_IN_CHAIN: self-signed certificate in certificate chain", "unknown-issuer"),
            ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch", "name-mismatch"),
            ("ECONNREFUSED: connect ECONNREFUSED 10.77.2.2:8443", "connect-refused"),
            ("curl: (7) Failed to connect to 10.77.3.2 port 8444: Network is unreachable", "network-unreachable"),
            ("ENETUNREACH: connect ENETUNREACH 10.77.3.2:8444", "network-unreachable"),
            ("something else entirely", "error"),
        ] {
            assert_eq!(error_code(text), code, "{text}");
        }
    }

    #[test]
    fn expectations_follow_the_trust_table() {
        assert_eq!(expected(Signer::Org, Bundle::Merged), "ok");
        assert_eq!(expected(Signer::Org, Bundle::System), "unknown-issuer");
        assert_eq!(expected(Signer::Public, Bundle::System), "ok");
        assert_eq!(expected(Signer::Foreign, Bundle::Merged), "unknown-issuer");
    }

    fn run_script(
        dir: &Path,
        system: &str,
        org: Option<&str>,
    ) -> (std::process::Output, PathBuf, PathBuf, PathBuf) {
        let (s, o, m) = (
            dir.join("system.crt"),
            dir.join("org.crt"),
            dir.join("out/ca-bundle.crt"),
        );
        std::fs::write(&s, system).unwrap();
        if let Some(org) = org {
            std::fs::write(&o, org).unwrap();
        }
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/enterprise/merge-ca-bundle.sh");
        let output = std::process::Command::new("sh")
            .arg(script)
            .args([&s, &o, &m])
            .output()
            .unwrap();
        (output, s, o, m)
    }

    #[test]
    fn the_merge_script_keeps_every_certificate_across_a_missing_newline() {
        let a = CertificateAuthority::root("a").unwrap().cert_pem();
        let b = CertificateAuthority::root("b").unwrap().cert_pem();
        let c = CertificateAuthority::root("c").unwrap().cert_pem();
        // The system bundle and the org bundle both lack their final newline.
        let system = format!("{a}{}", b.trim_end());
        let held = tempfile::tempdir().unwrap();
        let (output, s, o, m) = run_script(held.path(), &system, Some(c.trim_end()));
        assert!(output.status.success(), "{output:?}");
        let check = check_merged(&s, &o, &m);
        assert_eq!(
            (check.system_certs, check.org_certs, check.merged_certs),
            (2, 1, 3)
        );
        assert!(check.problem.is_none(), "{check:?}");
    }

    #[test]
    fn a_missing_org_bundle_degrades_to_the_system_bundle() {
        let a = CertificateAuthority::root("a").unwrap().cert_pem();
        let held = tempfile::tempdir().unwrap();
        let (output, s, o, m) = run_script(held.path(), &a, None);
        assert!(output.status.success(), "{output:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("system bundle alone"));
        let check = check_merged(&s, &o, &m);
        assert_eq!(check.merged_certs, 1);
        assert!(check.problem.is_none());
    }

    #[test]
    fn a_malformed_org_bundle_is_refused_and_writes_nothing() {
        let a = CertificateAuthority::root("a").unwrap().cert_pem();
        let held = tempfile::tempdir().unwrap();
        let (output, _, _, m) = run_script(held.path(), &a, Some("this is not PEM\n"));
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("no PEM certificate"));
        assert!(!m.exists());
        let held = tempfile::tempdir().unwrap();
        let (output, _, _, m) = run_script(held.path(), &a, Some(""));
        assert!(
            !output.status.success(),
            "an empty org bundle is an error, not a silent degrade"
        );
        assert!(!m.exists());
    }

    #[test]
    fn a_check_catches_a_lost_certificate() {
        let held = tempfile::tempdir().unwrap();
        let dir = held.path();
        let a = CertificateAuthority::root("a").unwrap().cert_pem();
        let b = CertificateAuthority::root("b").unwrap().cert_pem();
        std::fs::write(dir.join("s"), &a).unwrap();
        std::fs::write(dir.join("o"), &b).unwrap();
        // Glued without a newline: the org certificate is lost to parsers.
        std::fs::write(dir.join("m"), format!("{}{b}", a.trim_end())).unwrap();
        let check = check_merged(&dir.join("s"), &dir.join("o"), &dir.join("m"));
        assert!(check.problem.is_some(), "{check:?}");
    }

    #[test]
    fn a_connect_request_gives_its_authority_and_proxy_credentials() {
        let head = b"CONNECT 10.77.3.2:8444 HTTP/1.1\r\nHost: 10.77.3.2:8444\r\nproxy-authorization: Basic aHVidHJ1c3QtcnVuLTM6eA==\r\n\r\n\x16\x03\x01";
        assert_eq!(
            connect_request(head),
            Some((
                "10.77.3.2:8444".to_string(),
                Some("Basic aHVidHJ1c3QtcnVuLTM6eA==".to_string())
            ))
        );
        assert_eq!(
            connect_request(b"CONNECT 10.77.3.2:8445 HTTP/1.1\r\n\r\n"),
            Some(("10.77.3.2:8445".to_string(), None))
        );
        assert_eq!(connect_request(b"\x16\x03\x01\x02\x00"), None);
        assert_eq!(connect_request(b"GET / HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn proxy_credentials_never_reach_a_message() {
        assert_eq!(
            mask_userinfo("http://alice:s3cret@proxy.corp:8080"),
            "http://***@proxy.corp:8080"
        );
        assert_eq!(
            mask_userinfo("http://10.77.2.2:8080/a@b"),
            "http://10.77.2.2:8080/a@b"
        );
        assert_eq!(mask_userinfo("*"), "*");
    }

    /// A census of the lab→proxy link holding `frames`, each a TCP frame.
    fn proxy_census(frames: Vec<Vec<u8>>) -> crate::capture::WireCensus {
        let dir = tempfile::tempdir().unwrap();
        let pcap = dir.path().join("hub--egress.pcap");
        std::fs::write(&pcap, crate::capture::pcap::write(&frames)).unwrap();
        let evidence = crate::capture::LinkEvidence {
            link: "hub--egress".into(),
            pcap,
            packets_captured: Some(frames.len() as u64),
            packets_on_interface: Some(frames.len() as u64),
            inconclusive: None,
        };
        let hosts = std::collections::BTreeMap::from([
            (Ipv4Addr::new(10, 77, 5, 1), "hub".to_string()),
            (Ipv4Addr::new(10, 77, 5, 2), "egress".to_string()),
        ]);
        crate::capture::WireCensus::build(vec![evidence], &hosts)
    }

    #[test]
    fn a_tagged_connect_proves_the_path_and_a_tunnel_seen_without_its_connect_is_inconclusive() {
        use crate::capture::pcap::tcp_frame;
        use base64::Engine as _;
        let target = Target {
            name: "expired server via the inspecting proxy".into(),
            url: "https://10.77.6.2:8446".into(),
            signer: Signer::BadUpstreamViaProxy,
            proxy: Some("http://10.77.5.2:8080".into()),
        };
        let run = ToolRun {
            tool: "git".into(),
            target: target.name.clone(),
            bundle: Bundle::System,
            outcome: "failed".into(),
            detail: "server certificate verification failed".into(),
            tag: Some("hubtrust-run-69".into()),
        };
        let route = ProxyRoute {
            proxy_host: "egress".into(),
            proxy_addr: "10.77.5.2:8080".parse().unwrap(),
            internet_host: "internet".into(),
            internet_far_ip: Ipv4Addr::new(10, 77, 6, 2),
        };
        let lab = (Ipv4Addr::new(10, 77, 5, 1), 40000);
        let proxy = (Ipv4Addr::new(10, 77, 5, 2), 8080);
        let token = base64::engine::general_purpose::STANDARD.encode("hubtrust-run-69:x");
        let connect = format!(
            "CONNECT 10.77.6.2:8446 HTTP/1.1\r\nHost: 10.77.6.2:8446\r\nProxy-Authorization: Basic {token}\r\n\r\n"
        );
        let tunnel = vec![
            tcp_frame(lab, proxy, 1000, 0x02, b""),
            tcp_frame(proxy, lab, 5000, 0x12, b""),
            tcp_frame(lab, proxy, 1001, 0x18, connect.as_bytes()),
        ];
        let env = std::collections::BTreeMap::new();
        let judge = |census: &crate::capture::WireCensus| {
            judge_proxy_paths(
                std::slice::from_ref(&target),
                std::slice::from_ref(&run),
                census,
                &route,
                &env,
            )
        };
        let paths = judge(&proxy_census(tunnel.clone())).unwrap();
        assert_eq!(paths.tunnelled_runs, 1);
        assert!(
            paths.problems.iter().all(|p| !p.contains("bypassed")),
            "{:?}",
            paths.problems
        );

        // The same run's tunnel captured from its TLS bytes on: its CONNECT
        // is lost, so the capture, not the tool, is what failed.
        let headless = vec![tcp_frame(
            (lab.0, 40002),
            proxy,
            7000,
            0x18,
            b"\x16\x03\x01\x02\x00\x01",
        )];
        let said = judge(&proxy_census(headless)).unwrap_err();
        assert!(
            said.starts_with("inconclusive:") && said.contains("CONNECT is missing"),
            "{said}"
        );

        // No connection to the proxy at all: bypassed, with the count.
        let paths = judge(&proxy_census(Vec::new())).unwrap();
        assert!(
            paths.problems[0].contains("bypassed the inspecting proxy"),
            "{:?}",
            paths.problems
        );
        assert!(
            paths.problems[0].contains("the proxy saw 0 CONNECTs in all"),
            "{:?}",
            paths.problems
        );
    }
}
