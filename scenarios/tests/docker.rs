//! End-to-end tests of the docker backend against a real daemon: the core
//! profile in containers, cleanup by the reaper after SIGKILL, `down`, and
//! every bad input the backend names.
//!
//! They need a running daemon and the offline image (`hubtrust images
//! build`, which they run themselves and which is quick once built). Without
//! a daemon they say so and return, unless HUBTRUST_REQUIRE_DOCKER=1 (CI
//! sets it), which makes a missing daemon a failure.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{
    assert_nothing_labelled, docker, docker_ready, hubtrust, labelled, processes_running, run_id,
    scratch, text,
};

/// Every flow of every wire census in a report.
fn wire_flows(report: &serde_json::Value) -> Vec<&serde_json::Value> {
    report["wire"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["flows"].as_array().unwrap())
        .collect()
}

/// What one `hubtrust run --backend docker` said and reported.
struct DockerRun {
    code: Option<i32>,
    output: String,
    report: Option<serde_json::Value>,
}

/// Runs `hubtrust run --backend docker ARGS` as run `run`, with a scratch
/// report directory, and checks that nothing labelled with the run is left.
fn run_on_docker(run: &str, args: &[&str], stack: Option<&str>) -> DockerRun {
    run_on_docker_with(run, args, stack, &[])
}

/// [`run_on_docker`] with `env` added to hubtrust's environment.
fn run_on_docker_with(
    run: &str,
    args: &[&str],
    stack: Option<&str>,
    env: &[(&str, &str)],
) -> DockerRun {
    let dir = scratch(run);
    let mut command = hubtrust();
    command.args(["run", "--backend", "docker"]).args(args);
    command.envs(env.iter().copied());
    if let Some(text) = stack {
        std::fs::write(dir.join("stack.toml"), text).unwrap();
        command.arg("--stack").arg(dir.join("stack.toml"));
    }
    let out = command
        .arg("--report")
        .arg(dir.join("report"))
        .env("HUBTRUST_RUN_ID", run)
        .output()
        .unwrap();
    let report = std::fs::read_to_string(dir.join("report/report.json"))
        .ok()
        .map(|json| serde_json::from_str(&json).unwrap());
    assert_nothing_labelled(run);
    std::fs::remove_dir_all(&dir).unwrap();
    let output = text(&out);
    // What the backend had to work around (a copy fetched again) shows in
    // `cargo test -- --nocapture` even when the test passes.
    for line in output
        .lines()
        .filter(|l| l.starts_with("hubtrust: docker:"))
    {
        eprintln!("{run}: {line}");
    }
    DockerRun {
        code: out.status.code(),
        output,
        report,
    }
}

#[test]
fn a_deployments_own_config_and_merge_step_run_on_docker_too() {
    if !docker_ready() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = root.join("examples/deployment-repo/jupyterhub_config.py");
    let stack = format!(
        "name = \"docker-deployment\"\n[hub]\nconfig_files = [{:?}]\n",
        config.display().to_string()
    );
    let run = run_on_docker(&run_id("deployment"), &["--tags", "@tls"], Some(&stack));
    assert_eq!(run.code, Some(0), "{}", run.output);
    assert!(
        run.output
            .contains("the deployment's config sets c.JupyterHub.hub_ip = '0.0.0.0'; the hub runs with '127.0.0.1'"),
        "{}",
        run.output
    );
    // A vendor's merge step, as an init container in the lab's image.
    let enterprise = std::fs::read_to_string(root.join("fixtures/stacks/enterprise.toml")).unwrap();
    let stack = format!(
        "{enterprise}merge_command = [\"sh\", \"-c\", \"cp \\\"$1\\\" \\\"$3\\\"\", \"merge\"]\n"
    );
    let run = run_on_docker(
        &run_id("vendor-merge"),
        &["--tags", "@enterprise"],
        Some(&stack),
    );
    // It drops the org bundle: the discriminator catches what it wrote.
    assert_eq!(run.code, Some(1), "{}", run.output);
    assert!(
        run.output.contains(
            "curl → org-CA server with the merged bundle: expected ok, got unknown-issuer"
        ),
        "{}",
        run.output
    );
}

