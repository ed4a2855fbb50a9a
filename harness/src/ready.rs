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
    loop {
        if attempt(check, ctx, pattern.as_ref()).await {
            return Ok(());
        }
        if let Some(status) = supervisor.exit_status() {
            return Err(HarnessError::ComponentExited {
                component: supervisor.name.clone(),
                status,
                last_lines: supervisor.last_lines(20),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HarnessError::NotReady {
                component: component.into(),
                check: check.describe(),
                seconds: check.timeout().as_secs(),
                last_lines: last_lines(ctx.log, 20),
            });
        }
        // Polling interval of a readiness loop, bounded by the deadline.
        tokio::time::sleep(backoff.min(deadline - tokio::time::Instant::now())).await;
        backoff = (backoff * 2).min(Duration::from_millis(250));
    }
}

async fn attempt<N: HostNetwork>(
    check: &ReadyCheck,
    ctx: &ReadyContext<'_, N>,
    pattern: Option<&regex::Regex>,
) -> bool {
    let per_try = Duration::from_secs(3);
    match check {
        ReadyCheck::Tcp { host, addr, .. } => {
            matches!(
                tokio::time::timeout(per_try, ctx.network.connect_from(host, *addr)).await,
                Ok(Ok(_))
            )
        }
        ReadyCheck::TlsHandshake { host, addr, .. } => {
            let Ok(Ok(stream)) =
                tokio::time::timeout(per_try, ctx.network.connect_from(host, *addr)).await
            else {
                return false;
            };
            matches!(
                tokio::time::timeout(
                    per_try,
                    crate::probe::handshake_completes(stream, &addr.ip().to_string())
                )
                .await,
                Ok(true)
            )
        }
        ReadyCheck::Http { url, status, .. } => {
            match ctx.http.get(url).timeout(per_try).send().await {
                Ok(response) => response.status().as_u16() == *status,
                Err(_) => false,
            }
        }
        ReadyCheck::LogLine { .. } => {
            let text = std::fs::read_to_string(ctx.log).unwrap_or_default();
            pattern.is_some_and(|p| text.lines().any(|line| p.is_match(line)))
        }
    }
}
