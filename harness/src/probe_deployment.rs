//! `hubtrust probe`: read-only checks of a deployment hubtrust did not
//! start. It contacts only the addresses it is given, from wherever it
//! runs, and changes nothing on the target: it starts no server and
//! creates no user; with a user token it runs one cell in a lab that is
//! already running.
//!
//! The verdicts are the ones `hubtrust run` reaches, from the same code:
//! the TLS scan and its policy, the TLS probe, the known-defects list.
//! What the probe cannot know from outside (which identities an internal
//! endpoint must accept, which endpoints must not answer from here) the
//! operator states on the command line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpStream;

use crate::backend::HostNetwork;
use crate::error::{HarnessError, Result};
use crate::known_defects::{KnownDefectHit, KnownDefects};
use crate::matrix::{MatrixCell, TrustMatrix};
use crate::pki::Identity;
use crate::probe::{HttpRequest, ProbeOutcome, ProbeSpec, Verdict};
use crate::reachability::{Reach, ReachCell};
use crate::report::{ChainCheck, ProxyApiCall, RunReport, ScenarioResult, Status, TlsScanSection};
use crate::secret::Secret;
use crate::tls_scan::{ScanTarget, TlsPolicySpec};
use crate::trust::{expected_verdict, verdict_matches, ClientAuth, IdentityOrigin, InternalCa};

/// What the report calls the public side.
pub const PUBLIC_SIDE: &str = "proxy public";
const FEATURE: &str = "Probe of a running deployment";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// An internal TLS endpoint to scan and to present identities to.
#[derive(Debug, Clone, PartialEq)]
pub struct InternalEndpoint {
    pub name: String,
    pub addr: SocketAddr,
    /// The name its certificate is verified against (the address when not
    /// given).
    pub server_name: String,
}

/// An endpoint the deployment's design says must not answer from where
/// the probe runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedEndpoint {
    pub name: String,
    pub addr: SocketAddr,
}

/// A client identity the operator gives, and the internal endpoints that
/// must accept it; every other internal endpoint must refuse it.
#[derive(Debug, Clone)]
pub struct GivenIdentity {
    pub label: String,
    pub identity: Identity,
    pub accepted_by: Vec<String>,
}

/// A real client of an internal endpoint, as it connects: its own
/// certificate (a given identity), the bundle it verifies with and the
/// name it asks for.
#[derive(Debug, Clone)]
pub struct RealClient {
    pub endpoint: String,
    pub client: String,
    /// The bundle's file name, as the report shows it.
    pub bundle: String,
    pub bundle_pem: String,
    pub server_name: String,
}

/// Everything the probe is told about the deployment.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The name in the public URL.
    pub public_name: String,
    /// The port in the public URL (the address may differ behind NAT).
    pub public_port: u16,
    pub public_addr: SocketAddr,
    /// PEM roots the public side must chain to.
    pub public_roots: String,
    pub internal: Vec<InternalEndpoint>,
    /// PEM roots internal endpoints must chain to.
    pub internal_roots: Option<String>,
    pub closed: Vec<ClosedEndpoint>,
    pub identities: Vec<GivenIdentity>,
    pub hub_token: Option<Secret>,
    pub user_token: Option<Secret>,
    /// The `--endpoint` that is CHP's REST API, and its auth token.
    pub proxy_api: Option<(String, Secret)>,
    /// Each endpoint as its real clients reach it.
    pub real_clients: Vec<RealClient>,
    pub policy: TlsPolicySpec,
    pub strict: bool,
    /// Versions of components the public side does not report (the
    /// chart's, say), for fixtures/known-defects.toml.
    pub components: BTreeMap<String, String>,
}

impl ProbeTarget {
    fn public_url(&self) -> String {
        format!("https://{}:{}", self.public_name, self.public_port)
    }
}

/// Splits `https://name:port[/...]` into its name and port. Anything but
/// https is refused: the probe judges TLS.
pub fn parse_public_url(url: &str) -> std::result::Result<(String, u16), String> {
    let rest = url.strip_prefix("https://").ok_or_else(|| {
        format!("--url {url}: the public URL must be https:// (fix: give the https URL users open; a plaintext public side is itself a finding)")
    })?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (name, port) = match authority.rsplit_once(':') {
        Some((name, port)) => (
            name,
            port.parse::<u16>()
                .map_err(|_| format!("--url {url}: `{port}` is not a port"))?,
        ),
        None => (authority, 443),
    };
    if name.is_empty() || authority.contains('@') {
        return Err(format!(
            "--url {url}: no host name (fix: https://<name>[:port])"
        ));
    }
    Ok((name.to_string(), port))
}

fn split_named<'a>(flag: &str, value: &'a str) -> std::result::Result<(&'a str, &'a str), String> {
    value
        .split_once('=')
        .filter(|(name, rest)| !name.trim().is_empty() && !rest.is_empty())
        .ok_or_else(|| format!("{flag} {value}: expected NAME=..."))
}

fn parse_addr(flag: &str, value: &str) -> std::result::Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: `{value}` is not an IP:port address"))
}

