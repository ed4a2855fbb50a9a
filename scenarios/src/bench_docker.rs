//! `hubtrust bench --only docker` (and `docker-hpc`): the same run (`@core`
//! on the default stack, or `@hpc` on the HPC site) on the local and the
//! docker backend, alternating round by round so both see the same machine
//! state, each a real `hubtrust run` whose report says when its stack was
//! ready.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::measure::median;

pub struct Timing {
    pub stack_ready: f64,
    pub whole_run: f64,
    /// The whole `hubtrust run` process, as a user waits for it.
    pub wall: f64,
}

/// What each round runs on both backends.
pub struct Profile {
    pub tags: &'static str,
    /// A stack file under the repository's fixtures; the default stack
    /// when `None`.
    pub stack: Option<&'static str>,
}

pub const FLAT: Profile = Profile {
    tags: "@core",
    stack: None,
};

pub const HPC: Profile = Profile {
    tags: "@hpc",
    stack: Some("fixtures/stacks/hpc.toml"),
};

pub fn timed_run(profile: &Profile, backend: &str, report: &Path) -> anyhow::Result<Timing> {
    let started = std::time::Instant::now();
    // If the bench dies, the run it started is interrupted as by Ctrl-C,
    // so it tears its stack down rather than running on alone.
    let mut command = Command::new("setpriv");
    command
        .args(["--pdeathsig", "INT", "--"])
        .arg(std::env::current_exe()?)
        .args(["run", "--tags", profile.tags, "--backend", backend]);
    if let Some(stack) = profile.stack {
        command
            .arg("--stack")
            .arg(crate::measure::locate_fixture(stack)?);
    }
    let out = command
        .arg("--report")
        .arg(report)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "the {} run on {backend} failed:\n{}",
        profile.tags,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json"))?)?;
    let seconds = |key: &str| {
        json[key]
            .as_f64()
            .ok_or_else(|| anyhow::anyhow!("report.json has no {key}"))
    };
    Ok(Timing {
        stack_ready: seconds("stack_ready_seconds")?,
        whole_run: seconds("seconds")?,
        wall: started.elapsed().as_secs_f64(),
    })
}

pub fn compare_backends(profile: &Profile, rounds: u32) -> anyhow::Result<()> {
    let scratch =
        std::env::temp_dir().join(format!("hubtrust-bench-docker-{}", std::process::id()));
    let mut local = Vec::new();
    let mut docker = Vec::new();
    let mut ratios = Vec::new();
    for round in 1..=rounds.max(1) {
        let l = timed_run(profile, "local", &scratch.join(format!("local-{round}")))?;
        let d = timed_run(profile, "docker", &scratch.join(format!("docker-{round}")))?;
        eprintln!(
            "round {round}: stack ready local {:.2}s, docker {:.2}s",
            l.stack_ready, d.stack_ready
        );
        ratios.push(d.stack_ready / l.stack_ready);
        local.push(l);
        docker.push(d);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let ready = |t: &[Timing]| median(t.iter().map(|t| t.stack_ready).collect());
    let whole = |t: &[Timing]| median(t.iter().map(|t| t.whole_run).collect());
    println!("stack ready, local backend          {:.2} s", ready(&local));
    println!(
        "stack ready, docker backend         {:.2} s",
        ready(&docker)
    );
    println!(
        "docker / local, stack ready         {:.2} (median of per-round ratios)",
        median(ratios)
    );
    for (backend, timings) in [("local", &local), ("docker", &docker)] {
        let what = format!("{} run, {backend} backend", profile.tags);
        println!("{what:<36}{:.2} s", whole(timings));
    }
    Ok(())
}
