//! `hubtrust probe` against a deployment it did not start: a stack that
//! `hubtrust up` brought up, reached from the operator's place and from
//! the hub's host, as an operator would. Its verdicts must agree with
//! `hubtrust run` on the same stack file, and a broken view of the
//! deployment (a wrong CA, an endpoint that answers where it must not)
//! must fail, naming the cause.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

mod common;
use common::{
    assert_no_process_left, assert_nothing_labelled, docker_ready, hubtrust, processes_of_run,
    real_root, run_id, scratch, text,
};

/// What `hubtrust up` printed, by the label of each line.
struct UpStack {
    backend: &'static str,
    child: Child,
    lines: BTreeMap<String, String>,
    stopped: bool,
}

/// A test that panicked before `stop` still takes its stack down.
impl Drop for UpStack {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = self.child.wait();
        }
    }
}

impl UpStack {
    fn start(run: &str, backend: &'static str) -> Self {
        let mut child = hubtrust()
            .args(["up", "--show-secrets", "--backend", backend])
            .env("HUBTRUST_RUN_ID", run)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut lines = BTreeMap::new();
        while !lines.contains_key("hub log") {
            let line = match reader.next() {
                Some(Ok(line)) => line,
                _ => panic!("`hubtrust up` ended before the stack was up: {lines:?}"),
            };
            // "  <label, padded to 14>  <value>"
            if let Some(rest) = line.strip_prefix("  ") {
                let (label, value) = rest.split_at(rest.len().min(14));
                lines.insert(label.trim().to_string(), value.trim().to_string());
            }
        }
        std::thread::spawn(move || for _ in reader {});
        Self {
            backend,
            child,
            lines,
            stopped: false,
        }
    }

    fn value(&self, label: &str) -> &str {
        self.lines
            .get(label)
            .unwrap_or_else(|| panic!("`hubtrust up` printed no {label}: {:?}", self.lines))
    }

    /// The first word of a line's value: an address or a path.
    fn first(&self, label: &str) -> &str {
        self.value(label).split_whitespace().next().unwrap()
    }

    fn stop(mut self, run: &str) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        assert_eq!(self.child.wait().unwrap().code(), Some(0));
        self.stopped = true;
        assert_no_process_left(run);
        if self.backend == "docker" {
            assert_nothing_labelled(run);
        }
    }

    /// The public URL and the address it is reached at.
    fn public(&self) -> (String, String) {
        let url = self.first("public proxy").trim_end_matches('/').to_string();
        let addr = self
            .value("public proxy")
            .rsplit_once("(at ")
            .map(|(_, a)| a.trim_end_matches(')').to_string())
            .unwrap();
        (url, addr)
    }
}

/// The network namespace of the run's process whose command line holds
/// `needle` and which is not in ours: a host of the stack.
fn netns_of(run: &str, needle: &str) -> PathBuf {
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    processes_of_run(run)
        .into_iter()
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let netns = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            String::from_utf8_lossy(&cmdline).contains(needle) && netns.as_ref() != Some(&ours)
        })
        .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
        .unwrap_or_else(|| panic!("no process of {run} runs `{needle}` in a namespace of its own"))
}

/// `command` inside the network namespace `netns`.
fn inside(netns: &Path, program: &str) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(Stdio::null());
    command
}

fn probe_inside(netns: &Path, args: &[String]) -> Output {
    inside(netns, env!("CARGO_BIN_EXE_hubtrust"))
        .arg("probe")
        .args(args)
        .output()
        .unwrap()
}

fn write_secret(path: &Path, value: &str) {
    std::fs::write(path, value).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

/// Per endpoint: its versions and its sorted TLS 1.2 suites.
fn scans(report: &serde_json::Value) -> BTreeMap<String, (serde_json::Value, Vec<String>)> {
    report["tls_scan"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let mut suites: Vec<String> =
                serde_json::from_value(e["tls12_suites"].clone()).unwrap();
            suites.sort();
            (
                e["endpoint"].as_str().unwrap().to_string(),
                (e["versions"].clone(), suites),
            )
        })
        .collect()
}

