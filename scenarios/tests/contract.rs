//! The contract every backend keeps, in object_store's style: one table of
//! profiles, run on every backend this machine has. Each profile passes
//! with the same scenario count, writes every report and shows the same
//! evidence; SIGKILL and Ctrl-C leave nothing behind; `--keep` keeps a
//! failed run's evidence. A backend differs only in what "nothing behind"
//! means and in the few facts only it can show ([`Backend::extra`]).
//!
//! The docker rows need a daemon and the offline image, which they build;
//! without a daemon they say so and return, unless
//! HUBTRUST_REQUIRE_DOCKER=1 (CI sets it) makes that a failure.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{
    assert_no_process_left, assert_nothing_labelled, docker, docker_ready, hubtrust, on_path,
    processes_of_run, real_root, run_id, scratch, text, walk,
};

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Local,
    Docker,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Docker => "docker",
        }
    }

    /// Whether the backend can run here (docker: a daemon answers).
    fn available(self) -> bool {
        match self {
            Backend::Local => true,
            Backend::Docker => docker_ready(),
        }
    }

    /// Waits (bounded) until nothing of `run` is left: its processes, and
    /// on docker every container, network and volume labelled with it.
    fn assert_nothing_left(self, run: &str) {
        if self == Backend::Docker {
            assert_nothing_labelled(run);
        }
        assert_no_process_left(run);
    }

    /// What only this backend can show about a passing run.
    fn extra(self, profile: &Profile, report: &serde_json::Value) {
        let images = report["images"].as_object().map_or(0, |m| m.len());
        match self {
            // Nothing runs from an image; the internal-ssl files have the
            // shape the snapshot pins.
            Backend::Local => {
                assert_eq!(images, 0, "{}", report["images"]);
                if profile.tags == "@core" {
                    insta_inventory_shape(report);
                }
            }
            // The report names every image it tested.
            Backend::Docker => assert!(images > 0, "no images in the report"),
        }
    }
}

/// One profile as the table runs it.
struct Profile {
    tags: &'static str,
    stack: Option<&'static str>,
    passed: usize,
    /// The evidence a passing run of the profile shows on any backend.
    evidence: fn(&Path, &serde_json::Value),
}

const CORE: Profile = Profile {
    tags: "@core",
    stack: None,
    passed: 10,
    evidence: core_evidence,
};

const WIRE: Profile = Profile {
    tags: "@wire",
    stack: None,
    passed: 4,
    evidence: wire_evidence,
};

const ENTERPRISE: Profile = Profile {
    tags: "@enterprise",
    stack: Some("fixtures/stacks/enterprise.toml"),
    passed: 5,
    evidence: enterprise_evidence,
};

const HPC: Profile = Profile {
    tags: "@hpc",
    stack: Some("fixtures/stacks/hpc.toml"),
    passed: 17,
    evidence: hpc_evidence,
};

/// Runs `profile` on `backend` with `--keep` (so the report keeps every
/// scenario's artifacts), checks the verdict, the reports, the profile's
/// evidence and the backend's own facts, then that nothing is left.
fn profile_passes(backend: Backend, profile: &Profile) {
    if !backend.available() {
        return;
    }
    let rootless_hpc = profile.tags == "@hpc" && !real_root();
    let name = format!(
        "{}-{}",
        profile.tags.trim_start_matches('@'),
        backend.name()
    );
    let dir = scratch(&name);
    let run = run_id(&name);
    let mut command = hubtrust();
    command
        .args(["run", "--backend", backend.name(), "--tags", profile.tags])
        .arg("--keep")
        .arg("--report")
        .arg(dir.join("report"))
        .env("HUBTRUST_RUN_ID", &run);
    if let Some(stack) = profile.stack {
        command.args(["--stack", stack]);
    }
    let out = command.output().unwrap();
    let said = text(&out);
    if rootless_hpc {
        // Real sshd cannot run rootless: the run must say so and stop.
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(said.contains("root"), "{said}");
        backend.assert_nothing_left(&run);
        return;
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "{} on {}:\n{said}",
        profile.tags,
        backend.name()
    );
    let summary = format!("{} passed, 0 failed", profile.passed);
    assert!(said.contains(&summary), "{said}");
    let report_dir = dir.join("report");
    for file in ["report.xml", "report.json", "report.md"] {
        assert!(report_dir.join(file).exists(), "{file} missing");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["backend"], backend.name());
    // Tokens never reach the reports.
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    let json = std::fs::read_to_string(report_dir.join("report.json")).unwrap();
    assert!(!(md.clone() + &json).contains("CONFIGPROXY_AUTH_TOKEN="));
    // Kept artifacts hold no private key (mitmproxy's CA file bundles one).
    for file in walk(&report_dir.join("artifacts")) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "a private key was kept: {}",
            file.display()
        );
    }
    (profile.evidence)(&report_dir, &report);
    backend.extra(profile, &report);
    backend.assert_nothing_left(&run);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn core_evidence(report_dir: &Path, report: &serde_json::Value) {
    let cells = report["trust_matrix"]["cells"].as_array().unwrap();
    assert!(cells.len() >= 4 * 13, "matrix too small: {}", cells.len());
    // Every cell matches the trust graph, or a listed upstream defect
    // explains it (the hub API's public-CA cell).
    assert!(cells
        .iter()
        .all(|c| c["matches"] == true || c["known_defect"].is_string()));
    // The matrix must hold both outcomes, or it proved nothing.
    assert!(cells.iter().any(|c| c["observed"] == "accepted"));
    assert!(cells
        .iter()
        .any(|c| c["observed"] == "client-cert-rejected"));
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("## Internal trust matrix") && md.contains("## Certificate inventory"));
}

