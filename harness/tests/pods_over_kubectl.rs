//! What hubtrust reads from a cluster's pods through `kubectl exec` where
//! the pods are not on this machine: the hub's certificate store and
//! environment, and each component's secret files. The whole path runs,
//! from the command line hubtrust builds to the verdict, with a kubectl of
//! the test's own that runs the pod's command on this machine, in a
//! directory standing for the pod's container.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use hubtrust_harness::backend::kubernetes::{
    pods, secret_modes, ChartPins, ClusterTarget, Deployment,
};
use hubtrust_harness::pki::{CertificateAuthority, Usage, Validity};
use hubtrust_harness::secret::Secret;

/// A kubectl whose cluster is the directory of its `--kubeconfig`: `get
/// -l SELECTOR` answers the pod `pods.json` names for it, and what follows
/// `exec POD --` runs here, each absolute path the container `pods/POD`
/// holds mapped into it. Every call is appended to `calls` there, a
/// script argument as its first line.
const FAKE_KUBECTL: &str = r#"#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
cluster = os.path.dirname(args[args.index("--kubeconfig") + 1])
with open(os.path.join(cluster, "calls"), "a") as calls:
    calls.write(" ".join(a.splitlines()[0] if "\n" in a else a for a in args) + "\n")
if "get" in args:
    with open(os.path.join(cluster, "pods.json")) as f:
        print(json.load(f).get(args[args.index("-l") + 1], ""))
    sys.exit(0)
container = os.path.join(cluster, "pods", args[args.index("exec") + 1])
def mapped(arg):
    inside = container + arg
    return inside if arg.startswith("/") and os.path.exists(inside) else arg
command = args[args.index("--") + 1:]
os.execvp(command[0], [mapped(a) for a in command])
"#;

/// The fake kubectl first on `PATH`, set once for every test of this
/// binary (and no other), before any of them runs a command.
fn fake_kubectl_on_path() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-kubectl");
        std::fs::create_dir_all(&bin).unwrap();
        let kubectl = bin.join("kubectl");
        std::fs::write(&kubectl, FAKE_KUBECTL).unwrap();
        std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::env::set_var("PATH", path);
    });
}

/// A cluster in `dir`: its pods by selector, and each pod's container.
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn new(dir: &Path, pods: &[(&str, &str)]) -> Self {
        fake_kubectl_on_path();
        let by_selector: serde_json::Map<String, serde_json::Value> = pods
            .iter()
            .map(|(selector, pod)| (selector.to_string(), serde_json::Value::from(*pod)))
            .collect();
        std::fs::write(
            dir.join("pods.json"),
            serde_json::to_string(&by_selector).unwrap(),
        )
        .unwrap();
        Cluster {
            dir: dir.to_path_buf(),
        }
    }

    /// `path` in the pod's container.
    fn in_pod(&self, pod: &str, path: &str) -> PathBuf {
        self.dir
            .join("pods")
            .join(pod)
            .join(path.trim_start_matches('/'))
    }

    /// A process in the pod's container: its command line, environment,
    /// and the user and groups its status names.
    fn process(&self, pod: &str, pid: &str, argv: &str, environ: &str, uid: u32, gids: &[u32]) {
        let dir = self.in_pod(pod, &format!("/proc/{pid}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cmdline"), argv).unwrap();
        std::fs::write(dir.join("environ"), environ).unwrap();
        let groups: Vec<String> = gids.iter().map(u32::to_string).collect();
        std::fs::write(
            dir.join("status"),
            format!(
                "Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{g}\t{g}\t{g}\t{g}\nGroups:\t{} \n",
                groups.join(" "),
                g = gids[0]
            ),
        )
        .unwrap();
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.join("calls")).unwrap_or_default()
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
}

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
        made_on: "0123456789abcdef".into(),
        user_values: Vec::new(),
        user_manifests: Vec::new(),
        artifacts_dir: run_dir.join("artifacts"),
        service_token: Secret::generate(),
        proxy_token: Secret::generate(),
        user_password: Secret::generate(),
        user: "alice".into(),
        tls_policy: Default::default(),
        outbound_servers: false,
        proxy_image: None,
    }
}