#[test]
fn core_profile_passes_with_docker_host_on_tcp() {
    if !docker_ready() {
        return;
    }
    // The daemon, reached over TCP on loopback: a forwarder to its socket,
    // as `dockerd -H tcp://127.0.0.1:…` would listen. The hub's spawner
    // still uses the daemon's unix socket.
    let forwarder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let docker_host = format!("tcp://{}", forwarder.local_addr().unwrap());
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for client in forwarder.incoming().flatten() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let daemon = std::os::unix::net::UnixStream::connect("/var/run/docker.sock").unwrap();
            let (mut client_in, mut daemon_out) =
                (client.try_clone().unwrap(), daemon.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut client_in, &mut daemon_out));
            let (mut daemon_in, mut client_out) = (daemon, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut daemon_in, &mut client_out);
                let _ = client_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    let run = run_on_docker_with(
        &run_id("tcp"),
        &["--tags", "@core"],
        None,
        &[("DOCKER_HOST", &docker_host)],
    );
    assert_eq!(run.code, Some(0), "{}", run.output);
    assert!(run.output.contains("10 passed, 0 failed"), "{}", run.output);
    // hubtrust (and its reaper) went through TCP, not the socket.
    assert!(connections.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

#[test]
fn a_kernel_on_another_host_is_caught_on_the_wire_on_docker() {
    if !docker_ready() {
        return;
    }
    // The lab's container starts its kernels in the `kernels` container's
    // network namespace; capture runs on that link's own interface.
    let run = run_on_docker(
        &run_id("remote-kernel"),
        &[
            "--tags",
            "@wire",
            "--stack",
            "fixtures/stacks/kernel-on-another-host.toml",
        ],
        None,
    );
    assert_eq!(run.code, Some(1), "{}", run.output);
    assert!(
        run.output
            .contains("kernel channels leave the lab host in plaintext"),
        "{}",
        run.output
    );
    assert!(
        run.output.contains("on hub--kernels (plaintext ZMTP 3."),
        "the flow is not named: {}",
        run.output
    );
    assert!(run.output.contains("2 passed, 2 failed"), "{}", run.output);
}

#[test]
fn labs_on_their_own_host_put_internal_tls_on_the_wire() {
    if !docker_ready() {
        return;
    }
    let run = run_on_docker(
        &run_id("labs-host"),
        &[
            "--tags",
            "@core or @wire",
            "--stack",
            "fixtures/stacks/labs-on-their-own-host.toml",
        ],
        None,
    );
    assert_eq!(run.code, Some(0), "{}", run.output);
    assert!(run.output.contains("13 passed, 0 failed"), "{}", run.output);
    // The lab calls the hub API, and the hub and proxy call the lab, across
    // the hub--labs link, each in TLS 1.2 or newer.
    let report = run.report.unwrap();
    let crossing: Vec<&serde_json::Value> = wire_flows(&report)
        .into_iter()
        .filter(|f| f["link"] == "hub--labs")
        .collect();
    let to_hub_api = |f: &&serde_json::Value| f["server_host"] == "hub" && f["server_port"] == 8081;
    assert!(crossing.iter().any(to_hub_api), "{crossing:?}");
    // A pooled connection seen mid-stream may have its ends guessed the
    // wrong way round; either way it is the hub's side calling the lab.
    assert!(crossing.iter().any(|f| !to_hub_api(f)), "{crossing:?}");
    for flow in &crossing {
        assert_eq!(flow["class"]["kind"], "tls", "{flow}");
        assert!(
            flow["label"].as_str().unwrap().starts_with("TLS 1."),
            "{flow}"
        );
    }
}

#[test]
fn a_vendors_proxy_image_runs_the_proxy_and_the_report_names_it() {
    if !docker_ready() {
        return;
    }
    // A vendor's proxy image: hubtrust's, with the proxy on PATH where
    // hubtrust's own image has none, so the stack below only comes up if
    // the proxy really runs from this image.
    let base = docker(&["images", "-q", "--filter", "reference=hubtrust/runtime"]);
    let base = base.lines().next().unwrap().to_string();
    let (vendor, maker) = (
        "hubtrust/test-vendor-proxy:1",
        format!("{}-maker", run_id("vendor")),
    );
    docker(&[
        "run",
        "--name",
        &maker,
        &base,
        "ln",
        "-s",
        "/opt/hubtrust/npm/node_modules/.bin/configurable-http-proxy",
        "/usr/local/bin/configurable-http-proxy",
    ]);
    // Its entrypoint starts the proxy, as upstream's proxy image's does:
    // hubtrust must replace it, or two proxies would contend for the port.
    docker(&[
        "commit",
        "--change",
        r#"ENTRYPOINT ["configurable-http-proxy"]"#,
        &maker,
        vendor,
    ]);
    docker(&["rm", &maker]);
    let run = run_on_docker(
        &run_id("vendor"),
        &["--tags", "@core"],
        Some(&format!(
            "[docker.components]\nproxy = \"{vendor}\"\n[proxy]\ncommand = [\"configurable-http-proxy\"]\n"
        )),
    );
    docker(&["image", "rm", vendor]);
    assert_eq!(run.code, Some(0), "{}", run.output);
    let images = &run.report.unwrap()["images"];
    let proxy = images["proxy"].as_str().unwrap();
    assert!(proxy.starts_with(vendor), "{images}");
    assert_ne!(proxy, images["hub"].as_str().unwrap(), "{images}");
}

#[test]
fn down_removes_a_runs_objects_and_names_runs_it_does_not_know() {
    if !docker_ready() {
        return;
    }
    let run = run_id("down");
    let label = format!("hubtrust.run={run}");
    let built = hubtrust().args(["images", "build"]).output().unwrap();
    let image = String::from_utf8_lossy(&built.stdout).trim().to_string();
    docker(&[
        "network",
        "create",
        "--label",
        &label,
        &format!("{run}-net"),
    ]);
    docker(&["volume", "create", "--label", &label, &format!("{run}-vol")]);
    docker(&[
        "create",
        "--label",
        &label,
        "--name",
        &format!("{run}-c"),
        &image,
    ]);
    let out = hubtrust().args(["down", &run]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("1 containers, 1 networks, 1 volumes"),
        "{}",
        text(&out)
    );
    assert!(labelled(&run).is_empty());
    let again = hubtrust().args(["down", &run]).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again).contains(&format!("nothing labelled with run {run}")));
}