fn wire_evidence(report_dir: &Path, report: &serde_json::Value) {
    let sections = report["wire"].as_array().unwrap();
    assert_eq!(sections.len(), 3);
    // The real traffic: TLS 1.3 to the public proxy.
    let flows = sections[0]["flows"].as_array().unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f["label"] == "TLS 1.3" && f["server_port"] == 8000),
        "{flows:?}"
    );
    for section in sections {
        for link in section["links"].as_array().unwrap() {
            assert!(link["inconclusive"].is_null(), "{link}");
            let pcap = PathBuf::from(link["pcap"].as_str().unwrap());
            assert!(pcap.exists(), "{}", pcap.display());
            if on_path("tshark") {
                assert_tshark_sees_a_handshake(&pcap);
            }
        }
    }
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("```mermaid"));
}

/// An outside reader agrees the pcap is one, with TCP in it.
fn assert_tshark_sees_a_handshake(pcap: &Path) {
    let read = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-Y", "tcp.flags.syn == 1"])
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "tshark cannot read {}: {}",
        pcap.display(),
        text(&read)
    );
    assert!(
        !read.stdout.is_empty(),
        "tshark saw no TCP handshake in {}",
        pcap.display()
    );
}

fn enterprise_evidence(report_dir: &Path, report: &serde_json::Value) {
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("## Enterprise trust"), "{md}");
    assert!(
        md.contains("| curl | org-CA server | ok | unknown-issuer |"),
        "{md}"
    );
    assert!(
        md.contains("| node | public endpoint via the inspecting proxy | ok | unknown-issuer |"),
        "{md}"
    );
    // 6 tools × (org-CA, public, foreign, public via the inspecting proxy) × 2 bundles.
    assert_eq!(
        report["enterprise"]["runs"].as_array().unwrap().len(),
        6 * 9 * 2
    );
    assert_eq!(report["enterprise"]["bundle"]["merged_certs"], 2);
}

fn hpc_evidence(report_dir: &Path, report: &serde_json::Value) {
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    // The wire map shows SSH to the login nodes and the lab's own TLS on
    // the compute links.
    assert!(md.contains("hub[hub] -->|\"SSH :22"), "{md}");
    assert!(md.contains("-->|\"TLS :8888"), "{md}");
    // The HPC section shows what the lab saw, both outcomes included.
    assert!(
        md.contains("## HPC site") && md.contains("| login-3 |"),
        "{md}"
    );
    assert!(md.contains("| name-mismatch |"), "{md}");
    assert!(md.contains("certificate is not yet valid"), "{md}");
    let flows: Vec<&serde_json::Value> = report["wire"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["flows"].as_array().unwrap())
        .collect();
    let seen = |link: &str, server: &str, port: u16, kind: &str| {
        flows.iter().any(|f| {
            f["link"] == link
                && f["server_host"] == server
                && f["server_port"] == port
                && f["class"]["kind"] == kind
        })
    };
    // The broker's and the spawner's SSH to the login node, and the lab
    // calling the hub through the login node's tunnel, in TLS.
    assert!(seen("hub--login-1", "login-1", 22, "ssh"), "{flows:?}");
    assert!(
        seen("compute-1--login-1", "login-1", 8443, "tls"),
        "{flows:?}"
    );
    assert!(
        seen("compute-1--login-1", "compute-1", 8888, "tls"),
        "{flows:?}"
    );
}

