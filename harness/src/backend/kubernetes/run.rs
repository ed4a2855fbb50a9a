//! Executing a plan: the certificates made and checked here, the files
//! written, each command run in order, and the teardown on every path out.
//! A [`KubernetesRun`] owns what the plan created and removes it on drop;
//! the reaper (started by the CLI) runs the same teardown when hubtrust is
//! killed outright.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::chart::INTERNAL_SSL_DIR;
use super::command::{self, CommandFailure};
use super::names::missing_sans;
use super::plan::{KubernetesPlan, PlannedCommand};
use super::ClusterTarget;
use crate::error::{HarnessError, Result};
use crate::pki::{set_mode, write_with_mode, CertificateAuthority, Usage, Validity};

fn io(context: String) -> impl FnOnce(std::io::Error) -> HarnessError {
    move |e| HarnessError::io(context, e)
}

/// Rewrites the certipy store unpacked at `internal_dir` (made elsewhere by
/// `jupyterhub --generate-certs`) so its records name the files where the
/// hub pod will find them, and packs it as `tarball` (0600).
pub fn retarget_store(internal_dir: &Path, tarball: &Path) -> Result<()> {
    let store = internal_dir.join("certipy.json");
    let text = std::fs::read(&store).map_err(io(format!("read {}", store.display())))?;
    let mut records: Value =
        serde_json::from_slice(&text).map_err(|e| HarnessError::Provision {
            what: "the internal CAs".into(),
            message: format!("{} is not JSON: {e}", store.display()),
        })?;
    let made_at = records["hub-ca"]["files"]["key"]
        .as_str()
        .and_then(|key| key.strip_suffix("/hub-ca/hub-ca.key"))
        .map(str::to_string)
        .ok_or_else(|| HarnessError::Provision {
            what: "the internal CAs".into(),
            message: format!(
                "{} has no hub-ca record: not a certipy store",
                store.display()
            ),
        })?;
    fn retarget(value: &mut Value, from: &str, to: &str) {
        match value {
            Value::String(path) => {
                if let Some(rest) = path.strip_prefix(from) {
                    *path = format!("{to}{rest}");
                }
            }
            Value::Object(map) => map.values_mut().for_each(|v| retarget(v, from, to)),
            Value::Array(items) => items.iter_mut().for_each(|v| retarget(v, from, to)),
            _ => {}
        }
    }
    retarget(&mut records, &made_at, INTERNAL_SSL_DIR);
    let staged = tarball.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staged);
    copy_tree(internal_dir, &staged)?;
    let text = serde_json::to_vec_pretty(&records).map_err(|e| HarnessError::Provision {
        what: "the internal CAs".into(),
        message: e.to_string(),
    })?;
    write_with_mode(&staged.join("certipy.json"), &text, 0o600)?;
    // The store's entries, not `.`: the hub pod unpacks as a non-root user
    // into a directory it does not own, where tar may not set the mode of
    // an archived `./` and fails.
    let mut entries: Vec<String> = std::fs::read_dir(&staged)
        .map_err(io(format!("list {}", staged.display())))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let mut args = vec![
        "-czf".to_string(),
        tarball.display().to_string(),
        "-C".into(),
        staged.display().to_string(),
        "--".into(),
    ];
    args.extend(entries);
    let pack = PlannedCommand {
        purpose: "pack ca_certs.tar.gz".into(),
        program: "tar".into(),
        args,
        timeout: std::time::Duration::from_secs(60),
    };
    let packed = command::run(&pack);
    let _ = std::fs::remove_dir_all(&staged);
    packed.map_err(|e| HarnessError::Provision {
        what: "ca_certs.tar.gz".into(),
        message: e.to_string(),
    })?;
    // It holds every CA's private key.
    set_mode(tarball, 0o600)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io(format!("create {}", to.display())))?;
    set_mode(to, 0o700)?;
    for entry in std::fs::read_dir(from).map_err(io(format!("list {}", from.display())))? {
        let entry = entry.map_err(io(format!("list {}", from.display())))?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .map_err(io(format!("copy {}", entry.path().display())))?;
        }
    }
    Ok(())
}

/// The public side's CA and leaf for proxy-public, with the plan's names;
/// the key is written 0600.
pub fn issue_public_leaf(plan: &KubernetesPlan) -> Result<()> {
    let c = &plan.certificates;
    let ca = CertificateAuthority::root("hubtrust public CA")?;
    let names: Vec<&str> = c.public_names.iter().map(String::as_str).collect();
    let leaf = ca.issue("proxy-public", &names, Usage::Server, Validity::fresh(30))?;
    let dir = c.public_cert.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    write_with_mode(&c.public_cert, leaf.chain_pem.as_bytes(), 0o644)?;
    write_with_mode(&c.public_key, leaf.key_pem().as_bytes(), 0o600)?;
    write_with_mode(&dir.join("public-ca.crt"), ca.cert_pem().as_bytes(), 0o644)
}