/// Per (endpoint, identity): (expected, observed, matches).
fn cells(report: &serde_json::Value) -> BTreeMap<(String, String), (String, String, bool)> {
    report["trust_matrix"]["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                (
                    c["endpoint"].as_str().unwrap().to_string(),
                    c["identity"].as_str().unwrap().to_string(),
                ),
                (
                    c["expected"].as_str().unwrap().to_string(),
                    c["observed"].as_str().unwrap().to_string(),
                    c["matches"].as_bool().unwrap(),
                ),
            )
        })
        .collect()
}

/// From outside the hub's host: the public side, tokens, the lab's own
/// view with a user token minted through the hub API as her browser
/// session would have one, and the internal ports, which must stay closed
/// from there. `command` runs a program where the operator is. Returns
/// the report's directory.
fn probe_from_outside(up: &UpStack, dir: &Path, command: impl Fn(&str) -> Command) -> PathBuf {
    let (url, public_addr) = up.public();
    let authority = url.trim_start_matches("https://");
    let hub_ip = public_addr.split(':').next().unwrap();
    let org_root = up.first("org root CA");
    let service_token = up.first("service token");
    let token_file = dir.join("service.token");
    write_secret(&token_file, service_token);
    let minted = command("curl")
        .args(["-sS", "-f", "--cacert", org_root])
        .args(["--resolve", &format!("{authority}:{hub_ip}")])
        .args(["-H", &format!("Authorization: token {service_token}")])
        .args(["-X", "POST", "-d", "{}"])
        .arg(format!("{url}/hub/api/users/alice/tokens"))
        .output()
        .unwrap();
    assert!(minted.status.success(), "{}", text(&minted));
    let body: serde_json::Value = serde_json::from_slice(&minted.stdout).unwrap();
    let user_token_file = dir.join("alice.token");
    write_secret(&user_token_file, body["token"].as_str().unwrap());

    let report = dir.join("from-operator");
    let out = command(env!("CARGO_BIN_EXE_hubtrust"))
        .arg("probe")
        .args(["--url", &url, "--connect", &public_addr, "--ca", org_root])
        .args(["--closed", &format!("hub API={hub_ip}:8081")])
        .args(["--closed", &format!("proxy API={hub_ip}:8001")])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--user-token-file")
        .arg(&user_token_file)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    // Not run from outside: the real clients' chains (inside only).
    assert!(said.contains("6 passed, 0 failed, 2 skipped"), "{said}");
    // Tokens never reach the terminal or the reports.
    for file in ["report.json", "report.md", "report.xml"] {
        let written = std::fs::read_to_string(report.join(file)).unwrap();
        assert!(!written.contains(service_token), "{file}");
    }
    assert!(!said.contains(service_token), "{said}");
    report
}

