//! `hubtrust bench --only profiles`: the four local profiles one after
//! another, as CI runs them, each a real `hubtrust run`; and in the same
//! rounds `@core` without its TLS scan, so the scan's cost is a ratio
//! taken on the same machine state. The stack's start-up swings by a
//! second or two from run to run (JupyterHub polls a spawning lab with a
//! jittered back-off), far more than the scan costs, so the ratio compares
//! the time after the stack is ready: what the scan adds, over the wall
//! time of `@core` without it.

use crate::bench_docker::{timed_run, Profile};
use crate::measure::median;

const PROFILES: [Profile; 4] = [
    Profile {
        tags: "@core",
        stack: None,
    },
    Profile {
        tags: "@wire",
        stack: None,
    },
    Profile {
        tags: "@enterprise",
        stack: Some("fixtures/stacks/enterprise.toml"),
    },
    Profile {
        tags: "@hpc",
        stack: Some("fixtures/stacks/hpc.toml"),
    },
];

const CORE_WITHOUT_SCAN: Profile = Profile {
    tags: "@core and not @tls",
    stack: None,
};

pub fn four_profiles(rounds: u32) -> anyhow::Result<()> {
    let scratch =
        std::env::temp_dir().join(format!("hubtrust-bench-profiles-{}", std::process::id()));
    let mut totals = Vec::new();
    let mut per_profile: Vec<Vec<f64>> = vec![Vec::new(); PROFILES.len()];
    let mut scan_ratios = Vec::new();
    for round in 1..=rounds.max(1) {
        let mut total = 0.0;
        let mut core_with_scan = None;
        for (i, profile) in PROFILES.iter().enumerate() {
            let t = timed_run(profile, "local", &scratch.join(format!("{i}-{round}")))?;
            total += t.wall;
            per_profile[i].push(t.wall);
            if i == 0 {
                core_with_scan = Some(t);
            }
        }
        let without = timed_run(
            &CORE_WITHOUT_SCAN,
            "local",
            &scratch.join(format!("core-without-scan-{round}")),
        )?;
        let with = core_with_scan.ok_or_else(|| anyhow::anyhow!("no @core run"))?;
        let after_ready = |t: &crate::bench_docker::Timing| t.whole_run - t.stack_ready;
        let added = after_ready(&with) - after_ready(&without);
        let ratio = 1.0 + added / without.whole_run;
        eprintln!(
            "round {round}: four profiles {total:.1} s; @core after the stack was ready: {:.2} s with the TLS scan, {:.2} s without; {added:+.2} s on a {:.2} s run ({ratio:.2})",
            after_ready(&with),
            after_ready(&without),
            without.whole_run
        );
        totals.push(total);
        scan_ratios.push(ratio);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    for (profile, walls) in PROFILES.iter().zip(per_profile) {
        let what = format!("{} (local), whole run", profile.tags);
        println!("{what:<36}{:.1} s", median(walls));
    }
    println!(
        "four local profiles, one after another {:.1} s (median; target ≤ 60 s)",
        median(totals)
    );
    println!(
        "@core with / without the TLS scan   {:.2} (what the scan adds after the stack is ready, over @core's wall time; median of rounds; target ≤ 1.20)",
        median(scan_ratios)
    );
    Ok(())
}
