//! `hubtrust run --repeat N`: N whole `hubtrust run`s of the same selection,
//! each bringing up a fresh stack and writing its reports under
//! `<report>/round-<k>/`, then each scenario's pass count in
//! `<report>/repeat.md` and `repeat.json`.

use std::path::Path;
use std::process::ExitCode;

use hubtrust_harness::repeat::RepeatSummary;
use hubtrust_harness::report::ScenarioResult;

use crate::RunArgs;

pub fn run(args: &RunArgs, rounds: u32) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return crate::usage_error(e.into()),
    };
    runtime.block_on(run_rounds(args, rounds))
}

async fn run_rounds(args: &RunArgs, rounds: u32) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return crate::usage_error(anyhow::anyhow!("cannot find the hubtrust executable: {e}"))
        }
    };
    let (mut int, mut term) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => return crate::usage_error(anyhow::anyhow!("cannot listen for Ctrl-C")),
    };
    let passthrough = args_without_repeat(std::env::args().skip(1));
    let mut summary = RepeatSummary::default();
    for round in 1..=rounds {
        eprintln!("── round {round} of {rounds}, on a fresh stack");
        let report = args.report.join(format!("round-{round}"));
        let _ = std::fs::remove_dir_all(&report);
        // If this process dies, the round is interrupted as by Ctrl-C and
        // tears its stack down rather than running on alone.
        let mut child = match tokio::process::Command::new("setpriv")
            .args(["--pdeathsig", "INT", "--"])
            .arg(&exe)
            .args(&passthrough)
            .arg("--report")
            .arg(&report)
            .stdin(std::process::Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                return crate::usage_error(anyhow::anyhow!(
                "cannot start round {round} with setpriv: {e} (fix: apt-get install -y util-linux)"
            ))
            }
        };
        let mut interrupted = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                _ = async { tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} } } => {
                    // A terminal's Ctrl-C reached the round too; a SIGTERM
                    // did not, so pass it on either way.
                    interrupted = true;
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGINT,
                        );
                    }
                }
            }
        };
        if interrupted {
            eprintln!("interrupted in round {round}: the remaining rounds were not run");
            return ExitCode::from(130);
        }
        let code = status.ok().and_then(|s| s.code());
        match read_round(&report) {
            Ok(results) => summary.add_round(round, &results),
            // A usage or environment error is the same in every round.
            Err(_) if code == Some(2) => {
                eprintln!("round {round} could not run (exit 2, its error above); the remaining rounds were not run");
                return ExitCode::from(2);
            }
            Err(e) => summary.add_missing_round(
                round,
                format!("the run exited {code:?} and left no report: {e}"),
            ),
        }
    }
    if let Err(e) = summary.write_all(&args.report) {
        eprintln!("error: failed to write the repeat summary: {e}");
        return ExitCode::from(2);
    }
    eprint!("{}", summary.to_markdown());
    eprintln!(
        "summary written to {}",
        args.report.join("repeat.md").display()
    );
    if summary.all_passed() {
        println!("every scenario passed {rounds}/{rounds} rounds");
        ExitCode::SUCCESS
    } else {
        let flaky = summary
            .scenarios
            .iter()
            .filter(|t| t.passed < summary.rounds)
            .count();
        println!("{flaky} scenario(s) failed in at least one of {rounds} rounds");
        ExitCode::from(1)
    }
}

fn read_round(report: &Path) -> anyhow::Result<Vec<ScenarioResult>> {
    let text = std::fs::read_to_string(report.join("report.json"))?;
    let mut json: serde_json::Value = serde_json::from_str(&text)?;
    Ok(serde_json::from_value(json["scenarios"].take())?)
}

/// The command line of one round: this one without `--repeat` and
/// `--report` (each round gets a report directory of its own).
fn args_without_repeat(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut kept = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        if arg == "--repeat" || arg == "--report" {
            args.next();
        } else if !(arg.starts_with("--repeat=") || arg.starts_with("--report=")) {
            kept.push(arg);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_runs_the_same_command_without_repeat_or_report() {
        let args = [
            "run",
            "--tags",
            "@hpc",
            "--repeat",
            "20",
            "--report",
            "out",
            "--stack",
            "s.toml",
            "--repeat=3",
            "--report=x",
        ]
        .map(String::from);
        assert_eq!(
            args_without_repeat(args.into_iter()),
            ["run", "--tags", "@hpc", "--stack", "s.toml"]
        );
    }
}
