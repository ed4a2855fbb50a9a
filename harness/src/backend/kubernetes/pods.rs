//! A running deployment's pods as this machine sees them on kind, whose
//! nodes run here: each pod's processes in `/proc`, their filesystems
//! under `/proc/<pid>/root` and their sockets, read as root.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{command, in_cluster, plan, secret_modes, Deployment};
use crate::error::{HarnessError, Result};
use crate::inventory::Inventory;
use crate::known_defects::{KnownDefectHit, KnownDefects};

fn failed(what: impl Into<String>, message: impl Into<String>) -> HarnessError {
    HarnessError::Pod {
        what: what.into(),
        message: message.into(),
    }
}

/// `program`, as root: through `sudo -n` when hubtrust is not root.
pub fn as_root(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if nix::unistd::geteuid().is_root() {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-n").arg(program);
        sudo
    }
}

/// The name of the running pod `selector` finds (`what` in errors).
pub fn running_pod(deployment: &Deployment, selector: &str, what: &str) -> Result<String> {
    let name = command::run(&plan::pod_named_by_command(
        &deployment.target,
        &deployment.namespace,
        selector,
    ))
    .map_err(|e| failed(format!("{what}'s pod"), e.to_string()))?
    .stdout
    .trim()
    .to_string();
    if name.is_empty() {
        return Err(failed(
            format!("{what}'s pod"),
            format!("no pod of {what} (-l {selector}) is running"),
        ));
    }
    Ok(name)
}

/// The pid, on this machine, of the process in `what`'s pod whose command
/// line holds `needle`: its root is that container's filesystem.
pub fn component_process(
    deployment: &Deployment,
    selector: &str,
    what: &str,
    needle: &str,
) -> Result<u32> {
    let name = running_pod(deployment, selector, what)?;
    let uid = pod_uid(deployment, &name)?;
    in_cluster::pod_process_running(Path::new("/proc"), &uid, needle).ok_or_else(|| {
        failed(
            format!("{what}'s process"),
            format!("no process of {what}'s pod {name} runs `{needle}` on this machine"),
        )
    })
}

/// The pod's UID, which names its cgroup.
pub fn pod_uid(deployment: &Deployment, pod: &str) -> Result<String> {
    let uid = command::run(&plan::pod_uid_command(
        &deployment.target,
        &deployment.namespace,
        pod,
    ))
    .map_err(|e| failed(format!("pod {pod}'s UID"), e.to_string()))?;
    Ok(uid.stdout.trim().to_string())
}

/// The pid, on this machine, of a process of `pod`.
pub fn pod_process(deployment: &Deployment, pod: &str) -> Result<u32> {
    let uid = pod_uid(deployment, pod)?;
    in_cluster::pod_process(Path::new("/proc"), &uid).ok_or_else(|| {
        failed(
            format!("pod {pod}'s processes"),
            format!("no process of pod {pod} (UID {uid}) is on this machine: hubtrust enters a pod's namespaces from the machine that runs the kind node"),
        )
    })
}

/// Every port the first user's lab pod listens on besides the lab's own
/// (its kernel's among them), at the pod's address: no prober may reach
/// them. Read from the pod's own `/proc/<pid>/net/tcp`, as the kernel
/// opened them, so a port the kernel binds wide is caught too.
pub fn lab_ports_closed(deployment: &Deployment) -> Result<Vec<(String, SocketAddr)>> {
    let user = &deployment.user;
    let pod = in_cluster::lab_service(user);
    let pid = pod_process(deployment, &pod)?;
    let tables: Vec<String> = ["tcp", "tcp6"]
        .iter()
        .map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).unwrap_or_default())
        .collect();
    let listening =
        in_cluster::listening_ports(&tables.iter().map(String::as_str).collect::<Vec<_>>());
    let what = format!("{user}'s lab pod {pod}");
    if listening.is_empty() {
        return Err(failed(
            what,
            format!("(pid {pid}) shows no listening port, not even the lab's: its sockets could not be read"),
        ));
    }
    let ip = command::run(&plan::pod_ip_command(
        &deployment.target,
        &deployment.namespace,
        &pod,
    ))
    .map_err(|e| failed(&what, e.to_string()))?;
    let ip: std::net::IpAddr = ip.stdout.trim().parse().map_err(|e| {
        failed(
            &what,
            format!("has no address ({:?}: {e})", ip.stdout.trim()),
        )
    })?;
    Ok(in_cluster::lab_ports_closed(user, ip, &listening))
}