/// Fails closed before install when a client would meet a certificate
/// without the name it uses.
pub fn check_sans(plan: &KubernetesPlan, internal_dir: &Path) -> Result<()> {
    let missing = missing_sans(
        internal_dir,
        Some(&plan.certificates.public_cert),
        &plan.namespace,
    )?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(HarnessError::Cluster {
        what: "the certificates made for install".into(),
        message: missing.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        fix: "list every Service name in trusted_alt_names (hubtrust derives them from the namespace; a supplied store must carry them)".into(),
    })
}

/// Writes the plan's files, each 0600: the values carry the service token.
pub fn write_files(plan: &KubernetesPlan) -> Result<()> {
    for planned in &plan.files {
        if let Some(dir) = planned.path.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        }
        let text =
            serde_json::to_vec_pretty(&planned.contents).map_err(|e| HarnessError::Provision {
                what: planned.path.display().to_string(),
                message: e.to_string(),
            })?;
        write_with_mode(&planned.path, &text, 0o600)?;
    }
    Ok(())
}

/// A plan being executed: torn down on drop unless kept.
pub struct KubernetesRun {
    target: ClusterTarget,
    namespace: String,
    /// Where the pods' logs are kept (`<artifacts>/logs`).
    artifacts: PathBuf,
    teardown: Vec<PlannedCommand>,
    keep: bool,
    /// Masked in every log kept.
    secrets: Vec<crate::secret::Secret>,
}

impl KubernetesRun {
    /// Runs the plan's steps in order; on the first failure the teardown
    /// runs (by drop, unless `keep_if_it_fails`) and the error says which
    /// step, what it printed, and what the namespace's pods show.
    pub fn apply(
        plan: &KubernetesPlan,
        target: &ClusterTarget,
        progress: &mut dyn FnMut(&str),
        keep_if_it_fails: bool,
        artifacts: &Path,
    ) -> Result<Self> {
        let run = KubernetesRun {
            target: target.clone(),
            namespace: plan.namespace.clone(),
            artifacts: artifacts.to_path_buf(),
            teardown: plan.teardown.clone(),
            keep: false,
            secrets: plan.secrets.clone(),
        };
        for step in &plan.steps {
            progress(&step.purpose);
            let mut outcome = command::run(step);
            // kind's node boot has a deadline that a loaded machine can
            // miss (a known kind behaviour); the one retry is said aloud.
            if outcome.is_err()
                && step.program == "kind"
                && step.args.first().is_some_and(|a| a == "create")
            {
                progress("kind missed its boot deadline; deleting the half-made cluster and creating it once more");
                for undo in &plan.teardown {
                    let _ = command::run(undo);
                }
                outcome = command::run(step);
            }
            if let Err(failure) = outcome {
                let mut run = run;
                let error = run.failed(step, failure);
                run.keep = keep_if_it_fails;
                return Err(error);
            }
        }
        Ok(run)
    }

    fn failed(&self, step: &PlannedCommand, failure: CommandFailure) -> HarnessError {
        let fix = match &failure {
            CommandFailure::NotFound { program } => {
                format!("install `{program}`; `hubtrust doctor` names how")
            }
            _ if step.program == "helm" || step.program == "kubectl" => {
                "read the pods' state below; `hubtrust run --keep` leaves a failed deployment for `kubectl describe`"
                    .into()
            }
            _ => "read the command's output above".into(),
        };
        let kept = self
            .keep_logs(true)
            .map(|dir| {
                format!(
                    "\n  every pod's log and the namespace's events: {}",
                    dir.display()
                )
            })
            .unwrap_or_default();
        HarnessError::Cluster {
            what: step.purpose.clone(),
            message: format!("{failure}{}{kept}", self.pods_state()),
            fix,
        }
    }

