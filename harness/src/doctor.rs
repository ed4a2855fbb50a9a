//! Prerequisites: what hubtrust needs on the machine, what is missing and
//! the exact command that installs it.

use std::process::{Command, Stdio};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Prerequisite {
    pub name: &'static str,
    pub needed_for: &'static str,
    pub found: Option<String>,
    pub problem: Option<String>,
    pub fix: &'static str,
}

impl Prerequisite {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

fn probe_command(program: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            Ok(text.lines().next().unwrap_or("").trim().to_string())
        }
        Ok(out) => Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .trim()
        )),
        Err(e) => Err(format!("`{program}` not found ({e})")),
    }
}

fn check(
    name: &'static str,
    needed_for: &'static str,
    fix: &'static str,
    result: Result<String, String>,
) -> Prerequisite {
    match result {
        Ok(found) => Prerequisite {
            name,
            needed_for,
            found: Some(found),
            problem: None,
            fix,
        },
        Err(problem) => Prerequisite {
            name,
            needed_for,
            found: None,
            problem: Some(problem),
            fix,
        },
    }
}

fn node_at_least(major: u32) -> Result<String, String> {
    let version = probe_command("node", &["--version"])?;
    let found: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("cannot read node version {version:?}"))?;
    if found < major {
        return Err(format!(
            "node {version} is older than {major}, which configurable-http-proxy needs"
        ));
    }
    Ok(version)
}

/// Every prerequisite, checked now.
pub fn check_all() -> Vec<Prerequisite> {
    vec![
        check(
            "python3 with venv",
            "installing JupyterHub and JupyterLab",
            "apt-get install -y python3 python3-venv",
            probe_command(&crate::provision::python().display().to_string(), &["-c", "import venv, ensurepip, sys; print(sys.version.split()[0])"]),
        ),
        check(
            "node >= 18",
            "running configurable-http-proxy",
            "apt-get install -y nodejs",
            node_at_least(18),
        ),
        check("npm", "installing configurable-http-proxy", "apt-get install -y npm", probe_command("npm", &["--version"])),
        check("ip (iproute2)", "wiring hosts together", "apt-get install -y iproute2", probe_command("ip", &["-V"])),
        check(
            "unshare, nsenter, setpriv (util-linux)",
            "the private namespace and its hosts",
            "apt-get install -y util-linux",
            probe_command("nsenter", &["--version"]).and(probe_command("setpriv", &["--version"])),
        ),
        check(
            "user namespaces",
            "running without touching the machine's own network",
            "run as root, or allow unprivileged user namespaces: sysctl -w kernel.unprivileged_userns_clone=1",
            probe_command("unshare", &["--user", "--map-root-user", "--net", "--", "true"]).map(|_| "allowed".into()),
        ),
    ]
}

/// What the HPC profile needs besides: real OpenSSH on both sides, tar for
/// ca_certs.tar.gz. Checked only for stacks with login and compute nodes.
pub fn check_hpc() -> Vec<Prerequisite> {
    vec![
        check(
            "ssh (openssh-client)",
            "the tunnel broker and the HPC spawner (@hpc)",
            "apt-get install -y openssh-client",
            probe_command("ssh", &["-V"]),
        ),
        check(
            "sshd (openssh-server)",
            "login and compute nodes (@hpc)",
            "apt-get install -y openssh-server",
            probe_command("/usr/sbin/sshd", &["-V"]).or_else(|e| {
                // `sshd -V` prints its version and exits 1 on older builds.
                if e.contains("OpenSSH") {
                    Ok(e)
                } else {
                    Err(e)
                }
            }),
        ),
        check(
            "tar",
            "ca_certs.tar.gz (@hpc)",
            "apt-get install -y tar",
            probe_command("tar", &["--version"]),
        ),
    ]
}

/// What the docker backend needs besides a daemon (checked at run time,
/// where DOCKER_HOST is known): the image builder's debootstrap.
pub fn check_docker() -> Vec<Prerequisite> {
    vec![
        check(
            "docker (client)",
            "--backend docker (the daemon is found at DOCKER_HOST or the default socket)",
            "apt-get install -y docker.io",
            probe_command("docker", &["--version"]),
        ),
        check(
            "debootstrap",
            "`hubtrust images build` (--backend docker)",
            "apt-get install -y debootstrap",
            probe_command("debootstrap", &["--version"]),
        ),
    ]
}

