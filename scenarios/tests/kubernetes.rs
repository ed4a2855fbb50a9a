//! The kind and kubernetes backends, as far as this machine reaches: no
//! cluster can run here (no node image can be pulled), so these tests pin
//! what hubtrust would apply (`--plan`), the certificates it makes for the
//! chart's Services, and every refusal before anything is created. The
//! cluster itself is exercised by the `kind` job of the GitHub workflow.
//!
//! Where a test needs kubectl, docker or helm to answer a certain way it
//! puts a small script of that name first on PATH, which records every
//! call: hubtrust's handling of the answer is what is under test.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{hubtrust, scratch, text, Scratch};

/// A directory holding scripts named after `programs`, each logging its
/// arguments to `calls.log` and then running `behaviour` (shell).
fn fake_tools(dir: &Path, programs: &[(&str, &str)]) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("calls.log");
    for (program, behaviour) in programs {
        let path = bin.join(program);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{program} $*\" >> '{}'\n{behaviour}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn calls(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default()
}

/// The run directories hubtrust makes for Kubernetes runs.
fn kubernetes_run_dirs() -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.starts_with("hubtrust-run-kind-") || name.starts_with("hubtrust-run-kubernetes-")
        })
        .collect()
}

/// An image list of the chart's hub image and a lock pinning it.
fn pinned_list(dir: &Path) -> (PathBuf, String) {
    let list = dir.join("images.toml");
    std::fs::write(
        &list,
        "[hub]\nimage = \"quay.io/jupyterhub/k8s-hub:4.4.0\"\n",
    )
    .unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    std::fs::write(
        dir.join("images.lock"),
        format!("[digests]\n\"quay.io/jupyterhub/k8s-hub:4.4.0\" = \"{digest}\"\n"),
    )
    .unwrap();
    (list, digest)
}

fn path_with(bin: &Path) -> String {
    format!("{}:/usr/bin:/bin", bin.display())
}

/// `hubtrust up --backend kind --images LIST` with the tools of `bin`.
fn up_on_kind(bin: &Path, list: &Path) -> std::process::Command {
    let mut up = hubtrust();
    up.args(["up", "--backend", "kind", "--images"])
        .arg(list)
        .env("PATH", path_with(bin));
    up
}