const HUB: &str = "hub-7f9c5d";

#[test]
fn the_hubs_store_and_environment_come_through_kubectl_exec_and_no_key_does() {
    let held = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(held.path(), &[("component=hub", HUB)]);

    // The hub's store as the running hub holds it: a CA with its key, the
    // lab's certificate and key made at spawn.
    let store = cluster.in_pod(HUB, "/srv/jupyterhub/internal-ssl");
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
    cluster.process(
        HUB,
        "1",
        "tini\0--\0jupyterhub\0",
        "PATH=/usr/bin\0",
        1000,
        &[1000],
    );
    cluster.process(
        HUB,
        "8",
        "/usr/local/bin/python3\0/usr/local/bin/jupyterhub\0--config\0c.py\0",
        "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\0CONFIGPROXY_AUTH_TOKEN=t0ken\0",
        1000,
        &[1000],
    );

    let run_dir = held.path().join("run");
    let deployment = deployment(&run_dir, &cluster.kubeconfig());
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
    let said = cluster.calls();
    let execs: Vec<&str> = said.lines().filter(|l| l.contains(" exec ")).collect();
    assert_eq!(execs.len(), 2, "{said}");
    every_call_names_the_kubeconfig_and_namespace(&cluster);
    assert!(
        execs
            .iter()
            .all(|l| l.contains(&format!("exec {HUB} -- python3 -c import"))),
        "{said}"
    );

    // A hub without its jupyterhub process: an error naming what was
    // read and the script by its first line, no environment.
    std::fs::remove_dir_all(cluster.in_pod(HUB, "/proc/8")).unwrap();
    let err = pods::hub_environment(&deployment).unwrap_err().to_string();
    assert!(
        err.contains("the hub's environment")
            && err.contains("python3 -c 'import os, sys …'")
            && err.contains("no process in the hub's container runs jupyterhub"),
        "{err}"
    );
}

fn every_call_names_the_kubeconfig_and_namespace(cluster: &Cluster) {
    for line in cluster.calls().lines() {
        assert!(
            line.contains(&format!("--kubeconfig {}", cluster.kubeconfig().display()))
                && line.contains("--namespace hubtrust-own"),
            "{line}"
        );
    }
}

/// `files` (name, mode) laid out in the container as kubelet lays out a
/// Secret volume: each a link into `..data`, itself a link to a
/// timestamped directory.
fn secret_volume(dir: &Path, files: &[(&str, u32)]) {
    let data = dir.join("..2026_12_06_00_00_00.1");
    std::fs::create_dir_all(&data).unwrap();
    for (name, mode) in files {
        std::fs::write(data.join(name), "secret").unwrap();
        std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(*mode)).unwrap();
        symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
    symlink("..2026_12_06_00_00_00.1", dir.join("..data")).unwrap();
}