/// What the `@core` scenarios ask of a chart-started deployment, asked of
/// a running stack's public side instead: the live calls answer, the
/// prober's matrix reads back from its report, and what the run did not
/// observe is said so, never passed.
fn chart_view_answers(up: &UpStack, probed: &serde_json::Value) {
    use hubtrust_harness::backend::kubernetes::under_test::{
        ChartDeployment, InClusterObservations, Observation, PublicSideAt,
    };
    use hubtrust_harness::under_test::{DeploymentUnderTest, NOT_OBSERVED};
    let (url, addr) = up.public();
    let name = url
        .trim_start_matches("https://")
        .split(':')
        .next()
        .unwrap();
    let public = PublicSideAt {
        name: name.to_string(),
        addr: addr.parse().unwrap(),
        ca_pem: std::fs::read_to_string(up.first("org root CA")).unwrap(),
        service_token: hubtrust_harness::secret::Secret::new(up.first("service token")),
        user_password: hubtrust_harness::secret::Secret::new(up.first("user password")),
    };
    let observed = InClusterObservations {
        hub_version: None,
        trust_matrix: Observation::Seen(
            serde_json::from_value(probed["trust_matrix"].clone()).unwrap(),
        ),
        proxy_api: Observation::NotMade("no prober called it in this test".into()),
        chains: Observation::NotMade("no prober made them in this test".into()),
        inventory: Observation::Failed("the store was not read in this test".into()),
        hub_environment: Observation::NotMade("not in this test".into()),
        tls_scan: Observation::Seen(
            serde_json::from_value(probed["tls_scan"]["endpoints"].clone()).unwrap(),
        ),
        reachability: Observation::Seen(
            serde_json::from_value(probed["reachability"].clone()).unwrap(),
        ),
        outbound_tools: Observation::NotMade("not in this test".into()),
        captures: Observation::NotMade("not in this test".into()),
    };
    let chart = ChartDeployment::at(public, "alice", observed).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let get = |path: &str| runtime.block_on(chart.get_via_proxy(path)).unwrap();
    assert_eq!(get("/hub/health"), 200);
    assert_eq!(get("/user/alice/api"), 200);
    assert_eq!(get("/user/nobody/api"), 404, "a lab that does not exist");
    let seen = runtime
        .block_on(chart.check_from_outside("alice", "print('hubtrust-' + 'chart')"))
        .unwrap();
    assert_eq!(seen.cell, "hubtrust-chart");
    // The log-in through the form, with the password `up` printed: the
    // hub turns any other away.
    let canaries = runtime.block_on(chart.log_in("alice")).unwrap();
    assert!(
        canaries
            .iter()
            .any(|(what, _)| what == "the user's login cookie"),
        "{:?}",
        canaries.iter().map(|(what, _)| what).collect::<Vec<_>>()
    );
    let matrix = runtime.block_on(chart.trust_matrix()).unwrap();
    assert!(
        !matrix.cells.is_empty(),
        "the probe's matrix read back empty"
    );
    let chains = runtime.block_on(chart.real_client_chains()).unwrap_err();
    assert!(chains.to_string().starts_with(NOT_OBSERVED), "{chains}");
    let proxy_api = runtime.block_on(chart.call_proxy_api(false)).unwrap_err();
    assert!(
        proxy_api.to_string().starts_with(NOT_OBSERVED),
        "{proxy_api}"
    );
    // The scan of the public side, judged by the policy the scenario
    // judges it by, and the two internal ports that must stay closed to
    // the operator's machine, tried and found closed.
    let scans = runtime.block_on(chart.tls_scan()).unwrap();
    let public = scans
        .iter()
        .find(|s| s.endpoint == "proxy public")
        .unwrap_or_else(|| panic!("no scan of the public side: {scans:?}"));
    assert!(public.error.is_none(), "{public:?}");
    assert_eq!(chart.tls_policy().judge(public), Vec::new());
    let cells = runtime.block_on(chart.reachability_matrix()).unwrap();
    assert_eq!(cells.len(), 2, "{cells:?}");
    assert!(
        cells.iter().all(|c| !c.expected && !c.answered),
        "{cells:?}"
    );
    assert_eq!(
        hubtrust_harness::reachability::judge(&cells),
        Vec::<String>::new()
    );
    let unread = chart.inventory().unwrap_err().to_string();
    assert!(
        unread.contains("not read in this test") && !unread.starts_with(NOT_OBSERVED),
        "an observation the run meant to make and could not is a failure: {unread}"
    );
    kernel_ports_read_through_the_lab(&chart, &runtime);
    merged_bundle_read_through_the_lab(chart, &runtime);
}

