//! End-to-end tests of the `hubtrust` command against real components on
//! the local backend: broken deployments named by their cause, a
//! deployment's own config, certificates and merge step, vendors' brokers,
//! and failures while components start. The profiles themselves run on
//! every backend in `contract.rs`; refusals before anything starts sit in
//! `usage.rs`.
//!
//! The first test to need components provisions them into the shared cache
//! (a file lock serialises that); later ones reuse it.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{
    assert_no_process_left, expect_usage_error, hubtrust, processes_running, real_root, run_id,
    run_stack, scratch, text, walk,
};

#[test]
fn sigkill_during_provisioning_leaves_no_installer_running() {
    // A cache of its own, so the components install from scratch, and a
    // TMPDIR of its own, which the installers must not leave anything in.
    let cache = scratch("provision-kill");
    let tmp = scratch("provision-kill-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut run = hubtrust()
        .args(["run", "--tags", "@core"])
        .env("HUBTRUST_CACHE", &cache)
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let installing = cache.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    // ensurepip is a grandchild of hubtrust (the venv's python starts it)
    // and runs for seconds: nothing but the namespace's end stops it soon.
    let ensurepip = |pids: Vec<u32>| {
        pids.into_iter().any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("ensurepip"))
        })
    };
    // Killed once ensurepip has made its temporary directory, wherever
    // that is: in the install (then nothing is left) or in TMPDIR.
    let has_entries = |dir: &std::path::Path| {
        std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
    };
    let made_its_temporary_directory = || {
        has_entries(&tmp)
            || std::fs::read_dir(&cache).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| has_entries(&e.path().join(".tmp")))
            })
    };
    while !(ensurepip(processes_running(&installing)) && made_its_temporary_directory()) {
        assert!(
            run.try_wait().unwrap().is_none(),
            "the run ended before installing"
        );
        assert!(Instant::now() < deadline, "no installer started");
        // Bounded poll interval until the install is under way.
        std::thread::sleep(Duration::from_millis(50));
    }
    run.kill().unwrap();
    run.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !processes_running(&installing).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left running: {:?}",
            processes_running(&installing)
        );
        // Bounded poll interval while the kernel ends the namespace.
        std::thread::sleep(Duration::from_millis(50));
    }
    // ensurepip's own temporary directory (its wheels) died with it.
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the killed install left {left:?}");
    std::fs::remove_dir_all(&cache).unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_public_side_that_speaks_tls_1_0_fails_the_tls_scan_naming_endpoint_version_and_rule() {
    let report = scratch("tls-1.0");
    let out = hubtrust()
        .args(["run", "--tags", "@tls", "--stack"])
        .arg("fixtures/stacks/broken/public-side-speaks-tls1.0.toml")
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    for needle in [
        "proxy public (",
        "from host `operator`) accepts TLSv1.0",
        "accepts TLSv1.1",
        "Mozilla intermediate allows only TLS 1.2 and TLS 1.3",
    ] {
        assert!(t.contains(needle), "{needle:?} missing:\n{t}");
    }
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("| TLSv1.0 | accepted — forbidden by the policy |"),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&report);
}

#[test]
fn a_tls_exception_that_names_no_endpoint_fails_naming_the_names_it_could_use() {
    let report = scratch("tls-stray-exception");
    let out = hubtrust()
        .args(["run", "--tags", "@tls", "--stack"])
        .arg("fixtures/stacks/broken/tls-exception-for-no-endpoint.toml")
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("the stack's exception for `proxy-public` (an old kiosk browser) names no endpoint the scan met, so it excuses nothing (fix: one of ")
            && t.contains("proxy public, "),
        "{t}"
    );
    let _ = std::fs::remove_dir_all(&report);
}

#[test]
fn stock_jupyterhubs_internal_suites_show_as_known_defects_and_fail_only_under_strict() {
    let report = scratch("known-defects");
    let out = hubtrust()
        .args(["run", "--tags", "@tls", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("known defect jupyterhub-internal-tls12-suites"),
        "{}",
        text(&out)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let ids: Vec<&str> = json["known_defects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["id"].as_str())
        .collect();
    assert!(ids.contains(&"jupyterhub-internal-tls12-suites"), "{ids:?}");
    assert!(ids.contains(&"singleuser-internal-tls12-suites"), "{ids:?}");
    let junit = std::fs::read_to_string(report.join("report.xml")).unwrap();
    assert!(
        junit.contains("known defect jupyterhub-internal-tls12-suites"),
        "{junit}"
    );
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("## Known defects") && md.contains("accepted under TLS 1.2 — known defect")
    );
    // The public side and the proxy API conform: CHP is given its suites.
    assert!(!ids.iter().any(|i| i.starts_with("chp")));

    let strict = hubtrust()
        .args(["run", "--tags", "@tls", "--strict", "--report"])
        .arg(report.join("strict"))
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1), "{}", text(&strict));
    assert!(text(&strict).contains("(--strict)"), "{}", text(&strict));
    let _ = std::fs::remove_dir_all(&report);
}

