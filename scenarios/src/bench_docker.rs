//! `hubtrust bench --only docker`: the same `@core` run on the local and the
//! docker backend, alternating round by round so both see the same machine
//! state, each a real `hubtrust run` whose report says when its stack was
//! ready.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::bench::median;

struct Timing {
    stack_ready: f64,
    whole_run: f64,
}

fn core_run(backend: &str, report: &Path) -> anyhow::Result<Timing> {
    // If the bench dies, the run it started is interrupted as by Ctrl-C,
    // so it tears its stack down rather than running on alone.
    let out = Command::new("setpriv")
        .args(["--pdeathsig", "INT", "--"])
        .arg(std::env::current_exe()?)
        .args(["run", "--tags", "@core", "--backend", backend, "--report"])
        .arg(report)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "the @core run on {backend} failed:\n{}",
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
    })
}

pub fn compare_backends(rounds: u32) -> anyhow::Result<()> {
    let scratch =
        std::env::temp_dir().join(format!("hubtrust-bench-docker-{}", std::process::id()));
    let mut local = Vec::new();
    let mut docker = Vec::new();
    let mut ratios = Vec::new();
    for round in 1..=rounds.max(1) {
        let l = core_run("local", &scratch.join(format!("local-{round}")))?;
        let d = core_run("docker", &scratch.join(format!("docker-{round}")))?;
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
    println!("@core run, local backend            {:.2} s", whole(&local));
    println!(
        "@core run, docker backend           {:.2} s",
        whole(&docker)
    );
    Ok(())
}