#[test]
fn sigkill_of_an_image_build_leaves_no_build_process_behind() {
    if !docker_ready() {
        return;
    }
    // An image nobody has, so the build really starts (the other tests'
    // image stays untouched).
    let repository = format!("hubtrust/test-killed-build-{}", std::process::id());
    let mut build = hubtrust()
        .args(["images", "build"])
        .env("HUBTRUST_IMAGE_REPOSITORY", &repository)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while processes_running("build-rootfs.sh").is_empty() {
        assert!(
            build.try_wait().unwrap().is_none(),
            "the build ended before its root filesystem step"
        );
        assert!(
            Instant::now() < deadline,
            "the build never reached debootstrap"
        );
        // Bounded poll interval until the build script runs.
        std::thread::sleep(Duration::from_millis(100));
    }
    build.kill().unwrap();
    build.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = ["build-rootfs.sh", "debootstrap"]
            .iter()
            .flat_map(|n| processes_running(n))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left running: {left:?}");
        // Bounded poll interval while the kernel ends the namespace.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!docker(&["images", "-q", &repository]).contains(char::is_alphanumeric));
}

#[test]
fn no_docker_daemon_is_named_with_the_fix() {
    let run = run_id("nodaemon");
    let out = hubtrust()
        .args(["run", "--backend", "docker", "--tags", "@core"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("HUBTRUST_RUN_ID", &run)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("a docker daemon"), "{t}");
    assert!(t.contains("unix:///nonexistent/docker.sock"), "{t}");
    assert!(t.contains("DOCKER_HOST"), "{t}");

    // `images pull` says so too, before it tries any image.
    let dir = scratch("nodaemon-pull");
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("images.toml");
    std::fs::write(
        &list,
        "[hub]\nimage = \"quay.io/jupyterhub/k8s-hub:4.4.0\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("images.lock"),
        format!(
            "[digests]\n\"quay.io/jupyterhub/k8s-hub:4.4.0\" = \"sha256:{}\"\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let pull = hubtrust()
        .args(["images", "pull"])
        .arg(&list)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let t = text(&pull);
    assert_eq!(pull.status.code(), Some(2), "{t}");
    assert!(t.contains("no docker daemon answers"), "{t}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_image_is_named_with_the_fix() {
    if !docker_ready() {
        return;
    }
    let run = run_on_docker(
        &run_id("noimage"),
        &["--tags", "@core"],
        Some("[docker.hosts]\nhub = \"hubtrust/no-such-image:0\"\n"),
    );
    assert_eq!(run.code, Some(2), "{}", run.output);
    assert!(
        run.output.contains("hubtrust/no-such-image:0"),
        "{}",
        run.output
    );
    assert!(
        run.output.contains("hubtrust images build"),
        "{}",
        run.output
    );
}

#[test]
fn an_image_whose_entrypoint_fails_is_named_and_nothing_is_left() {
    if !docker_ready() {
        return;
    }
    // An image with nothing in it: `sleep` cannot start.
    let image = "hubtrust/test-empty:0";
    let empty = scratch("docker-empty-image");
    let tar = empty.join("empty.tar");
    let packed = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-T")
        .arg("/dev/null")
        .status()
        .unwrap();
    assert!(packed.success());
    docker(&["import", tar.to_str().unwrap(), image]);
    let run = run_on_docker(
        &run_id("entrypoint"),
        &["--tags", "@core"],
        Some(&format!("[docker]\nimage = \"{image}\"\n")),
    );
    assert_eq!(run.code, Some(2), "{}", run.output);
    assert!(run.output.contains("start container"), "{}", run.output);
    assert!(run.output.contains("entrypoint"), "{}", run.output);
    docker(&["image", "rm", image]);
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn a_lab_that_cannot_start_is_named_with_its_own_output_and_kept_with_keep() {
    if !docker_ready() {
        return;
    }
    // The lab runs in a container the hub's spawner makes; its output
    // reaches hubtrust only through that container's log.
    let run = run_id("bad-lab");
    let dir = scratch(&run);
    std::fs::write(
        dir.join("stack.toml"),
        "[lab]\ncommand = [\"sh\", \"-c\", \"echo the-lab-says-why >&2; exit 3\"]\n",
    )
    .unwrap();
    let out = hubtrust()
        .args(["run", "--backend", "docker", "--tags", "@core", "--keep"])
        .arg("--stack")
        .arg(dir.join("stack.toml"))
        .arg("--report")
        .arg(dir.join("report"))
        .env("HUBTRUST_RUN_ID", &run)
        .output()
        .unwrap();
    let t = text(&out);
    // A lab that cannot start is a defect of the deployment (exit 1),
    // whether the spawn request fails or a slow spawn dies afterwards.
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("`the lab of alice` did not come up"), "{t}");
    assert!(t.contains("last lines of alice's lab's log:"), "{t}");
    assert!(t.contains("the-lab-says-why"), "{t}");
    // The report's artifacts hold the lab's own log.
    let lab_log =
        std::fs::read_to_string(dir.join("report/artifacts/stack-start-up/logs/lab-alice.log"))
            .unwrap();
    assert!(lab_log.contains("the-lab-says-why"), "{lab_log}");
    // A run that failed to come up is a failed run: --keep leaves it, lab
    // container and all, until `down`.
    assert!(t.contains(&format!("`hubtrust down {run}`")), "{t}");
    let lab = format!("hubtrust-{run}-hub-lab-alice");
    assert_eq!(docker(&["inspect", "-f", "{{.State.ExitCode}}", &lab]), "3");
    let down = hubtrust().args(["down", &run]).output().unwrap();
    assert_eq!(down.status.code(), Some(0), "{}", text(&down));
    assert_nothing_labelled(&run);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_network_name_clash_is_named_and_nothing_is_left() {
    if !docker_ready() {
        return;
    }
    let run_id = run_id("clash");
    // Someone else's network, under the name the run's hub link takes.
    let taken = format!("hubtrust-{run_id}-operator--hub");
    docker(&["network", "create", &taken]);
    let run = run_on_docker(&run_id, &["--tags", "@core"], None);
    docker(&["network", "rm", &taken]);
    assert_eq!(run.code, Some(2), "{}", run.output);
    assert!(run.output.contains(&taken), "{}", run.output);
    assert!(run.output.contains("already exists"), "{}", run.output);
}

#[test]
fn an_hpc_stack_refuses_a_lab_image_it_would_never_run() {
    // Labs run on the compute nodes' own containers, started by the batch
    // spawner over SSH: a lab image would silently go unused.
    let topology =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/topologies/hpc.toml");
    let (code, t) = refused_before_docker(
        "hpc-lab-image",
        &format!(
            "topology_file = {:?}\n[docker.components]\nlab = \"vendor/lab:1\"\n",
            topology.display().to_string()
        ),
    );
    assert_eq!(code, Some(2), "{t}");
    assert!(t.contains("names a lab image"), "{t}");
    assert!(t.contains("[docker.hosts]"), "{t}");
}

#[test]
fn an_image_for_a_host_the_topology_lacks_is_named() {
    let (code, t) =
        refused_before_docker("stray-host", "[docker.hosts]\nlogin-9 = \"vendor/hub:1\"\n");
    assert_eq!(code, Some(2), "{t}");
    assert!(t.contains("`login-9`"), "{t}");
    assert!(t.contains("[docker.hosts]"), "{t}");
}

/// Runs a docker `@core` run on `stack` (its text), for stacks refused
/// before docker is even asked: no daemon needed.
fn refused_before_docker(name: &str, stack: &str) -> (Option<i32>, String) {
    let dir = scratch(&format!("docker-{name}"));
    let stack_file = dir.join("stack.toml");
    std::fs::write(&stack_file, stack).unwrap();
    let out = hubtrust()
        .args(["run", "--backend", "docker", "--tags", "@core", "--stack"])
        .arg(&stack_file)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (out.status.code(), text(&out))
}

/// The shipped upstream list, each image pointed at `registry` under
/// `repository_prefix` (the role's name as the repository), tag `1`.
fn upstream_list_at(registry: &str, repository_prefix: &str) -> String {
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/images/upstream.toml"),
    )
    .unwrap();
    let mut role = String::new();
    shipped
        .lines()
        .map(|line| {
            if let Some(table) = line.strip_prefix('[') {
                role = table.trim_end_matches(']').to_string();
            }
            if line.starts_with("image = ") {
                format!("image = \"{registry}/{repository_prefix}/{role}:1\"")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A registry on loopback keeping its blobs under `dir`, and the runtime
/// that serves it (kept alive as long as the registry is used).
fn loopback_registry(
    dir: &std::path::Path,
) -> (
    tokio::runtime::Runtime,
    hubtrust_harness::images::registry::loopback::LoopbackRegistry,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let registry = runtime
        .block_on(
            hubtrust_harness::images::registry::loopback::LoopbackRegistry::start(
                dir.join("registry"),
                false,
            ),
        )
        .unwrap();
    (runtime, registry)
}

#[test]
fn images_pinned_from_a_registry_are_pulled_by_digest_and_pass_core_and_enterprise() {
    if !docker_ready() {
        return;
    }
    let dir = scratch("pinned");
    let (_runtime, registry) = loopback_registry(&dir);
    let host = registry.host();
    // Images laid out as upstream's are: each component's program on PATH
    // (hubtrust's own image has none there), so the stack only comes up if
    // the shipped list's commands are right for such a layout.
    let base = docker(&["images", "-q", "--filter", "reference=hubtrust/runtime"]);
    let base = base.lines().next().unwrap().to_string();
    let maker = format!("{}-maker", run_id("pinned"));
    docker(&[
        "run",
        "--name",
        &maker,
        &base,
        "sh",
        "-c",
        "ln -s /opt/hubtrust/venv/bin/jupyterhub /opt/hubtrust/venv/bin/jupyterhub-singleuser \
         /opt/hubtrust/npm/node_modules/.bin/configurable-http-proxy \
         /opt/hubtrust/mitmproxy-venv/bin/mitmdump /usr/local/bin/",
    ]);
    let roles = ["hub", "proxy", "lab", "mitmproxy"];
    let tags: Vec<String> = roles
        .iter()
        .map(|role| format!("{host}/upstream-like/{role}:1"))
        .collect();
    docker(&["commit", &maker, &tags[0]]);
    docker(&["rm", &maker]);
    for tag in &tags[1..] {
        docker(&["tag", &tags[0], tag]);
    }
    for tag in &tags {
        docker(&["push", "-q", tag]);
        // Only the registry has it by this name now: the run must pull.
        docker(&["image", "rm", tag]);
    }

    let list = dir.join("upstream.toml");
    std::fs::write(&list, upstream_list_at(&host, "upstream-like")).unwrap();
    // Not pinned yet: a run refuses, naming the fix, before any container.
    let unpinned = run_on_docker(
        &run_id("unpinned"),
        &["--tags", "@core", "--images", list.to_str().unwrap()],
        None,
    );
    assert_eq!(unpinned.code, Some(2), "{}", unpinned.output);
    assert!(
        unpinned.output.contains("hubtrust images pin"),
        "{}",
        unpinned.output
    );

    let pinned = hubtrust()
        .args(["images", "pin"])
        .arg(&list)
        .output()
        .unwrap();
    assert!(pinned.status.success(), "{}", text(&pinned));
    let lock = std::fs::read_to_string(dir.join("upstream.lock")).unwrap();
    let requests_before_run = registry.manifest_requests();

    let run = run_on_docker(
        &run_id("pinned"),
        &["--tags", "@core", "--images", list.to_str().unwrap()],
        None,
    );
    let images = run
        .report
        .as_ref()
        .map(|r| r["images"].clone())
        .unwrap_or_default();
    // The enterprise profile adds mitmproxy's image and the lab image's
    // init container.
    let enterprise = run_on_docker(
        &run_id("pinned-ent"),
        &[
            "--tags",
            "@enterprise",
            "--stack",
            "fixtures/stacks/enterprise.toml",
            "--images",
            list.to_str().unwrap(),
        ],
        None,
    );
    let pulled = docker(&[
        "images",
        "--digests",
        "--format",
        "{{.Repository}}@{{.Digest}}",
    ]);
    for reference in pulled.lines().filter(|r| r.starts_with(&host)) {
        let _ = Command::new("docker")
            .args(["image", "rm", reference])
            .output();
    }
    assert_eq!(run.code, Some(0), "{}", run.output);
    for role in ["hub", "proxy", "lab"] {
        let image = images[role].as_str().unwrap_or_default();
        let digest = image
            .split_once('@')
            .map(|(_, d)| d.split(' ').next().unwrap())
            .unwrap_or_default();
        assert!(
            image.starts_with(&format!("{host}/upstream-like/{role}@sha256:")),
            "{images}"
        );
        assert!(lock.contains(digest), "{digest} not in {lock}");
    }
    assert!(
        run.output.contains("pinned by digest"),
        "no pull: {}",
        run.output
    );
    assert!(registry.manifest_requests() > requests_before_run);
    assert_eq!(enterprise.code, Some(0), "{}", enterprise.output);
    let mitmproxy = enterprise.report.as_ref().unwrap()["images"]["mitmproxy"].clone();
    assert!(
        mitmproxy
            .as_str()
            .is_some_and(|i| i.starts_with(&format!("{host}/upstream-like/mitmproxy@sha256:"))),
        "{mitmproxy}"
    );

    // The hub's tag moves upstream, to an index of the same image:
    // --check names it and leaves the lock.
    let pinned = hubtrust_harness::images::list::ImageLock::parse(&lock, &list).unwrap();
    let hub_image = pinned.digests[&format!("{host}/upstream-like/hub:1")].clone();
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"digest":"{hub_image}","platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
    );
    registry.put_manifest(
        "upstream-like/hub",
        "1",
        "application/vnd.oci.image.index.v1+json",
        index.as_bytes(),
    );
    let check = hubtrust()
        .args(["images", "pin", "--check"])
        .arg(&list)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let said = text(&check);
    assert!(
        said.contains(&format!("{host}/upstream-like/hub:1")),
        "{said}"
    );
    assert!(!said.contains("upstream-like/proxy:1"), "{said}");
    assert_eq!(
        std::fs::read_to_string(dir.join("upstream.lock")).unwrap(),
        lock
    );
    drop(registry);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_copied_out_while_a_file_in_it_changes_size_arrives_whole() {
    if !docker_ready() {
        return;
    }
    // The daemon cuts the archive short, without an error, after a file
    // whose size changed while it read it: here one file is truncated and
    // refilled without pause, as a hub's files can be while it runs. Every
    // file after it must still arrive, every time.
    let run = run_id("copy-out");
    let label = format!("hubtrust.run={run}");
    let built = hubtrust().args(["images", "build"]).output().unwrap();
    let image = String::from_utf8_lossy(&built.stdout).trim().to_string();
    let scratch_dir = scratch(&run);
    let dir = scratch_dir.join("hub");
    let rewrite = format!(
        "mkdir -p {d}/a {d}/c && for i in $(seq 1 20); do echo a$i > {d}/a/f$i; echo c$i > {d}/c/f$i; done && exec python3 -c \"
while True:
    with open('{d}/b', 'w') as f:
        for i in range(64):
            f.write('x' * 1024); f.flush()
\"",
        d = dir.display()
    );
    let container = format!("{run}-c");
    /// Removes the container however the test ends.
    struct Removed<'a>(&'a str);
    impl Drop for Removed<'_> {
        fn drop(&mut self) {
            let _ = Command::new("docker")
                .args(["rm", "-f", self.0])
                .stdout(Stdio::null())
                .status();
        }
    }
    let removed = Removed(&container);
    docker(&[
        "run",
        "-d",
        "--label",
        &label,
        "--name",
        &container,
        "--entrypoint",
        "/bin/sh",
        &image,
        "-c",
        &rewrite,
    ]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refetched = runtime.block_on(async {
        let engine = hubtrust_harness::backend::docker::DockerEngine::connect(&run)
            .await
            .unwrap();
        // At least 30 copies, and on until one was cut (about one in four
        // is, here), so that the test exercised the re-fetch.
        for copy in 0..300 {
            if copy >= 30 && engine.copies_refetched() > 0 {
                break;
            }
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            if let Err(e) = engine.copy_out(&container, &dir).await {
                panic!("copy {copy}: {e}");
            }
            for i in 1..=20 {
                for part in ["a", "c"] {
                    let file = dir.join(part).join(format!("f{i}"));
                    assert!(
                        file.exists(),
                        "copy {copy}: {} is missing: the archive was cut short and taken as whole",
                        file.display()
                    );
                }
            }
        }
        engine.copies_refetched()
    });
    drop(removed);
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    assert_nothing_labelled(&run);
    assert!(
        refetched > 0,
        "no copy of 300 was cut short: the test did not exercise the re-fetch"
    );
    eprintln!("{refetched} of the copies were cut short and fetched again");
}

/// A one-file image made without any registry, tagged `tag`; its id.
fn tiny_image(tag: &str, marker: &str) -> String {
    let made = Command::new("sh")
        .args([
            "-c",
            r#"d=$(mktemp -d) && printf %s "$1" > "$d/marker" && tar -C "$d" -cf - marker | docker import - "$2"; s=$?; rm -rf "$d"; exit $s"#,
            "sh",
            marker,
            tag,
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    docker(&["image", "inspect", "--format", "{{.Id}}", tag])
}

/// Removes every image under `prefix` when dropped, the test passed or not.
struct ImagesUnder(String);

impl Drop for ImagesUnder {
    fn drop(&mut self) {
        let listed = Command::new("docker")
            .args(["images", "--quiet", "--filter"])
            .arg(format!("reference={}/*", self.0))
            .output();
        if let Ok(listed) = listed {
            let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            remove_images(&ids);
        }
    }
}

fn remove_images(ids: &[String]) {
    for id in ids {
        let _ = Command::new("docker")
            .args(["image", "rm", "--force", id])
            .output();
    }
}

fn pull_images(list: &std::path::Path, archives: &std::path::Path) -> std::process::Output {
    hubtrust()
        .args(["images", "pull"])
        .arg(list)
        .arg("--archives")
        .arg(archives)
        .output()
        .unwrap()
}

#[test]
fn chart_images_come_back_from_archives_only_when_they_are_the_pinned_images() {
    if !docker_ready() {
        return;
    }
    let dir = scratch("archives");
    let (_runtime, registry) = loopback_registry(&dir);
    let host = registry.host();
    let _cleanup = ImagesUnder(format!("{host}/chart-like"));
    let tag = |role: &str| format!("{host}/chart-like/{role}:1");
    let mut made = Vec::new();
    let mut list_text = String::new();
    for role in ["hub", "proxy", "lab"] {
        made.push(tiny_image(&tag(role), role));
        docker(&["push", "-q", &tag(role)]);
        list_text.push_str(&format!("[{role}]\nimage = \"{}\"\n", tag(role)));
    }
    remove_images(&made);
    let list = dir.join("images.toml");
    std::fs::write(&list, list_text).unwrap();
    let pinned = hubtrust()
        .args(["images", "pin"])
        .arg(&list)
        .output()
        .unwrap();
    assert!(pinned.status.success(), "{}", text(&pinned));
    let lock = std::fs::read_to_string(dir.join("images.lock")).unwrap();
    assert!(lock.contains("\"linux/amd64\""), "{lock}");

    // First: pulled by digest, tagged, and saved.
    let archives = dir.join("archives");
    let first = pull_images(&list, &archives);
    let said = text(&first);
    assert!(first.status.success(), "{said}");
    assert_eq!(said.matches("pulled at sha256:").count(), 3, "{said}");
    assert_eq!(said.matches("saved to").count(), 3, "{said}");
    for role in ["hub", "proxy", "lab"] {
        assert!(archives.join(format!("{role}.tar")).is_file(), "{role}");
    }

    // Gone from the daemon: loaded back without asking the registry, and
    // known as the pinned images with no registry digest to go by. A save
    // cut short before is removed, not cached.
    remove_images(&made);
    let interrupted = archives.join("proxy.tar.partial");
    std::fs::write(&interrupted, b"cut short").unwrap();
    let asked = registry.manifest_requests();
    let second = pull_images(&list, &archives);
    let said = text(&second);
    assert!(second.status.success(), "{said}");
    assert_eq!(said.matches("loaded from").count(), 3, "{said}");
    assert!(!interrupted.exists(), "{said}");
    assert_eq!(registry.manifest_requests(), asked);
    assert_eq!(
        docker(&[
            "image",
            "inspect",
            "--format",
            "{{len .RepoDigests}}",
            &tag("hub")
        ]),
        "0"
    );

    // An archive that holds another image under the hub's tag is refused
    // and replaced from the registry.
    remove_images(&made);
    made.push(tiny_image(&tag("hub"), "not the hub"));
    docker(&[
        "save",
        "--output",
        &archives.join("hub.tar").to_string_lossy(),
        &tag("hub"),
    ]);
    remove_images(&made);
    let third = pull_images(&list, &archives);
    let said = text(&third);
    assert!(third.status.success(), "{said}");
    assert!(
        said.contains("hub.tar is not the pinned image") && said.contains("pulling it instead"),
        "{said}"
    );
    assert_eq!(said.matches("loaded from").count(), 2, "{said}");

    // The same with the registry gone: fails closed, naming the image.
    remove_images(&made);
    made.push(tiny_image(&tag("hub"), "still not the hub"));
    docker(&[
        "save",
        "--output",
        &archives.join("hub.tar").to_string_lossy(),
        &tag("hub"),
    ]);
    remove_images(&made);
    drop(registry);
    let fourth = pull_images(&list, &archives);
    let said = text(&fourth);
    assert_eq!(fourth.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("the hub image {}", tag("hub")))
            && said.contains("hubtrust images pull"),
        "{said}"
    );
    remove_images(&made);
    let _ = std::fs::remove_dir_all(&dir);
}