    /// `kubectl --namespace NS ARGS`'s output, for a diagnosis.
    fn ask(&self, extra: &[&str]) -> std::result::Result<String, CommandFailure> {
        let mut args = self.target.client_flags();
        args.extend(["--namespace".into(), self.namespace.clone()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        command::run(&PlannedCommand {
            purpose: "diagnosis".into(),
            program: "kubectl".into(),
            args,
            timeout: std::time::Duration::from_secs(20),
        })
        .map(|out| out.stdout)
    }

    /// Keeps every pod's log (all containers, init containers included),
    /// the pods' state and the namespace's events in
    /// `<artifacts>/logs/`, the known secrets masked: what a
    /// failed CI run uploads, since the namespace is gone after it. Each
    /// command that fails leaves its error in the file instead. With
    /// `nodes`, on kind, the nodes' own logs too (`kind export logs`:
    /// kubelet, containerd), for pods that never started. `None` when
    /// nothing could be written.
    pub fn keep_logs(&self, nodes: bool) -> Option<PathBuf> {
        let dir = self.artifacts.join("logs");
        std::fs::create_dir_all(&dir).ok()?;
        let secrets: Vec<&crate::secret::Secret> = self.secrets.iter().collect();
        let keep = |file: &str, said: std::result::Result<String, CommandFailure>| {
            let text = said.unwrap_or_else(|e| format!("(not read: {e})\n"));
            let _ = std::fs::write(dir.join(file), crate::secret::mask_all(&text, &secrets));
        };
        keep("pods.txt", self.ask(&["get", "pods", "-o", "wide"]));
        keep(
            "events.txt",
            self.ask(&["get", "events", "--sort-by=.lastTimestamp"]),
        );
        let pods = self
            .ask(&[
                "get",
                "pods",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
            ])
            .unwrap_or_default();
        for pod in pods.lines().map(str::trim).filter(|p| !p.is_empty()) {
            keep(
                &format!("{pod}.log"),
                self.ask(&["logs", pod, "--all-containers", "--prefix", "--timestamps"]),
            );
        }
        if let (true, ClusterTarget::Kind { cluster }) = (nodes, &self.target) {
            let exported = command::run(&PlannedCommand {
                purpose: "diagnosis".into(),
                program: "kind".into(),
                args: vec![
                    "export".into(),
                    "logs".into(),
                    dir.join("kind").display().to_string(),
                    "--name".into(),
                    cluster.clone(),
                ],
                timeout: std::time::Duration::from_secs(120),
            });
            if let Err(e) = exported {
                keep("kind-export-logs.txt", Err(e));
            }
        }
        Some(dir)
    }

    /// The namespace's pods and the hub's last log lines, for a diagnosis.
    pub fn pods_state(&self) -> String {
        let ask = |extra: &[&str]| self.ask(extra).unwrap_or_default();
        let pods = ask(&["get", "pods", "-o", "wide"]);
        let hub = ask(&["logs", "deployment/hub", "--all-containers", "--tail=15"]);
        if pods.trim().is_empty() && hub.trim().is_empty() {
            return String::new();
        }
        format!(
            "\n  pods:\n{}\n  hub's last lines:\n{}",
            indent(&pods),
            indent(&hub)
        )
    }

    /// Leaves everything for inspection; the caller says how to remove it.
    pub fn keep(&mut self) -> Vec<String> {
        self.keep = true;
        self.teardown
            .iter()
            .map(PlannedCommand::shell_line)
            .collect()
    }

    /// Runs the teardown now, reporting each command that failed.
    pub fn tear_down(&mut self) -> Vec<CommandFailure> {
        let failures = std::mem::take(&mut self.teardown)
            .iter()
            .filter_map(|step| command::run(step).err())
            .collect();
        self.keep = true;
        failures
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for KubernetesRun {
    fn drop(&mut self) {
        if !self.keep {
            for failure in self.tear_down() {
                eprintln!("hubtrust: teardown: {failure}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_made_elsewhere_names_the_hub_pods_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let internal = dir.path().join("made/internal-ssl");
        std::fs::create_dir_all(internal.join("hub-ca")).expect("mkdir");
        std::fs::write(internal.join("hub-ca/hub-ca.key"), "key").expect("write");
        let made = internal.display().to_string();
        let store = serde_json::json!({
            "hub-ca": { "files": { "key": format!("{made}/hub-ca/hub-ca.key"), "cert": format!("{made}/hub-ca/hub-ca.crt"), "ca": "" } },
            "hub-internal": { "files": { "cert": format!("{made}/hub-internal/hub-internal.crt"), "ca": format!("{made}/hub-ca_trust.crt") } },
        });
        std::fs::write(internal.join("certipy.json"), store.to_string()).expect("write");
        let tarball = dir.path().join("ca_certs.tar.gz");
        retarget_store(&internal, &tarball).expect("retarget");
        let mode = std::fs::metadata(&tarball)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).expect("mkdir");
        let status = std::process::Command::new("tar")
            .args([
                "-xzf",
                &tarball.display().to_string(),
                "-C",
                &out.display().to_string(),
            ])
            .status()
            .expect("tar");
        assert!(status.success());
        let listing = std::process::Command::new("tar")
            .args(["-tzf", &tarball.display().to_string()])
            .output()
            .expect("tar -t");
        let names = String::from_utf8_lossy(&listing.stdout).into_owned();
        assert!(
            !names.lines().any(|l| l == "./" || l == "."),
            "a non-root unpack fails on `./`: {names}"
        );
        let packed: Value =
            serde_json::from_slice(&std::fs::read(out.join("certipy.json")).expect("read"))
                .expect("json");
        assert_eq!(
            packed["hub-internal"]["files"]["ca"],
            "/srv/jupyterhub/internal-ssl/hub-ca_trust.crt"
        );
        assert_eq!(packed["hub-ca"]["files"]["ca"], "");
        // The original store, which the proxy's Secret is made from, is untouched.
        let original = std::fs::read_to_string(internal.join("certipy.json")).expect("read");
        assert!(original.contains(&made));
    }
}
