//! Processes the harness owns: each in its own process group, logging to a
//! file, stopped with SIGTERM, a grace period, then SIGKILL.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::error::{HarnessError, Result};

/// Variables that change whom a component trusts or where its traffic
/// goes. Inherited from the operator's shell they would make results depend
/// on the machine (JupyterHub's internal TLS servers, for one, trust
/// whatever SSL_CERT_FILE names), so components get them only from their
/// manifest or stack file.
pub const AMBIENT_TRUST_VARIABLES: [&str; 14] = [
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// The environment a component starts with: the operator's, minus the
/// ambient trust variables, plus its own.
fn set_environment(command: &mut Command, env: &BTreeMap<String, String>) {
    for name in AMBIENT_TRUST_VARIABLES {
        command.env_remove(name);
    }
    command.envs(env);
}

/// How a process is started: plain data, so a backend decides where.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The component's name, used in every message about it.
    pub name: String,
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub log: PathBuf,
    /// The component it is, where a backend runs components apart (a
    /// container each); `None`: a helper that runs on the host itself.
    pub role: Option<crate::spec::ContainerRole>,
}

/// A running process. Dropping it kills its whole process group at once;
/// [`ManagedProcess::stop`] is the graceful path.
#[derive(Debug)]
pub struct ManagedProcess {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
    pgid: Option<Pid>,
    /// Set instead of `child` for a process a backend started elsewhere
    /// (in a container).
    elsewhere: Option<Box<dyn StartedElsewhere>>,
}

/// A process a backend started somewhere other than this process's
/// children: a backend's own handle on it.
#[async_trait::async_trait]
pub trait StartedElsewhere: std::fmt::Debug + Send + Sync {
    /// Its pid as this machine sees it, while it runs.
    fn pid(&self) -> Option<u32>;
    /// If it has exited, how.
    fn exit_status(&self) -> Option<String>;
    /// SIGTERM, up to `grace` for it to end, then SIGKILL.
    async fn stop(self: Box<Self>, grace: Duration);
    /// SIGKILL at once, unless it has ended.
    fn kill(&self);
}

impl ManagedProcess {
    /// Starts `spec` through `wrapper` (such as `nsenter --net=…`), in a new
    /// process group so the whole tree it forks can be signalled at once.
    pub fn start(spec: &LaunchSpec, wrapper: &[String]) -> Result<Self> {
        let log = File::create(&spec.log)
            .map_err(|e| HarnessError::io(format!("create log {}", spec.log.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| HarnessError::io("duplicate a log handle", e))?;
        let argv: Vec<&String> = wrapper
            .iter()
            .chain(std::iter::once(&spec.program))
            .chain(&spec.args)
            .collect();
        let mut command = Command::new(argv[0]);
        set_environment(&mut command, &spec.env);
        command
            .args(&argv[1..])
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        let child = command.spawn().map_err(|e| HarnessError::Spawn {
            component: spec.name.clone(),
            message: format!(
                "cannot execute `{}`: {e} (fix: check the command in the component manifest or stack file)",
                spec.program
            ),
        })?;
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        Ok(Self {
            name: spec.name.clone(),
            log: spec.log.clone(),
            child: Some(child),
            pgid,
            elsewhere: None,
        })
    }

    /// A process a backend started elsewhere, through its own handle.
    pub fn started_elsewhere(spec: &LaunchSpec, handle: Box<dyn StartedElsewhere>) -> Self {
        Self {
            name: spec.name.clone(),
            log: spec.log.clone(),
            child: None,
            pgid: None,
            elsewhere: Some(handle),
        }
    }

    /// The process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        match &self.elsewhere {
            Some(handle) => handle.pid(),
            None => self.child.as_ref().and_then(|c| c.id()),
        }
    }

    /// If the process has exited, how.
    pub fn exit_status(&mut self) -> Option<String> {
        if let Some(handle) = &self.elsewhere {
            return handle.exit_status();
        }
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// The last `n` lines the process wrote.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        last_lines(&self.log, n)
    }

