//! What a Kubernetes run needs before it makes anything: its CLIs on PATH,
//! a cluster that answers, a namespace of its own, the chart's images in
//! the docker daemon (kind). Each failure names the fix; nothing has been
//! created when one is found.

use std::path::PathBuf;
use std::time::Duration;

use super::command::{self, CommandFailure};
use super::plan::PlannedCommand;
use super::{kind, ChartImage, ClusterTarget, Deployment};
use crate::error::{HarnessError, Result};
use crate::images::list::HeldImage;
use crate::spec::ContainerRole;

/// A CLI a Kubernetes backend drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub needed_for: &'static str,
    pub install: &'static str,
}

pub const KIND: Tool = Tool {
    program: "kind",
    needed_for: "--backend kind (the cluster)",
    install: KIND_INSTALL,
};
#[cfg(target_arch = "aarch64")]
const KIND_INSTALL: &str = "download https://kind.sigs.k8s.io/dl/v0.29.0/kind-linux-arm64 to /usr/local/bin/kind (in GitHub Actions: helm/kind-action with install_only: true)";
#[cfg(not(target_arch = "aarch64"))]
const KIND_INSTALL: &str = "download https://kind.sigs.k8s.io/dl/v0.29.0/kind-linux-amd64 to /usr/local/bin/kind (in GitHub Actions: helm/kind-action with install_only: true)";
pub const HELM: Tool = Tool {
    program: "helm",
    needed_for: "--backend kind|kubernetes (installing the Zero to JupyterHub chart)",
    install: "see https://helm.sh/docs/intro/install/ (a release tarball's `helm` on PATH)",
};
pub const KUBECTL: Tool = Tool {
    program: "kubectl",
    needed_for: "--backend kind|kubernetes (namespace, Secrets, ConfigMaps, rollout)",
    install: "apt-get install -y kubectl from pkgs.k8s.io, or see https://kubernetes.io/docs/tasks/tools/",
};
pub const DOCKER: Tool = Tool {
    program: "docker",
    needed_for: "--backend kind (kind's nodes are containers; images are saved from the daemon)",
    install: "apt-get install -y docker.io",
};

/// The CLIs a target needs, in the order they are used.
pub fn tools_for(target: &ClusterTarget) -> Vec<Tool> {
    match target {
        ClusterTarget::Kind { .. } => vec![KIND, DOCKER, KUBECTL, HELM],
        ClusterTarget::Existing { .. } => vec![KUBECTL, HELM],
    }
}

/// The program's path on PATH.
pub fn find(tool: Tool) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool.program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn missing(tool: Tool) -> HarnessError {
    HarnessError::MissingPrerequisite {
        what: tool.program.into(),
        why: format!("not found on PATH; needed for {}", tool.needed_for),
        fix: tool.install.into(),
    }
}

fn probe(program: &str, args: Vec<String>, seconds: u64) -> PlannedCommand {
    PlannedCommand {
        purpose: "preflight".into(),
        program: program.into(),
        args,
        timeout: Duration::from_secs(seconds),
    }
}

/// Whether the cluster's API server answers `/readyz`, and what it said.
pub fn cluster_answers(target: &ClusterTarget) -> std::result::Result<String, CommandFailure> {
    let mut args = target.client_flags();
    args.extend(["--request-timeout=5s", "get", "--raw", "/readyz"].map(String::from));
    command::run(&probe("kubectl", args, 15)).map(|out| out.stdout.trim().to_string())
}

/// Whether kubectl answered with a List of nothing: what some versions
/// print for an object `--ignore-not-found` did not find, in `-o json`.
fn is_an_empty_list(answer: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(answer)
        .is_ok_and(|v| v["kind"] == "List" && v["items"].as_array().is_some_and(Vec::is_empty))
}

/// Whether `kubectl get namespace -o json`'s answer is a namespace this
/// machine's hubtrust made for a run that is gone. Anything else, an
/// answer that is not JSON included, is someone's namespace to leave be.
fn left_by_a_run_from_here(namespace_json: &str) -> bool {
    let Ok(namespace) = serde_json::from_str::<serde_json::Value>(namespace_json) else {
        return false;
    };
    let listed = serde_json::json!({ "items": [namespace] }).to_string();
    super::namespaces_left(&listed, super::this_machine().as_deref())
        .is_ok_and(|found| !found.left.is_empty())
}

fn cluster_error(what: &str, message: String, fix: &str) -> HarnessError {
    HarnessError::Cluster {
        what: what.into(),
        message,
        fix: fix.into(),
    }
}

/// The target's CLIs are on PATH: checked first, before anything else is
/// read or made.
pub fn require_tools(target: &ClusterTarget) -> Result<()> {
    match tools_for(target)
        .into_iter()
        .find(|tool| find(*tool).is_none())
    {
        Some(tool) => Err(missing(tool)),
        None => Ok(()),
    }
}

