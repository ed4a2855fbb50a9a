//! Readiness is data: each component lists the checks that prove it is up,
//! each with its own timeout. No fixed sleeps anywhere.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::HostNetwork;
use crate::error::{HarnessError, Result};
use crate::process::{last_lines, ManagedProcess};

/// One readiness check, as written in a component manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ReadyCheck {
    /// A TCP connect from `host` succeeds.
    Tcp {
        host: String,
        addr: SocketAddr,
        timeout_secs: u64,
    },
    /// A TLS handshake from `host` completes (the server's identity is the
    /// probes' business, not readiness's).
    TlsHandshake {
        host: String,
        addr: SocketAddr,
        timeout_secs: u64,
    },
    /// An HTTPS GET from the operator answers `status`.
    Http {
        url: String,
        status: u16,
        timeout_secs: u64,
    },
    /// The component's log contains a line matching `pattern`.
    LogLine { pattern: String, timeout_secs: u64 },
}

impl ReadyCheck {
    pub fn timeout(&self) -> Duration {
        let secs = match self {
            ReadyCheck::Tcp { timeout_secs, .. }
            | ReadyCheck::TlsHandshake { timeout_secs, .. }
            | ReadyCheck::Http { timeout_secs, .. }
            | ReadyCheck::LogLine { timeout_secs, .. } => *timeout_secs,
        };
        Duration::from_secs(secs)
    }

    pub fn describe(&self) -> String {
        match self {
            ReadyCheck::Tcp { host, addr, .. } => format!("TCP connect to {addr} from {host}"),
            ReadyCheck::TlsHandshake { host, addr, .. } => {
                format!("TLS handshake with {addr} from {host}")
            }
            ReadyCheck::Http { url, status, .. } => format!("GET {url} answering {status}"),
            ReadyCheck::LogLine { pattern, .. } => format!("a log line matching `{pattern}`"),
        }
    }
}

/// What checks need from a running stack.
pub struct ReadyContext<'a, N: HostNetwork> {
    pub network: &'a N,
    pub http: &'a reqwest::Client,
    /// Where the component writes its log (for log-line checks).
    pub log: &'a Path,
    /// Host names the HTTP client resolves itself, for the diagnosis.
    pub names: &'a [(String, std::net::SocketAddr)],
}