    /// SIGTERM to the group, up to `grace` for it to exit, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(handle) = self.elsewhere.take() {
            handle.stop(grace).await;
            return;
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGTERM);
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            if let Some(pgid) = self.pgid {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            let _ = child.wait().await;
        }
        // Whatever the leader left behind in its group goes too.
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if let Some(handle) = &self.elsewhere {
            handle.kill();
        }
        if self.child.is_some() {
            if let Some(pgid) = self.pgid {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
        }
    }
}

pub fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Kills every process whose environment carries `marker=value`: the
/// components a stack started, and anything they forked in new sessions
/// (JupyterHub starts the proxy and the labs outside its own group).
pub fn sweep_marked(marker: &str, value: &str) -> usize {
    signal_marked(marker, value, Signal::SIGKILL, None)
}

/// Sends `signal` to every process carrying `marker=value` in its
/// environment but this one and `spare`; returns how many it signalled.
pub fn signal_marked(marker: &str, value: &str, signal: Signal, spare: Option<u32>) -> usize {
    let needle = format!("{marker}={value}");
    let own = std::process::id();
    let mut signalled = 0;
    for pid in marked_processes(&needle) {
        if pid != own && Some(pid) != spare {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal);
            signalled += 1;
        }
    }
    signalled
}

/// PIDs whose environment contains the exact `KEY=value` entry.
pub fn marked_processes(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| {
                    env.split(|b| *b == 0)
                        .any(|entry| entry == needle.as_bytes())
                })
                .unwrap_or(false)
        })
        .collect()
}

/// A `/proc/<pid>/environ`: NUL-separated `NAME=value` pairs.
pub fn parse_environ(bytes: &[u8]) -> BTreeMap<String, String> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let text = String::from_utf8_lossy(kv);
            let (k, v) = text.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_get_trust_variables_only_from_their_own_spec() {
        let mut command = Command::new("true");
        let own = BTreeMap::from([("REQUESTS_CA_BUNDLE".to_string(), "/merged.crt".to_string())]);
        set_environment(&mut command, &own);
        let envs: BTreeMap<String, Option<String>> = command
            .as_std()
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert_eq!(envs["SSL_CERT_FILE"], None, "inherited: {envs:?}");
        assert_eq!(envs["https_proxy"], None);
        assert_eq!(envs["REQUESTS_CA_BUNDLE"].as_deref(), Some("/merged.crt"));
    }

    fn spec(dir: &Path, program: &str, args: &[&str]) -> LaunchSpec {
        LaunchSpec {
            name: "test".into(),
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::from([(
                "HUBTRUST_TEST_MARK".to_string(),
                format!("{}", std::process::id()),
            )]),
            cwd: dir.to_path_buf(),
            log: dir.join("test.log"),
            role: None,
        }
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill_when_sigterm_is_ignored() {
        let held = tempfile::tempdir().unwrap();
        let dir = held.path();
        // A shell that ignores SIGTERM, then execs `tail`: an ignored signal
        // stays ignored across exec, so `tail` inherits it.
        let p = ManagedProcess::start(
            &spec(dir, "sh", &["-c", "trap '' TERM; exec tail -f /dev/null"]),
            &[],
        )
        .unwrap();
        let needle = format!("HUBTRUST_TEST_MARK={}", std::process::id());
        // Armed once the exec has happened (reading /proc mid-exec can race).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !marked_processes(&needle).iter().any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "tail")
        }) {
            assert!(std::time::Instant::now() < deadline, "tail never started");
            // Polling interval of a wait bounded by the deadline above.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        p.stop(Duration::from_millis(200)).await;
        assert!(
            marked_processes(&needle).is_empty(),
            "process survived stop"
        );
    }

    #[test]
    fn last_lines_returns_the_tail() {
        let held = tempfile::tempdir().unwrap();
        let dir = held.path();
        let log = dir.join("log");
        std::fs::write(&log, "a\nb\nc\nd\n").unwrap();
        assert_eq!(last_lines(&log, 2), vec!["c", "d"]);
    }
}