/// `NAME=IP:PORT[,name=SERVER_NAME]`
pub fn parse_internal(value: &str) -> std::result::Result<InternalEndpoint, String> {
    let (name, rest) = split_named("--endpoint", value)?;
    let mut parts = rest.split(',');
    let addr = parse_addr("--endpoint", parts.next().unwrap_or_default())?;
    let mut server_name = addr.ip().to_string();
    for option in parts {
        match option.split_once('=') {
            Some(("name", n)) if !n.is_empty() => server_name = n.to_string(),
            _ => {
                return Err(format!(
                    "--endpoint {value}: unknown option `{option}` (known: name=SERVER_NAME)"
                ))
            }
        }
    }
    Ok(InternalEndpoint {
        name: name.trim().to_string(),
        addr,
        server_name,
    })
}

/// `NAME=VERSION`
pub fn parse_component(value: &str) -> std::result::Result<(String, String), String> {
    let (name, version) = split_named("--component", value)?;
    Ok((name.trim().to_string(), version.trim().to_string()))
}

/// `NAME=IP:PORT`
pub fn parse_closed(value: &str) -> std::result::Result<ClosedEndpoint, String> {
    let (name, addr) = split_named("--closed", value)?;
    Ok(ClosedEndpoint {
        name: name.trim().to_string(),
        addr: parse_addr("--closed", addr)?,
    })
}

/// `LABEL=CERT,KEY[,accepted-by=NAME+NAME]`; the key must be 0600.
pub fn parse_identity(value: &str) -> std::result::Result<GivenIdentity, String> {
    let (label, rest) = split_named("--identity", value)?;
    let parts: Vec<&str> = rest.split(',').collect();
    let (cert, key) = match parts.as_slice() {
        [cert, key, ..] => (Path::new(cert), Path::new(key)),
        _ => {
            return Err(format!(
                "--identity {value}: expected LABEL=CERT,KEY[,accepted-by=ENDPOINT+ENDPOINT]"
            ))
        }
    };
    let mut accepted_by = Vec::new();
    for option in &parts[2..] {
        match option.split_once('=') {
            Some(("accepted-by", names)) => {
                accepted_by.extend(names.split('+').map(|n| n.trim().to_string()))
            }
            _ => {
                return Err(format!(
                    "--identity {value}: unknown option `{option}` (known: accepted-by=ENDPOINT+ENDPOINT)"
                ))
            }
        }
    }
    crate::pki::check_key_mode(&format!("--identity {label}"), key)?;
    let identity = Identity::load(label.trim(), cert, key).map_err(|e| e.to_string())?;
    crate::probe::parse_identity(&identity).map_err(|e| {
        format!("--identity {label}: {e} (fix: a PEM certificate chain and its PEM private key)")
    })?;
    Ok(GivenIdentity {
        label: label.trim().to_string(),
        identity,
        accepted_by,
    })
}

/// `ENDPOINT=CLIENT,bundle=FILE,name=SERVER_NAME`: CLIENT is an
/// `--identity` label.
pub fn parse_real_client(value: &str) -> std::result::Result<RealClient, String> {
    let (endpoint, rest) = split_named("--real-client", value)?;
    let mut parts = rest.split(',');
    let client = parts.next().unwrap_or_default().trim().to_string();
    let (mut bundle, mut server_name) = (None, None);
    for option in parts {
        match option.split_once('=') {
            Some(("bundle", file)) if !file.is_empty() => bundle = Some(file),
            Some(("name", name)) if !name.is_empty() => server_name = Some(name.to_string()),
            _ => {
                return Err(format!(
                    "--real-client {value}: unknown option `{option}` (known: bundle=FILE, name=SERVER_NAME)"
                ))
            }
        }
    }
    let (Some(bundle), Some(server_name)) = (bundle, server_name) else {
        return Err(format!(
            "--real-client {value}: expected ENDPOINT=CLIENT,bundle=FILE,name=SERVER_NAME"
        ));
    };
    let bundle_pem = std::fs::read_to_string(bundle)
        .map_err(|e| format!("--real-client {value}: read {bundle}: {e}"))?;
    Ok(RealClient {
        endpoint: endpoint.trim().to_string(),
        client,
        bundle: Path::new(bundle)
            .file_name()
            .map_or(bundle.to_string(), |n| n.to_string_lossy().into_owned()),
        bundle_pem,
        server_name,
    })
}

