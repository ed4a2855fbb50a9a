//! Usage errors and bad input: each is refused before anything starts,
//! with exit 2, a message naming what is wrong and how to fix it, and
//! nothing left behind.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

mod common;
use common::{
    assert_no_process_left, expect_usage_error, hubtrust, run_id, run_stack, scratch, text, which,
};

#[test]
fn an_unknown_tag_is_named_with_the_known_ones() {
    let out = hubtrust().args(["run", "--tags", "@cor"]).output().unwrap();
    expect_usage_error(&out, "unknown tag @cor");
    assert!(text(&out).contains("@core"));
}

#[test]
fn a_malformed_tag_expression_is_rejected() {
    let out = hubtrust()
        .args(["run", "--tags", "@core and and"])
        .output()
        .unwrap();
    expect_usage_error(&out, "invalid tag expression");
}

#[test]
fn list_shows_every_core_scenario_with_its_tag() {
    let out = hubtrust().arg("list").output().unwrap();
    assert!(out.status.success());
    let t = text(&out);
    assert_eq!(t.matches("[@core]").count(), 8, "{t}");
    assert_eq!(t.matches("[@wire]").count(), 3, "{t}");
}

/// `not` binds tighter than `and`, as Cucumber defines tag expressions:
/// the gherkin crate's own parser read this as `not (@tls and @core)`.
#[test]
fn list_with_tags_shows_what_an_expression_selects() {
    let out = hubtrust()
        .args(["list", "--tags", "not @tls and @core"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("Internal TLS of a JupyterHub deployment"), "{t}");
    assert!(
        t.contains("Each internal endpoint answers only where"),
        "{t}"
    );
    assert!(!t.contains("Every TLS endpoint"), "{t}");
    assert!(!t.contains("Labs on an HPC compute node"), "{t}");
    let out = hubtrust()
        .args(["list", "--tags", "@cor"])
        .output()
        .unwrap();
    expect_usage_error(&out, "unknown tag @cor");
}

#[test]
fn repeat_needs_a_round_count_of_at_least_one() {
    for args in [&["run", "--repeat"][..], &["run", "--repeat", "0"]] {
        let out = hubtrust().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}:\n{}", text(&out));
        assert!(text(&out).contains("--repeat"), "{}", text(&out));
    }
}

#[test]
fn a_missing_stack_file_is_named() {
    let out = hubtrust()
        .args(["run", "--stack", "/nonexistent/stack.toml"])
        .output()
        .unwrap();
    expect_usage_error(&out, "/nonexistent/stack.toml");
}