/// The wire scenarios' kernel: a cell in a new kernel, whose ports a
/// second cell reads from its connection file in the lab, with the lab's
/// own address. Trying them from another pod needs a cluster: without
/// one, that and the captures are not observed, never passed.
fn kernel_ports_read_through_the_lab(
    chart: &hubtrust_harness::backend::kubernetes::under_test::ChartDeployment,
    runtime: &tokio::runtime::Runtime,
) {
    use hubtrust_harness::under_test::{DeploymentUnderTest, NOT_OBSERVED};
    let run = runtime
        .block_on(chart.run_cell_in_new_kernel("alice", "print('hubtrust-' + 'wire')"))
        .unwrap();
    assert_eq!(run.stdout.trim(), "hubtrust-wire");
    let kernel = runtime
        .block_on(chart.kernel_ports("alice", &run.kernel_id))
        .unwrap();
    assert_eq!(
        kernel.ports.keys().map(String::as_str).collect::<Vec<_>>(),
        ["control", "hb", "iopub", "shell", "stdin"]
    );
    assert!(kernel.ports.values().all(|port| *port > 0), "{kernel:?}");
    let lab: std::net::Ipv4Addr = kernel.pod_ip.parse().unwrap();
    assert!(!lab.is_loopback(), "{kernel:?}");
    let gone = runtime
        .block_on(chart.kernel_ports("alice", "no-such-kernel"))
        .unwrap_err()
        .to_string();
    assert!(gone.contains("no-such-kernel"), "{gone}");
    for untried in [
        runtime
            .block_on(chart.kernel_ports_answering("alice", &run.kernel_id))
            .unwrap_err(),
        runtime
            .block_on(chart.start_wire_capture(std::path::Path::new("/nonexistent")))
            .map(drop)
            .unwrap_err(),
    ] {
        assert!(untried.to_string().starts_with(NOT_OBSERVED), "{untried}");
    }
}

/// The merged-bundle scenario's reading, through cells in the lab: a
/// "merge" that is the lab's own system bundle passes with no org bundle
/// and fails, counting, when an org bundle should be in it.
fn merged_bundle_read_through_the_lab(
    chart: hubtrust_harness::backend::kubernetes::under_test::ChartDeployment,
    runtime: &tokio::runtime::Runtime,
) {
    use hubtrust_harness::enterprise::check_merged_texts;
    use hubtrust_harness::under_test::{DeploymentUnderTest, MergedOrgBundle};
    let system = hubtrust_harness::pki::SYSTEM_STORE.to_string();
    let merged = MergedOrgBundle {
        holds_org: false,
        path: system,
        into_hub: false,
    };
    let chart = chart.merging(merged.clone(), None);
    let texts = runtime.block_on(chart.merged_bundle_texts()).unwrap();
    let check = check_merged_texts(&texts);
    assert!(check.system_certs > 0, "{check:?}");
    assert_eq!(check.problem, None, "{check:?}");
    let org = hubtrust_harness::pki::CertificateAuthority::root("an org root")
        .unwrap()
        .cert_pem();
    let chart = chart.merging(merged, Some(org));
    let check = check_merged_texts(&runtime.block_on(chart.merged_bundle_texts()).unwrap());
    let problem = check.problem.clone().unwrap_or_default();
    assert!(
        problem.contains(&format!("+ 1 org) in order, found {}", check.system_certs)),
        "{check:?}"
    );
}

/// The proxy API's calls and the real clients' connections as a probe
/// wrote them, read back as the kind run hands them to the `@core`
/// scenarios: 403 without the token, 200 with it, every chain accepted,
/// and the token itself nowhere in the report.
fn probe_observations_reach_the_scenarios(probed: &serde_json::Value, ca: &str, token: &str) {
    use hubtrust_harness::backend::kubernetes::under_test::{
        ChartDeployment, InClusterObservations, Observation, PublicSideAt,
    };
    use hubtrust_harness::under_test::DeploymentUnderTest;
    assert!(
        !probed.to_string().contains(token),
        "the proxy token is in the report"
    );
    let calls = serde_json::from_value(probed["proxy_api_calls"].clone()).unwrap();
    let public = PublicSideAt {
        name: "never-contacted".into(),
        addr: "127.0.0.1:9".parse().unwrap(),
        ca_pem: std::fs::read_to_string(ca).unwrap(),
        service_token: hubtrust_harness::secret::Secret::new("unused"),
        user_password: hubtrust_harness::secret::Secret::new("unused"),
    };
    let observed = InClusterObservations {
        hub_version: None,
        trust_matrix: Observation::NotMade("not in this test".into()),
        proxy_api: Observation::Seen(calls),
        chains: Observation::Seen(serde_json::from_value(probed["chains"].clone()).unwrap()),
        inventory: Observation::NotMade("not in this test".into()),
        hub_environment: Observation::NotMade("not in this test".into()),
        tls_scan: Observation::NotMade("not in this test".into()),
        reachability: Observation::Seen(
            serde_json::from_value(probed["reachability"].clone()).unwrap(),
        ),
        outbound_tools: Observation::NotMade("not in this test".into()),
        captures: Observation::NotMade("not in this test".into()),
    };
    let chart = ChartDeployment::at(public, "alice", observed).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = |with_token| {
        runtime
            .block_on(chart.call_proxy_api(with_token))
            .unwrap()
            .http
            .map(|h| h.status)
    };
    assert_eq!(status(false), Some(403));
    assert_eq!(status(true), Some(200));
    let chains = runtime.block_on(chart.real_client_chains()).unwrap();
    assert_eq!(chains.len(), 5, "{chains:?}");
    assert!(chains
        .iter()
        .all(|c| c.verdict == hubtrust_harness::probe::Verdict::Accepted));
    // From the hub's host, every internal endpoint it was told of answers.
    let cells = runtime.block_on(chart.reachability_matrix()).unwrap();
    assert_eq!(cells.len(), 3, "{cells:?}");
    assert!(cells.iter().all(|c| c.expected && c.answered), "{cells:?}");
}