/// Refusals that need no network: every name an identity or a policy
/// exception lists must be an endpoint of the probe, and internal endpoints
/// need roots to verify.
pub fn check_target(target: &ProbeTarget) -> std::result::Result<(), String> {
    // An exception for an endpoint this probe never meets would be kept
    // as if it applied; a misspelt name must not pass unnoticed.
    let known: Vec<&str> = std::iter::once(PUBLIC_SIDE)
        .chain(target.internal.iter().map(|e| e.name.as_str()))
        .chain(target.closed.iter().map(|e| e.name.as_str()))
        .collect();
    if let Some(stray) = target.policy.exceptions_for_no_endpoint(&known).first() {
        return Err(format!(
            "the TLS policy's exception for `{}` names no endpoint this probe is given (known: {})",
            stray.endpoint,
            known.join(", ")
        ));
    }
    if !target.internal.is_empty() && target.internal_roots.is_none() {
        return Err("--endpoint needs --internal-ca: the roots internal certificates chain to (fix: the deployment's internal CA bundle, e.g. internal-ssl/hub-ca_trust.crt)".into());
    }
    if let Some((name, _)) = &target.proxy_api {
        if !target.internal.iter().any(|e| &e.name == name) {
            return Err(format!(
                "--proxy-api `{name}` names no --endpoint (fix: --endpoint '{name}=IP:PORT' for CHP's REST API)"
            ));
        }
        if !target
            .identities
            .iter()
            .any(|i| i.accepted_by.contains(name))
        {
            return Err(format!(
                "--proxy-api `{name}`: no --identity is accepted by it, so the token cannot be told apart from the certificate (fix: --identity LABEL=CERT,KEY,accepted-by={name})"
            ));
        }
    }
    for real in &target.real_clients {
        if !target.internal.iter().any(|e| e.name == real.endpoint) {
            return Err(format!(
                "--real-client `{}` names no --endpoint",
                real.endpoint
            ));
        }
        if !target.identities.iter().any(|i| i.label == real.client) {
            return Err(format!(
                "--real-client {}={}: `{}` is no --identity label",
                real.endpoint, real.client, real.client
            ));
        }
    }
    for given in &target.identities {
        for name in &given.accepted_by {
            if !target.internal.iter().any(|e| &e.name == name) {
                return Err(format!(
                    "--identity {}: accepted-by names `{name}`, which no --endpoint gives (known: {})",
                    given.label,
                    target
                        .internal
                        .iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Connections from wherever the probe runs: every "host" is here.
struct Here;

impl HostNetwork for Here {
    async fn connect_from(&self, _host: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
        connect(addr).await
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        )),
    }
}

/// One check of the probe, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeCheck {
    pub name: String,
    pub status: Status,
    pub failure: Option<String>,
    pub seconds: f64,
    /// Known defects the check met, shown and not failing unless strict.
    pub known: Vec<String>,
}

/// Everything the probe found.
#[derive(Debug)]
pub struct ProbeFindings {
    pub checks: Vec<ProbeCheck>,
    pub report: RunReport,
}

/// Runs every check. A public side that does not answer at all is an
/// error: nothing could be checked.
pub async fn probe_deployment(target: &ProbeTarget) -> Result<ProbeFindings> {
    let started = Instant::now();
    connect(target.public_addr)
        .await
        .map_err(|e| HarnessError::Probe {
            endpoint: format!("{} at {}", target.public_url(), target.public_addr),
            message: format!("{e} (fix: check the address, or run hubtrust probe where the public side is reachable)"),
        })?;
    let known = KnownDefects::builtin()?;
    let mut checks = Vec::new();
    let mut hits = Vec::new();

    let clock = Instant::now();
    let (public_check, hub_version) = public_side(target).await;
    checks.push(finish(public_check, clock));

    let mut versions = target.components.clone();
    if let Some(version) = &hub_version {
        versions.insert("jupyterhub".to_string(), version.clone());
    }

    let clock = Instant::now();
    let (scan_check, scan_section, scan_hits) = tls_scan(target, &known, &versions).await;
    checks.push(finish(scan_check, clock));
    hits.extend(scan_hits);

    let clock = Instant::now();
    let (trust_check, matrix, trust_hits) = trust_matrix(target, &known, &versions).await;
    checks.push(finish(trust_check, clock));
    hits.extend(trust_hits);

    let clock = Instant::now();
    checks.push(finish(hub_api_tokens(target).await, clock));

    let clock = Instant::now();
    let (proxy_api_check, proxy_api_calls) = proxy_api_token(target).await;
    checks.push(finish(proxy_api_check, clock));

    let clock = Instant::now();
    let (chains_check, chains) = real_clients(target).await;
    checks.push(finish(chains_check, clock));

    let clock = Instant::now();
    let (reach_check, reach_cells) = reachability(target).await;
    checks.push(finish(reach_check, clock));

    let clock = Instant::now();
    checks.push(finish(lab_view(target).await, clock));

    let report = RunReport {
        tool: format!("hubtrust probe {}", env!("CARGO_PKG_VERSION")),
        tags: Some("@probe".into()),
        stack: target.public_url(),
        backend: "probe (a deployment hubtrust did not start)".into(),
        scenarios: checks
            .iter()
            .map(|c| ScenarioResult {
                feature: FEATURE.into(),
                scenario: c.name.clone(),
                tags: vec!["@probe".into()],
                status: c.status,
                failure: c.failure.clone(),
                seconds: c.seconds,
                artifacts: None,
            })
            .collect(),
        trust_matrix: Some(matrix),
        tls_scan: Some(scan_section),
        known_defects: hits,
        seconds: started.elapsed().as_secs_f64(),
        proxy_api_calls,
        chains,
        reachability: reach_cells,
        ..RunReport::default()
    };
    Ok(ProbeFindings { checks, report })
}

/// A check's verdict before it is timed.
struct Verdicts {
    name: &'static str,
    status: Status,
    failure: Option<String>,
    known: Vec<String>,
}

impl Verdicts {
    fn of(name: &'static str, problems: Vec<String>, known: Vec<String>) -> Self {
        Self {
            name,
            status: if problems.is_empty() {
                Status::Passed
            } else {
                Status::Failed
            },
            failure: (!problems.is_empty()).then(|| problems.join("\n")),
            known,
        }
    }

    /// Not run, and why: shown as skipped, never as passed.
    fn not_run(name: &'static str, why: String) -> Self {
        Self {
            name,
            status: Status::Skipped,
            failure: Some(why),
            known: Vec::new(),
        }
    }
}

fn finish(verdicts: Verdicts, clock: Instant) -> ProbeCheck {
    ProbeCheck {
        name: verdicts.name.into(),
        status: verdicts.status,
        failure: verdicts.failure,
        seconds: clock.elapsed().as_secs_f64(),
        known: verdicts.known,
    }
}

async fn probe_at(
    addr: SocketAddr,
    server_name: &str,
    roots: &str,
    client: Option<Identity>,
    request: HttpRequest,
) -> ProbeOutcome {
    match connect(addr).await {
        Ok(stream) => {
            crate::probe::probe(
                stream,
                &ProbeSpec {
                    server_name: server_name.into(),
                    trust_pem: roots.into(),
                    client,
                    request,
                    timeout: PROBE_TIMEOUT,
                },
            )
            .await
        }
        Err(e) => ProbeOutcome::failed(Verdict::ConnectFailed, e.to_string()),
    }
}

/// The public side proves its name with a chain to the given roots, and
/// the hub answers behind it (its version decides the known defects).
async fn public_side(target: &ProbeTarget) -> (Verdicts, Option<String>) {
    const NAME: &str = "The public side proves its name and the hub answers behind it";
    let outcome = probe_at(
        target.public_addr,
        &target.public_name,
        &target.public_roots,
        None,
        HttpRequest::get("/hub/api"),
    )
    .await;
    let at = format!("{} at {}", target.public_url(), target.public_addr);
    if outcome.verdict != Verdict::Accepted {
        return (
            Verdicts::of(
                NAME,
                vec![format!(
                    "{at}: {} ({}), expected a certificate for {} chaining to the given CA",
                    outcome.verdict.code(),
                    outcome.detail,
                    target.public_name
                )],
                Vec::new(),
            ),
            None,
        );
    }
    let version = outcome
        .http
        .as_ref()
        .filter(|r| r.status == 200)
        .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
        .and_then(|body| body["version"].as_str().map(str::to_string));
    match version {
        Some(version) => (Verdicts::of(NAME, Vec::new(), Vec::new()), Some(version)),
        None => (
            Verdicts::of(
                NAME,
                vec![format!(
                    "{at}: GET /hub/api answered {} with no hub version: is the hub behind this proxy?",
                    outcome.detail
                )],
                Vec::new(),
            ),
            None,
        ),
    }
}

async fn tls_scan(
    target: &ProbeTarget,
    known: &KnownDefects,
    versions: &BTreeMap<String, String>,
) -> (Verdicts, TlsScanSection, Vec<KnownDefectHit>) {
    const NAME: &str = "Every TLS endpoint accepts only the versions and suites the policy allows";
    let mut problems = Vec::new();
    let mut targets = vec![ScanTarget {
        endpoint: PUBLIC_SIDE.into(),
        from_host: "probe".into(),
        addr: target.public_addr,
        server_name: target.public_name.clone(),
        client: None,
    }];
    for endpoint in &target.internal {
        // The scan presents an identity the endpoint accepts, so a refusal
        // means the version or suite; without one it cannot tell.
        let accepted = target
            .identities
            .iter()
            .find(|i| i.accepted_by.contains(&endpoint.name));
        match accepted {
            Some(given) => targets.push(ScanTarget {
                endpoint: endpoint.name.clone(),
                from_host: "probe".into(),
                addr: endpoint.addr,
                server_name: endpoint.server_name.clone(),
                client: Some(given.identity.clone()),
            }),
            None => problems.push(format!(
                "inconclusive: {} ({}) was not scanned: no --identity is accepted by it (fix: --identity LABEL=CERT,KEY,accepted-by={})",
                endpoint.name, endpoint.addr, endpoint.name
            )),
        }
    }
    let scans =
        futures::future::join_all(targets.iter().map(|t| crate::tls_scan::scan(&Here, t))).await;
    let findings: Vec<_> = scans
        .iter()
        .flat_map(|scan| target.policy.judge(scan))
        .collect();
    let scanned: Vec<String> = scans.iter().map(|s| s.endpoint.clone()).collect();
    let sorted = known.sort_tls_scan(findings, versions, &scanned);
    let mut section = TlsScanSection {
        policy: target.policy.name.label().into(),
        exceptions: target.policy.exceptions.clone(),
        endpoints: scans,
        violations: sorted.unknown.clone(),
        known: Vec::new(),
    };
    let mut hits = Vec::new();
    let mut known_lines = Vec::new();
    for (defect, violation) in sorted.known {
        let hit = KnownDefectHit {
            scenario: NAME.into(),
            id: defect.id.clone(),
            finding: violation.describe(),
            reason: defect.reason.clone(),
            upstream: defect.upstream.clone(),
        };
        if target.strict {
            problems.push(format!("{} (known defect {})", hit.finding, hit.id));
        } else {
            known_lines.push(format!("{}: {}", hit.id, hit.finding));
        }
        hits.push(hit);
        section.known.push(violation);
    }
    problems.extend(sorted.unknown.iter().map(|v| v.describe()));
    problems.extend(sorted.stale.iter().map(|d| {
        format!(
            "known defect {} no longer reproduces (fix: remove it from fixtures/known-defects.toml)",
            d.id
        )
    }));
    (Verdicts::of(NAME, problems, known_lines), section, hits)
}

/// Every endpoint × no certificate and each given identity. The public
/// side asks for no certificate; an internal endpoint must require one and
/// accept exactly the identities the operator says it does.
async fn trust_matrix(
    target: &ProbeTarget,
    known: &KnownDefects,
    versions: &BTreeMap<String, String>,
) -> (Verdicts, TrustMatrix, Vec<KnownDefectHit>) {
    const NAME: &str = "Each endpoint accepts exactly the identities it should";
    let mut matrix = TrustMatrix {
        endpoints: std::iter::once(PUBLIC_SIDE.to_string())
            .chain(target.internal.iter().map(|e| e.name.clone()))
            .collect(),
        identities: std::iter::once("none".to_string())
            .chain(target.identities.iter().map(|i| i.label.clone()))
            .collect(),
        cells: Vec::new(),
    };
    let public = InternalEndpoint {
        name: PUBLIC_SIDE.into(),
        addr: target.public_addr,
        server_name: target.public_name.clone(),
    };
    let internal_roots = target.internal_roots.clone().unwrap_or_default();
    for endpoint in std::iter::once(&public).chain(&target.internal) {
        let is_public = endpoint.name == PUBLIC_SIDE;
        let roots = if is_public {
            &target.public_roots
        } else {
            &internal_roots
        };
        let presented = std::iter::once(None).chain(target.identities.iter().map(Some));
        for given in presented {
            // The trust graph's rules, with the operator's word for which
            // issuer an endpoint trusts: "trusted" stands for any CA in
            // its bundle, "foreign" for any other.
            let (auth, origin) = match (is_public, given) {
                (true, _) => (ClientAuth::NotRequested, IdentityOrigin::Anonymous),
                (false, None) => (
                    ClientAuth::Required(InternalCa::Hub),
                    IdentityOrigin::Anonymous,
                ),
                (false, Some(g)) if g.accepted_by.contains(&endpoint.name) => (
                    ClientAuth::Required(InternalCa::Hub),
                    IdentityOrigin::Internal(InternalCa::Hub),
                ),
                (false, Some(_)) => (
                    ClientAuth::Required(InternalCa::Hub),
                    IdentityOrigin::Foreign,
                ),
            };
            let (expected, reason) = expected_verdict(auth, origin);
            let reason = match (is_public, given) {
                (false, Some(g)) if g.accepted_by.contains(&endpoint.name) => {
                    "the operator lists it as accepted here"
                }
                (false, Some(_)) => "the operator does not list it as accepted here",
                _ => reason,
            };
            let outcome = probe_at(
                endpoint.addr,
                &endpoint.server_name,
                roots,
                given.map(|g| g.identity.clone()),
                HttpRequest::get("/"),
            )
            .await;
            matrix.cells.push(MatrixCell {
                endpoint: endpoint.name.clone(),
                identity: given.map_or("none".into(), |g| g.label.clone()),
                expected,
                reason: reason.into(),
                observed: outcome.verdict,
                matches: verdict_matches(expected, outcome.verdict),
                detail: outcome.detail,
                protocol: outcome.protocol,
                known_defect: None,
            });
        }
    }
    let mismatched: Vec<MatrixCell> = matrix.mismatches().into_iter().cloned().collect();
    let scanned = matrix.endpoints.clone();
    let sorted = known.sort("trust-matrix", mismatched, versions, &scanned, |c| {
        (c.endpoint.clone(), c.identity.clone())
    });
    let mut hits = Vec::new();
    let mut known_lines = Vec::new();
    let mut problems = Vec::new();
    for (defect, cell) in sorted.known {
        matrix.mark_known_defect(&cell.endpoint, &cell.identity, &defect.id);
        let finding = describe_cell(&cell);
        if target.strict {
            problems.push(format!("{finding} (known defect {})", defect.id));
        } else {
            known_lines.push(format!("{}: {finding}", defect.id));
        }
        hits.push(KnownDefectHit {
            scenario: NAME.into(),
            id: defect.id,
            finding,
            reason: defect.reason,
            upstream: defect.upstream,
        });
    }
    problems.extend(sorted.unknown.iter().map(describe_cell));
    // Identities are the operator's labels: an entry that names one the
    // operator did not give is not stale, it was not asked.
    problems.extend(
        matrix
            .presented(&sorted.stale)
            .into_iter()
            .map(|d| {
                format!(
                    "known defect {} no longer reproduces (fix: remove it from fixtures/known-defects.toml)",
                    d.id
                )
            }),
    );
    (Verdicts::of(NAME, problems, known_lines), matrix, hits)
}

fn describe_cell(cell: &MatrixCell) -> String {
    format!(
        "{} × {}: observed {} ({}), expected {} because {}",
        cell.endpoint,
        cell.identity,
        cell.observed.code(),
        cell.detail,
        cell.expected.code(),
        cell.reason
    )
}

/// The hub API refuses a caller without a token, and, when the operator
/// gives one, accepts it.
async fn hub_api_tokens(target: &ProbeTarget) -> Verdicts {
    const NAME: &str = "The hub API refuses callers without a token and accepts the given one";
    let ask = |request: HttpRequest| {
        probe_at(
            target.public_addr,
            &target.public_name,
            &target.public_roots,
            None,
            request,
        )
    };
    let mut problems = Vec::new();
    let anonymous = ask(HttpRequest::get("/hub/api/users")).await;
    match anonymous.http.as_ref().map(|r| r.status) {
        Some(401 | 403) => {}
        Some(status) => problems.push(format!(
            "GET /hub/api/users without a token answered HTTP {status}: the user list is open to anyone who reaches {}",
            target.public_url()
        )),
        None => problems.push(format!(
            "inconclusive: GET /hub/api/users without a token: {} ({})",
            anonymous.verdict.code(),
            anonymous.detail
        )),
    }
    if let Some(token) = &target.hub_token {
        let with_token = ask(HttpRequest::get("/hub/api/user").with_token(token.clone())).await;
        match with_token.http.as_ref().map(|r| r.status) {
            Some(200) => {}
            Some(status) => problems.push(format!(
                "GET /hub/api/user with the given token ({}) answered HTTP {status} (fix: a token the hub knows)",
                token.masked()
            )),
            None => problems.push(format!(
                "inconclusive: GET /hub/api/user with the given token: {} ({})",
                with_token.verdict.code(),
                with_token.detail
            )),
        }
    }
    Verdicts::of(NAME, problems, Vec::new())
}

/// CHP's REST API must want its token even from a caller whose
/// certificate it accepts: the certificate says which CA issued it, and
/// every lab's certificate comes from one the proxy API may trust.
/// The check's verdict, and both calls as made.
async fn proxy_api_token(target: &ProbeTarget) -> (Verdicts, Vec<ProxyApiCall>) {
    const NAME: &str =
        "The proxy API refuses callers without its token, even with a certificate it accepts";
    let Some((name, token)) = &target.proxy_api else {
        let not_run = Verdicts::not_run(
            NAME,
            "no --proxy-api given (fix: --proxy-api NAME naming CHP's REST API among the --endpoint flags, with --proxy-token-file)".into(),
        );
        return (not_run, Vec::new());
    };
    // check_target made sure both exist.
    let endpoint = target.internal.iter().find(|e| &e.name == name);
    let identity = target
        .identities
        .iter()
        .find(|i| i.accepted_by.contains(name));
    let (Some(endpoint), Some(identity), Some(roots)) =
        (endpoint, identity, target.internal_roots.as_deref())
    else {
        let inconclusive = Verdicts::of(
            NAME,
            vec![format!(
                "inconclusive: `{name}` lacks an endpoint, an accepted identity or roots"
            )],
            Vec::new(),
        );
        return (inconclusive, Vec::new());
    };
    let ask = |request: HttpRequest| {
        probe_at(
            endpoint.addr,
            &endpoint.server_name,
            roots,
            Some(identity.identity.clone()),
            request,
        )
    };
    let mut problems = Vec::new();
    let without = ask(HttpRequest::get("/api/routes")).await;
    match without.http.as_ref().map(|r| r.status) {
        Some(401 | 403) => {}
        Some(status) => problems.push(format!(
            "GET /api/routes at {name} ({}) with {}'s certificate and no token answered HTTP {status}: anyone holding a certificate it accepts may rewrite the routes",
            endpoint.addr, identity.label
        )),
        None => problems.push(format!(
            "inconclusive: GET /api/routes at {name} without a token: {} ({})",
            without.verdict.code(),
            without.detail
        )),
    }
    let with = ask(HttpRequest::get("/api/routes").with_token(token.clone())).await;
    match with.http.as_ref().map(|r| r.status) {
        Some(200) => {}
        Some(status) => problems.push(format!(
            "GET /api/routes at {name} with {}'s certificate and the given token ({}) answered HTTP {status}: the token is not the proxy's (fix: CONFIGPROXY_AUTH_TOKEN, in z2jh the hub Secret's hub.config.ConfigurableHTTPProxy.auth_token)",
            identity.label,
            token.masked()
        )),
        None => problems.push(format!(
            "inconclusive: GET /api/routes at {name} with the token: {} ({})",
            with.verdict.code(),
            with.detail
        )),
    }
    let call = |with_token: bool, outcome: ProbeOutcome| ProxyApiCall {
        endpoint: name.clone(),
        identity: identity.label.clone(),
        with_token,
        outcome,
    };
    (
        Verdicts::of(NAME, problems, Vec::new()),
        vec![call(false, without), call(true, with)],
    )
}

/// Each endpoint as its real clients reach it: with the client's own
/// certificate, bundle and server name, accepted over TLS 1.2 or newer.
async fn real_clients(target: &ProbeTarget) -> (Verdicts, Vec<ChainCheck>) {
    const NAME: &str = "Every server's chain verifies for the clients that really use it";
    if target.real_clients.is_empty() {
        let not_run = Verdicts::not_run(
            NAME,
            "no --real-client given (fix: --real-client 'ENDPOINT=IDENTITY,bundle=FILE,name=SERVER_NAME' for each client of an endpoint)".into(),
        );
        return (not_run, Vec::new());
    }
    let mut chains = Vec::new();
    let mut problems = Vec::new();
    for real in &target.real_clients {
        // check_target made sure both exist.
        let endpoint = target.internal.iter().find(|e| e.name == real.endpoint);
        let identity = target.identities.iter().find(|i| i.label == real.client);
        let (Some(endpoint), Some(identity)) = (endpoint, identity) else {
            continue;
        };
        let outcome = probe_at(
            endpoint.addr,
            &real.server_name,
            &real.bundle_pem,
            Some(identity.identity.clone()),
            HttpRequest::get("/"),
        )
        .await;
        let check = ChainCheck::of(
            real.endpoint.clone(),
            real.client.clone(),
            real.bundle.clone(),
            real.server_name.clone(),
            outcome,
        );
        if !check.accepted() {
            problems.push(format!(
                "{} as {} reaches it ({} for {}): {} {}",
                real.endpoint,
                real.client,
                real.bundle,
                real.server_name,
                check.verdict,
                check.detail
            ));
        }
        chains.push(check);
    }
    (Verdicts::of(NAME, problems, Vec::new()), chains)
}

/// Where the probe's reachability cells are tried from.
pub const PROBE_PLACE: &str = "where hubtrust probe runs";

/// Endpoints the design keeps from this place must not accept a
/// connection here. Every endpoint the probe was told of is tried, and is
/// a cell of the report's reachability: the internal ones must answer
/// here (the trust matrix judges them), the closed ones must not.
async fn reachability(target: &ProbeTarget) -> (Verdicts, Vec<ReachCell>) {
    const NAME: &str = "Endpoints closed to this place do not answer here";
    let places: Vec<(&str, SocketAddr, bool)> = target
        .internal
        .iter()
        .map(|e| (e.name.as_str(), e.addr, true))
        .chain(
            target
                .closed
                .iter()
                .map(|c| (c.name.as_str(), c.addr, false)),
        )
        .collect();
    let tries = futures::future::join_all(places.iter().map(|(_, addr, _)| connect(*addr))).await;
    let cells: Vec<ReachCell> = places
        .iter()
        .zip(tries)
        .map(|((name, addr, expected), tried)| {
            let host = addr.ip().to_string();
            ReachCell::at(
                name,
                &host,
                PROBE_PLACE,
                *addr,
                &Reach::of(&tried),
                *expected,
            )
        })
        .collect();
    if target.closed.is_empty() {
        let why = "no --closed endpoint given: nothing was tried (fix: --closed 'proxy API=IP:PORT' for each endpoint that must not answer from here)";
        return (Verdicts::not_run(NAME, why.into()), cells);
    }
    let problems = cells
        .iter()
        .filter(|c| !c.expected && c.answered)
        .map(|c| {
            format!(
                "{} answers at {} from where hubtrust probe runs, where the design allows no client",
                c.endpoint, c.addr
            )
        })
        .collect();
    (Verdicts::of(NAME, problems, Vec::new()), cells)
}

/// What the lab itself uses to reach the hub: its API URL and the internal
/// SSL files, read in a cell of the token owner's running lab.
const LAB_VIEW_CODE: &str = r#"
import json, os
names = ("JUPYTERHUB_API_URL", "JUPYTERHUB_SSL_KEYFILE", "JUPYTERHUB_SSL_CERTFILE", "JUPYTERHUB_SSL_CLIENT_CA")
print("HUBTRUST-LAB " + json.dumps({n: os.environ.get(n) for n in names}))
"#;

/// With a user token: the owner's lab reaches the hub over TLS with a
/// client certificate of its own.
async fn lab_view(target: &ProbeTarget) -> Verdicts {
    const NAME: &str = "The user's lab reaches the hub over TLS with a certificate of its own";
    let Some(token) = &target.user_token else {
        return Verdicts::not_run(
            NAME,
            "no user token given: no lab was looked into (fix: HUBTRUST_USER_TOKEN or --user-token-file, a token of a user whose lab runs)".into(),
        );
    };
    match lab_environment(target, token).await {
        Ok(LabLook::NotRunning(user)) => Verdicts::not_run(
            NAME,
            format!("the lab of {user} is not running; the probe starts nothing (fix: start it, then probe again)"),
        ),
        Ok(LabLook::Seen(user, env)) => {
            let mut problems = Vec::new();
            let api = env.get("JUPYTERHUB_API_URL").cloned().flatten();
            if !api.as_deref().is_some_and(|u| u.starts_with("https://")) {
                problems.push(format!(
                    "the lab of {user} reaches the hub API at {}: not over TLS",
                    api.as_deref().unwrap_or("(unset)")
                ));
            }
            for name in [
                "JUPYTERHUB_SSL_KEYFILE",
                "JUPYTERHUB_SSL_CERTFILE",
                "JUPYTERHUB_SSL_CLIENT_CA",
            ] {
                if env.get(name).cloned().flatten().is_none() {
                    problems.push(format!(
                        "the lab of {user} has no {name}: it cannot present or verify internal certificates"
                    ));
                }
            }
            Verdicts::of(NAME, problems, Vec::new())
        }
        Err(e) => Verdicts::of(NAME, vec![format!("inconclusive: {e}")], Vec::new()),
    }
}

enum LabLook {
    NotRunning(String),
    Seen(String, BTreeMap<String, Option<String>>),
}

async fn lab_environment(target: &ProbeTarget, token: &Secret) -> Result<LabLook> {
    let http = crate::hub_api::operator_client(
        &[&target.public_roots],
        &target.public_name,
        target.public_addr,
        token,
    )?;
    let call = "GET /hub/api/user";
    let base = target.public_url();
    let response = http
        .get(format!("{base}/hub/api/user"))
        .send()
        .await
        .map_err(|e| HarnessError::HubApi {
            call: call.into(),
            message: e.to_string(),
        })?;
    if !response.status().is_success() {
        return Err(crate::hub_api::hub_api_error(call, response).await);
    }
    let model: serde_json::Value = response.json().await.map_err(|e| HarnessError::HubApi {
        call: call.into(),
        message: e.to_string(),
    })?;
    let user = model["name"].as_str().unwrap_or_default().to_string();
    let ready = model["servers"][""]["ready"].as_bool().unwrap_or(false);
    if user.is_empty() || !ready {
        return Ok(LabLook::NotRunning(if user.is_empty() {
            "the token's owner".into()
        } else {
            user
        }));
    }
    let stream = connect(target.public_addr)
        .await
        .map_err(|e| HarnessError::io("connect to the public side", e))?;
    let cell = crate::lab::LabSession {
        http: &http,
        base_url: base,
        public_name: target.public_name.clone(),
        trust_pem: target.public_roots.clone(),
        token: token.clone(),
        user: user.clone(),
        stream,
        kernel_id: None,
    }
    .run_cell(LAB_VIEW_CODE)
    .await?;
    let line = cell
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("HUBTRUST-LAB "))
        .ok_or_else(|| HarnessError::Probe {
            endpoint: format!("the lab of {user}"),
            message: format!("the cell printed no answer: {}", cell.stdout.trim()),
        })?;
    let env = serde_json::from_str(line).map_err(|e| HarnessError::Probe {
        endpoint: format!("the lab of {user}"),
        message: format!("unreadable answer: {e}"),
    })?;
    Ok(LabLook::Seen(user, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_urls_are_probed() {
        assert_eq!(
            parse_public_url("https://hub.example.org:8443/hub/").unwrap(),
            ("hub.example.org".into(), 8443)
        );
        assert_eq!(
            parse_public_url("https://hub.example.org").unwrap(),
            ("hub.example.org".into(), 443)
        );
        let refused = parse_public_url("http://hub.example.org").unwrap_err();
        assert!(refused.contains("must be https://"), "{refused}");
        assert!(parse_public_url("https://:8443").is_err());
        assert!(parse_public_url("https://hub:port").is_err());
    }

    #[test]
    fn a_component_version_is_a_name_and_a_version() {
        assert_eq!(
            parse_component("zero-to-jupyterhub=4.4.0"),
            Ok(("zero-to-jupyterhub".to_string(), "4.4.0".to_string()))
        );
        for bad in ["zero-to-jupyterhub", "=4.4.0", "zero-to-jupyterhub="] {
            let err = parse_component(bad).unwrap_err();
            assert!(err.contains("--component") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn endpoints_parse_with_their_server_names() {
        let hub = parse_internal("hub API=10.0.0.2:8081,name=hub").unwrap();
        assert_eq!(hub.name, "hub API");
        assert_eq!(hub.addr, "10.0.0.2:8081".parse().unwrap());
        assert_eq!(hub.server_name, "hub");
        assert_eq!(
            parse_internal("lab=10.0.0.3:9000").unwrap().server_name,
            "10.0.0.3"
        );
        assert!(parse_internal("hub API=hub:8081").is_err());
        assert!(parse_internal("hub API=10.0.0.2:8081,sni=hub").is_err());
        assert!(parse_internal("=10.0.0.2:8081").is_err());
        assert_eq!(
            parse_closed("proxy API=10.0.0.2:8001").unwrap().name,
            "proxy API"
        );
    }

    #[test]
    fn an_identity_needs_a_private_key_only_its_owner_reads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::CertificateAuthority::root("probe-test-ca").unwrap();
        let identity = ca
            .issue(
                "client",
                &["client"],
                crate::pki::Usage::Client,
                crate::pki::Validity::fresh(1),
            )
            .unwrap();
        let (cert, key) = identity.write_to(dir.path()).unwrap();
        let spec = format!(
            "lab={},{},accepted-by=hub API",
            cert.display(),
            key.display()
        );
        let given = parse_identity(&spec).unwrap();
        assert_eq!(given.accepted_by, vec!["hub API".to_string()]);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = parse_identity(&spec).unwrap_err();
        assert!(refused.contains("chmod 600"), "{refused}");
    }
}