/// kind loads images from this machine's daemon: each must be there under
/// its listed tag, and be the pinned image (pulled by digest, or loaded from
/// an archive of it).
fn check_loaded(role: ContainerRole, image: &ChartImage, node_platform: &str) -> Result<()> {
    let what = format!("the {} image {}", role.as_str(), image.tagged);
    let Some(digest) = &image.digest else {
        return Err(cluster_error(
            &what,
            "is not pinned by digest".into(),
            "run `hubtrust images pin fixtures/kubernetes/images.toml` (or the list given to --images)",
        ));
    };
    let fix = "run `hubtrust images pull fixtures/kubernetes/images.toml` (or the list given to --images): it pulls each image by the lock's digest";
    let inspect = probe(
        "docker",
        [
            "image",
            "inspect",
            "--format",
            HeldImage::INSPECT_FORMAT,
            &image.tagged,
        ]
        .map(String::from)
        .to_vec(),
        30,
    );
    let inspected = command::run(&inspect).map_err(|e| {
        cluster_error(
            &what,
            format!(
                "is not loaded in the docker daemon, so kind cannot load it into the cluster ({e})"
            ),
            fix,
        )
    })?;
    let held = HeldImage::parse(&inspected.stdout).ok_or_else(|| {
        cluster_error(
            &what,
            format!(
                "could not be read from `docker image inspect`: it printed {:?}",
                inspected.stdout.trim()
            ),
            "check that `docker image inspect` works for this user",
        )
    })?;
    held.is_pinned(
        &image.tagged,
        digest,
        Some(&image.platforms).filter(|p| !p.is_empty()),
    )
    .map_err(|why| cluster_error(&what, why, fix))?;
    node_runs(&held, node_platform).map_err(|why| cluster_error(&what, why, fix))
}

/// The held image must be the nodes' platform: `docker save --platform`
/// would otherwise find nothing to save, after the cluster is made.
fn node_runs(held: &HeldImage, node_platform: &str) -> std::result::Result<(), String> {
    if kind::runs_on(&held.platform, node_platform) {
        Ok(())
    } else {
        Err(format!(
            "is held for {}, and kind's nodes here run {node_platform}",
            held.platform
        ))
    }
}

/// The docker daemon's API version, `(major, minor)`, when it answers.
pub fn docker_api_version() -> Option<(u32, u32)> {
    let asked = probe(
        "docker",
        ["version", "--format", "{{.Server.APIVersion}}"]
            .map(String::from)
            .to_vec(),
        30,
    );
    let out = command::run(&asked).ok()?;
    let (major, minor) = out.stdout.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The docker daemon kind needs, and its API version.
pub fn docker_daemon_for_kind() -> Result<(u32, u32)> {
    saves_one_platform(docker_api_version())
}

/// kind's images are saved for the node's platform alone (`docker save
/// --platform`), which a daemon older than API 1.48 (Docker 28) refuses:
/// found here, before a cluster is made.
fn saves_one_platform(api: Option<(u32, u32)>) -> Result<(u32, u32)> {
    match api {
        Some(version) if version >= (1, 48) => Ok(version),
        Some((major, minor)) => Err(HarnessError::MissingPrerequisite {
            what: "a docker daemon of Docker 28 or newer (API 1.48)".into(),
            why: format!(
                "kind's images are saved for one platform (`docker save --platform`), which this daemon (API {major}.{minor}) refuses"
            ),
            fix: "upgrade the docker daemon to Docker 28 or newer".into(),
        }),
        None => Err(HarnessError::MissingPrerequisite {
            what: "a docker daemon that answers".into(),
            why: "kind makes its nodes and loads the chart's images through this machine's docker daemon, and `docker version` got no answer from it".into(),
            fix: "start the docker daemon (e.g. `sudo systemctl start docker`) and check that `docker version` shows a Server".into(),
        }),
    }
}

/// On kind, the checks from inside the cluster enter pods' network
/// namespaces from this machine, which takes root: hubtrust is root, or
/// `sudo` (the program given) lets it in without a password. Found out
/// here, before a cluster is made, not after its bring-up.
fn may_enter_pods(is_root: bool, sudo: &str) -> Result<()> {
    if is_root {
        return Ok(());
    }
    match command::run(&probe(sudo, vec!["-n".into(), "true".into()], 10)) {
        Ok(_) => Ok(()),
        Err(e) => Err(HarnessError::MissingPrerequisite {
            what: "root, or passwordless sudo".into(),
            why: format!(
                "the probes and captures from inside a kind cluster enter its pods' network namespaces, and hubtrust is not root while `{sudo} -n true` failed ({e})"
            ),
            fix: "run hubtrust as root, or give this user passwordless sudo (GitHub's runners have it)"
                .into(),
        }),
    }
}

/// Whether this process may enter a kind cluster's pods' namespaces, and
/// how: as root, or through passwordless sudo.
pub fn how_pods_are_entered() -> Result<&'static str> {
    let is_root = nix::unistd::geteuid().is_root();
    may_enter_pods(is_root, "sudo").map(|()| {
        if is_root {
            "as root"
        } else {
            "through passwordless sudo"
        }
    })
}