/// The secrets check on a cluster of the user's own: each component's
/// files listed from inside its own container and judged against its own
/// process's user and groups. Chart 4.4.0's three known modes are said,
/// not failed; a key any user may read that no upstream explains fails,
/// naming the pod and the file.
#[test]
fn each_components_secret_files_are_judged_from_inside_its_container() {
    const PROXY: &str = "proxy-5b8d";
    const LAB: &str = "jupyter-alice";
    let held = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(
        held.path(),
        &[
            ("component=hub", HUB),
            ("component=proxy", PROXY),
            (
                "component=singleuser-server,hub.jupyter.org/username=alice",
                LAB,
            ),
        ],
    );
    // The files are this test's user's group, as a pod's fsGroup makes
    // them; the components run in it.
    let group = nix::unistd::getgid().as_raw();
    cluster.process(HUB, "1", "tini\0--\0jupyterhub\0", "", 1000, &[group]);
    cluster.process(
        HUB,
        "7",
        "python3\0/usr/local/bin/jupyterhub\0",
        "",
        1000,
        &[group],
    );
    cluster.process(
        PROXY,
        "1",
        "node\0/srv/configurable-http-proxy/bin/configurable-http-proxy\0--ip=\0",
        "",
        65534,
        &[65534],
    );
    cluster.process(
        LAB,
        "1",
        "tini\0--\0jupyterhub-singleuser\0",
        "",
        1000,
        &[100, group],
    );
    cluster.process(
        LAB,
        "9",
        "python3\0/usr/local/bin/jupyterhub-singleuser\0",
        "",
        1000,
        &[100, group],
    );
    // The hub's internal store (hubtrust's init container extracts it)
    // and the chart's Secret, 0644 as chart 4.4.0 mounts it.
    let store = cluster.in_pod(HUB, "/srv/jupyterhub/internal-ssl/hub-internal");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("hub-internal.key"), "key").unwrap();
    std::fs::set_permissions(
        store.join("hub-internal.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::write(store.join("hub-internal.crt"), "public").unwrap();
    let hub_secret = cluster.in_pod(HUB, "/usr/local/etc/jupyterhub/secret");
    std::fs::create_dir_all(&hub_secret).unwrap();
    secret_volume(&hub_secret, &[("values.yaml", 0o644)]);
    let chp_tls = cluster.in_pod(PROXY, "/etc/chp/tls");
    std::fs::create_dir_all(&chp_tls).unwrap();
    secret_volume(&chp_tls, &[("tls.key", 0o644), ("tls.crt", 0o644)]);
    let lab_ssl = cluster.in_pod(LAB, "/etc/jupyterhub/ssl");
    std::fs::create_dir_all(&lab_ssl).unwrap();
    secret_volume(&lab_ssl, &[("ssl.key", 0o777), ("ssl.crt", 0o777)]);

    let deployment = deployment(&held.path().join("run"), &cluster.kubeconfig());
    let planned = secret_modes::planned("alice");
    let seen = pods::check_secrets(&deployment, &planned, "secrets").unwrap();
    assert!(seen.problems.is_empty(), "{:?}", seen.problems);
    let mut known: Vec<&str> = seen.known.iter().map(|k| k.id.as_str()).collect();
    known.sort();
    assert_eq!(
        known,
        [
            "kubespawner-internal-ssl-secret-mode-0777",
            "z2jh-hub-secret-mode-0644",
            "z2jh-proxy-tls-secret-mode-0644"
        ],
        "{:?}",
        seen.known
    );
    assert_eq!(seen.read.len(), 3, "{:?}", seen.read);
    assert!(
        seen.read[0].starts_with("2 secret files of the hub (uid 1000"),
        "{:?}",
        seen.read
    );
    assert!(
        seen.read[1].contains("of the proxy (uid 65534"),
        "not CHP's process: {:?}",
        seen.read
    );
    let said = cluster.calls();
    assert!(
        said.contains(&format!("exec {PROXY} -- sh -c # hubtrust:")),
        "{said}"
    );
    every_call_names_the_kubeconfig_and_namespace(&cluster);

    // The hub's own key readable by every user in its pod: no upstream
    // explains it.
    std::fs::set_permissions(
        store.join("hub-internal.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let seen = pods::check_secrets(&deployment, &planned, "secrets").unwrap();
    assert_eq!(seen.problems.len(), 1, "{:?}", seen.problems);
    assert!(
        seen.problems[0].starts_with("the hub: ")
            && seen.problems[0].contains("hub-internal.key is mode 0644"),
        "{:?}",
        seen.problems
    );

    // The lab's server gone from its container: the check cannot run,
    // and says which pod and why.
    std::fs::remove_dir_all(cluster.in_pod(LAB, "/proc/9")).unwrap();
    let err = pods::check_secrets(&deployment, &planned, "secrets")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("list the secret files of lab of alice")
            && err.contains("no process in this container runs jupyterhub-singleuser"),
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
