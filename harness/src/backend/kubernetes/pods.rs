//! A running deployment's pods as this machine sees them on kind, whose
//! nodes run here: each pod's processes in `/proc`, their filesystems
//! under `/proc/<pid>/root` and their sockets, read as root. On a cluster
//! of the user's own the hub's environment and certificate store, and each
//! component's secret files, are read through `kubectl exec` instead, by
//! scripts in the hub's own Python and in the container's own shell.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{command, in_cluster, plan, secret_modes, ClusterTarget, Deployment};
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

/// Run in the hub's container with `/proc`: the environment of the
/// process running `jupyterhub` (by its program's name, not tini's or this
/// script's), as hex, so its NUL separators survive the trip.
pub const HUB_ENVIRONMENT_SCRIPT: &str = r#"import os, sys
proc = sys.argv[1]
for pid in filter(str.isdigit, os.listdir(proc)):
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        continue
    if any(os.path.basename(arg) == b"jupyterhub" for arg in argv[:2]):
        with open(f"{proc}/{pid}/environ", "rb") as f:
            sys.stdout.write(f.read().hex())
        sys.exit(0)
sys.exit("no process in the hub's container runs jupyterhub")
"#;

/// Run in the hub's container with the store's path: every file under it
/// as JSON (its path below the store, its text), leaving behind every
/// `*.key` and anything holding a private key, so no key leaves the pod.
pub const HUB_STORE_SCRIPT: &str = r#"import json, os, sys
root = sys.argv[1]
files = {}
for directory, _, names in os.walk(root):
    for name in names:
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
            data = f.read()
        if name.endswith(".key") or b"PRIVATE KEY" in data:
            continue
        files[os.path.relpath(path, root)] = data.decode("ascii", "replace")
json.dump(files, sys.stdout)
"#;