/// `hubtrust run --tags @core` on the default stack, on `backend`: its
/// report.
fn run_core(dir: &Path, backend: &str) -> serde_json::Value {
    let run_report = dir.join("run");
    let out = hubtrust()
        .args(["run", "--tags", "@core", "--backend", backend, "--report"])
        .arg(&run_report)
        .env("HUBTRUST_RUN_ID", run_id(&format!("probe-run-{backend}")))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    report(&run_report)
}

/// The probe and the run agree on `endpoints`' scans and on every trust
/// cell both have; returns how many cells were compared.
fn assert_agree(probed: &serde_json::Value, ran: &serde_json::Value, endpoints: &[&str]) -> usize {
    let (probed_scans, run_scans) = (scans(probed), scans(ran));
    for endpoint in endpoints {
        assert!(
            probed_scans.contains_key(*endpoint),
            "the probe scanned no {endpoint}"
        );
        assert_eq!(
            probed_scans.get(*endpoint),
            run_scans.get(*endpoint),
            "the TLS scan of {endpoint}"
        );
    }
    let run_cells = cells(ran);
    let mut compared = 0;
    for (key, (expected, observed, matches)) in cells(probed) {
        let Some((run_expected, run_observed, run_matches)) = run_cells.get(&key) else {
            continue;
        };
        compared += 1;
        assert_eq!(&expected, run_expected, "expected verdict of {key:?}");
        assert_eq!(
            &matches, run_matches,
            "{key:?}: probe saw {observed}, run saw {run_observed}"
        );
    }
    compared
}