#[test]
fn kind_without_kind_on_path_is_exit_2_naming_it_and_nothing_is_made() {
    let dir = scratch("k8s-no-kind");
    let empty = dir.join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let before = kubernetes_run_dirs();
    let refused = |extra: &[&str]| {
        let out = hubtrust()
            .args(["run", "--backend", "kind"])
            .args(extra)
            .env("PATH", empty.display().to_string())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        text(&out)
    };
    let said = refused(&[]);
    assert!(
        said.contains("prerequisite `kind`") && said.contains("kind-action"),
        "{said}"
    );
    let said = refused(&["--tags", "@core"]);
    assert!(
        said.contains("--tags @core") && said.contains("fix: drop --tags"),
        "{said}"
    );
    assert_eq!(
        kubernetes_run_dirs(),
        before,
        "a refused run made a run directory"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_plan_prints_every_command_and_manifest_and_runs_none_of_them() {
    let dir = scratch("k8s-plan");
    let bin = fake_tools(
        &dir,
        &[
            ("kind", "exit 0"),
            ("helm", "exit 0"),
            ("kubectl", "exit 0"),
            ("docker", "exit 0"),
        ],
    );
    let before = kubernetes_run_dirs();
    let out = hubtrust()
        .args([
            "run",
            "--backend",
            "kind",
            "--plan",
            "--stack",
            "fixtures/stacks/enterprise.toml",
        ])
        .env("PATH", path_with(&bin))
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert_eq!(calls(&dir), "", "--plan ran a command");
    assert_eq!(kubernetes_run_dirs(), before, "--plan made a run directory");
    let save = format!(
        "docker save --platform {}",
        hubtrust_harness::backend::kubernetes::kind::host_node_platform()
    );
    for expected in [
        "kind create cluster --name hubtrust-",
        "kind load image-archive",
        &save,
        "create secret generic hubtrust-ca-certs",
        "create secret generic hubtrust-proxy-tls",
        "apply --server-side --field-manager=hubtrust",
        "helm install hubtrust jupyterhub --repo https://hub.jupyter.org/helm-chart/ --version 4.4.0",
        "rollout status deployment/hub",
        "\"internal_ssl\": true",
        "\"ca-certificates.crt\": \"-----BEGIN CERTIFICATE-----",
        "\"optional\": true",
        "## teardown, on every path out",
        "kind delete cluster --name hubtrust-",
        "capture eth0 of the inspecting proxy's pod (-l app.kubernetes.io/name=hubtrust-inspecting-proxy) from before the first lab's spawn",
        // What scripts/render-chart reads: the values, hubtrust's
        // manifests, and the probe's cells.
        "/values.json\n{\n",
        "/manifests/probers.json\n{\n",
        "/manifests/outbound.json\n{\n",
        "\n## probes from inside the cluster",
        "\n- from pod hubtrust-prober-labelled (",
        "\n    scan and trust matrix: hub API (Service hub port 8081)\n",
        "\n    must not answer: proxy API (Service proxy-api port 8001)\n",
        "\n    must not answer: every other port the first user's lab pod listens on",
    ] {
        assert!(said.contains(expected), "the plan lacks {expected:?}:\n{said}");
    }
    assert!(
        !said.contains("PRIVATE KEY"),
        "the plan printed key material"
    );
    // On a cluster elsewhere the probers run too, copied into their pods;
    // nothing that needs the nodes on this machine is planned.
    let out = hubtrust()
        .args(["run", "--backend", "kubernetes", "--plan"])
        .env("PATH", path_with(&bin))
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert_eq!(calls(&dir), "", "--plan ran a command");
    assert!(
        said.contains("each probe is copied into its pod with its inputs (kubectl cp, under /tmp/hubtrust), runs there (kubectl exec)"),
        "{said}"
    );
    assert!(
        said.contains("- from pod hubtrust-prober-bare (without labels):"),
        "{said}"
    );
    assert!(
        said.contains("## secrets, read from inside each component's container (kubectl exec, as the component's user)")
            && said.contains("/etc/jupyterhub/ssl/*.key"),
        "{said}"
    );
    for absent in ["capture eth0", "its /proc/<pid>/net/tcp"] {
        assert!(
            !said.contains(absent),
            "planned {absent:?} on a cluster elsewhere:\n{said}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cluster_that_does_not_answer_is_exit_2_naming_the_fix() {
    let dir = scratch("k8s-no-answer");
    let bin = fake_tools(
        &dir,
        &[
            ("helm", "exit 0"),
            ("kubectl", "echo 'The connection to the server 127.0.0.1:1 was refused - did you specify the right host or port?' >&2; exit 1"),
        ],
    );
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\n").unwrap();
    let (list, _) = pinned_list(&dir);
    let out = hubtrust()
        .args(["up", "--backend", "kubernetes", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--images")
        .arg(&list)
        .env("PATH", path_with(&bin))
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("the cluster: its API server does not answer")
            && said.contains("was refused"),
        "{said}"
    );
    assert!(said.contains("kubectl cluster-info"), "{said}");
    let log = calls(&dir);
    assert!(
        !log.contains("create") && !log.contains("helm"),
        "a refused run changed the cluster: {log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `hubtrust run --backend kubernetes --namespace NS EXTRA` where helm
/// fails the install: what it said, its report.json, its tools' calls,
/// and each check's (status, why) by the start of its name. The run
/// directory goes in a temporary directory of its own, out of the sight
/// of the tests beside it that count theirs; it goes with the value.
struct FailedInstall {
    said: String,
    code: Option<i32>,
    json: serde_json::Value,
    calls: String,
    dir: Scratch,
}

impl FailedInstall {
    fn run(name: &str, namespace: &str, extra: &[&str]) -> Self {
        let dir = scratch(name);
        let bin = fake_tools(
            &dir,
            &[
                (
                    "helm",
                    "case \"$*\" in *install*) echo 'Error: INSTALLATION FAILED: context deadline exceeded' >&2; exit 1 ;; esac; exit 0",
                ),
                (
                    "kubectl",
                    "case \"$*\" in *readyz*) echo ok ;; esac; exit 0",
                ),
            ],
        );
        let (list, _) = pinned_list(&dir);
        let report = dir.join("report");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let out = hubtrust()
            .args(["run", "--backend", "kubernetes", "--namespace", namespace])
            .args(extra)
            .arg("--images")
            .arg(&list)
            .arg("--report")
            .arg(&report)
            .env("PATH", path_with(&bin))
            // Its kept logs (hubtrust-in-cluster/) go where it runs.
            .current_dir(&dir)
            .env("TMPDIR", &tmp)
            .output()
            .unwrap();
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
        assert!(left.is_empty(), "the run left {left:?}");
        let json = serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap())
            .unwrap_or_else(|e| panic!("no report.json ({e}): {}", text(&out)));
        FailedInstall {
            said: text(&out),
            code: out.status.code(),
            json,
            calls: calls(&dir),
            dir,
        }
    }

    fn status(&self, name: &str) -> (String, String) {
        let found = self.json["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["scenario"].as_str().unwrap().starts_with(name))
            .unwrap_or_else(|| panic!("no check {name:?} in {:#}", self.json));
        (
            found["status"].as_str().unwrap().to_string(),
            found["failure"].as_str().unwrap_or("").to_string(),
        )
    }
}

/// A run whose chart does not install still reports every check: the
/// install failed with helm's own words, every later check not run (never
/// passed), the namespace asked for afterwards; exit 1 and nothing left.
#[test]
fn a_run_whose_chart_fails_to_install_reports_every_check_and_exits_1() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("examples/z2jh");
    let values = example.join("config.yaml");
    let objects = example.join("objects.yaml");
    let run = FailedInstall::run(
        "k8s-run-fails",
        "hubtrust-t1",
        &[
            "--values",
            &values.display().to_string(),
            "--manifests",
            &objects.display().to_string(),
        ],
    );
    let said = &run.said;
    assert_eq!(run.code, Some(1), "{said}");
    // The report says which of the deployment's own values were not what
    // ran.
    let stack = run.json["stack"].as_str().unwrap_or_default();
    assert!(
        stack.contains("your chart values ")
            && stack.contains("examples/z2jh/config.yaml (hubtrust's replace yours at hub.config.JupyterHub.authenticator_class, proxy.https.type)"),
        "{stack}"
    );
    assert!(
        run.calls.contains("examples/z2jh/config.yaml --values "),
        "{}",
        run.calls
    );
    // The deployment's own objects go in before the chart that names them.
    assert!(
        stack.ends_with(&format!(
            "your objects {} (ConfigMap/hub-templates)",
            objects.display()
        )),
        "{stack}"
    );
    let applied = run
        .calls
        .find(&format!(
            "apply --server-side --field-manager=hubtrust -f {}",
            objects.display()
        ))
        .unwrap_or_else(|| panic!("their objects were not applied: {}", run.calls));
    assert!(
        applied < run.calls.find("helm install").expect("install"),
        "{}",
        run.calls
    );
    // Beside the report, so one directory holds everything the run saw.
    assert!(
        run.dir.join("report/in-cluster/logs/pods.txt").exists(),
        "the failed install kept no logs beside the report"
    );
    assert!(
        !run.dir.join("hubtrust-in-cluster").exists(),
        "a run kept logs outside its report"
    );
    // The example's values keep TLS on; the teardown passed too.
    assert!(said.contains("checks: 2 passed, 1 failed"), "{said}");
    let (kept, why) = run.status("The deployment's own values keep internal TLS");
    assert_eq!(kept, "passed", "{why}");
    let (installed, why) = run.status("The cluster is ready and the chart installs");
    assert_eq!(installed, "failed");
    assert!(why.contains("INSTALLATION FAILED"), "{why}");
    let (public, why) = run.status("The hub answers through the proxy");
    assert_eq!(public, "skipped");
    assert!(
        why.starts_with("not run: the chart did not install"),
        "{why}"
    );
    let (scenarios, why) = run.status("The feature files' scenarios, unchanged");
    assert_eq!(scenarios, "skipped");
    assert!(
        why.starts_with("not run: the first user's lab did not spawn"),
        "{why}"
    );
    // What needs the pods on this machine is listed, and why it is not
    // made on a cluster of the user's own, never left out.
    let (status, why) =
        run.status("Every connection between the hub's, the proxy's and the lab's pods");
    assert_eq!(status, "skipped");
    assert!(
        why.contains("on this machine only on kind") && why.ends_with("--backend kubernetes"),
        "{why}"
    );
    // The secrets are read from inside the pods there, so only the
    // missing lab stops them.
    let (status, why) = run.status("Private keys and the hub's secrets are readable only");
    assert_eq!(status, "skipped");
    assert!(
        why.starts_with("not run: the first user's lab did not spawn"),
        "{why}"
    );
    // The fake kubectl deletes nothing and then says the namespace is gone.
    let (torn_down, why) = run.status("Everything the run made is removed");
    assert_eq!(torn_down, "passed", "{why}");
    assert_eq!(run.json["backend"], "kubernetes");
    assert!(
        run.calls
            .contains("kubectl get namespace hubtrust-t1 --ignore-not-found -o name")
            && run.calls.contains("delete namespace hubtrust-t1"),
        "{}",
        run.calls
    );
}

/// A deployment whose own values turn internal TLS off, or give the labs'
/// variables in a form KubeSpawner refuses, fails, naming the setting and
/// the file, though hubtrust's values would hide it in the run: what would
/// pass is not what the deployment installs.
#[test]
fn values_that_turn_internal_tls_off_fail_the_run_naming_the_setting() {
    let values = scratch("k8s-weak-values");
    let weak = values.join("config.yaml");
    std::fs::write(
        &weak,
        "hub:\n  config:\n    JupyterHub:\n      internal_ssl: false\nsingleuser:\n  extraEnv:\n    - {name: TZ, value: UTC}\n",
    )
    .unwrap();
    let run = FailedInstall::run(
        "k8s-run-weak-values",
        "hubtrust-t3",
        &["--values", &weak.display().to_string()],
    );
    assert_eq!(run.code, Some(1), "{}", run.said);
    let (kept, why) = run.status("The deployment's own values keep internal TLS");
    assert_eq!(kept, "failed");
    assert!(
        why.contains(&format!(
            "{}: hub.config.JupyterHub.internal_ssl is false: internal TLS between hub, proxy and labs is off",
            weak.display()
        )) && why.contains("singleuser.extraEnv is a list: KubeSpawner takes the labs' variables only as a mapping")
            && why.contains("fix:"),
        "{why}"
    );
    assert!(run.said.contains("warning: "), "{}", run.said);
}

/// `--keep` leaves a deployment that failed for `kubectl describe`, and
/// says how to remove it; the report does not claim it was removed.
#[test]
fn a_failed_run_with_keep_leaves_the_namespace_and_says_how_to_remove_it() {
    let run = FailedInstall::run("k8s-run-keep", "hubtrust-t2", &["--keep"]);
    let said = &run.said;
    assert_eq!(run.code, Some(1), "{said}");
    assert!(
        !run.calls.contains("delete namespace"),
        "a kept namespace was deleted: {}",
        run.calls
    );
    let (torn_down, why) = run.status("Everything the run made is removed");
    assert_eq!(torn_down, "skipped", "{why}");
    assert!(
        why.contains("kept for inspection (--keep)")
            && why.contains("kubectl delete namespace hubtrust-t2"),
        "{why}"
    );
}

/// `hubtrust up --backend kubernetes --namespace jhub` with the tools of
/// `bin`.
fn up_into_namespace_jhub(dir: &Path, bin: &Path) -> std::process::Output {
    let (list, _) = pinned_list(dir);
    hubtrust()
        .args([
            "up",
            "--backend",
            "kubernetes",
            "--namespace",
            "jhub",
            "--images",
        ])
        .arg(&list)
        .env("PATH", path_with(bin))
        .output()
        .unwrap()
}

#[test]
fn a_namespace_that_already_exists_is_refused_and_left_alone() {
    let dir = scratch("k8s-namespace");
    let bin = fake_tools(
        &dir,
        &[
            ("helm", "exit 0"),
            (
                "kubectl",
                "case \"$*\" in *readyz*) echo ok ;; *'get namespace'*) echo namespace/jhub ;; esac; exit 0",
            ),
        ],
    );
    let out = up_into_namespace_jhub(&dir, &bin);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("the namespace `jhub`: already exists"),
        "{said}"
    );
    let log = calls(&dir);
    assert!(
        !log.contains("delete") && !log.contains("create"),
        "hubtrust touched a namespace it did not make: {log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A namespace an earlier run from this machine left (its run gone) is
/// refused all the same, saying whose it is and the command that deletes
/// it; hubtrust still does not delete it itself.
#[test]
fn a_namespace_an_earlier_run_left_is_refused_naming_it_as_such() {
    use hubtrust_harness::backend::kubernetes::{this_machine, MADE_ON_LABEL, RUN_DIR_ANNOTATION};
    let dir = scratch("k8s-namespace-left");
    let answer = dir.join("namespace.json");
    std::fs::write(
        &answer,
        serde_json::json!({ "kind": "Namespace", "metadata": {
            "name": "jhub",
            "labels": { MADE_ON_LABEL: this_machine().expect("this machine's id") },
            "annotations": { RUN_DIR_ANNOTATION: dir.join("hubtrust-run-kubernetes-gone").display().to_string() },
        }})
        .to_string(),
    )
    .unwrap();
    let bin = fake_tools(
        &dir,
        &[
            ("helm", "exit 0"),
            (
                "kubectl",
                &format!(
                    "case \"$*\" in *readyz*) echo ok ;; *'get namespace jhub'*) cat '{}' ;; esac; exit 0",
                    answer.display()
                ),
            ),
        ],
    );
    let out = up_into_namespace_jhub(&dir, &bin);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("the namespace `jhub`: already exists: an earlier hubtrust run from this machine made it")
            && said.contains("kubectl delete namespace jhub"),
        "{said}"
    );
    let log = calls(&dir);
    assert!(!log.contains("delete") && !log.contains("create"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_image_the_daemon_does_not_hold_is_refused_before_the_cluster_is_made() {
    let dir = scratch("k8s-image");
    let bin = fake_tools(
        &dir,
        &[
            ("kind", "exit 0"),
            ("helm", "exit 0"),
            ("kubectl", "exit 0"),
            (
                "docker",
                "case \"$*\" in version*) echo 1.48 ;; *) echo 'Error: No such image' >&2; exit 1 ;; esac",
            ),
        ],
    );
    let (list, _) = pinned_list(&dir);
    let out = up_on_kind(&bin, &list).output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("is not loaded in the docker daemon"),
        "{said}"
    );
    assert!(
        said.contains("hubtrust images pull fixtures/kubernetes/images.toml"),
        "{said}"
    );
    assert!(
        !calls(&dir).contains("kind create"),
        "the cluster was made anyway"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_image_under_its_tag_but_of_another_digest_is_refused() {
    let dir = scratch("k8s-image-moved");
    let bin = fake_tools(
        &dir,
        &[
            ("kind", "exit 0"),
            ("helm", "exit 0"),
            ("kubectl", "exit 0"),
            (
                "docker",
                &format!(
                    "case \"$*\" in version*) echo 1.48 ;; *) echo sha256:{} linux/amd64 quay.io/jupyterhub/k8s-hub@sha256:{} ;; esac",
                    "ef".repeat(32),
                    "cd".repeat(32)
                ),
            ),
        ],
    );
    let (list, digest) = pinned_list(&dir);
    let out = up_on_kind(&bin, &list).output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("which is not the pinned image") && said.contains(&digest),
        "{said}"
    );
    assert!(
        !calls(&dir).contains("kind create"),
        "the cluster was made anyway"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_docker_daemon_too_old_to_save_one_platform_is_refused_before_the_cluster_is_made() {
    let dir = scratch("k8s-old-docker");
    let bin = fake_tools(
        &dir,
        &[
            ("kind", "exit 0"),
            ("helm", "exit 0"),
            ("kubectl", "exit 0"),
            (
                "docker",
                "case \"$*\" in version*) echo 1.41 ;; esac; exit 0",
            ),
        ],
    );
    let (list, _) = pinned_list(&dir);
    let out = up_on_kind(&bin, &list).output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("API 1.41") && said.contains("Docker 28 or newer"),
        "{said}"
    );
    assert!(
        !calls(&dir).contains("kind create"),
        "the cluster was made anyway"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `hubtrust run --backend BACKEND --plan FLAG FILE`: its exit code and
/// what it said.
fn plan_with(
    backend: &str,
    flag: &str,
    file: impl AsRef<std::ffi::OsStr>,
) -> (Option<i32>, String) {
    let out = hubtrust()
        .args(["run", "--backend", backend, "--plan", flag])
        .arg(file)
        .output()
        .unwrap();
    (out.status.code(), text(&out))
}

#[test]
fn an_unpinned_chart_version_is_exit_2_naming_the_stack_file() {
    let dir = scratch("k8s-chart");
    let stack = dir.join("stack.toml");
    std::fs::write(&stack, "[kubernetes]\nchart_version = \"^4.4\"\n").unwrap();
    let (code, said) = plan_with("kind", "--stack", &stack);
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("stack.toml") && said.contains("chart version `^4.4` is not pinned"),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kubernetes_options_without_a_kubernetes_backend_are_refused() {
    for args in [
        &["run", "--plan"][..],
        &["up", "--values", "examples/z2jh/config.yaml"],
        &["run", "--manifests", "examples/z2jh/objects.yaml"],
    ] {
        let out = hubtrust().args(args).output().unwrap();
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(
            said.contains("fix: add --backend kind or --backend kubernetes"),
            "{said}"
        );
    }
}

/// `--repeat` would make a cluster or namespace and install the chart
/// each round: refused, not silently run once.
#[test]
fn repeat_on_a_kubernetes_backend_is_exit_2_naming_the_fix() {
    let out = hubtrust()
        .args(["run", "--backend", "kind", "--repeat", "2", "--plan"])
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("--repeat 2: not built for --backend kind") && said.contains("fix:"),
        "{said}"
    );
}

/// A deployment's own values go to helm before hubtrust's, and every key
/// of theirs hubtrust's replace is named; the rest is installed as written.
#[test]
fn your_own_values_are_installed_under_hubtrusts_naming_each_key_replaced() {
    let (code, said) = plan_with("kubernetes", "--values", "examples/z2jh/config.yaml");
    assert_eq!(code, Some(0), "{said}");
    let theirs = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("examples/z2jh/config.yaml");
    let install = said
        .lines()
        .find(|l| l.trim_start().starts_with("helm install"))
        .unwrap_or_else(|| panic!("{said}"));
    let their_position = install
        .find(&format!("--values {}", theirs.display()))
        .unwrap_or_else(|| panic!("their values are not given: {install}"));
    let our_position = install.find("values.json").expect("hubtrust's values");
    assert!(their_position < our_position, "{install}");
    assert!(
        said.contains(&format!(
            "note: {}: hubtrust's values replace yours at hub.config.JupyterHub.authenticator_class, proxy.https.type (",
            theirs.display()
        )),
        "{said}"
    );
}

/// A deployment's own lab image, replaced by the images list's, is named
/// with how to check it instead.
#[test]
fn your_own_lab_image_replaced_is_named_with_how_to_check_it() {
    let dir = scratch("k8s-own-lab-image");
    let values = dir.join("config.yaml");
    std::fs::write(
        &values,
        "singleuser:\n  image:\n    name: ghcr.io/example/lab\n    tag: '2026.11'\n",
    )
    .unwrap();
    let (code, said) = plan_with("kind", "--values", &values);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("replace yours at singleuser.image.name, singleuser.image.tag")
            && said.contains("note: your lab image is not what runs: the images list's [lab] is (fix: to check yours, copy fixtures/kubernetes/images.toml with yours under [lab], pin it with `hubtrust images pin LIST`, and pass --images LIST)"),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A deployment's own resource prefix, base URL, spawner namespace, hub
/// Secret or profiles would move the Services off the names the
/// certificates carry, the hub off the paths hubtrust asks, the labs out
/// of the run's namespace or into another image: each is named as
/// replaced, and the run keeps the chart's defaults.
#[test]
fn your_own_names_paths_secret_and_profiles_are_named_replaced() {
    let (code, said) = plan_with(
        "kubernetes",
        "--values",
        "fixtures/kubernetes/values-hubtrust-replaces.yaml",
    );
    assert_eq!(code, Some(0), "{said}");
    let note = said
        .lines()
        .find(|l| l.starts_with("note:") && l.contains("hubtrust's values replace yours"))
        .unwrap_or_else(|| panic!("no key named replaced: {said}"));
    for key in [
        "fullnameOverride",
        "hub.baseUrl",
        "hub.existingSecret",
        "hub.config.KubeSpawner.enable_user_namespaces",
        "hub.config.KubeSpawner.namespace",
        "singleuser.profileList",
    ] {
        assert!(note.contains(key), "{key} not named: {note}");
    }
    assert!(
        said.contains("note: the lab image of your default profile is not what runs: the images list's [lab] is (fix:"),
        "{said}"
    );
}

/// Values that are not a mapping helm could read are exit 2 naming the
/// file, before anything is made.
#[test]
fn values_that_are_not_a_mapping_are_exit_2_naming_the_file() {
    let dir = scratch("k8s-bad-values");
    let values = dir.join("config.yaml");
    std::fs::write(&values, "hub:\n\tconfig: {}\n").unwrap();
    let before = kubernetes_run_dirs();
    let (code, said) = plan_with("kind", "--values", &values);
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains(&values.display().to_string()) && said.contains("is not YAML helm can read"),
        "{said}"
    );
    assert_eq!(kubernetes_run_dirs(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The deployment's own objects are shown in the plan by kind and name,
/// never by content (a Secret's data is theirs), and applied from their
/// file.
#[test]
fn your_own_objects_are_named_in_the_plan_and_their_contents_are_not_shown() {
    let dir = scratch("k8s-own-objects");
    let objects = dir.join("objects.yaml");
    std::fs::write(
        &objects,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: oauth}\nstringData: {client-secret: s3cr3t-of-theirs}\n",
    )
    .unwrap();
    let (code, said) = plan_with("kubernetes", "--manifests", &objects);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("make your own objects the chart values name (Secret/oauth)")
            && said.contains(&format!("-f {}", objects.display())),
        "{said}"
    );
    assert!(!said.contains("s3cr3t-of-theirs"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An object that could outlive the run's namespace, land outside it, or
/// replace one of hubtrust's own is exit 2 naming it, before anything is
/// made.
#[test]
fn objects_the_run_could_not_remove_or_that_clash_are_exit_2_naming_them() {
    let dir = scratch("k8s-bad-objects");
    let before = kubernetes_run_dirs();
    for (manifest, named) in [
        (
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: wide}\n",
            "ClusterRole/wide (rbac.authorization.k8s.io/v1) is not a kind hubtrust knows to live in a namespace",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: jhub}\n",
            "ConfigMap/c names the namespace `jhub`",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: hubtrust-proxy-tls}\n",
            "Secret/hubtrust-proxy-tls is a name hubtrust's own objects take",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hub}\n",
            "ConfigMap/hub is a name the Zero to JupyterHub chart's own objects take",
        ),
    ] {
        let objects = dir.join("objects.yaml");
        std::fs::write(&objects, manifest).unwrap();
        let out = hubtrust()
            .args(["up", "--backend", "kind", "--plan", "--manifests"])
            .arg(&objects)
            .output()
            .unwrap();
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(
            said.contains(&objects.display().to_string()) && said.contains(named) && said.contains("fix:"),
            "{said}"
        );
        assert!(!said.contains("## commands"), "a plan was printed: {said}");
    }
    assert_eq!(kubernetes_run_dirs(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Real JupyterHub makes the store, as a run does before install.
#[test]
fn the_internal_cas_for_the_chart_name_every_service_and_the_hub_pods_paths() {
    let dir = scratch("k8s-ca-certs");
    let tarball = dir.join("ca_certs.tar.gz");
    let out = hubtrust()
        .args(["ca-certs", "--kubernetes-namespace", "jhub"])
        .arg(&tarball)
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    let mode = std::fs::metadata(&tarball).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "ca_certs.tar.gz holds the CA keys");
    let unpacked = dir.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    let missing =
        hubtrust_harness::backend::kubernetes::names::missing_sans(&unpacked, None, "jhub")
            .unwrap();
    assert!(missing.is_empty(), "{missing:?}");
    let store = std::fs::read_to_string(unpacked.join("certipy.json")).unwrap();
    assert!(
        store.contains("\"/srv/jupyterhub/internal-ssl/hub-ca/hub-ca.key\""),
        "{store}"
    );
    assert!(
        !store.contains(&std::env::temp_dir().display().to_string()),
        "the store names this machine's paths: {store}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process in a network namespace of its own serving HTTP on
/// 127.0.0.1:8888 (python `server`, a program), as a lab pod's namespace
/// holds a lab; killed on drop.
struct NamespacedServer(std::process::Child);

/// Python's HTTP server over TLS with CERT and KEY (argv 1 and 2).
const TLS_SERVER: &str = "import http.server, ssl, sys
s = http.server.HTTPServer(('127.0.0.1', 8888), http.server.SimpleHTTPRequestHandler)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
c.load_cert_chain(sys.argv[1], sys.argv[2])
s.socket = c.wrap_socket(s.socket, server_side=True)
s.serve_forever()";

impl NamespacedServer {
    fn start(server: &[&str]) -> Self {
        let child = std::process::Command::new("unshare")
            .args([
                "--net",
                "sh",
                "-c",
                "ip link set lo up && exec \"$@\"",
                "sh",
            ])
            .args(server)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = Self(child);
        wait_listening(server.0.id(), &[8888]);
        server
    }
}

/// Waits (at most 20 s) until process `pid`'s network namespace listens
/// on every one of `ports`.
fn wait_listening(pid: u32, ports: &[u16]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
        let listening = hubtrust_harness::backend::kubernetes::in_cluster::listening_ports(&[&tcp]);
        if ports.iter().all(|p| listening.contains(p)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listened on {ports:?} in pid {pid}'s namespace (listening: {listening:?})"
        );
        // Bounded poll interval while python starts.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits until process `pid` is in a network namespace other than this
/// process's.
fn wait_own_namespace(pid: u32) {
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .as_ref()
        == Some(&ours)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} did not enter a network namespace of its own"
        );
        // Bounded poll interval while unshare starts.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl Drop for NamespacedServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `hubtrust capture` on `interface` of `pid`'s namespace while `traffic`
/// runs, as the kind bring-up captures a pod's interface: its evidence.
fn capture_in<T>(
    pid: u32,
    interface: &str,
    dir: &Path,
    traffic: impl FnOnce() -> T,
) -> (hubtrust_harness::capture::LinkEvidence, T) {
    use std::io::BufRead as _;
    let mut capture = hubtrust()
        .args([
            "capture",
            "--netns-of",
            &pid.to_string(),
            "--interface",
            interface,
        ])
        .args(["--name", &format!("{interface}-{pid}"), "--out"])
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(capture.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), "capturing");
    let done = traffic();
    drop(capture.stdin.take());
    assert!(capture.wait().unwrap().success());
    let evidence =
        serde_json::from_slice(&std::fs::read(dir.join("evidence.json")).unwrap()).unwrap();
    (evidence, done)
}

/// `hubtrust capture` on `lo` of `pid`'s namespace while `traffic` runs,
/// judged as the kind bring-up judges a lab pod's interface, with
/// 127.0.0.1 named `jupyter-alice`.
fn capture_and_judge(
    pid: u32,
    dir: &Path,
    traffic: impl FnOnce(),
) -> (
    hubtrust_harness::capture::WireCensus,
    hubtrust_harness::backend::kubernetes::in_cluster::PodWire,
) {
    let (evidence, ()) = capture_in(pid, "lo", dir, traffic);
    let names = [(std::net::Ipv4Addr::LOCALHOST, "jupyter-alice".to_string())].into();
    let census = hubtrust_harness::capture::WireCensus::build(vec![evidence], &names);
    let verdict = hubtrust_harness::backend::kubernetes::in_cluster::judge_wire(
        &census,
        &[(
            "jupyter-alice".to_string(),
            vec![
                hubtrust_harness::backend::kubernetes::in_cluster::ExpectedFlow::Into {
                    port: 8888,
                },
            ],
        )],
    );
    (census, verdict)
}

/// Fetches `url` from inside `pid`'s network namespace, not verifying a
/// server certificate: the wire is under test, not the trust.
fn fetch_inside(pid: u32, url: &str) {
    let fetched = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args([
            "python3",
            "-c",
            "import ssl, sys, urllib.request; urllib.request.urlopen(sys.argv[1], context=ssl._create_unverified_context()).read()",
            url,
        ])
        .status()
        .unwrap();
    assert!(fetched.success());
}

#[test]
fn a_capture_in_a_pods_namespace_names_plaintext_and_never_passes_an_empty_wire() {
    use hubtrust_harness::backend::kubernetes::in_cluster::PodWire;
    if !common::real_root() {
        eprintln!("not root: the capture in another namespace did not run");
        return;
    }
    let dir = scratch("capture-in-netns");
    let server = NamespacedServer::start(&[
        "python3",
        "-m",
        "http.server",
        "8888",
        "--bind",
        "127.0.0.1",
    ]);
    let pid = server.0.id();
    let (_, plain) = capture_and_judge(pid, &dir.join("plain"), || {
        fetch_inside(pid, "http://127.0.0.1:8888/")
    });
    match plain {
        PodWire::Plaintext(flows) => assert!(
            flows
                .iter()
                .any(|f| f.contains("→ jupyter-alice:8888") && f.contains("plaintext HTTP GET /")),
            "{flows:?}"
        ),
        other => panic!("plain HTTP into the lab was judged {other:?}"),
    }
    let (_, quiet) = capture_and_judge(pid, &dir.join("quiet"), || {});
    assert_eq!(
        quiet,
        PodWire::Inconclusive(
            "no connection into jupyter-alice:8888 that carried data was seen on its interface"
                .into()
        )
    );
    drop(server);

    let ca = hubtrust_harness::pki::CertificateAuthority::root("hubtrust-test").unwrap();
    let (cert, key) = ca
        .issue(
            "jupyter-alice",
            &["127.0.0.1"],
            hubtrust_harness::pki::Usage::Server,
            hubtrust_harness::pki::Validity::fresh(1),
        )
        .unwrap()
        .write_to(&dir)
        .unwrap();
    let server = NamespacedServer::start(&[
        "python3",
        "-c",
        TLS_SERVER,
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    ]);
    let pid = server.0.id();
    let (census, tls) = capture_and_judge(pid, &dir.join("tls"), || {
        fetch_inside(pid, "https://127.0.0.1:8888/")
    });
    match tls {
        PodWire::Encrypted(flows) => {
            assert!(flows.contains("→ jupyter-alice:8888 TLS 1.3"), "{flows}")
        }
        other => panic!("TLS into the lab was judged {other:?}"),
    }
    // A connection the captured pod should have made and did not: never a
    // pass, even with every flow seen encrypted.
    let missing = hubtrust_harness::backend::kubernetes::in_cluster::judge_wire(
        &census,
        &[(
            "jupyter-alice".to_string(),
            vec![
                hubtrust_harness::backend::kubernetes::in_cluster::ExpectedFlow::To {
                    service: "proxy-api".into(),
                    port: 8001,
                },
            ],
        )],
    );
    assert_eq!(
        missing,
        PodWire::Inconclusive(
            "no connection from jupyter-alice to proxy-api:8001 that carried data was seen on its interface"
                .into()
        )
    );
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bring_up_that_fails_on_the_cluster_keeps_every_pods_log_and_tears_down() {
    let dir = scratch("k8s-logs");
    let (list, digest) = pinned_list(&dir);
    let bin = fake_tools(
        &dir,
        &[
            ("kind", "exit 0"),
            ("helm", "exit 0"),
            (
                "docker",
                &format!(
                    "case \"$1\" in image) echo sha256:{} linux/amd64 quay.io/jupyterhub/k8s-hub@{digest};; version) echo 1.48;; esac; exit 0",
                    "ef".repeat(32)
                ),
            ),
            (
                "kubectl",
                "case \"$*\" in
                   *rollout*) echo 'error: timed out waiting for the condition' >&2; exit 1;;
                   *'get pods -o jsonpath'*) echo hub-5d8f; echo proxy-7c9a;;
                   *'get pods -o wide'*) echo 'hub-5d8f 0/1 CrashLoopBackOff';;
                   *'get events'*) echo 'Back-off restarting failed container hub';;
                   *logs*) echo \"the log of $*\";;
                 esac; exit 0",
            ),
        ],
    );
    let out = up_on_kind(&bin, &list).current_dir(&dir).output().unwrap();
    let said = text(&out);
    // A deployment that fails its checks is exit 1; bad input is 2.
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("the deployment does not pass its checks, so it was not held"),
        "{said}"
    );
    assert!(
        said.contains("timed out waiting for the condition"),
        "{said}"
    );
    let namespaces: Vec<PathBuf> = std::fs::read_dir(dir.join("hubtrust-in-cluster"))
        .unwrap_or_else(|e| panic!("no hubtrust-in-cluster/ ({e}): {said}"))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(namespaces.len(), 1, "{namespaces:?}");
    let logs = namespaces[0].join("logs");
    assert!(
        said.contains("every pod's log and the namespace's events: hubtrust-in-cluster/"),
        "{said}"
    );
    let read = |file: &str| std::fs::read_to_string(logs.join(file)).unwrap();
    assert!(read("pods.txt").contains("CrashLoopBackOff"));
    assert!(read("events.txt").contains("Back-off restarting"));
    for pod in ["hub-5d8f", "proxy-7c9a"] {
        let log = read(&format!("{pod}.log"));
        assert!(
            log.contains(&format!(
                "logs {pod} --all-containers --prefix --timestamps"
            )),
            "{log}"
        );
    }
    // The nodes' own logs, for pods that never started.
    assert!(calls(&dir).contains("kind export logs hubtrust-in-cluster/"));
    assert!(calls(&dir).contains("kind delete cluster"), "not torn down");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `hubtrust up --backend kind` (or `kubernetes`, on the cluster of a
/// kubeconfig of the test's) with small scripts for kind, helm (whose
/// install touches `installing` and then blocks), docker and kubectl, in
/// a process group of its own, its temporary directory `tmp` its own, out
/// of the sight of the tests beside it.
struct UpToKill {
    dir: Scratch,
    up: std::process::Child,
    installing: PathBuf,
    tmp: PathBuf,
    backend: &'static str,
}

impl UpToKill {
    fn start(name: &str) -> Self {
        Self::start_on(name, "kind", None)
    }

    /// On `backend`, with `tmp` as its temporary directory when given
    /// (shared with an earlier run).
    fn start_on(name: &str, backend: &'static str, tmp: Option<&Path>) -> Self {
        use std::os::unix::process::CommandExt;
        let dir = scratch(name);
        let (list, digest) = pinned_list(&dir);
        let installing = dir.join("helm-installing");
        let bin = fake_tools(
            &dir,
            &[
                ("kind", "exit 0"),
                (
                    "helm",
                    &format!(
                        "case \"$*\" in *install*) touch '{}'; exec sleep 600;; esac; exit 0",
                        installing.display()
                    ),
                ),
                (
                    "docker",
                    &format!(
                        "case \"$1\" in image) echo sha256:{} linux/amd64 quay.io/jupyterhub/k8s-hub@{digest};; version) echo 1.48;; esac; exit 0",
                        "ef".repeat(32)
                    ),
                ),
                ("kubectl", "exit 0"),
            ],
        );
        let tmp = tmp.map_or_else(|| dir.join("tmp"), Path::to_path_buf);
        std::fs::create_dir_all(&tmp).unwrap();
        let mut up = hubtrust();
        up.args(["up", "--backend", backend, "--images"])
            .arg(&list)
            .env("PATH", path_with(&bin));
        if backend == "kubernetes" {
            up.arg("--kubeconfig").arg(dir.join("user.kubeconfig"));
        }
        let up = up
            .current_dir(&dir)
            .env("TMPDIR", &tmp)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        UpToKill {
            dir,
            up,
            installing,
            tmp,
            backend,
        }
    }

    /// Waits, polling, until `done`, failing the test after 60 s.
    fn until(&self, what: &str, done: &dyn Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} within 60 s; calls: {}",
                calls(&self.dir)
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The run directory hubtrust made, once it has.
    fn run_dir(&self) -> Option<PathBuf> {
        std::fs::read_dir(&self.tmp)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    n.to_string_lossy()
                        .starts_with(&format!("hubtrust-run-{}-", self.backend))
                })
            })
    }

    /// SIGKILL to hubtrust and every tool it runs, as a CI runner kills a
    /// cancelled job's process group; the reaper is in a group of its own.
    fn kill_the_group(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.up.id() as i32);
        nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).unwrap();
        self.up.wait().unwrap();
    }
}

/// A test that fails before its kill still kills the group, so that the
/// run's reaper cleans up after it.
impl Drop for UpToKill {
    fn drop(&mut self) {
        if let Ok(None) = self.up.try_wait() {
            let group = nix::unistd::Pid::from_raw(self.up.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = self.up.wait();
        }
    }
}

/// Killed outright mid-install: the reaper deletes the cluster and removes
/// the run's directory, whose keys would otherwise stay behind.
#[test]
fn sigkill_mid_install_deletes_the_cluster_and_leaves_no_key_behind() {
    let mut up = UpToKill::start("k8s-sigkill");
    up.until("helm install was not reached", &|| up.installing.exists());
    let run_dir = up.run_dir().expect("a run directory");
    assert!(
        common::walk(&run_dir)
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "key")),
        "the run held no key to leave behind: the test shows nothing"
    );
    up.kill_the_group();
    up.until("the reaper did not delete the cluster", &|| {
        calls(&up.dir).contains("kind delete cluster")
    });
    up.until("the run's directory, keys and all, was left", &|| {
        !run_dir.exists()
    });
}

/// On a cluster of the user's own, killed outright mid-install: the reaper
/// deletes the run's namespace, on the user's cluster (their kubeconfig),
/// and removes the run's directory.
#[test]
fn sigkill_mid_install_on_a_cluster_of_your_own_deletes_only_the_runs_namespace() {
    let mut up = UpToKill::start_on("k8s-sigkill-existing", "kubernetes", None);
    up.until("helm install was not reached", &|| up.installing.exists());
    let run_dir = up.run_dir().expect("a run directory");
    up.kill_the_group();
    let kubeconfig = up.dir.join("user.kubeconfig");
    let deleted = format!(
        "kubectl --kubeconfig {} delete namespace hubtrust-",
        kubeconfig.display()
    );
    up.until("the reaper did not delete the run's namespace", &|| {
        calls(&up.dir).contains(&deleted)
    });
    up.until("the run's directory, keys and all, was left", &|| {
        !run_dir.exists()
    });
    let called = calls(&up.dir);
    let namespace = called
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "kubectl --kubeconfig {} create -f ",
                kubeconfig.display()
            ))
        })
        .expect("the namespace was created from its manifest");
    assert!(namespace.ends_with("manifests/namespace.json"), "{called}");
    assert_eq!(
        called.lines().filter(|l| l.contains(" delete ")).count(),
        1,
        "only the run's namespace is deleted: {called}"
    );
    assert!(!called.contains("kind "), "{called}");
}

/// Killed outright while it makes the certificates, before any cluster:
/// the run's directory goes, and nothing is torn down that was not made.
#[test]
fn sigkill_before_the_cluster_is_made_leaves_no_key_behind() {
    let mut up = UpToKill::start("k8s-sigkill-early");
    up.until("no run directory was made", &|| up.run_dir().is_some());
    // Named before the kill: the reaper may remove it at once after.
    let run_dir = up.run_dir().expect("a run directory");
    up.kill_the_group();
    let killed_early = !calls(&up.dir).contains("kind create cluster");
    up.until("the run's directory was left", &|| !run_dir.exists());
    // Killed before kind was asked for a cluster (the certificates take
    // seconds; this is milliseconds after the directory): nothing of
    // kind's is deleted either.
    if killed_early {
        assert!(
            !calls(&up.dir).contains("kind delete cluster"),
            "{}",
            calls(&up.dir)
        );
    }
}

/// A kind cluster hubtrust made for a run that is gone (its reaper killed
/// with it) is named by `doctor`, with the command that deletes it; a
/// live run's cluster and the user's own are not.
#[test]
fn doctor_names_a_kind_cluster_left_by_a_run_that_is_gone() {
    let dir = scratch("k8s-doctor-left");
    let bin = fake_tools(
        &dir,
        &[(
            "kind",
            "case \"$*\" in \"get clusters\") printf 'hubtrust-0badc0de\\nhubtrust-11ve0000\\nusers-own\\n';; *) echo kind v0.29.0;; esac",
        )],
    );
    let tmp = dir.join("tmp");
    let live = tmp.join("hubtrust-run-kind-11ve0000");
    std::fs::create_dir_all(&live).unwrap();
    let lock = std::fs::File::create(live.join(".alive")).unwrap();
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = hubtrust()
        .arg("doctor")
        .env("PATH", path)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let said = text(&out);
    let line = said
        .lines()
        .find(|l| l.contains("kind clusters of runs that are gone"))
        .unwrap_or_else(|| panic!("{said}"));
    assert!(
        line.starts_with("warn ")
            && line.contains(" hubtrust-0badc0de: made by hubtrust for runs that are gone")
            && !line.contains("11ve0000")
            && !line.contains("users-own"),
        "{said}"
    );
    assert!(
        said.contains("fix: delete each with `kind delete cluster --name NAME`"),
        "{said}"
    );
}

/// On a cluster of your own (`doctor --kubeconfig`, as a run is given
/// it), `doctor` names the namespaces this machine's runs left (the run's
/// directory no longer held), with the command that deletes them; a live
/// run's is not named, and another machine's is counted but never judged.
#[test]
fn doctor_names_a_namespace_left_by_a_run_that_is_gone() {
    use hubtrust_harness::backend::kubernetes::{this_machine, MADE_ON_LABEL, RUN_DIR_ANNOTATION};
    let dir = scratch("k8s-doctor-namespaces");
    let tmp = dir.join("tmp");
    let live = tmp.join("hubtrust-run-kubernetes-11ve0000");
    std::fs::create_dir_all(&live).unwrap();
    let lock = std::fs::File::create(live.join(".alive")).unwrap();
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let here = this_machine().expect("this machine's id");
    let namespace = |name: &str, made_on: &str, run_dir: &Path| {
        serde_json::json!({ "metadata": {
            "name": name,
            "labels": { "app.kubernetes.io/managed-by": "hubtrust", MADE_ON_LABEL: made_on },
            "annotations": { RUN_DIR_ANNOTATION: run_dir.display().to_string() },
        }})
    };
    let listed = dir.join("namespaces.json");
    std::fs::write(
        &listed,
        serde_json::json!({ "items": [
            namespace("hubtrust-0badc0de", &here, &tmp.join("hubtrust-run-kubernetes-0badc0de")),
            namespace("hubtrust-11ve0000", &here, &live),
            namespace("hubtrust-e15e0000", "0000000000000000", &tmp.join("hubtrust-run-kubernetes-e15e0000")),
        ]})
        .to_string(),
    )
    .unwrap();
    let bin = fake_tools(
        &dir,
        &[(
            "kubectl",
            &format!(
                "case \"$*\" in \"--kubeconfig {config} --request-timeout=5s get --raw /readyz\") echo ok;; \"--kubeconfig {config} get namespaces -l app.kubernetes.io/managed-by=hubtrust -o json\") cat '{}';; version*) echo 'Client Version: v1.33.1';; *) exit 1;; esac",
                listed.display(),
                config = dir.join("ci.kubeconfig").display(),
            ),
        )],
    );
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = hubtrust()
        .args(["doctor", "--kubeconfig"])
        .arg(dir.join("ci.kubeconfig"))
        .env("PATH", path)
        .env("TMPDIR", &tmp)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let said = text(&out);
    let line = said
        .lines()
        .find(|l| l.contains("namespaces of runs that are gone"))
        .unwrap_or_else(|| panic!("{said}"));
    assert!(
        line.starts_with("warn ")
            && line.contains(
                " hubtrust-0badc0de: made from this machine by hubtrust runs that are gone"
            )
            && line.contains("1 made from other machines (hubtrust-e15e0000), not judged")
            && !line.contains("11ve0000"),
        "{said}"
    );
    assert!(
        said.contains("fix: delete each with `kubectl delete namespace NAME`"),
        "{said}"
    );
}

/// The reaper killed too (`kill -9 -1`, the OOM killer): nothing can
/// remove the run's directory at once, so the next run sweeps it.
#[test]
fn a_run_directory_left_when_the_reaper_is_killed_too_is_swept_by_the_next_run() {
    let mut first = UpToKill::start("k8s-sigkill-all");
    first.until("helm install was not reached", &|| {
        first.installing.exists()
    });
    let run_dir = first.run_dir().expect("a run directory");
    let reaper = process_whose_command_line_holds(&run_dir.display().to_string())
        .expect("the reaper is running");
    nix::sys::signal::kill(reaper, nix::sys::signal::Signal::SIGKILL).unwrap();
    first.kill_the_group();
    assert!(
        run_dir.exists(),
        "nothing should have been left to remove the directory"
    );
    let tmp = first.tmp.clone();
    let second = UpToKill::start_on("k8s-sigkill-next", "kind", Some(&tmp));
    second.until("the next run did not reach helm install", &|| {
        second.installing.exists()
    });
    assert!(!run_dir.exists(), "the next run did not sweep {run_dir:?}");
}

/// A live process whose command line holds `text`.
fn process_whose_command_line_holds(text: &str) -> Option<nix::unistd::Pid> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(text)
                .then(|| nix::unistd::Pid::from_raw(pid))
        })
        .next()
}