/// Polls `check` until it passes or times out. `supervisor` is the process
/// whose death means the check can never pass (the component itself, or the
/// hub that started it); `component` names what is awaited.
pub async fn wait_ready<N: HostNetwork>(
    component: &str,
    check: &ReadyCheck,
    ctx: &ReadyContext<'_, N>,
    supervisor: &mut ManagedProcess,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + check.timeout();
    let mut backoff = Duration::from_millis(25);
    let pattern =
        match check {
            ReadyCheck::LogLine { pattern, .. } => Some(regex::Regex::new(pattern).map_err(
                |e| HarnessError::ManifestInvalid {
                    name: component.into(),
                    message: format!("bad log-line pattern: {e}"),
                },
            )?),
            _ => None,
        };
    let mut last_answer: String;
    // A TLS server never answers in plaintext nor serves an expired
    // certificate while it starts: such an answer three times in a row is
    // a verdict, not a reason to wait out the timeout.
    let mut conclusive_streak = 0;
    loop {
        match attempt(check, ctx, pattern.as_ref()).await {
            Ok(()) => return Ok(()),
            Err(answer) => last_answer = answer,
        }
        // A 424 alone is not: the hub answers it while a slow spawn is
        // still pending. Only beside a known cause in the log is it final.
        let conclusive = match last_answer.starts_with("HTTP 424") {
            true => crate::diagnosis::cause_in_log(&last_lines(ctx.log, 5000)).is_some(),
            false => crate::diagnosis::cause_in_client_error("", &last_answer).is_some(),
        };
        conclusive_streak = if conclusive { conclusive_streak + 1 } else { 0 };
        if conclusive_streak >= 3 {
            if let Some(finding) = diagnose(check, ctx, &last_answer).await {
                return Err(HarnessError::DeploymentDefect {
                    component: component.into(),
                    check: check.describe(),
                    finding,
                    last_lines: last_lines(ctx.log, 20),
                });
            }
        }
        if let Some(status) = supervisor.exit_status() {
            if let Some(cause) = crate::diagnosis::cause_in_log(&supervisor.last_lines(200)) {
                return Err(HarnessError::DeploymentDefect {
                    component: supervisor.name.clone(),
                    check: format!("it exited during start-up ({status})"),
                    finding: cause,
                    last_lines: supervisor.last_lines(20),
                });
            }
            return Err(HarnessError::ComponentExited {
                component: supervisor.name.clone(),
                status,
                last_lines: supervisor.last_lines(20),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            let lines = last_lines(ctx.log, 20);
            if let Some(finding) = diagnose(check, ctx, &last_answer).await {
                return Err(HarnessError::DeploymentDefect {
                    component: component.into(),
                    check: check.describe(),
                    finding,
                    last_lines: lines,
                });
            }
            return Err(HarnessError::NotReady {
                component: component.into(),
                check: format!("{} (its last answer: {last_answer})", check.describe()),
                seconds: check.timeout().as_secs(),
                last_lines: lines,
            });
        }
        // Polling interval of a readiness loop, bounded by the deadline.
        tokio::time::sleep(backoff.min(deadline - tokio::time::Instant::now())).await;
        backoff = (backoff * 2).min(Duration::from_millis(250));
    }
}

/// What the endpoint and the component's log say about a check that
/// never passed, when that names a deployment defect.
async fn diagnose<N: HostNetwork>(
    check: &ReadyCheck,
    ctx: &ReadyContext<'_, N>,
    last_answer: &str,
) -> Option<String> {
    let from_endpoint = match check {
        ReadyCheck::TlsHandshake { host, addr, .. } => {
            crate::diagnosis::probe_tls_endpoint(ctx.network, host, *addr)
                .await
                .ok()
                .flatten()
        }
        ReadyCheck::Http { url, .. } => {
            match crate::diagnosis::cause_in_client_error(url, last_answer) {
                Some(cause) if crate::diagnosis::is_certificate_cause(&cause) => {
                    let certificate =
                        crate::diagnosis::describe_served_certificate(ctx.network, url, ctx.names)
                            .await;
                    Some(match certificate {
                        Some(described) => format!("{cause}; {described}"),
                        None => cause,
                    })
                }
                other => other,
            }
        }
        ReadyCheck::Tcp { .. } | ReadyCheck::LogLine { .. } => None,
    };
    let from_log = crate::diagnosis::cause_in_log(&last_lines(ctx.log, 5000));
    match (from_endpoint, from_log) {
        (Some(endpoint), Some(log)) => Some(format!("{endpoint}; and {log}")),
        (endpoint, log) => endpoint.or(log),
    }
}

/// One try; on failure, what the endpoint answered.
async fn attempt<N: HostNetwork>(
    check: &ReadyCheck,
    ctx: &ReadyContext<'_, N>,
    pattern: Option<&regex::Regex>,
) -> std::result::Result<(), String> {
    let per_try = Duration::from_secs(3);
    let connect = |host: &str, addr: SocketAddr| {
        let host = host.to_string();
        async move {
            match tokio::time::timeout(per_try, ctx.network.connect_from(&host, addr)).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(e)) => Err(format!("connecting to {addr} from {host}: {e}")),
                Err(_) => Err(format!("connecting to {addr} from {host} timed out")),
            }
        }
    };
    match check {
        ReadyCheck::Tcp { host, addr, .. } => connect(host, *addr).await.map(|_| ()),
        ReadyCheck::TlsHandshake { host, addr, .. } => {
            let stream = connect(host, *addr).await?;
            match tokio::time::timeout(
                per_try,
                crate::probe::handshake_error(stream, &addr.ip().to_string()),
            )
            .await
            {
                Ok(None) => Ok(()),
                Ok(Some(error)) => Err(format!("the TLS handshake failed: {error}")),
                Err(_) => Err("the TLS handshake timed out".into()),
            }
        }
        ReadyCheck::Http { url, status, .. } => {
            match ctx.http.get(url).timeout(per_try).send().await {
                Ok(response) if response.status().as_u16() == *status => Ok(()),
                Ok(response) => Err(format!("HTTP {}", response.status())),
                Err(e) => Err(error_chain(&e)),
            }
        }
        ReadyCheck::LogLine { .. } => {
            let text = std::fs::read_to_string(ctx.log).unwrap_or_default();
            match pattern.is_some_and(|p| text.lines().any(|line| p.is_match(line))) {
                true => Ok(()),
                false => Err("no such line yet".into()),
            }
        }
    }
}

/// An error and its sources, as one line: reqwest's own message hides the
/// TLS error that says why.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