#[test]
fn probe_of_a_docker_stack_agrees_with_run() {
    if !docker_ready() {
        return;
    }
    let dir = scratch("probe-docker");
    let run = run_id("probe-docker");
    let up = UpStack::start(&run, "docker");
    // The public side is the hub container's address, reached from here.
    let from_operator = probe_from_outside(&up, &dir, |program| {
        let mut command = Command::new(program);
        command.stdin(Stdio::null());
        command
    });
    chart_view_answers(&up, &report(&from_operator));
    up.stop(&run);
    let ran = run_core(&dir, "docker");
    let compared = assert_agree(&report(&from_operator), &ran, &["proxy public"]);
    assert_eq!(compared, 1, "the public side × no certificate");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn probe_of_a_running_stack_agrees_with_run() {
    if !real_root() {
        // nsenter into the stack's hosts needs root; CI runs as root.
        eprintln!("skipped: entering the stack's namespaces needs root");
        return;
    }
    let dir = scratch("probe");
    let run = run_id("probe");
    let up = UpStack::start(&run, "local");
    // The inner `hubtrust up` runs in the operator's namespace; the hub
    // in its host's.
    let operator = netns_of(&run, env!("CARGO_BIN_EXE_hubtrust"));
    let hub_host = netns_of(&run, "jupyterhub_config.py");

    let (url, public_addr) = up.public();
    let org_root = up.first("org root CA").to_string();
    let ssl = PathBuf::from(up.first("internal-ssl"));
    let public = [
        "--url".to_string(),
        url.clone(),
        "--connect".into(),
        public_addr.clone(),
    ];
    let from_operator = probe_from_outside(&up, &dir, |program| inside(&operator, program));
    // From the hub's host: the internal endpoints with the stack's own
    // identities, and a foreign one.
    let lab_addr = up.first("lab of alice").to_string();
    let foreign_ca = hubtrust_harness::pki::CertificateAuthority::root("probe-foreign").unwrap();
    let foreign = foreign_ca
        .issue(
            "foreign",
            &["foreign"],
            hubtrust_harness::pki::Usage::Client,
            hubtrust_harness::pki::Validity::fresh(1),
        )
        .unwrap();
    let (foreign_cert, foreign_key) = foreign.write_to(&dir).unwrap();
    let identity = |label: &str, dir: &str, accepted_by: &str| {
        let base = ssl.join(dir).join(dir);
        let mut spec = format!("{label}={}.crt,{}.key", base.display(), base.display());
        if !accepted_by.is_empty() {
            spec.push_str(&format!(",accepted-by={accepted_by}"));
        }
        ["--identity".to_string(), spec]
    };
    let real_client = |endpoint: &str, client: &str, bundle: &str| {
        [
            "--real-client".to_string(),
            format!(
                "{endpoint}={client},bundle={},name=127.0.0.1",
                ssl.join(bundle).display()
            ),
        ]
    };
    let from_hub = dir.join("from-hub");
    let proxy_token = dir.join("proxy.token");
    write_secret(&proxy_token, up.first("proxy token"));
    let internal_roots = [
        &public[..],
        &[
            "--ca".into(),
            org_root.clone(),
            "--internal-ca".into(),
            ssl.join("hub-ca_trust.crt").display().to_string(),
        ],
    ]
    .concat();
    let out = probe_inside(
        &hub_host,
        &[
            &internal_roots[..],
            &[
                "--endpoint".into(),
                "hub API=127.0.0.1:8081".into(),
                "--endpoint".into(),
                "proxy API=127.0.0.1:8001".into(),
                "--endpoint".into(),
                format!("lab of alice={lab_addr}"),
                "--proxy-api".into(),
                "proxy API".into(),
                "--proxy-token-file".into(),
                proxy_token.display().to_string(),
                "--report".into(),
                from_hub.display().to_string(),
            ],
            // As `hubtrust run` takes the real clients' paths.
            &real_client("hub API", "proxy-client", "proxy-client-ca_trust.crt"),
            &real_client("hub API", "lab cert (alice)", "notebooks-ca_trust.crt"),
            &real_client("proxy API", "hub-internal", "hub-ca_trust.crt"),
            &real_client("lab of alice", "hub-internal", "hub-ca_trust.crt"),
            &real_client("lab of alice", "proxy-client", "proxy-client-ca_trust.crt"),
            &identity(
                "hub-internal",
                "hub-internal",
                "hub API+proxy API+lab of alice",
            ),
            &identity("proxy-client", "proxy-client", "hub API+lab of alice"),
            &identity("lab cert (alice)", "user-alice", "hub API+proxy API"),
            &[
                "--identity".into(),
                format!(
                    "foreign-CA cert={},{}",
                    foreign_cert.display(),
                    foreign_key.display()
                ),
            ],
        ]
        .concat(),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("6 passed, 0 failed, 2 skipped"), "{said}");
    assert!(
        said.contains("✔ Every server's chain verifies for the clients that really use it"),
        "{said}"
    );
    assert_eq!(report(&from_hub)["chains"].as_array().unwrap().len(), 5);
    assert!(
        said.contains("✔ The proxy API refuses callers without its token"),
        "{said}"
    );
    assert!(
        said.contains("known defect jupyterhub-internal-tls12-suites"),
        "{said}"
    );
    probe_observations_reach_the_scenarios(&report(&from_hub), &org_root, up.first("proxy token"));

    // A token that is not the proxy's is refused, and said so.
    write_secret(&proxy_token, "not-the-proxy-token");
    let out = probe_inside(
        &hub_host,
        &[
            &internal_roots[..],
            &[
                "--endpoint".into(),
                "proxy API=127.0.0.1:8001".into(),
                "--proxy-api".into(),
                "proxy API".into(),
                "--proxy-token-file".into(),
                proxy_token.display().to_string(),
                "--report".into(),
                dir.join("wrong-proxy-token").display().to_string(),
                // A name the proxy API's certificate does not list.
                "--real-client".into(),
                format!(
                    "proxy API=hub-internal,bundle={},name=proxy-api.elsewhere.example",
                    ssl.join("hub-ca_trust.crt").display()
                ),
            ],
            &identity("hub-internal", "hub-internal", "proxy API"),
        ]
        .concat(),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("proxy API as hub-internal reaches it (hub-ca_trust.crt for proxy-api.elsewhere.example): name-mismatch"),
        "{said}"
    );
    assert!(
        said.contains("answered HTTP 403: the token is not the proxy's"),
        "{said}"
    );
    assert!(!said.contains("not-the-proxy-token"), "{said}");

    // A wrong CA for the public side, and an endpoint declared closed that
    // answers: both fail, named. This probe enters the operator's
    // namespace itself (`--from-netns-of`, as the in-cluster probe enters
    // a pod's): from the test's own namespace the stack does not answer.
    let operator_pid = operator
        .components()
        .nth(2)
        .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
        .expect("a /proc/PID/ns/net path");
    let out = Command::new(env!("CARGO_BIN_EXE_hubtrust"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(Stdio::null())
        .arg("probe")
        .args(["--from-netns-of".to_string(), operator_pid.to_string()])
        .args(
            [
                &public[..],
                &[
                    "--ca".into(),
                    foreign_cert.display().to_string(),
                    "--closed".into(),
                    format!("proxy public={public_addr}"),
                    "--report".into(),
                    dir.join("broken").display().to_string(),
                ],
            ]
            .concat(),
        )
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("unknown-issuer"), "{said}");
    assert!(
        said.contains(&format!(
            "proxy public answers at {public_addr} from where hubtrust probe runs"
        )),
        "{said}"
    );

    // A stack's own policy: Mozilla modern fails the public side's TLS 1.2,
    // naming the rule, until an exception with its reason allows it there.
    let modern = |exceptions: &str, report: &str| {
        let policy = dir.join(format!("{report}.toml"));
        std::fs::write(&policy, format!("name = \"modern\"\n{exceptions}")).unwrap();
        let args = [
            &public[..],
            &["--ca".into(), org_root.clone(), "--policy-file".into()],
            &[policy.display().to_string(), "--report".into()],
            &[dir.join(report).display().to_string()],
        ]
        .concat();
        probe_inside(&operator, &args)
    };
    let out = modern("", "modern");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("proxy public")
            && said.contains(
                "accepts TLSv1.2, which the policy forbids: Mozilla modern allows only TLS 1.3"
            ),
        "{said}"
    );
    let out = modern(
        "exceptions = [{ endpoint = \"proxy public\", allow = [\"TLSv1.2\"], reason = \"an old kiosk browser\" }]\n",
        "modern-excepted",
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    let excepted = report(&dir.join("modern-excepted"));
    assert!(
        excepted.to_string().contains("an old kiosk browser"),
        "the exception and its reason are not in report.json"
    );
    up.stop(&run);

    // `hubtrust run` on the same stack file: the same verdicts.
    let ran = run_core(&dir, "local");
    let compared = assert_agree(
        &report(&from_hub),
        &ran,
        &["proxy public", "hub API", "lab of alice"],
    );
    // public side, hub API, proxy API, lab × none and four identities
    assert_eq!(compared, 20);
    assert_agree(&report(&from_operator), &ran, &["proxy public"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn probe_refuses_bad_input_before_contacting_anything() {
    let dir = scratch("probe-bad-input");
    let ca = dir.join("ca.pem");
    let root = hubtrust_harness::pki::CertificateAuthority::root("probe-bad-input").unwrap();
    std::fs::write(&ca, root.cert_pem()).unwrap();
    let probe = |args: &[&str]| {
        hubtrust()
            .arg("probe")
            .args(["--ca", ca.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let usage = |out: Output, needle: &str| {
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(said.contains(needle), "wanted {needle:?} in: {said}");
    };
    usage(
        probe(&["--url", "http://hub.example.test"]),
        "must be https://",
    );
    // Nothing listens on this loopback port: the target does not answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free = closed.local_addr().unwrap();
    let free_addr = free.to_string();
    drop(closed);
    usage(
        probe(&[
            "--url",
            "https://hub.example.test",
            "--connect",
            &free.to_string(),
        ]),
        &format!("at {free}"),
    );
    let identity = root
        .issue(
            "client",
            &["client"],
            hubtrust_harness::pki::Usage::Client,
            hubtrust_harness::pki::Validity::fresh(1),
        )
        .unwrap();
    let (cert, key) = identity.write_to(&dir).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    usage(
        probe(&[
            "--url",
            "https://hub.example.test",
            "--connect",
            &free.to_string(),
            "--identity",
            &format!("me={},{}", cert.display(), key.display()),
        ]),
        "chmod 600",
    );
    usage(
        probe(&[
            "--url",
            "https://hub.example.test",
            "--connect",
            &free.to_string(),
            "--endpoint",
            "hub API=127.0.0.1:8081",
        ]),
        "--endpoint needs --internal-ca",
    );
    // The proxy API's token check needs the token, an --endpoint of that
    // name, and an identity it accepts.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let token = dir.join("proxy.token");
    std::fs::write(&token, "t0ken").unwrap();
    let internal_ca = ca.to_str().unwrap();
    let with_endpoint = [
        "--url",
        "https://hub.example.test",
        "--connect",
        free_addr.as_str(),
        "--internal-ca",
        internal_ca,
        "--endpoint",
        "proxy API=127.0.0.1:8001",
    ];
    usage(
        probe(&[&with_endpoint[..], &["--proxy-api", "proxy API"]].concat()),
        "--proxy-api proxy API needs the proxy's auth token",
    );
    let token_flag = ["--proxy-token-file", token.to_str().unwrap()];
    usage(
        probe(
            &[
                &with_endpoint[..],
                &["--proxy-api", "proxy APi"],
                &token_flag[..],
            ]
            .concat(),
        ),
        "--proxy-api `proxy APi` names no --endpoint",
    );
    usage(
        probe(
            &[
                &with_endpoint[..],
                &["--proxy-api", "proxy API"],
                &token_flag[..],
            ]
            .concat(),
        ),
        "no --identity is accepted by it",
    );
    // A policy file is checked before anything is contacted: an exception
    // needs a reason, and must name an endpoint the probe is given.
    let policy = dir.join("policy.toml");
    let with_policy = |text: &str, more: &[&str]| {
        std::fs::write(&policy, text).unwrap();
        let mut args = vec![
            "--url",
            "https://hub.example.test",
            "--connect",
            free_addr.as_str(),
            "--policy-file",
            policy.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        probe(&args)
    };
    usage(
        with_policy(
            "exceptions = [{ endpoint = \"proxy public\", allow = [\"TLSv1.1\"], reason = \"\" }]",
            &[],
        ),
        "`proxy public` gives no reason",
    );
    usage(
        with_policy(
            "exceptions = [{ endpoint = \"hub APi\", allow = [\"TLSv1.1\"], reason = \"legacy\" }]",
            &[],
        ),
        "exception for `hub APi` names no endpoint this probe is given (known: proxy public)",
    );
    usage(
        with_policy("", &["--policy", "modern"]),
        "cannot be used with",
    );
    let not_a_cert = dir.join("not-a-cert.pem");
    std::fs::write(&not_a_cert, "hello").unwrap();
    let out = hubtrust()
        .args(["probe", "--url", "https://hub.example.test", "--connect"])
        .arg(free.to_string())
        .arg("--ca")
        .arg(&not_a_cert)
        .output()
        .unwrap();
    usage(out, "holds no PEM certificate");
    // A process that does not exist has no network namespace to enter.
    usage(
        probe(&[
            "--url",
            "https://hub.example.test",
            "--from-netns-of",
            "999999999",
        ]),
        "--from-netns-of 999999999: cannot open /proc/999999999/ns/net",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