/// What the kind and kubernetes backends need: optional, since the local
/// and docker backends run without them. Whether a cluster answers is
/// asked briefly, of `kubeconfig`'s cluster or else kubectl's current
/// context.
pub fn check_kubernetes(kubeconfig: Option<&std::path::Path>) -> Vec<Prerequisite> {
    use crate::backend::kubernetes::preflight::{self, HELM, KIND, KUBECTL};
    use crate::backend::kubernetes::ClusterTarget;
    let mut checks: Vec<Prerequisite> = [KIND, HELM, KUBECTL]
        .into_iter()
        .map(|tool| {
            let version_args: &[&str] = match tool.program {
                "kind" => &["version"],
                "helm" => &["version", "--short"],
                _ => &["version", "--client"],
            };
            let found = match preflight::find(tool) {
                Some(path) => probe_command(&path.display().to_string(), version_args),
                None => Err(format!("`{}` not found on PATH", tool.program)),
            };
            check(tool.program, tool.needed_for, tool.install, found)
        })
        .collect();
    checks.push(check(
        "a docker daemon of Docker 28 or newer",
        "--backend kind (its images are saved for one platform)",
        "start the docker daemon, or upgrade it to Docker 28 or newer",
        preflight::docker_daemon_for_kind()
            .map(|(major, minor)| format!("the daemon speaks API {major}.{minor}"))
            .map_err(|e| e.to_string()),
    ));
    checks.push(check(
        "root, or passwordless sudo",
        "--backend kind's probes and wire captures inside its pods",
        "run hubtrust as root, or give this user passwordless sudo",
        preflight::how_pods_are_entered()
            .map(|how| format!("pods' namespaces are entered {how}"))
            .map_err(|e| e.to_string()),
    ));
    if checks.iter().any(|c| c.name == "kind" && c.ok()) {
        checks.push(check(
            "kind clusters of runs that are gone",
            "a machine left as hubtrust found it",
            "delete each with `kind delete cluster --name NAME`",
            kind_clusters_left(),
        ));
    }
    if checks.iter().any(|c| c.name == "kubectl" && c.ok()) {
        let target = ClusterTarget::Existing {
            kubeconfig: kubeconfig.map(std::path::Path::to_path_buf),
        };
        let cluster = match kubeconfig {
            Some(path) => format!("the cluster of {}", path.display()),
            None => "kubectl's current context".to_string(),
        };
        let answered = preflight::cluster_answers(&target)
            .map(|said| format!("{cluster} answers /readyz: {said}"))
            .map_err(|e| format!("no cluster answers on {cluster} ({e})"));
        let answers = answered.is_ok();
        checks.push(check(
            "a cluster",
            "--backend kubernetes (doctor --kubeconfig FILE asks the cluster a run is given)",
            "point KUBECONFIG at a cluster, or pass --kubeconfig; --backend kind makes its own",
            answered,
        ));
        if answers {
            checks.push(check(
                "namespaces of runs that are gone",
                "a cluster left as hubtrust found it, no run's keys in its Secrets",
                "delete each with `kubectl delete namespace NAME` (and the same --kubeconfig)",
                namespaces_left(&target).map_err(|e| format!("on {cluster}: {e}")),
            ));
        }
    }
    checks
}

/// What `program args` prints, or why it printed nothing to go on.
fn listing(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{program}` not found ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespaces this machine's hubtrust runs made on kubectl's current
/// context for runs that are gone: killed with their reaper, or kept.
fn namespaces_left(target: &crate::backend::kubernetes::ClusterTarget) -> Result<String, String> {
    use crate::backend::kubernetes::{self, LIST_HUBTRUST_NAMESPACES};
    let mut args = target.client_flags();
    args.extend(LIST_HUBTRUST_NAMESPACES.map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let listed = listing("kubectl", &args)?;
    let found = kubernetes::namespaces_left(&listed, kubernetes::this_machine().as_deref())?;
    let elsewhere = match found.elsewhere.len() {
        0 => String::new(),
        n => format!(
            "; {n} made from other machines ({}), not judged: whether their runs live cannot be told from here",
            found.elsewhere.join(", ")
        ),
    };
    if found.left.is_empty() {
        Ok(format!("none of this machine's{elsewhere}"))
    } else {
        Err(format!(
            "{}: made from this machine by hubtrust runs that are gone, killed with their reaper or kept with --keep (no live run holds the directory each names){elsewhere}",
            found.left.join(", ")
        ))
    }
}

/// The kind clusters hubtrust made for runs that are gone: their reaper
/// was killed with them (`kill -9 -1`, the OOM killer).
fn kind_clusters_left() -> Result<String, String> {
    let listed = listing("kind", &["get", "clusters"])?;
    let runs_under = std::env::temp_dir();
    match crate::backend::kubernetes::kind_clusters_left(&listed, &runs_under)[..] {
        [] => Ok("none".into()),
        ref left => Err(format!(
            "{}: made by hubtrust for runs that are gone (no live run under {} holds their directory)",
            left.join(", "),
            runs_under.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_reported_with_its_fix() {
        let p = check(
            "nothing",
            "tests",
            "apt-get install -y nothing",
            probe_command("hubtrust-no-such-program", &[]),
        );
        assert!(!p.ok());
        assert!(p.problem.unwrap().contains("not found"));
    }
}