#[test]
fn the_hub_api_accepting_a_public_ca_client_shows_as_a_known_defect_and_fails_under_strict() {
    let report = scratch("public-ca-cell");
    let out = hubtrust()
        .args(["run", "--tags", "@core", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains(
            "| public-CA cert | ⚠️ accepted (known defect jupyterhub-hub-api-trusts-the-system-store) |"
        ),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let cells = json["trust_matrix"]["cells"].as_array().unwrap();
    let public: Vec<&serde_json::Value> = cells
        .iter()
        .filter(|c| c["identity"] == "public-CA cert")
        .collect();
    assert!(public.len() >= 4, "{public:?}");
    // Only the hub API lets it in; every other internal endpoint refuses.
    for cell in &public {
        let hub_api = cell["endpoint"] == "hub API";
        assert_eq!(cell["known_defect"].is_string(), hub_api, "{cell}");
    }

    let strict = hubtrust()
        .args(["run", "--tags", "@core", "--strict", "--report"])
        .arg(report.join("strict"))
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1), "{}", text(&strict));
    assert!(
        text(&strict).contains("known defect jupyterhub-hub-api-trusts-the-system-store (--strict): hub API × public-CA cert: accepted"),
        "{}",
        text(&strict)
    );
    std::fs::remove_dir_all(&report).unwrap();
}

/// Runs `@core` on a broken stack file: it must exit 1 (a finding, not an
/// environment problem), say `finding` on the terminal and in every
/// scenario of the report, and leave nothing running.
fn broken_stack_is_diagnosed(stack: &str, finding: &str) {
    let name = Path::new(stack)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let report = scratch(&name);
    let id = run_id(&name);
    let out = hubtrust()
        .args(["run", "--tags", "@core", "--stack", stack, "--report"])
        .arg(&report)
        .env("HUBTRUST_RUN_ID", &id)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(finding),
        "{finding:?} missing:\n{}",
        text(&out)
    );
    assert!(
        !text(&out).contains("did not pass within"),
        "{}",
        text(&out)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    for scenario in json["scenarios"].as_array().unwrap() {
        assert!(
            scenario["failure"].as_str().unwrap().contains(finding),
            "{scenario}"
        );
    }
    assert!(std::fs::read_to_string(report.join("report.xml"))
        .unwrap()
        .contains(finding));
    assert_no_process_left(&id);
    std::fs::remove_dir_all(&report).unwrap();
}

#[test]
fn a_public_side_in_plaintext_is_named_not_timed_out() {
    broken_stack_is_diagnosed(
        "fixtures/stacks/broken/public-side-in-plaintext.toml",
        "answered plaintext where TLS was expected",
    );
}

#[test]
fn a_lab_that_cannot_verify_the_hub_is_named_from_its_own_log() {
    broken_stack_is_diagnosed(
        "fixtures/stacks/broken/lab-cannot-verify-the-hub.toml",
        "could not verify a server",
    );
}

#[test]
fn internal_tls_turned_off_is_named_not_timed_out() {
    broken_stack_is_diagnosed(
        "fixtures/stacks/broken/internal-tls-off.toml",
        "met a server that does not speak TLS",
    );
}

#[test]
fn a_hub_api_listening_on_every_interface_is_named_with_the_host_that_reached_it() {
    let report = scratch("hub-api-everywhere");
    let out = hubtrust()
        .args(["run", "--tags", "@reachability", "--stack"])
        .arg("fixtures/stacks/broken/hub-api-on-every-interface.toml")
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.lines().any(|l| l.contains("hub API on `hub` answers at ")
            && l.contains(":8081 from host `operator`, where the design allows no client")),
        "{t}"
    );
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("| hub API | answers ✅ | answers ❌ |"), "{md}");
    let _ = std::fs::remove_dir_all(&report);
}