/// Everything a run checks before it creates anything.
pub fn check(deployment: &Deployment) -> Result<()> {
    require_tools(&deployment.target)?;
    match &deployment.target {
        ClusterTarget::Kind { .. } => {
            how_pods_are_entered()?;
            docker_daemon_for_kind()?;
            for (role, image) in &deployment.images {
                check_loaded(*role, image, &deployment.node_platform)?;
            }
        }
        ClusterTarget::Existing { .. } => {
            if let Err(e) = cluster_answers(&deployment.target) {
                return Err(cluster_error(
                    "the cluster",
                    format!("its API server does not answer ({e})"),
                    "check `kubectl cluster-info`, or name the cluster with --kubeconfig",
                ));
            }
            let mut args = deployment.target.client_flags();
            args.extend(
                [
                    "get",
                    "namespace",
                    &deployment.namespace,
                    "--ignore-not-found",
                    "-o",
                    "json",
                ]
                .map(String::from),
            );
            let found = command::run(&probe("kubectl", args, 30)).map_err(|e| {
                cluster_error(
                    "the cluster",
                    format!("cannot list namespaces ({e})"),
                    "give the kubeconfig's user permission to get namespaces",
                )
            })?;
            let existing = found.stdout.trim();
            if !existing.is_empty() && !is_an_empty_list(existing) {
                let what = format!("the namespace `{}`", deployment.namespace);
                return Err(if left_by_a_run_from_here(existing) {
                    cluster_error(
                        &what,
                        "already exists: an earlier hubtrust run from this machine made it, and that run is gone (killed, or kept with --keep)".into(),
                        &format!("delete it: kubectl delete namespace {}, or pick another with --namespace", deployment.namespace),
                    )
                } else {
                    cluster_error(
                        &what,
                        "already exists; hubtrust runs only in a namespace it creates, and removes only that".into(),
                        "pick another with --namespace, or delete it if it is a leftover: kubectl delete namespace",
                    )
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_backend_needs_all_four_clis_an_existing_cluster_two() {
        let kind = tools_for(&ClusterTarget::Kind {
            cluster: "c".into(),
        });
        assert_eq!(
            kind.iter().map(|t| t.program).collect::<Vec<_>>(),
            ["kind", "docker", "kubectl", "helm"]
        );
        let existing = tools_for(&ClusterTarget::Existing { kubeconfig: None });
        assert_eq!(
            existing.iter().map(|t| t.program).collect::<Vec<_>>(),
            ["kubectl", "helm"]
        );
    }

    #[test]
    fn a_missing_tool_names_its_install() {
        let err = missing(KIND).to_string();
        assert!(
            err.contains("`kind`") && err.contains("kind-action"),
            "{err}"
        );
    }

    #[test]
    fn an_image_of_another_platform_than_the_nodes_is_refused_by_name() {
        let held = |platform: &str| HeldImage {
            id: "sha256:1".into(),
            platform: platform.into(),
            repo_digests: vec![],
        };
        assert!(node_runs(&held("linux/amd64"), "linux/amd64").is_ok());
        assert!(node_runs(&held("linux/arm64/v8"), "linux/arm64").is_ok());
        let why = node_runs(&held("linux/arm64/v8"), "linux/amd64").unwrap_err();
        assert!(
            why.contains("linux/arm64/v8") && why.contains("run linux/amd64"),
            "{why}"
        );
        assert!(node_runs(&held("windows/amd64"), "linux/amd64").is_err());
    }

    #[test]
    fn kind_needs_a_daemon_that_saves_one_platform() {
        assert!(saves_one_platform(Some((1, 48))).is_ok());
        assert!(saves_one_platform(Some((1, 51))).is_ok());
        let old = saves_one_platform(Some((1, 41))).unwrap_err().to_string();
        assert!(
            old.contains("API 1.41") && old.contains("Docker 28"),
            "{old}"
        );
        let silent = saves_one_platform(None).unwrap_err().to_string();
        assert!(silent.contains("docker version"), "{silent}");
    }

    #[test]
    fn kind_needs_root_or_sudo_without_a_password_to_look_inside() {
        assert!(may_enter_pods(true, "/bin/false").is_ok());
        assert!(may_enter_pods(false, "/bin/true").is_ok());
        let refused = may_enter_pods(false, "/bin/false").unwrap_err().to_string();
        assert!(
            refused.contains("passwordless sudo") && refused.contains("network namespaces"),
            "{refused}"
        );
    }

    #[test]
    fn an_empty_list_is_no_namespace_and_anything_else_is_one() {
        assert!(is_an_empty_list(
            r#"{"apiVersion":"v1","items":[],"kind":"List","metadata":{"resourceVersion":""}}"#
        ));
        assert!(!is_an_empty_list(
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"jhub"}}"#
        ));
        assert!(!is_an_empty_list(
            r#"{"kind":"List","items":[{"kind":"Namespace"}]}"#
        ));
        assert!(!is_an_empty_list("namespace/jhub"));
        // Whose it is: someone's, unless this machine's labels say ours.
        assert!(!left_by_a_run_from_here(
            r#"{"kind":"Namespace","metadata":{"name":"jhub"}}"#
        ));
        assert!(!left_by_a_run_from_here("namespace/jhub"));
    }
}