/// The inventory's shape, per-run values redacted: which files exist, who
/// issued them, key types, EKUs and modes.
fn insta_inventory_shape(report: &serde_json::Value) {
    let mut shape: Vec<serde_json::Value> = report["inventory"]["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["source"] == "internal-ssl")
        .cloned()
        .collect();
    shape.sort_by_key(|c| c["path"].as_str().unwrap_or("").to_string());
    insta::assert_json_snapshot!("internal_ssl_inventory", shape, {
        "[].not_before" => "[not-before]",
        "[].not_after" => "[not-after]",
    });
}

/// `hubtrust up --backend B` as run `run`, read until it has printed the
/// whole stack: its stdout lines so far.
fn start_up(backend: Backend, run: &str) -> (std::process::Child, Vec<String>) {
    let mut child = hubtrust()
        .args(["up", "--backend", backend.name()])
        .env("HUBTRUST_RUN_ID", run)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("hub log")) {
        match lines.next() {
            Some(Ok(line)) => seen.push(line),
            _ => panic!("`hubtrust up` ended before the stack was up: {seen:?}"),
        }
    }
    // The hub, the proxy and the lab run now.
    assert!(processes_of_run(run).len() >= 3, "{seen:?}");
    // Keep reading so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, seen)
}

fn sigkill_mid_stack_leaves_nothing(backend: Backend) {
    if !backend.available() {
        return;
    }
    let run = run_id(&format!("sigkill-{}", backend.name()));
    let (mut child, _) = start_up(backend, &run);
    child.kill().unwrap();
    child.wait().unwrap();
    backend.assert_nothing_left(&run);
}

fn ctrl_c_of_up_tears_down_and_exits_0(backend: Backend) {
    if !backend.available() {
        return;
    }
    let run = run_id(&format!("sigint-{}", backend.name()));
    let (mut child, seen) = start_up(backend, &run);
    if backend == Backend::Docker {
        // The public proxy is the hub container's address on the
        // operator's link.
        let public = seen.iter().find(|l| l.contains("public proxy")).unwrap();
        let container_ip = docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &format!("hubtrust-{run}-hub"),
        ]);
        assert!(public.contains(&container_ip), "{public} vs {container_ip}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    backend.assert_nothing_left(&run);
}

/// `--keep` on a failing run keeps the failed scenarios' artifacts and
/// names them; on docker it also leaves the run's containers running, as
/// the deployment ran, until `hubtrust down`.
fn keep_keeps_a_failed_runs_evidence(backend: Backend) {
    if !backend.available() {
        return;
    }
    let run = run_id(&format!("keep-{}", backend.name()));
    let report = scratch(&format!("keep-{}", backend.name()));
    // A deployment that fails a check: kernels on every interface.
    let out = hubtrust()
        .args(["run", "--backend", backend.name(), "--tags", "@wire"])
        .args([
            "--keep",
            "--stack",
            "fixtures/stacks/kernels-on-all-interfaces.toml",
        ])
        .arg("--report")
        .arg(&report)
        .env("HUBTRUST_RUN_ID", &run)
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("kernel channels leave the lab host in plaintext"),
        "{said}"
    );
    assert!(
        said.contains("on operator--hub (plaintext ZMTP 3."),
        "the flow is not named: {said}"
    );
    let artifacts = walk(&report);
    assert!(
        artifacts.iter().any(|p| p.ends_with("logs/jupyterhub.log")),
        "no hub log kept under {}",
        report.display()
    );
    match backend {
        // Nothing outlives the process: --keep keeps files only.
        Backend::Local => {}
        Backend::Docker => docker_run_kept_as_it_ran(&run, &said, &artifacts),
    }
    if backend == Backend::Docker {
        let down = hubtrust().args(["down", &run]).output().unwrap();
        assert_eq!(down.status.code(), Some(0), "{}", text(&down));
    }
    backend.assert_nothing_left(&run);
    std::fs::remove_dir_all(&report).unwrap();
}