/// The hub process's environment, read as root from its
/// `/proc/<pid>/environ`. Its tokens are in it: callers look only at what
/// they need, and nothing here prints it.
pub fn hub_environment(deployment: &Deployment) -> Result<BTreeMap<String, String>> {
    let pid = component_process(deployment, "component=hub", "the hub", "jupyterhub")?;
    let out = as_root("cat")
        .arg(format!("/proc/{pid}/environ"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::io("run cat", e))?;
    if !out.status.success() {
        return Err(failed(
            "the hub's environment",
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(crate::process::parse_environ(&out.stdout))
}

/// The certificates of the hub's internal store as the running hub holds
/// them (the lab's, made at spawn, among them), copied out of its pod as
/// root without the keys, then inventoried as on the other backends.
pub fn hub_store_inventory(deployment: &Deployment) -> Result<Inventory> {
    use super::chart::INTERNAL_SSL_DIR;
    let pid = component_process(deployment, "component=hub", "the hub", "jupyterhub")?;
    let store =
        PathBuf::from(format!("/proc/{pid}/root")).join(INTERNAL_SSL_DIR.trim_start_matches('/'));
    let copy = deployment.run_dir.join("hub-store");
    copy_without_keys(&store, &copy)?;
    Inventory::scan(&[("internal-ssl", copy.as_path())])
}

/// `from` (read as root) copied to `to`, every `*.key` left behind.
pub fn copy_without_keys(from: &Path, to: &Path) -> Result<()> {
    let what = format!("copying {} without its keys", from.display());
    std::fs::create_dir_all(to)
        .map_err(|e| HarnessError::io(format!("create {}", to.display()), e))?;
    let mut packed = as_root("tar")
        .arg("-C")
        .arg(from)
        .args(["--exclude=*.key", "-cf", "-", "."])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HarnessError::io("run tar", e))?;
    let stream = packed
        .stdout
        .take()
        .ok_or_else(|| failed(&what, "tar has no stdout"))?;
    let unpacked = Command::new("tar")
        .arg("-C")
        .arg(to)
        .args(["--no-same-owner", "-xf", "-"])
        .stdin(stream)
        .status()
        .map_err(|e| HarnessError::io("run tar to unpack", e))?;
    let packed = packed
        .wait_with_output()
        .map_err(|e| HarnessError::io("wait for tar", e))?;
    if !(packed.status.success() && unpacked.success()) {
        return Err(failed(
            what,
            String::from_utf8_lossy(&packed.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// What the secrets check found across the pods.
#[derive(Debug, Default)]
pub struct SecretsSeen {
    /// One line per pod: how many files, read as which user and groups.
    pub read: Vec<String>,
    /// Findings a listed upstream defect explains: said, not failed.
    pub known: Vec<KnownDefectHit>,
    /// Findings nothing explains, and known defects that no longer
    /// reproduce: failures.
    pub problems: Vec<String>,
}

/// Every secret file of `pods`, read as root through each component's own
/// `/proc/<pid>/root` and judged against its own user and groups, the
/// findings sorted by `fixtures/known-defects.toml` (`secret-modes`) for
/// `scenario`. A pod where nothing is found is an error: it shows nothing.
pub fn check_secrets(
    deployment: &Deployment,
    pods_to_check: &[secret_modes::PodSecrets],
    scenario: &str,
) -> Result<SecretsSeen> {
    let known = KnownDefects::builtin()?;
    let versions = deployment.chart.component_versions();
    let mut seen = SecretsSeen::default();
    let mut findings: Vec<(String, String, String)> = Vec::new();
    let mut looked = Vec::new();
    for pod in pods_to_check {
        let pid = component_process(deployment, &pod.selector, &pod.what, &pod.process)?;
        let status_file = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&status_file)
            .map_err(|e| HarnessError::io(format!("read {status_file}"), e))?;
        let ids = secret_modes::parse_status(&status).ok_or_else(|| HarnessError::Pod {
            what: pod.what.clone(),
            message: format!("{status_file} names no user and group"),
        })?;
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let mut files = Vec::new();
        for dir in &pod.dirs {
            let out = as_root("find")
                .args(secret_modes::find_args(&root, dir))
                .stdin(Stdio::null())
                .output()
                .map_err(|e| HarnessError::io("run find", e))?;
            if !out.status.success() {
                return Err(HarnessError::Pod {
                    what: pod.what.clone(),
                    message: format!(
                        "listing {} failed: {}",
                        dir.path,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                });
            }
            files.extend(secret_modes::parse_find(
                &String::from_utf8_lossy(&out.stdout),
                &root,
            ));
        }
        if files.is_empty() {
            return Err(HarnessError::Pod {
                what: pod.what.clone(),
                message: format!(
                    "no secret file was found in {}: the check shows nothing",
                    pod.dirs
                        .iter()
                        .map(|d| d.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        seen.read.push(format!(
            "{} secret files of {} (uid {}, groups {:?}) read",
            files.len(),
            pod.what,
            ids.uid,
            ids.groups
        ));
        looked.push(pod.what.clone());
        for file in &files {
            if let Some(why) = secret_modes::judge(file, &ids) {
                findings.push((
                    pod.what.clone(),
                    secret_modes::file_name(&file.path).to_string(),
                    why,
                ));
            }
        }
    }
    let sorted = known.sort(
        "secret-modes",
        findings,
        &versions,
        &looked,
        |(what, name, _)| (what.clone(), name.clone()),
    );
    for (defect, (what, _, why)) in &sorted.known {
        seen.known.push(KnownDefectHit {
            scenario: scenario.into(),
            id: defect.id.clone(),
            finding: format!("{what}: {why}"),
            reason: defect.reason.clone(),
            upstream: defect.upstream.clone(),
        });
    }
    seen.problems = sorted
        .unknown
        .iter()
        .map(|(what, _, why)| format!("{what}: {why}"))
        .collect();
    seen.problems.extend(sorted.stale.iter().map(|d| {
        format!(
            "known defect `{}` no longer reproduces (fix: remove it from fixtures/known-defects.toml)",
            d.id
        )
    }));
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_copied_out_without_its_keys() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: the copy reads as root (sudo -n otherwise)");
            return;
        }
        let held = tempfile::tempdir().unwrap();
        let dir = held.path();
        let store = dir.join("store/hub-internal");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(store.join("hub-internal.crt"), "cert").unwrap();
        std::fs::write(store.join("hub-internal.key"), "key").unwrap();
        let copied = copy_without_keys(&dir.join("store"), &dir.join("copy"));
        let crt = dir.join("copy/hub-internal/hub-internal.crt").exists();
        let key = dir.join("copy/hub-internal/hub-internal.key").exists();
        copied.unwrap();
        assert!(crt, "the certificate was not copied");
        assert!(!key, "a private key was copied out");
    }
}