#[test]
fn unknown_keys_in_a_stack_file_are_named() {
    let dir = scratch("unknown-keys");
    let file = dir.join("stack.toml");
    std::fs::write(&file, "[hub]\nextra_cofnig = []\n").unwrap();
    let out = hubtrust()
        .args(["run", "--stack"])
        .arg(&file)
        .output()
        .unwrap();
    expect_usage_error(&out, "extra_cofnig");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ports_that_collide_are_rejected_before_anything_starts() {
    let dir = scratch("ports");
    let file = dir.join("stack.toml");
    std::fs::write(
        &file,
        "[ports]\npublic = 8000\nhub = 8001\nproxy_api = 8001\n",
    )
    .unwrap();
    let out = hubtrust()
        .args(["run", "--stack"])
        .arg(&file)
        .output()
        .unwrap();
    expect_usage_error(&out, "port 8001");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn labs_on_their_own_host_are_refused_on_the_local_backend_with_the_way_out() {
    let out = hubtrust()
        .args(["run", "--tags", "@core", "--stack"])
        .arg("fixtures/stacks/labs-on-their-own-host.toml")
        .output()
        .unwrap();
    expect_usage_error(&out, "--backend docker");
    assert!(text(&out).contains("labs on `labs`"), "{}", text(&out));
}

#[test]
fn a_site_profile_on_a_stack_without_its_site_is_refused_before_anything_starts() {
    for (tags, stack, needs, fix) in [
        (
            "@hpc",
            None,
            "needs an HPC site",
            "fixtures/stacks/hpc.toml",
        ),
        (
            "@enterprise",
            None,
            "needs an [enterprise] section",
            "fixtures/stacks/enterprise.toml",
        ),
        (
            "@enterprise",
            Some("fixtures/stacks/hpc.toml"),
            "needs an [enterprise] section",
            "fixtures/stacks/enterprise.toml",
        ),
    ] {
        let id = run_id("site-missing");
        let mut command = hubtrust();
        command.args(["run", "--tags", tags]);
        if let Some(stack) = stack {
            command.args(["--stack", stack]);
        }
        let out = command.env("HUBTRUST_RUN_ID", &id).output().unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{tags}: {t}");
        assert!(t.contains(needs) && t.contains(fix), "{tags}: {t}");
        assert!(!t.contains("starting jupyterhub"), "{tags}: {t}");
        assert_no_process_left(&id);
    }
    // --repeat stops at the first round that cannot run.
    let report = scratch("site-missing-repeat");
    let out = hubtrust()
        .args(["run", "--tags", "@hpc", "--repeat", "3", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&report);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("round 1 could not run"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_deployment_config_that_is_missing_or_not_python_is_named_with_file_and_line() {
    let dir = scratch("deployment-config-bad");
    std::fs::write(
        dir.join("broken.py"),
        "c = get_config()\nc.JupyterHub.hub_ip = \n",
    )
    .unwrap();
    for (config, said) in [
        ("missing.py", "missing.py does not exist"),
        ("broken.py", "broken.py\", line 2)"),
    ] {
        let stack = dir.join(format!("{config}.toml"));
        std::fs::write(
            &stack,
            format!("name = \"bad-config\"\n[hub]\nconfig_files = [\"{config}\"]\n"),
        )
        .unwrap();
        let id = run_id("deployment-config-bad");
        let out = run_stack("@tls", &stack, &dir.join("report"), &id);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{config}: {t}");
        assert!(t.contains(said), "{config}: {t}");
        assert!(!t.contains("starting jupyterhub"), "{config}: {t}");
        assert_no_process_left(&id);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_prerequisite_names_the_install_command() {
    // A PATH with everything hubtrust needs except `ip`.
    let bin = scratch("no-ip");
    for tool in [
        "python3", "node", "npm", "unshare", "nsenter", "setpriv", "sh", "env",
    ] {
        if let Ok(path) = which(tool) {
            std::os::unix::fs::symlink(path, bin.join(tool)).unwrap();
        }
    }
    let out = hubtrust().arg("run").env("PATH", &bin).output().unwrap();
    expect_usage_error(&out, "apt-get install -y iproute2");
    let doctor = hubtrust().arg("doctor").env("PATH", &bin).output().unwrap();
    assert_eq!(doctor.status.code(), Some(2));
    assert!(
        text(&doctor).contains("MISSING  ip (iproute2)"),
        "{}",
        text(&doctor)
    );
    std::fs::remove_dir_all(&bin).unwrap();
}

#[test]
fn an_image_list_needs_the_docker_backend() {
    let out = hubtrust()
        .args(["run", "--tags", "@core", "--images"])
        .arg("fixtures/images/upstream.toml")
        .output()
        .unwrap();
    expect_usage_error(&out, "--backend docker");
}

#[test]
fn the_upstream_list_without_its_lock_is_refused_before_anything_is_fetched() {
    // No lock ships (no registry was reachable where hubtrust is built), so
    // a run must refuse rather than pull by tag; nothing here needs a daemon.
    let out = hubtrust()
        .args(["run", "--backend", "docker", "--tags", "@core", "--images"])
        .arg("fixtures/images/upstream.toml")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    expect_usage_error(&out, "does not pin quay.io/jupyterhub/k8s-hub:4.3.3");
    assert!(
        text(&out).contains("hubtrust images pin fixtures/images/upstream.toml"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_bad_image_list_is_named_and_nothing_is_resolved() {
    let dir = scratch("bad-list");
    for (list, expected) in [
        (
            "[kernel]\nimage = \"vendor/k:1\"\n",
            "unknown variant `kernel`",
        ),
        (
            "[hub]\nimage = \"vendor/hub\"\n",
            "neither a tag nor a digest",
        ),
        (
            "[mitmproxy]\nimage = \"vendor/m:1\"\ncommand = [\"mitmdump\", \"-q\"]\n",
            "stands for mitmdump",
        ),
    ] {
        let path = dir.join("list.toml");
        std::fs::write(&path, list).unwrap();
        let out = hubtrust()
            .args(["images", "pin"])
            .arg(&path)
            .output()
            .unwrap();
        expect_usage_error(&out, expected);
        assert!(!dir.join("list.lock").exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