/// A kept docker run: the reaper stood down, and the containers run as
/// the deployment ran.
fn docker_run_kept_as_it_ran(run: &str, said: &str, artifacts: &[PathBuf]) {
    assert!(said.contains(&format!("`hubtrust down {run}`")), "{said}");
    // The lab's own log, followed from its container.
    let lab_log = artifacts
        .iter()
        .find(|p| p.ends_with("logs/lab-alice.log"))
        .expect("no lab-alice.log kept");
    let lab_log = std::fs::read_to_string(lab_log).unwrap();
    assert!(lab_log.contains("JupyterHubSingleUser"), "{lab_log}");
    // The hub in its container, the proxy and the lab in their own beside
    // it, in the hub host's namespaces.
    let hub = format!("hubtrust-{run}-hub-hub");
    let proxy = format!("hubtrust-{run}-hub-proxy");
    for container in [&hub, &proxy] {
        let status = docker(&["inspect", "-f", "{{.State.Running}}", container]);
        assert_eq!(status, "true", "{container}");
    }
    let in_hub = docker(&["exec", &hub, "ps", "-eo", "args"]);
    assert!(in_hub.contains("jupyterhub -f"), "{in_hub}");
    assert!(!in_hub.contains("configurable-http-proxy"), "{in_hub}");
    assert!(!in_hub.contains("jupyterhub-singleuser"), "{in_hub}");
    // The hub's spawner put alice's lab in a container of its own.
    let lab = format!("hubtrust-{run}-hub-lab-alice");
    let in_lab = docker(&["exec", &lab, "ps", "-eo", "args"]);
    assert!(in_lab.contains("jupyterhub-singleuser"), "{in_lab}");
    // Its internal-ssl files were copied in by the spawner, the key 0600.
    let key_mode = docker(&[
        "exec",
        &lab,
        "stat",
        "-c",
        "%a %U",
        "/srv/jupyterhub-internal-ssl/user-alice.key",
    ]);
    assert_eq!(key_mode, "600 root");
    let in_proxy = docker(&["exec", &proxy, "ps", "-eo", "args"]);
    assert!(in_proxy.contains("configurable-http-proxy"), "{in_proxy}");
    let mode = docker(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", &proxy]);
    let host_id = docker(&["inspect", "-f", "{{.Id}}", &format!("hubtrust-{run}-hub")]);
    assert_eq!(mode, format!("container:{host_id}"));
    // Every network of the run is internal: no route, no NAT, beyond the
    // topology's links.
    let label = format!("label=hubtrust.run={run}");
    let networks = docker(&["network", "ls", "-q", "--filter", &label]);
    assert!(!networks.is_empty());
    for network in networks.lines() {
        let internal = docker(&["network", "inspect", "-f", "{{.Internal}}", network]);
        assert_eq!(internal, "true", "network {network}");
    }
}

macro_rules! contract {
    ($($name:ident => $check:expr;)*) => {
        $(
            #[test]
            fn $name() {
                $check
            }
        )*
    };
}

contract! {
    core_profile_passes_on_local => profile_passes(Backend::Local, &CORE);
    core_profile_passes_on_docker => profile_passes(Backend::Docker, &CORE);
    wire_profile_passes_on_local => profile_passes(Backend::Local, &WIRE);
    wire_profile_passes_on_docker => profile_passes(Backend::Docker, &WIRE);
    enterprise_profile_passes_on_local => profile_passes(Backend::Local, &ENTERPRISE);
    enterprise_profile_passes_on_docker => profile_passes(Backend::Docker, &ENTERPRISE);
    hpc_profile_passes_on_local => profile_passes(Backend::Local, &HPC);
    hpc_profile_passes_on_docker => profile_passes(Backend::Docker, &HPC);
    sigkill_mid_stack_leaves_nothing_on_local => sigkill_mid_stack_leaves_nothing(Backend::Local);
    sigkill_mid_stack_leaves_nothing_on_docker => sigkill_mid_stack_leaves_nothing(Backend::Docker);
    ctrl_c_of_up_tears_down_on_local => ctrl_c_of_up_tears_down_and_exits_0(Backend::Local);
    ctrl_c_of_up_tears_down_on_docker => ctrl_c_of_up_tears_down_and_exits_0(Backend::Docker);
    keep_keeps_a_failed_runs_evidence_on_local => keep_keeps_a_failed_runs_evidence(Backend::Local);
    keep_keeps_a_failed_runs_evidence_on_docker => keep_keeps_a_failed_runs_evidence(Backend::Docker);
}
