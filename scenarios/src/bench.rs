//! `hubtrust bench`: start-up under hubtrust against a plain baseline, the
//! core profile's wall time, hubtrust's own peak memory, the cost of wire
//! capture, and the census's throughput, all in one run so the ratios
//! compare like with like on a noisy machine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hubtrust_harness::backend::local::{create_host, create_link, next_link_index, INSIDE_ENV};
use hubtrust_harness::backend::Host;
use hubtrust_harness::process::{sweep_marked, LaunchSpec};
use hubtrust_harness::provision;
use hubtrust_harness::spec::StackSpec;
use hubtrust_harness::stack::STACK_MARKER_ENV;

use crate::bring_up::bring_up;
use crate::measure::{locate_fixture, median, peak_rss_kb, tempdir};
use crate::{BenchArgs, BenchGroup};

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub async fn bench(args: BenchArgs) -> ExitCode {
    match measure(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: benchmark failed: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn measure(args: BenchArgs) -> anyhow::Result<()> {
    let runs = |group| args.only.is_none() || args.only == Some(group);
    if runs(BenchGroup::Startup) {
        measure_startup(&args).await?;
    }
    if runs(BenchGroup::Wire) {
        crate::bench_wire::capture_overhead(args.rounds).await?;
        crate::bench_wire::census_throughput(args.census_bytes).await?;
    }
    if runs(BenchGroup::Enterprise) {
        discriminator_table(args.rounds).await?;
    }
    if args.only.is_none() {
        eprintln!("(the docker comparisons run alone: `hubtrust bench --only docker`, `--only docker-hpc`)");
    }
    if runs(BenchGroup::Hpc) {
        crate::bench_hpc::first_ready_lab(args.rounds, args.tunnel_bytes).await?;
    }
    println!(
        "peak RSS of hubtrust, this bench    {:.1} MB",
        peak_rss_kb() as f64 / 1024.0
    );
    Ok(())
}

async fn measure_startup(args: &BenchArgs) -> anyhow::Result<()> {
    let components =
        provision::cached().ok_or_else(|| anyhow::anyhow!("components are not provisioned"))?;
    let baseline_script = locate_baseline()?;
    let mut harness_secs = Vec::new();
    let mut baseline_secs = Vec::new();
    for round in 1..=args.rounds {
        // (a) the stack under hubtrust: PKI, hosts, hub, proxy, one lab.
        let work = tempdir("bench-a")?;
        let started = Instant::now();
        let stack = bring_up(StackSpec::default(), &work).await?;
        harness_secs.push(started.elapsed().as_secs_f64());
        let config = stack.hub_config();
        let env = BTreeMap::from([
            (
                "HUBTRUST_SERVICE_TOKEN".to_string(),
                stack.service_token.expose().to_string(),
            ),
            (
                "CONFIGPROXY_AUTH_TOKEN".to_string(),
                stack.proxy_token.expose().to_string(),
            ),
            (
                "HUBTRUST_USER_PASSWORD".to_string(),
                stack.user_password.expose().to_string(),
            ),
            (STACK_MARKER_ENV.to_string(), stack.marker.clone()),
        ]);
        let marker = stack.marker.clone();
        stack.shutdown().await;

        // (b) the same config and components, started by a plain script.
        // JupyterHub regenerates internal-ssl and its database as on a
        // first start, exactly as it did under hubtrust.
        for stale in [
            "internal-ssl",
            "jupyterhub.sqlite",
            "jupyterhub_cookie_secret",
        ] {
            let path = work.join("hub").join(stale);
            let _ = std::fs::remove_dir_all(&path);
            let _ = std::fs::remove_file(&path);
        }
        let _ = std::fs::remove_dir_all(work.join("home"));
        let host = create_host("baseline", None).await?;
        let operator = Host::operator().await?;
        let _link = create_link(next_link_index()?, &operator, &host).await?;
        let log = work.join("logs").join("baseline.log");
        let launch = LaunchSpec {
            name: "baseline".into(),
            program: components.venv.join("bin/python3").display().to_string(),
            args: vec![
                baseline_script.display().to_string(),
                config.display().to_string(),
                components.venv.join("bin/jupyterhub").display().to_string(),
                "alice".into(),
            ],
            env,
            cwd: work.join("hub"),
            log: log.clone(),
            role: None,
        };
        let t0 = epoch();
        let mut process = host.start(&launch).await?;
        let deadline = Instant::now() + Duration::from_secs(180);
        let ready_epoch = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(v) = text.lines().find_map(|l| l.strip_prefix("ready_epoch=")) {
                break v.trim().parse::<f64>()?;
            }
            if let Some(status) = process.exit_status() {
                anyhow::bail!(
                    "the baseline exited ({status}) before it was ready: {:?}",
                    process.last_lines(25)
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the baseline was not ready within 180s"
            );
            // Reading the baseline's own timestamp, so this poll interval
            // does not enter the measurement.
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        baseline_secs.push(ready_epoch - t0);
        process.stop(Duration::from_secs(30)).await;
        sweep_marked(STACK_MARKER_ENV, &marker);
        let _ = std::fs::remove_dir_all(&work);
        eprintln!(
            "round {round}: hubtrust {:.2}s, baseline {:.2}s",
            harness_secs.last().copied().unwrap_or(0.0),
            baseline_secs.last().copied().unwrap_or(0.0)
        );
    }

    // (c) the whole core profile, as a user runs it (its own namespace).
    let report = tempdir("bench-c")?;
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    // Interrupted as by Ctrl-C if the bench dies, so it tears down.
    let status = tokio::process::Command::new("setpriv")
        .args(["--pdeathsig", "INT", "--"])
        .arg(exe)
        .args(["run", "--tags", "@core", "--report"])
        .arg(&report)
        .env_remove(INSIDE_ENV)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await?;
    let core_secs = started.elapsed().as_secs_f64();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json"))?)?;
    let core_rss_mb = json["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0;
    let _ = std::fs::remove_dir_all(&report);

    let a = median(harness_secs);
    let b = median(baseline_secs);
    println!(
        "stack ready under hubtrust (a)      {a:.2}s  (median of {} rounds)",
        args.rounds
    );
    println!("stack ready by plain script (b)     {b:.2}s");
    println!(
        "ratio (a)/(b)                       {:.3}  (target ≤ 1.15)",
        a / b
    );
    println!(
        "core profile wall time (c)          {core_secs:.1}s  (target ≤ 60s){}",
        if status.success() {
            ""
        } else {
            "  [the profile FAILED]"
        }
    );
    println!("peak RSS of hubtrust, core profile  {core_rss_mb:.1} MB  (target ≤ 150 MB)");
    Ok(())
}

/// (f) The enterprise discriminator's full table (every tool × target ×
/// bundle, in one kernel cell of the lab) on the enterprise stack, once it
/// is up.
async fn discriminator_table(rounds: u32) -> anyhow::Result<()> {
    use hubtrust_harness::enterprise;
    let spec = StackSpec::load(&locate_fixture("fixtures/stacks/enterprise.toml")?)?;
    let work = tempdir("bench-f")?;
    let stack = bring_up(spec, &work).await?;
    let measured = async {
        let outbound = stack
            .site::<enterprise::Outbound>()
            .ok_or_else(|| anyhow::anyhow!("the enterprise stack has no outbound side"))?;
        let code = enterprise::driver_code(&outbound.targets, &outbound.system_bundle);
        let user = stack
            .users()
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the stack has no user"))?;
        let mut secs = Vec::new();
        let mut cells = 0;
        for _ in 0..rounds {
            let started = Instant::now();
            let run = stack.run_cell(&user, &code).await?;
            secs.push(started.elapsed().as_secs_f64());
            let runs = enterprise::parse_results(&run.stdout).map_err(anyhow::Error::msg)?;
            let judgement =
                enterprise::judge(&outbound.targets, &runs).map_err(anyhow::Error::msg)?;
            // A figure only counts for a complete, correct table.
            let wrong = judgement.differences.len() + judgement.absent.len();
            anyhow::ensure!(wrong == 0, "{wrong} tool runs differ from the table");
            cells = runs.len();
        }
        anyhow::Ok((median(secs), cells))
    }
    .await;
    stack.shutdown().await;
    let _ = std::fs::remove_dir_all(&work);
    let (secs, cells) = measured?;
    println!(
        "enterprise table (f)                {secs:.2}s for {cells} tool runs  (median of {rounds}; target ≤ 20s)"
    );
    Ok(())
}

fn locate_baseline() -> anyhow::Result<PathBuf> {
    locate_fixture("scripts/baseline_stack.py")
}