/// `python3 -c SCRIPT ARGS` in the hub's pod.
fn in_the_hubs_pod(
    deployment: &Deployment,
    purpose: &str,
    script: &str,
    args: &[&str],
) -> Result<String> {
    let pod = running_pod(deployment, "component=hub", "the hub")?;
    let mut argv = vec!["python3".to_string(), "-c".into(), script.into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let said = command::run(&plan::exec_in_pod_command(
        purpose,
        &deployment.target,
        &deployment.namespace,
        &pod,
        &argv,
    ))
    .map_err(|e| failed(purpose, e.to_string()))?;
    Ok(said.stdout)
}

/// The hub process's environment: on kind read as root from its
/// `/proc/<pid>/environ`, elsewhere from inside its container. Its tokens
/// are in it: callers look only at what they need, and nothing here
/// prints it.
pub fn hub_environment(deployment: &Deployment) -> Result<BTreeMap<String, String>> {
    if let ClusterTarget::Existing { .. } = deployment.target {
        let what = "the hub's environment";
        let hex = in_the_hubs_pod(deployment, what, HUB_ENVIRONMENT_SCRIPT, &["/proc"])?;
        let environ = hex::decode(hex.trim())
            .map_err(|e| failed(what, format!("the pod's answer is not hex: {e}")))?;
        return Ok(crate::process::parse_environ(&environ));
    }
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
/// them (the lab's, made at spawn, among them), copied out of its pod
/// without the keys (on kind as root, elsewhere by the hub's own user from
/// inside its container), then inventoried as on the other backends.
pub fn hub_store_inventory(deployment: &Deployment) -> Result<Inventory> {
    use super::chart::INTERNAL_SSL_DIR;
    let copy = deployment.run_dir.join("hub-store");
    if let ClusterTarget::Existing { .. } = deployment.target {
        let what = "the hub's certificate store";
        let json = in_the_hubs_pod(deployment, what, HUB_STORE_SCRIPT, &[INTERNAL_SSL_DIR])?;
        write_store_copy(&json, &copy).map_err(|e| failed(what, e))?;
    } else {
        let pid = component_process(deployment, "component=hub", "the hub", "jupyterhub")?;
        let store = PathBuf::from(format!("/proc/{pid}/root"))
            .join(INTERNAL_SSL_DIR.trim_start_matches('/'));
        copy_without_keys(&store, &copy)?;
    }
    Inventory::scan(&[("internal-ssl", copy.as_path())])
}

/// The files [`HUB_STORE_SCRIPT`] printed, written under `to`; a path
/// that would leave `to` is refused, and so is a store with no file.
fn write_store_copy(json: &str, to: &Path) -> std::result::Result<(), String> {
    let files: BTreeMap<String, String> = serde_json::from_str(json)
        .map_err(|e| format!("the pod's answer is not the store: {e}"))?;
    if files.is_empty() {
        return Err("the store in the hub's pod holds no certificate".into());
    }
    for (relative, text) in &files {
        let inside = Path::new(relative)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            return Err(format!(
                "the pod named a file outside the store: {relative:?}"
            ));
        }
        let path = to.join(relative);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        crate::pki::write_with_mode(&path, text.as_bytes(), 0o644).map_err(|e| e.to_string())?;
    }
    Ok(())
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

/// The component's user and groups and its secret files, read as root on
/// this machine through its process's `/proc/<pid>/root`.
fn component_files_as_root(
    deployment: &Deployment,
    pod: &secret_modes::PodSecrets,
) -> Result<(secret_modes::ProcessIds, Vec<secret_modes::FileMode>)> {
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
    Ok((ids, files))
}

/// The same, read from inside the component's own container by `kubectl
/// exec`, as the component's own user: the pods are not on this machine.
/// Listing a file needs only its directory, so every file is seen that
/// root would see.
fn component_files_from_inside(
    deployment: &Deployment,
    pod: &secret_modes::PodSecrets,
) -> Result<(secret_modes::ProcessIds, Vec<secret_modes::FileMode>)> {
    let name = running_pod(deployment, &pod.selector, &pod.what)?;
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        secret_modes::IN_CONTAINER_SCRIPT.into(),
        "sh".into(),
    ];
    argv.extend(secret_modes::in_container_args("/proc", pod));
    let purpose = format!("list the secret files of {}", pod.what);
    let said = command::run(&plan::exec_in_pod_command(
        &purpose,
        &deployment.target,
        &deployment.namespace,
        &name,
        &argv,
    ))
    .map_err(|e| failed(&purpose, e.to_string()))?;
    secret_modes::parse_in_container(&said.stdout).ok_or_else(|| {
        failed(
            &purpose,
            format!(
                "the pod's answer names no user and group: {:?}",
                said.stdout.lines().next().unwrap_or_default()
            ),
        )
    })
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

impl SecretsSeen {
    /// What fails the check: the problems and, with `--strict`, every
    /// known defect's finding too.
    pub fn failures(&self, strict: bool) -> Vec<String> {
        let known = self
            .known
            .iter()
            .filter(|_| strict)
            .map(|hit| format!("known defect {} (--strict): {}", hit.id, hit.finding));
        self.problems.iter().cloned().chain(known).collect()
    }
}

/// Every secret file of `pods`, read as root through each component's own
/// `/proc/<pid>/root` on kind, from inside its container elsewhere, and
/// judged against its own user and groups, the
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
        let (ids, files) = match deployment.target {
            ClusterTarget::Existing { .. } => component_files_from_inside(deployment, pod)?,
            ClusterTarget::Kind { .. } => component_files_as_root(deployment, pod)?,
        };
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
    use crate::pki::{CertificateAuthority, Usage, Validity};

    fn python(script: &str, arg: &Path) -> std::process::Output {
        Command::new("python3")
            .args(["-c", script])
            .arg(arg)
            .output()
            .unwrap()
    }

    /// A `/proc` with tini, this script's own python and the hub: the
    /// hub's environment is the one read, whole.
    #[test]
    fn the_hubs_environment_is_read_from_its_own_process_in_the_pod() {
        let held = tempfile::tempdir().unwrap();
        let proc = held.path();
        let process = |pid: u32, argv: &[&str], environ: &[u8]| {
            let dir = proc.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let mut cmdline = argv.join("\0").into_bytes();
            cmdline.push(0);
            std::fs::write(dir.join("cmdline"), cmdline).unwrap();
            std::fs::write(dir.join("environ"), environ).unwrap();
        };
        process(
            1,
            &["tini", "--", "jupyterhub", "--config", "c.py"],
            b"TINI=1\0",
        );
        process(20, &["python3", "-c", "... jupyterhub ..."], b"SELF=1\0");
        process(
            7,
            &[
                "/usr/local/bin/python3",
                "/usr/local/bin/jupyterhub",
                "--config",
                "c.py",
            ],
            b"SSL_CERT_FILE=/etc/ssl/certs-extra/ca-certificates.crt\0TOKEN=a=b\0",
        );
        std::fs::create_dir_all(proc.join("self")).unwrap();
        let out = python(HUB_ENVIRONMENT_SCRIPT, proc);
        assert!(out.status.success(), "{out:?}");
        let environ = hex::decode(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
        let env = crate::process::parse_environ(&environ);
        assert_eq!(
            env.get("SSL_CERT_FILE").map(String::as_str),
            Some("/etc/ssl/certs-extra/ca-certificates.crt")
        );
        assert_eq!(env.get("TOKEN").map(String::as_str), Some("a=b"));
        assert!(!env.contains_key("TINI") && !env.contains_key("SELF"));

        // No hub process: an error naming it, nothing printed.
        std::fs::remove_dir_all(proc.join("7")).unwrap();
        let out = python(HUB_ENVIRONMENT_SCRIPT, proc);
        assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("runs jupyterhub"));
    }

    /// The hub's store read from inside its pod: certificates come out and
    /// are inventoried; no key does, by name or by content.
    #[test]
    fn the_hubs_store_leaves_its_pod_without_a_key() {
        let held = tempfile::tempdir().unwrap();
        let store = held.path().join("internal-ssl");
        let ca = CertificateAuthority::root("notebooks-ca").unwrap();
        ca.issue(
            "user-alice",
            &["jupyter-alice"],
            Usage::Server,
            Validity::fresh(1),
        )
        .unwrap()
        .write_to(&store.join("user-alice"))
        .unwrap();
        std::fs::write(store.join("notebooks-ca_trust.crt"), ca.cert_pem()).unwrap();
        std::fs::write(store.join("bundle.pem"), ca.signing_pem()).unwrap();
        let out = python(HUB_STORE_SCRIPT, &store);
        assert!(out.status.success(), "{out:?}");
        let json = String::from_utf8(out.stdout).unwrap();
        assert!(!json.contains("PRIVATE KEY"), "a key left the pod: {json}");
        let files: BTreeMap<String, String> = serde_json::from_str(&json).unwrap();
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            ["notebooks-ca_trust.crt", "user-alice/user-alice.crt"]
        );

        let copy = held.path().join("copy");
        write_store_copy(&json, &copy).unwrap();
        let inventory = Inventory::scan(&[("internal-ssl", copy.as_path())]).unwrap();
        assert!(
            inventory
                .certificates
                .iter()
                .any(|c| c.path == "user-alice/user-alice.crt"),
            "{inventory:?}"
        );

        for (answer, why) in [
            (r#"{"../outside.crt": "x"}"#, "outside the store"),
            (r#"{"/etc/passwd": "x"}"#, "outside the store"),
            ("{}", "holds no certificate"),
            ("Error from server", "not the store"),
        ] {
            let err = write_store_copy(answer, &held.path().join("refused")).unwrap_err();
            assert!(err.contains(why), "{answer}: {err}");
        }
        assert!(!held.path().join("outside.crt").exists());
    }

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

    #[test]
    fn strict_fails_the_known_defects_too() {
        let seen = SecretsSeen {
            read: vec![],
            known: vec![crate::known_defects::KnownDefectHit {
                scenario: "secrets".into(),
                id: "secret-modes".into(),
                finding: "the lab's key is 0777".into(),
                reason: String::new(),
                upstream: String::new(),
            }],
            problems: vec!["the hub's key is 0644".into()],
        };
        assert_eq!(seen.failures(false), ["the hub's key is 0644"]);
        assert_eq!(
            seen.failures(true),
            [
                "the hub's key is 0644",
                "known defect secret-modes (--strict): the lab's key is 0777"
            ]
        );
    }
}