/// An images list with the chart's three images and a `[mitmproxy]` of
/// the operator's own, with `command`.
fn list_with_mitmproxy(dir: &Path, command: &str) -> PathBuf {
    let list = dir.join("images.toml");
    let chart_list =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/kubernetes/images.toml");
    let mut text = std::fs::read_to_string(chart_list).unwrap();
    text.push_str(&format!(
        "\n[mitmproxy]\nimage = \"docker.io/mitmproxy/mitmproxy:11.0.2\"\ncommand = {command}\n"
    ));
    std::fs::write(&list, text).unwrap();
    list
}

#[test]
fn a_listed_mitmproxy_image_is_the_inspecting_proxy_on_either_backend_and_never_loaded_unused() {
    let dir = scratch("k8s-listed-mitmproxy");
    let list = list_with_mitmproxy(&dir, "[\"/usr/local/bin/mitmdump\"]");
    let plan_listing = |list: Option<&Path>, args: &[&str]| {
        let mut command = hubtrust();
        command.args(["run", "--plan"]).args(args);
        if let Some(list) = list {
            command.arg("--images").arg(list);
        }
        let out = command.output().unwrap();
        (out.status.code(), text(&out))
    };
    let plan = |args: &[&str]| plan_listing(Some(&list), args);
    let enterprise = |backend| {
        [
            "--backend",
            backend,
            "--stack",
            "fixtures/stacks/enterprise.toml",
        ]
    };

    // On kind it is saved and loaded with the chart's images; a cluster of
    // the user's own pulls it (by its digest, once pinned). Either way the
    // labs go through it, and hubtrust's runtime image is not needed.
    for backend in ["kind", "kubernetes"] {
        let (code, said) = plan(&enterprise(backend));
        assert_eq!(code, Some(0), "{said}");
        assert!(
            said.contains("\"image\": \"docker.io/mitmproxy/mitmproxy:11.0.2\""),
            "{said}"
        );
        assert!(said.contains("\"/usr/local/bin/mitmdump\""), "{said}");
        assert!(
            said.contains("\"HTTPS_PROXY\": \"http://hubtrust-inspecting-proxy."),
            "the labs are not sent through the proxy on {backend}: {said}"
        );
        assert_eq!(
            said.contains("images/mitmproxy.tar docker.io/mitmproxy/mitmproxy:11.0.2"),
            backend == "kind",
            "{said}"
        );
        assert!(!said.contains("runtime.tar"), "{said}");
        assert!(!said.contains("is not used"), "{said}");
    }

    // Where no inspecting proxy runs, the image is named as unused and
    // neither loaded nor required.
    let (code, said) = plan(&["--backend", "kind"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("[mitmproxy] (docker.io/mitmproxy/mitmproxy:11.0.2) is not used"),
        "{said}"
    );
    assert!(!said.contains("mitmproxy.tar"), "{said}");

    // Without a listed image a cluster of the user's own runs no proxy, and
    // the run says so, with what that leaves unapplied.
    // The enterprise stack with `line` added to its `[enterprise]` table.
    let enterprise_with = |name: &str, line: &str| {
        let stack = dir.join(name);
        let mut text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/stacks/enterprise.toml"),
        )
        .unwrap();
        text.push_str(line);
        std::fs::write(&stack, text).unwrap();
        stack.display().to_string()
    };
    let stack = enterprise_with(
        "proxy-args.toml",
        "proxy_args = [\"--set\", \"stream_large_bodies=1m\"]\n",
    );
    let (code, said) = plan_listing(None, &["--backend", "kubernetes", "--stack", &stack]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("note: no inspecting proxy runs on --backend kubernetes and [enterprise] proxy_args are not applied")
            && said.contains("fix: list a mitmproxy image as [mitmproxy] in the --images list"),
        "{said}"
    );
    assert!(!said.contains("hubtrust-inspecting-proxy"), "{said}");

    // A vendor's proxy other than mitmproxy runs in the listed image as
    // given, under the contract; without a listed image it is refused.
    let stack = enterprise_with(
        "vendor-proxy.toml",
        "proxy_command = [\"/opt/vendor/proxy\", \"--serve\"]\n",
    );
    let (code, said) = plan(&["--backend", "kind", "--stack", &stack]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("\"/opt/vendor/proxy\",\n              \"--serve\""),
        "{said}"
    );
    assert!(said.contains("\"HUBTRUST_PROXY_CA\""), "{said}");
    let out = hubtrust()
        .args(["run", "--plan", "--backend", "kind", "--stack", &stack])
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("list the proxy's image as [mitmproxy] in the --images list"),
        "{said}"
    );

    // Its command names one program, which hubtrust gives its arguments
    // (the list refuses more, as on docker).
    let list = list_with_mitmproxy(&dir, "[\"mitmdump\", \"--mode\", \"transparent\"]");
    let out = hubtrust()
        .args(["run", "--plan", "--backend", "kind", "--stack"])
        .arg("fixtures/stacks/enterprise.toml")
        .arg("--images")
        .arg(&list)
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("[mitmproxy] command is the one program that stands for mitmdump"),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_the_org_configmap_the_labs_mount_it_optional_and_nothing_creates_it() {
    let (code, said) = plan_with(
        "kind",
        "--stack",
        "fixtures/stacks/enterprise-without-configmap.toml",
    );
    assert_eq!(code, Some(0), "{said}");
    // The labs' merge step still mounts it, optional, so the spawn goes on
    // with the system bundle alone ...
    assert!(
        said.contains("\"name\": \"hubtrust-org-trust\",\n            \"optional\": true"),
        "{said}"
    );
    // ... and no manifest creates it.
    assert!(!said.contains("\"ca-certificates.crt\":"), "{said}");
    assert!(said.contains("\"name\": \"hubtrust-merge-step\""), "{said}");
}

