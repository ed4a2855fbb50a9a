//! The hub's certificate store and environment on a cluster of the user's
//! own, read through `kubectl exec`: the whole path from the command line
//! hubtrust builds to the inventory, with a kubectl of the test's own that
//! runs the pod's command on this machine, its paths mapped into the
//! test's directory. Its one test is alone in this binary, so the `PATH`
//! it sets reaches no other test.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hubtrust_harness::backend::kubernetes::{pods, ChartPins, ClusterTarget, Deployment};
use hubtrust_harness::pki::{CertificateAuthority, Usage, Validity};
use hubtrust_harness::secret::Secret;

/// A kubectl that answers `get` with the hub's pod and runs what follows
/// `exec POD --` here, `/proc` and the hub's store mapped to the test's
/// own; every call is appended to `$CALLS`, a script argument as its first
/// line.
const FAKE_KUBECTL: &str = r#"#!/usr/bin/env python3
import os, sys
args = sys.argv[1:]
with open(os.environ["CALLS"], "a") as calls:
    calls.write(" ".join(a.splitlines()[0] if "\n" in a else a for a in args) + "\n")
if "get" in args:
    print("hub-7f9c5d")
    sys.exit(0)
command = args[args.index("--") + 1:]
mapped = {"/srv/jupyterhub/internal-ssl": os.environ["HUB_STORE"], "/proc": os.environ["HUB_PROC"]}
os.execvp(command[0], [mapped.get(a, a) for a in command])
"#;

fn deployment(run_dir: &Path, kubeconfig: &Path) -> Deployment {
    let pins = ChartPins::builtin().unwrap();
    Deployment {
        target: ClusterTarget::Existing {
            kubeconfig: Some(kubeconfig.to_path_buf()),
        },
        namespace: "hubtrust-own".into(),
        chart: pins.chart,
        node_image: pins.kind.node_image,
        node_platform: "linux/amd64".into(),
        images: Default::default(),
        public_node_port: 30443,
        public_host_port: 18443,
        org_trust: None,
        run_dir: run_dir.to_path_buf(),
        artifacts_dir: run_dir.join("artifacts"),
        service_token: Secret::generate(),
        proxy_token: Secret::generate(),
        user: "alice".into(),
        tls_policy: Default::default(),
        outbound_servers: false,
        proxy_image: None,
    }
}

#[test]
fn the_hubs_store_and_environment_come_through_kubectl_exec_and_no_key_does() {
    let held = tempfile::tempdir().unwrap();
    let dir = held.path();

    // The hub's store as the running hub holds it: a CA with its key, the
    // lab's certificate and key made at spawn.
    let store = dir.join("internal-ssl");
    let ca = CertificateAuthority::root("notebooks-ca").unwrap();
    let ca_dir = store.join("notebooks-ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("notebooks-ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(ca_dir.join("notebooks-ca.key"), ca.signing_pem()).unwrap();
    ca.issue(
        "user-alice",
        &["jupyter-alice"],
        Usage::Server,
        Validity::fresh(1),
    )
    .unwrap()
    .write_to(&store.join("user-alice"))
    .unwrap();

    // The hub's container's /proc: tini, and the hub under it.
    let proc = dir.join("proc");
    for (pid, argv, environ) in [
        ("1", "tini\0--\0jupyterhub\0", "PATH=/usr/bin\0"),
        (
            "8",
            "/usr/local/bin/python3\0/usr/local/bin/jupyterhub\0--config\0c.py\0",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\0CONFIGPROXY_AUTH_TOKEN=t0ken\0",
        ),
    ] {
        std::fs::create_dir_all(proc.join(pid)).unwrap();
        std::fs::write(proc.join(pid).join("cmdline"), argv).unwrap();
        std::fs::write(proc.join(pid).join("environ"), environ).unwrap();
    }

    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let kubectl = bin.join("kubectl");
    std::fs::write(&kubectl, FAKE_KUBECTL).unwrap();
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let calls = dir.join("calls");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::env::set_var("PATH", path);
    std::env::set_var("CALLS", &calls);
    std::env::set_var("HUB_STORE", &store);
    std::env::set_var("HUB_PROC", &proc);

    let run_dir = dir.join("run");
    let deployment = deployment(&run_dir, &dir.join("kubeconfig"));
    let inventory = pods::hub_store_inventory(&deployment).unwrap();
    let mut found: Vec<&str> = inventory
        .certificates
        .iter()
        .map(|c| c.path.as_str())
        .collect();
    found.sort();
    assert_eq!(
        found,
        ["notebooks-ca/notebooks-ca.crt", "user-alice/user-alice.crt"]
    );
    let copied: Vec<_> = walk(&run_dir.join("hub-store"));
    assert!(
        copied.iter().all(|p| !p.ends_with(".key")),
        "a key left the pod: {copied:?}"
    );

    let environment = pods::hub_environment(&deployment).unwrap();
    assert_eq!(
        environment.get("SSL_CERT_FILE").map(String::as_str),
        Some("/etc/ssl/certs/ca-certificates.crt")
    );
    assert!(!environment.contains_key("PATH"), "tini's was read");

    // Each call names the user's kubeconfig and the run's namespace, and
    // execs in the pod `get` found.
    let said = std::fs::read_to_string(&calls).unwrap();
    let execs: Vec<&str> = said.lines().filter(|l| l.contains(" exec ")).collect();
    assert_eq!(execs.len(), 2, "{said}");
    for line in said.lines() {
        assert!(
            line.contains(&format!(
                "--kubeconfig {}",
                dir.join("kubeconfig").display()
            )) && line.contains("--namespace hubtrust-own"),
            "{line}"
        );
    }
    assert!(
        execs
            .iter()
            .all(|l| l.contains("exec hub-7f9c5d -- python3 -c import")),
        "{said}"
    );

    // A hub without its jupyterhub process: an error naming what was
    // read and the script by its first line, no environment.
    std::fs::remove_dir_all(proc.join("8")).unwrap();
    let err = pods::hub_environment(&deployment).unwrap_err().to_string();
    assert!(
        err.contains("the hub's environment")
            && err.contains("python3 -c 'import os, sys …'")
            && err.contains("no process in the hub's container runs jupyterhub"),
        "{err}"
    );
}

fn walk(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path.display().to_string());
        }
    }
    files
}