#[test]
fn kernel_ports_on_every_interface_are_cells_of_the_reachability_matrix() {
    let report = scratch("kernels-everywhere");
    let out = hubtrust()
        .args(["run", "--tags", "@reachability", "--stack"])
        .arg("fixtures/stacks/kernels-on-all-interfaces.toml")
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    for channel in ["shell", "iopub", "stdin", "control", "hb"] {
        assert!(
            t.lines().any(|l| l.contains(&format!(
                "kernel {channel} port of alice on `hub` answers at "
            )) && l
                .contains("from host `operator`, where the design allows no client")),
            "{channel}: {t}"
        );
    }
    std::fs::remove_dir_all(&report).unwrap();
}

#[test]
fn readiness_checks_from_the_stack_file_replace_the_manifests() {
    let dir = scratch("stack-ready");
    let stack = |name: &str, body: &str| {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, format!("name = \"{name}\"\n{body}")).unwrap();
        file
    };
    // A vendor proxy that is ready when its API port accepts connections.
    let good = stack(
        "ready-tcp",
        "[[proxy.ready]]\nkind = \"tcp\"\nhost = \"{{hub_host}}\"\naddr = \"127.0.0.1:{{proxy_api_port}}\"\ntimeout_secs = 30\n",
    );
    let out = hubtrust()
        .args(["run", "--tags", "@tls", "--stack"])
        .arg(&good)
        .arg("--report")
        .arg(dir.join("good"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // The stack file's check is the one waited on, and named.
    let never = stack(
        "ready-never",
        "[[hub.ready]]\nkind = \"log-line\"\npattern = \"a line this hub never writes\"\ntimeout_secs = 3\n",
    );
    let id = run_id("ready-never");
    let out = run_stack("@tls", &never, &dir.join("never"), &id);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("a log line matching `a line this hub never writes`"),
        "{}",
        text(&out)
    );
    assert_no_process_left(&id);
    let unknown = stack(
        "ready-ping",
        "[[proxy.ready]]\nkind = \"ping\"\ntimeout_secs = 3\n",
    );
    let out = hubtrust()
        .args(["run", "--tags", "@tls", "--stack"])
        .arg(&unknown)
        .arg("--report")
        .arg(dir.join("ping"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("unknown variant `ping`") && text(&out).contains("`ready` checks"),
        "{}",
        text(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_deployments_own_config_is_loaded_and_every_setting_hubtrust_overrode_is_reported() {
    let report = scratch("deployment-config");
    let out = hubtrust()
        .args(["run", "--tags", "@tls", "--stack"])
        .arg("examples/deployment-repo/hubtrust.toml")
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("the deployment's config sets c.JupyterHub.hub_ip = '0.0.0.0'; the hub runs with '127.0.0.1'"),
        "{t}"
    );
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("| `c.JupyterHub.hub_ip` | `'0.0.0.0'` | `'127.0.0.1'` |"),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let settings: Vec<&str> = json["deployment_overridden"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["setting"].as_str())
        .collect();
    // What the deployment sets and hubtrust leaves alone is not listed.
    assert!(settings.contains(&"c.JupyterHub.hub_ip"), "{settings:?}");
    assert!(
        !settings.contains(&"c.JupyterHub.template_vars"),
        "{settings:?}"
    );
    std::fs::remove_dir_all(&report).unwrap();
}

#[test]
fn the_example_deployment_adopts_hubtrust_in_five_workflow_lines_through_the_action() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workflow = std::fs::read_to_string(
        root.join("examples/deployment-repo/.github/workflows/hubtrust.yml"),
    )
    .unwrap();
    assert!(workflow.lines().count() <= 5, "{workflow}");
    assert!(workflow.contains("stack: hubtrust.toml"), "{workflow}");
    // Every file of this repository the action reads exists.
    let action = std::fs::read_to_string(root.join("action.yml")).unwrap();
    for needed in [
        "scripts/install-prerequisites",
        "fixtures/python/requirements.lock",
        "fixtures/npm/package-lock.json",
        "fixtures/python/mitmproxy.lock",
        "Cargo.toml",
    ] {
        assert!(action.contains(needed), "{needed}");
        assert!(root.join(needed).exists(), "{needed}");
    }
    for input in ["stack:", "tags:", "backend:", "report:", "strict:"] {
        assert!(action.contains(&format!("  {input}")), "{input}");
    }
    let ci = std::fs::read_to_string(root.join(".github/workflows/ci.yml")).unwrap();
    assert!(ci.contains("uses: ./") && ci.contains("examples/deployment-repo/hubtrust.toml"));
}

/// A deployment's own CA and public leaves for `hub.hubtrust.test`, made
/// with the openssl CLI as an operator would: `leaf.crt` (fresh),
/// `expired.crt` (issued 40 days ago for 10), `other.key` (matches
/// nothing), keys 0600.
fn deployment_pki(dir: &Path) {
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .args(["-ec", script])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", text(&out));
    };
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -subj /CN=deploy-ca -days 30
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr -subj /CN=hub.hubtrust.test
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key
        printf 'subjectAltName=DNS:hub.hubtrust.test\\nextendedKeyUsage=serverAuth\\n' > ext
        openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -days 10 -extfile ext -out leaf.crt
        faketime '-40 days' openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -days 10 -extfile ext -out expired.crt
        cat leaf.crt ca.crt > chain.crt
        cat ca.crt leaf.crt > reversed.crt
        chmod 600 ca.key leaf.key other.key");
}

#[test]
fn a_deployments_own_public_certificate_is_served_and_judged_like_a_minted_one() {
    let dir = scratch("own-pki");
    deployment_pki(&dir);
    let stack = |name: &str, cert: &str, key: &str| {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!("name = \"{name}\"\n[pki]\npublic_cert = \"{cert}\"\npublic_key = \"{key}\"\npublic_ca = \"ca.crt\"\n"),
        )
        .unwrap();
        file
    };
    let out = hubtrust()
        .args(["run", "--tags", "@core", "--stack"])
        .arg(stack("own-public", "chain.crt", "leaf.key"))
        .arg("--report")
        .arg(dir.join("good"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("good/report.json")).unwrap())
            .unwrap();
    assert!(
        json["inventory"]["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["subject"] == "CN=hub.hubtrust.test" && c["issuer"] == "CN=deploy-ca"),
        "the inventory lacks the deployment's leaf"
    );
    // An expired one is a finding, quoted with its dates and names.
    let id = run_id("own-pki-expired");
    let out = hubtrust()
        .args(["run", "--tags", "@core", "--stack"])
        .arg(stack("own-expired", "expired.crt", "leaf.key"))
        .arg("--report")
        .arg(dir.join("expired"))
        .env("HUBTRUST_RUN_ID", &id)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("served a certificate that has expired"), "{t}");
    assert!(
        t.contains("it is valid from ") && t.contains(", for DNS:hub.hubtrust.test"),
        "{t}"
    );
    assert_no_process_left(&id);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_deployments_certificate_with_a_bad_key_or_chain_is_refused_naming_the_file() {
    let dir = scratch("own-pki-bad");
    deployment_pki(&dir);
    std::fs::copy(dir.join("leaf.key"), dir.join("open.key")).unwrap();
    std::fs::set_permissions(
        dir.join("open.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    for (cert, key, said) in [
        ("leaf.crt", "open.key", "has mode 0644"),
        ("leaf.crt", "other.key", "does not match the certificate"),
        ("reversed.crt", "leaf.key", "the chain is out of order"),
    ] {
        let file = dir.join("stack.toml");
        std::fs::write(
            &file,
            format!(
                "name = \"bad-pki\"\n[pki]\npublic_cert = \"{cert}\"\npublic_key = \"{key}\"\n"
            ),
        )
        .unwrap();
        let id = run_id("own-pki-bad");
        let out = run_stack("@core", &file, &dir.join("report"), &id);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{cert} {key}: {t}");
        assert!(t.contains(said), "{cert} {key}: {t}");
        assert!(t.contains(key) || t.contains(cert), "{t}");
        assert!(!t.contains("starting jupyterhub"), "{t}");
        assert_no_process_left(&id);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn repeat_runs_each_round_on_a_fresh_stack_and_counts_passes() {
    let report = scratch("repeat");
    let out = hubtrust()
        .args(["run", "--tags", "@core", "--repeat", "2", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        text(&out).matches("· stack ready").count(),
        2,
        "{}",
        text(&out)
    );
    let summary = std::fs::read_to_string(report.join("repeat.md")).unwrap();
    assert!(
        summary.contains("| The proxy API is guarded by its token, not only by TLS | 2/2 |"),
        "{summary}"
    );
    for round in ["round-1", "round-2"] {
        assert!(report.join(round).join("report.json").exists(), "{round}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("repeat.json")).unwrap())
            .unwrap();
    assert_eq!(json["rounds"], 2);
    let _ = std::fs::remove_dir_all(&report);
}

fn stack_file_run(name: &str, body: &str) -> (Output, String) {
    let (out, id, _) = stack_file_run_with_report(name, body);
    (out, id)
}

/// [`stack_file_run`], with the run's report.json when it wrote one.
fn stack_file_run_with_report(
    name: &str,
    body: &str,
) -> (Output, String, Option<serde_json::Value>) {
    let dir = scratch(name);
    let file = dir.join("stack.toml");
    std::fs::write(&file, body).unwrap();
    let id = run_id(name);
    let out = hubtrust()
        .args(["run", "--tags", "@core", "--report"])
        .arg(dir.join("report"))
        .arg("--stack")
        .arg(&file)
        .env("HUBTRUST_RUN_ID", &id)
        .output()
        .unwrap();
    let report = std::fs::read_to_string(dir.join("report/report.json"))
        .ok()
        .map(|json| serde_json::from_str(&json).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    (out, id, report)
}

#[test]
fn a_hub_config_jupyterhub_rejects_shows_its_log_and_leaves_nothing() {
    let (out, id) = stack_file_run(
        "bad-config",
        "[hub]\nextra_config = [\"c.JupyterHub.hub_port = 'not a port'\"]\n",
    );
    expect_usage_error(&out, "exited during start-up");
    assert!(
        text(&out).contains("not a port"),
        "the hub's own complaint is not shown:\n{}",
        text(&out)
    );
    assert_no_process_left(&id);
}

#[test]
fn a_component_that_exits_during_start_up_is_named() {
    let (out, id, report) =
        stack_file_run_with_report("proxy-exits", "[proxy]\ncommand = [\"false\"]\n");
    expect_usage_error(&out, "`jupyterhub`");
    assert!(
        text(&out).to_lowercase().contains("proxy"),
        "{}",
        text(&out)
    );
    assert_no_process_left(&id);
    // The report says so too: every selected scenario failed, none passed,
    // with the reason and the start-up logs kept beside it.
    let report = report.expect("a stack that did not come up still gets a report");
    let scenarios = report["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 10, "{report}");
    for scenario in scenarios {
        assert_eq!(scenario["status"], "failed", "{scenario}");
        let failure = scenario["failure"].as_str().unwrap();
        assert!(failure.contains("the stack did not come up"), "{failure}");
        assert!(scenario["artifacts"]
            .as_str()
            .unwrap()
            .ends_with("stack-start-up"));
    }
    assert!(report["stack_ready_seconds"].is_null(), "{report}");
}

/// Runs the wire profile on a deliberately broken stack: it must fail, and
/// name plaintext ZMTP flows on `link`.
fn wire_profile_catches_kernel_traffic(stack_file: &str, link: &str) {
    let report = scratch(&format!("zmtp-{link}"));
    let out = hubtrust()
        .args(["run", "--tags", "@wire", "--stack", stack_file, "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("kernel channels leave the lab host in plaintext"),
        "{t}"
    );
    assert!(
        t.contains(&format!("on {link} (plaintext ZMTP 3.")),
        "the flow is not named: {t}"
    );
    std::fs::remove_dir_all(&report).unwrap();
}

#[test]
fn a_kernel_on_another_host_is_caught_on_the_wire() {
    wire_profile_catches_kernel_traffic(
        "fixtures/stacks/kernel-on-another-host.toml",
        "hub--kernels",
    );
}

/// Runs the enterprise profile on `stack` (a path), returning the output
/// and the report directory.
fn enterprise_run(name: &str, stack: &std::path::Path) -> (Output, common::Scratch, String) {
    let report = scratch(&format!("{name}-report"));
    let id = run_id(name);
    let out = hubtrust()
        .args(["run", "--tags", "@enterprise", "--keep", "--report"])
        .arg(&report)
        .arg("--stack")
        .arg(stack)
        .env("HUBTRUST_RUN_ID", &id)
        .output()
        .unwrap();
    (out, report, id)
}

/// The enterprise stack file with `line` added to its `[enterprise]` table,
/// in a scratch directory of its own that goes with it.
fn enterprise_stack_with(name: &str, line: &str) -> common::ScratchFile {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/stacks/enterprise.toml"),
    )
    .unwrap();
    common::ScratchFile::new(name, "stack.toml", &format!("{base}{line}\n"))
}

/// The enterprise stack file with `org_bundle` pointing at `source`.
fn enterprise_stack_with_org_bundle(name: &str, source: &std::path::Path) -> common::ScratchFile {
    enterprise_stack_with(
        name,
        &format!("org_bundle = {:?}", source.display().to_string()),
    )
}

#[test]
fn a_vendors_merge_step_runs_instead_of_hubtrusts_and_is_judged_by_what_it_writes() {
    // Nebari's init container, in one line: the system bundle, then the
    // org bundle when the ConfigMap provides one.
    let good = enterprise_stack_with(
        "vendor-merge",
        r#"merge_command = ["sh", "-c", "cat \"$1\" > \"$3\" && { [ ! -f \"$2\" ] || cat \"$2\" >> \"$3\"; }", "merge"]"#,
    );
    let (out, report, id) = enterprise_run("vendor-merge", &good);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_no_process_left(&id);
    std::fs::remove_dir_all(&report).unwrap();
    std::fs::remove_dir_all(good.parent().unwrap()).unwrap();

    // A step that forgets the org bundle: the checks catch what it wrote.
    let lossy = enterprise_stack_with(
        "vendor-merge-lossy",
        r#"merge_command = ["sh", "-c", "cp \"$1\" \"$3\"", "merge"]"#,
    );
    let (out, report, id) = enterprise_run("vendor-merge-lossy", &lossy);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("curl → org-CA server with the merged bundle: expected ok, got unknown-issuer"),
        "{t}"
    );
    assert_no_process_left(&id);
    std::fs::remove_dir_all(&report).unwrap();
    std::fs::remove_dir_all(lossy.parent().unwrap()).unwrap();
}

#[test]
fn a_merge_step_that_fails_or_writes_nothing_is_named_and_nothing_is_left() {
    for (name, command, said) in [
        (
            "merge-fails",
            r#"merge_command = ["sh", "-c", "echo the vendor step broke >&2; exit 3", "merge"]"#,
            "it exited with status 3: the vendor step broke",
        ),
        (
            "merge-writes-nothing",
            r#"merge_command = ["true"]"#,
            "it exited 0 but wrote nothing to",
        ),
    ] {
        let stack = enterprise_stack_with(name, command);
        let (out, report, id) = enterprise_run(name, &stack);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {t}");
        assert!(
            t.contains("org-bundle merge step") && t.contains(said),
            "{name}: {t}"
        );
        assert!(
            t.contains("enterprise.merge_command") || t.contains("third argument"),
            "{t}"
        );
        assert_no_process_left(&id);
        std::fs::remove_dir_all(&report).ok();
        std::fs::remove_dir_all(stack.parent().unwrap()).unwrap();
    }
}

#[test]
fn an_inspecting_proxy_that_re_signs_bad_upstreams_fails_naming_tool_and_target() {
    let stack = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/stacks/broken/inspecting-proxy-skips-upstream-verification.toml");
    let (out, report, id) = enterprise_run("enterprise-ssl-insecure", &stack);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for target in ["foreign-CA server", "expired server", "wrong-name server"] {
        for tool in ["python urllib", "curl", "node", "git", "pip", "requests"] {
            let line = format!(
                "{tool} → {target} via the inspecting proxy with the merged bundle: the inspecting proxy re-signed a bad upstream"
            );
            assert!(t.contains(&line), "{line:?} missing:\n{t}");
        }
    }
    // With the system bundle alone the re-signed answers are still refused.
    assert!(
        !t.contains("via the inspecting proxy with the system bundle alone"),
        "{t}"
    );
    assert_no_process_left(&id);
    std::fs::remove_dir_all(&report).unwrap();
}

#[test]
fn labs_that_bypass_the_inspecting_proxy_fail_naming_tool_and_proxy_variables() {
    let stack = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/stacks/broken/labs-bypass-the-inspecting-proxy.toml");
    let (out, report, id) = enterprise_run("enterprise-bypass", &stack);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for tool in ["python urllib", "curl", "node", "git", "pip", "requests"] {
        let line = format!(
            "{tool} → public endpoint via the inspecting proxy with the merged bundle: bypassed the inspecting proxy"
        );
        assert!(t.contains(&line), "{line:?} missing:\n{t}");
    }
    assert!(t.contains("NO_PROXY=*"), "{t}");
    assert!(t.contains("the tool answered network-unreachable"), "{t}");
    assert_no_process_left(&id);
    std::fs::remove_dir_all(&report).unwrap();
}

#[test]
fn a_missing_org_bundle_degrades_and_the_table_shows_the_org_ca_untrusted() {
    let stack = enterprise_stack_with_org_bundle(
        "enterprise-missing-org",
        std::path::Path::new("/nonexistent/org-ca-bundle.crt"),
    );
    let (out, report, id) = enterprise_run("enterprise-missing-org", &stack);
    let t = text(&out);
    // The spawn succeeded on the system bundle alone; the discriminator
    // then catches that the org CA is not trusted.
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("✔ Labs trust the organisation's CA for outbound traffic, and only there / The merged bundle is exactly"),
        "{t}"
    );
    assert!(
        t.contains("curl → org-CA server with the merged bundle: expected ok, got unknown-issuer"),
        "{t}"
    );
    assert_no_process_left(&id);
    std::fs::remove_dir_all(&report).unwrap();
    std::fs::remove_dir_all(stack.parent().unwrap()).unwrap();
}

#[test]
fn a_malformed_or_empty_org_bundle_is_a_clear_error_and_leaves_nothing() {
    for (case, content) in [("garbage", "not a certificate\n"), ("empty", "")] {
        let name = format!("enterprise-bad-org-{case}");
        let dir = scratch(&format!("{name}-source"));
        let source = dir.join("org.crt");
        std::fs::write(&source, content).unwrap();
        let stack = enterprise_stack_with_org_bundle(&name, &source);
        let (out, report, id) = enterprise_run(&name, &stack);
        expect_usage_error(&out, "holds no PEM certificate");
        assert_no_process_left(&id);
        let _ = std::fs::remove_dir_all(&report);
        std::fs::remove_dir_all(stack.parent().unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn an_inspecting_proxy_that_cannot_start_is_named_and_leaves_nothing() {
    let stack = enterprise_stack_with("enterprise-proxy-fails", "proxy_command = [\"false\"]");
    let (out, report, id) = enterprise_run("enterprise-proxy-fails", &stack);
    expect_usage_error(&out, "`false` exited");
    assert!(text(&out).contains("inspecting proxy"), "{}", text(&out));
    assert_no_process_left(&id);
    let _ = std::fs::remove_dir_all(&report);
    std::fs::remove_dir_all(stack.parent().unwrap()).unwrap();
}

#[test]
fn a_hub_given_the_merged_bundle_lets_org_ca_client_certificates_in() {
    // JupyterHub 6.1.1's internal TLS context calls load_default_certs(),
    // which honours SSL_CERT_FILE: the separation-of-trust check must
    // catch it and name the cell.
    let (out, report, id) = enterprise_run(
        "enterprise-hub-trusts-org",
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/stacks/enterprise-hub-trusts-org.toml"),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("hub API × org-CA cert: observed accepted"),
        "the accepting cell is not named:\n{t}"
    );
    assert_no_process_left(&id);
    std::fs::remove_dir_all(&report).unwrap();
}

/// `hubtrust run --tags @hpc` on `stack`, reporting into `report`, with
/// `extra` arguments; returns the output and the run id.
fn hpc_run(
    name: &str,
    report: &Path,
    stack: &Path,
    extra: &[&std::ffi::OsStr],
) -> (Output, String) {
    let id = run_id(name);
    let out = hubtrust()
        .args(["run", "--tags", "@hpc", "--report"])
        .arg(report)
        .arg("--stack")
        .arg(stack)
        .args(extra)
        .env("HUBTRUST_RUN_ID", &id)
        .output()
        .unwrap();
    (out, id)
}

#[test]
fn hpc_fault_scenarios_pass_with_a_broker_that_runs_ssh_through_a_wrapper() {
    if !real_root() {
        return;
    }
    let dir = scratch("hpc-wrapped-ssh");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // Not `exec`: the real ssh is the wrapper's child, with its own argv,
    // as a vendor's wrapper (logging, a site's ssh build) would run it.
    let wrapper = bin.join("ssh");
    std::fs::write(&wrapper, "#!/bin/sh\n/usr/bin/ssh \"$@\"\n").unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let topology = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/topologies/hpc.toml");
    let stack = dir.join("hpc-wrapped-ssh.toml");
    std::fs::write(
        &stack,
        format!(
            "name = \"hpc-wrapped-ssh\"\ntopology_file = {:?}\n\n[hpc]\nbroker_command = [\"sh\", \"-c\", \"PATH={}:$PATH exec {} broker\"]\n",
            topology.display().to_string(),
            bin.display(),
            env!("CARGO_BIN_EXE_hubtrust"),
        ),
    )
    .unwrap();
    let report = dir.join("report");
    let (out, id) = hpc_run("hpc-wrapped-ssh", &report, &stack, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("✔ Labs on an HPC compute node, reached only through SSH tunnels / A killed ssh process shows in the broker's health"),
        "{}",
        text(&out)
    );
    assert_no_process_left(&id);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_port_collision_on_a_login_node_is_named_with_the_broker_and_sshd_logs() {
    if !real_root() {
        // Covered rootless by the "needs root" error above.
        return;
    }
    let dir = scratch("hpc-collision");
    // sshd itself listens on 22 on every login node.
    let file = hpc_stack_with(&dir, "login_port = 22");
    let (out, id) = hpc_run("hpc-collision", &dir.join("report"), &file, &[]);
    expect_usage_error(&out, "login-1");
    let all = text(&out);
    assert!(all.contains("listen port 22"), "{all}");
    assert!(
        all.contains("broker:") && all.contains("sshd (login-1)"),
        "{all}"
    );
    assert_no_process_left(&id);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An HPC stack file in `dir` with `extra` lines in its `[hpc]` table.
fn hpc_stack_with(dir: &Path, extra: &str) -> PathBuf {
    let topology = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/topologies/hpc.toml");
    let file = dir.join("stack.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"hpc-variant\"\ntopology_file = {:?}\n[hpc]\n{extra}\n",
            topology.display().to_string()
        ),
    )
    .unwrap();
    file
}

#[test]
fn a_vendor_broker_and_reused_ca_certs_pass_the_same_hpc_scenarios() {
    if !real_root() {
        return;
    }
    let dir = scratch("hpc-vendor");
    // The operator's CAs, made once and kept (as a site keeps them in its
    // vault), then reused by the stack.
    let tarball = dir.join("ca_certs.tar.gz");
    let made = hubtrust().arg("ca-certs").arg(&tarball).output().unwrap();
    assert!(made.status.success(), "{}", text(&made));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&tarball).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "ca_certs.tar.gz holds CA keys");
    let unpacked = dir.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(untar.success());
    // A vendor's broker is any command serving the REST contract with the
    // HUBTRUST_BROKER_* environment; hubtrust's own binary, started the
    // vendor's way, stands in for one.
    let file = hpc_stack_with(
        &dir,
        &format!(
            "broker_command = [{:?}, \"broker\"]\nca_certs = {:?}",
            env!("CARGO_BIN_EXE_hubtrust"),
            tarball.display().to_string()
        ),
    );
    let report = dir.join("report");
    let (out, id) = hpc_run("hpc-vendor", &report, &file, &["--keep".as_ref()]);
    assert!(out.status.success(), "{}", text(&out));
    // The stack's proxy-client-ca is the one from the tarball.
    let kept = std::fs::read_dir(report.join("artifacts"))
        .unwrap()
        .flatten()
        .map(|e| {
            e.path()
                .join("hub/internal-ssl/proxy-client-ca/proxy-client-ca.crt")
        })
        .find(|p| p.exists())
        .expect("the artifacts keep the internal CAs' certificates");
    assert_eq!(
        std::fs::read(kept).unwrap(),
        std::fs::read(unpacked.join("proxy-client-ca/proxy-client-ca.crt")).unwrap()
    );
    assert_no_process_left(&id);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_vendor_broker_that_cannot_start_is_named_and_leaves_nothing() {
    if !real_root() {
        return;
    }
    let dir = scratch("hpc-bad-broker");
    let file = hpc_stack_with(&dir, "broker_command = [\"false\"]");
    let (out, id) = hpc_run("hpc-bad-broker", &dir.join("report"), &file, &[]);
    expect_usage_error(&out, "tunnel broker");
    assert_no_process_left(&id);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_broken_tunnel_fails_the_scenario_with_the_brokers_and_sshds_last_lines() {
    if !real_root() {
        return;
    }
    let dir = scratch("hpc-broken-tunnel");
    let features = dir.join("features");
    std::fs::create_dir_all(&features).unwrap();
    // The broker restarts and nobody asks it to re-create its tunnels.
    std::fs::write(
        features.join("broken.feature"),
        "@hpc\nFeature: a broken tunnel\n  Scenario: the lab behind a broken tunnel\n    Given the JupyterHub stack is up with internal SSL\n    When the tunnel broker restarts\n    Then every user's lab answers through the proxy\n",
    )
    .unwrap();
    let (out, id) = hpc_run(
        "hpc-broken-tunnel",
        &dir.join("report"),
        Path::new("fixtures/stacks/hpc.toml"),
        &["--features".as_ref(), features.as_os_str()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("the tunnels' last log lines"), "{all}");
    assert!(
        all.contains("[tunnel broker]") && all.contains("[sshd (login-1)]"),
        "{all}"
    );
    // The failed scenario's artifacts carry the lab's own log from its
    // compute node, beside the hub's.
    let lab_log = walk(&dir.join("report"))
        .into_iter()
        .find(|p| p.ends_with("logs/lab-alice.log"))
        .unwrap_or_else(|| panic!("no lab-alice.log in the artifacts:\n{all}"));
    let lab_log = std::fs::read_to_string(lab_log).unwrap();
    assert!(lab_log.contains("JupyterHubSingleUser"), "{lab_log}");
    assert_no_process_left(&id);
    std::fs::remove_dir_all(&dir).unwrap();
}