#[test]
fn the_stacks_tls_policy_and_its_exceptions_reach_the_in_cluster_probes() {
    let dir = scratch("kind-tls-policy");
    let stack = dir.join("stack.toml");
    std::fs::write(
        &stack,
        "[tls_policy]\nname = \"modern\"\nexceptions = [{ endpoint = \"proxy public\", allow = [\"TLSv1.2\"], reason = \"an old kiosk browser\" }]\n",
    )
    .unwrap();
    let (code, said) = plan_with("kind", "--stack", &stack);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("TLS policy: Mozilla modern"), "{said}");
    assert!(
        said.contains("except at proxy public: TLSv1.2 (an old kiosk browser)"),
        "{said}"
    );
    assert!(
        !said.contains("[tls_policy] ("),
        "noted as not applied: {said}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The outbound servers and the inspecting proxy the kind bring-up starts,
/// with the certificates and arguments it gives them, in namespaces of
/// their own where the Services' in-cluster names resolve to them; the
/// lab's cell run against them with the bundles a lab can have and the
/// lab's proxy variables, each judged as the bring-up judges it.
#[test]
fn the_lab_tools_trust_the_org_ca_with_the_merged_bundle_and_nothing_else() {
    use hubtrust_harness::backend::kubernetes::{inspecting_proxy, outbound, proxy_wire, OrgTrust};
    if !common::real_root() {
        eprintln!("skipped: a network and mount namespace needs root");
        return;
    }
    let dir = scratch("k8s-outbound");
    let pki = hubtrust_harness::pki::OrgPki::generate().unwrap();
    outbound::issue(&pki, "ns", &dir, true).unwrap();
    inspecting_proxy::write_files(&pki, &dir).unwrap();
    let (signing, upstream) = inspecting_proxy::files(&dir);
    for key in outbound::cert_files(&dir, true)
        .into_iter()
        .map(|(_, _, key)| key)
        .chain([signing.clone()])
    {
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    let tls_dir = dir.join("outbound");
    let script = dir.join("outbound-server.py");
    std::fs::write(&script, outbound::SERVER_SCRIPT).unwrap();
    // Two pods' worth of namespaces, a veth between them as the cluster's
    // network: the lab's (which also serves the org services on loopback
    // and, at 10.99.0.3, the internet Service) and the inspecting proxy's
    // at 10.99.0.1, whose interface is captured as the proxy pod's eth0.
    let hosts = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let lab_hosts = hosts(
        "lab-hosts",
        "127.0.0.1 localhost hubtrust-outbound.ns.svc.cluster.local\n10.99.0.1 hubtrust-inspecting-proxy.ns.svc.cluster.local\n10.99.0.3 hubtrust-internet.ns.svc.cluster.local\n",
    );
    let proxy_hosts = hosts(
        "proxy-hosts",
        "127.0.0.1 localhost\n10.99.0.3 hubtrust-internet.ns.svc.cluster.local\n",
    );
    let components = hubtrust_harness::provision::ensure(&mut std::io::sink()).unwrap();
    let python = components.venv.join("bin/python");
    let mitmdump = components.mitmproxy_venv.join("bin/mitmdump");
    // A fresh network and mount namespace with `hosts` as its /etc/hosts,
    // running `program`.
    let namespaced = |hosts: &Path, program: &Path| {
        let mut c = std::process::Command::new("unshare");
        c.args([
            "--net",
            "--mount",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && ip link set lo up && exec \"$@\"",
        ]);
        c.arg(hosts).arg(program);
        c
    };
    let ip_in = |pid: u32, args: &str| {
        let status = std::process::Command::new("nsenter")
            .args(["--target", &pid.to_string(), "--net", "--", "ip"])
            .args(args.split_whitespace())
            .status()
            .unwrap();
        assert!(status.success(), "ip {args} in {pid}'s namespace");
    };
    let child = namespaced(&lab_hosts, &python)
        .arg(&script)
        .args(outbound::server_args(&tls_dir, true))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let servers = NamespacedServer(child);
    let pid = servers.0.id();
    wait_listening(pid, &[8443, 9443, 7443, 7444, 7445, 7446]);
    // mitmproxy beside them, with the bring-up's arguments; `extra`
    // breaks it on purpose.
    let confdir = dir.join("mitmproxy");
    std::fs::create_dir_all(&confdir).unwrap();
    std::fs::copy(&signing, confdir.join("mitmproxy-ca.pem")).unwrap();
    // A proxy started before leaves its end of the veth until the kernel
    // tears its namespace down; deleting this end deletes the pair now.
    let start_proxy = |extra: &[&str]| {
        let _ = std::process::Command::new("nsenter")
            .args(["--target", &pid.to_string(), "--net", "--"])
            .args(["ip", "link", "del", "vlab"])
            .stderr(std::process::Stdio::null())
            .status();
        let child = namespaced(&proxy_hosts, &mitmdump)
            .args(inspecting_proxy::mitmdump_args(&confdir, &upstream))
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let proxy = NamespacedServer(child);
        let proxy_pid = proxy.0.id();
        // Until unshare has made its namespace, the pid is still in ours.
        wait_own_namespace(proxy_pid);
        let status = std::process::Command::new("ip")
            .args(["link", "add", "vlab", "netns", &pid.to_string()])
            .args(["type", "veth", "peer", "name", "vproxy", "netns"])
            .arg(proxy_pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "the veth between the two namespaces");
        ip_in(pid, "addr add 10.99.0.2/24 dev vlab");
        ip_in(pid, "addr add 10.99.0.3/24 dev vlab");
        ip_in(pid, "link set vlab up");
        ip_in(proxy_pid, "addr add 10.99.0.1/24 dev vproxy");
        ip_in(proxy_pid, "link set vproxy up");
        wait_listening(proxy_pid, &[inspecting_proxy::PORT]);
        proxy
    };
    let proxy = start_proxy(&[]);

    let targets = outbound::targets("ns", true);
    let table = outbound::as_enterprise_targets(&targets, "ns");
    // A merge that lost the org CA: the public root alone.
    let system = dir.join("system.crt");
    std::fs::write(&system, pki.public.cert_pem()).unwrap();
    let bundle = |name: &str, roots: &[String]| {
        let path = dir.join(name);
        std::fs::write(&path, roots.concat()).unwrap();
        path
    };
    let merged = bundle("merged.crt", &[pki.public.cert_pem(), pki.root.cert_pem()]);
    let too_wide = bundle(
        "too-wide.crt",
        &[pki.root.cert_pem(), pki.foreign.cert_pem()],
    );
    let cell = dir.join("cell.py");
    std::fs::write(&cell, outbound::cell(&targets, "ns")).unwrap();
    // The cell inside the servers' namespaces (or, with `servers` false, a
    // namespace of its own where the names resolve the same and nothing
    // listens), with the lab's proxy variables and the five CA variables
    // naming `ca_bundle` (none: the gate is off, the lab keeps its defaults).
    let run_cell_as = |ca_bundle: Option<&Path>, servers: bool, proxied: bool| {
        let mut command = if servers {
            let mut c = std::process::Command::new("nsenter");
            c.args(["--target", &pid.to_string(), "--net", "--mount", "--"]);
            c.arg(&python);
            c
        } else {
            namespaced(&lab_hosts, &python)
        };
        command
            .arg(&cell)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &dir)
            .envs(inspecting_proxy::lab_env("ns", &outbound::REACHED_DIRECTLY));
        if !proxied {
            command.env_remove("HTTPS_PROXY").env_remove("https_proxy");
        }
        if let Some(path) = ca_bundle {
            for variable in hubtrust_harness::pki::CA_VARIABLES {
                command.env(variable, path);
            }
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let printed = String::from_utf8(out.stdout).unwrap();
        hubtrust_harness::enterprise::parse_results(&printed)
            .unwrap_or_else(|e| panic!("{e}: {printed}"))
    };
    let run_cell = |ca_bundle: Option<&Path>, servers: bool| run_cell_as(ca_bundle, servers, true);
    let trust = |merge: bool| OrgTrust {
        configmap_present: true,
        merge_into_labs: merge,
        hub_included: false,
    };

    // The proxy's interface captured while the lab's tools fetch, judged
    // as the kind bring-up judges the proxy pod's eth0.
    let proxy_pid = proxy.0.id();
    let places = proxy_wire::ProxyPlaces {
        proxy_pod: "hubtrust-inspecting-proxy".into(),
        proxy_ip: [10, 99, 0, 1].into(),
        internet_service: outbound::INTERNET_SERVICE.into(),
        internet_ip: [10, 99, 0, 3].into(),
    };
    let names: std::collections::BTreeMap<std::net::Ipv4Addr, String> = [
        (places.proxy_ip, places.proxy_pod.clone()),
        ([10, 99, 0, 2].into(), "jupyter-alice".to_string()),
        (places.internet_ip, places.internet_service.clone()),
    ]
    .into();
    let lab_env: std::collections::BTreeMap<String, String> =
        inspecting_proxy::lab_env("ns", &outbound::REACHED_DIRECTLY)
            .into_iter()
            .collect();
    let wire_dir = dir.join("proxy-wire");
    let through_proxy = |proxied: bool| {
        let (evidence, runs) = capture_in(proxy_pid, "vproxy", &wire_dir, || {
            run_cell_as(Some(&merged), true, proxied)
        });
        let census = hubtrust_harness::capture::WireCensus::build(vec![evidence], &names);
        (
            proxy_wire::judge(&runs, &targets, &census, &places, &lab_env),
            runs,
        )
    };
    let (paths, runs) = through_proxy(true);
    let paths = paths.unwrap();
    // Every tool here, two bundles, four servers behind the proxy: each
    // run seen arriving with its own CONNECT, and the proxy going on to
    // each port of the internet Service.
    let proxied_runs = runs
        .iter()
        .filter(|r| r.outcome != "absent")
        .filter(|r| {
            table
                .iter()
                .any(|t| t.name == r.target && t.proxy.is_some())
        })
        .count();
    assert!(proxied_runs >= 4 * 2 * 4, "{runs:?}");
    assert_eq!(paths.tunnelled_runs, proxied_runs, "{paths:?}");
    assert_eq!(
        paths.legs.keys().copied().collect::<Vec<u16>>(),
        [7443, 7444, 7445, 7446],
        "{paths:?}"
    );
    let said = outbound::judge(&trust(true), &table, &runs).unwrap();
    assert!(
        said[0].starts_with("with the merged bundle each tool verified the org-CA server and the public server re-signed by the inspecting proxy"),
        "{said:?}"
    );
    // A lab whose tools skip the proxy reaches the internet directly: the
    // proxy's interface sees none of those fetches, and each is named.
    let (bypassed, _) = through_proxy(false);
    let err = bypassed.unwrap_err();
    for tool in ["python urllib", "requests", "curl"] {
        assert!(
            err.contains(&format!("{tool} → public server via the inspecting proxy with the merged bundle: bypassed the inspecting proxy")),
            "{err}"
        );
    }
    // A tool this machine lacks is only "not checked".
    assert!(
        said[1..]
            .iter()
            .all(|l| l.ends_with("not checked: it is not in the lab")),
        "{said:?}"
    );
    let said = outbound::judge(&trust(false), &table, &run_cell(None, true)).unwrap();
    assert!(
        said[0].starts_with("without the org bundle merged"),
        "{said:?}"
    );

    // A merge step that left the org CA out, and one that let a foreign CA
    // in, fail naming the tool; a lab that cannot reach the servers shows
    // nothing and fails too.
    let err = outbound::judge(&trust(true), &table, &run_cell(Some(&system), true)).unwrap_err();
    for tool in ["python urllib", "requests", "curl"] {
        for target in ["org-CA server", "public server via the inspecting proxy"] {
            assert!(
                err.contains(&format!(
                    "{tool} → {target} with the merged bundle: expected ok, got unknown-issuer"
                )),
                "{err}"
            );
        }
    }
    let err = outbound::judge(&trust(true), &table, &run_cell(Some(&too_wide), true)).unwrap_err();
    assert!(
        err.contains(
            "curl → foreign-CA server with the merged bundle: expected unknown-issuer, got ok"
        ),
        "{err}"
    );
    let err = outbound::judge(&trust(true), &table, &run_cell(Some(&merged), false)).unwrap_err();
    assert!(
        err.contains("python urllib → org-CA server with the merged bundle: expected ok, got connect-refused")
            && err.contains("shows nothing about trust"),
        "{err}"
    );

    // An inspecting proxy that does not verify its upstreams re-signs the
    // bad ones, and each tool's acceptance is named.
    drop(proxy);
    let _careless = start_proxy(&["--set", "ssl_insecure=true"]);
    let err = outbound::judge(&trust(true), &table, &run_cell(Some(&merged), true)).unwrap_err();
    for target in ["expired server", "wrong-name server", "foreign-CA server"] {
        assert!(
            err.contains(&format!("python urllib → {target} via the inspecting proxy with the merged bundle: the inspecting proxy re-signed a bad upstream")),
            "{err}"
        );
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}
