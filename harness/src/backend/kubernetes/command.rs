//! The kind, docker, kubectl and helm CLIs, run through duct with a
//! deadline: a command that hangs is killed and named, with the last lines
//! it printed.

use std::sync::{mpsc, Arc};

use super::plan::PlannedCommand;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandFailure {
    #[error("`{program}` is not on PATH")]
    NotFound { program: String },
    #[error("`{line}` failed ({status}): {}", last_lines(.output))]
    Failed {
        line: String,
        status: String,
        output: String,
    },
    #[error("`{line}` did not finish within {seconds} s and was stopped: {}", last_lines(.output))]
    TimedOut {
        line: String,
        seconds: u64,
        output: String,
    },
}

fn last_lines(output: &str) -> String {
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(5)..];
    if tail.is_empty() {
        "it printed nothing".into()
    } else {
        tail.join(" | ")
    }
}

/// Runs `command` to its end, or kills it at its timeout.
pub fn run(command: &PlannedCommand) -> Result<CommandOutput, CommandFailure> {
    let line = command.short_line();
    let handle = duct::cmd(&command.program, &command.args)
        .stdin_null()
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .start()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CommandFailure::NotFound {
                program: command.program.clone(),
            },
            _ => CommandFailure::Failed {
                line: line.clone(),
                status: "could not start".into(),
                output: e.to_string(),
            },
        })?;
    let handle = Arc::new(handle);
    let (done, finished) = mpsc::channel();
    let waiter = Arc::clone(&handle);
    std::thread::spawn(move || {
        let _ = done.send(waiter.wait().cloned());
    });
    match finished.recv_timeout(command.timeout) {
        Ok(Ok(output)) => {
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            if output.status.success() {
                Ok(CommandOutput { stdout, stderr })
            } else {
                Err(CommandFailure::Failed {
                    line,
                    status: output.status.to_string(),
                    output: format!("{stdout}\n{stderr}"),
                })
            }
        }
        Ok(Err(e)) => Err(CommandFailure::Failed {
            line,
            status: "could not be waited on".into(),
            output: e.to_string(),
        }),
        Err(_) => {
            let _ = handle.kill();
            Err(CommandFailure::TimedOut {
                line,
                seconds: command.timeout.as_secs(),
                output: String::new(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn planned(program: &str, args: &[&str], timeout: Duration) -> PlannedCommand {
        PlannedCommand {
            purpose: "test".into(),
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            timeout,
        }
    }

    #[test]
    fn a_failing_command_is_named_with_its_last_lines() {
        let err = run(&planned(
            "sh",
            &["-c", "echo one; echo two >&2; exit 3"],
            Duration::from_secs(10),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("exit status: 3") && err.contains("one | two"),
            "{err}"
        );
    }

    #[test]
    fn an_inline_script_is_named_by_its_first_line() {
        let err = run(&planned(
            "python3",
            &[
                "-c",
                "import sys\nprint('x')\nsys.exit('no hub here')",
                "/proc",
            ],
            Duration::from_secs(10),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("`python3 -c 'import sys …' (2 more lines) /proc` failed")
                && err.contains("no hub here"),
            "{err}"
        );
    }

    #[test]
    fn a_hanging_command_is_stopped_at_its_deadline() {
        let started = std::time::Instant::now();
        let err = run(&planned("sleep", &["30"], Duration::from_millis(300))).unwrap_err();
        assert!(matches!(err, CommandFailure::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_missing_program_says_so() {
        let err = run(&planned(
            "hubtrust-no-such-cli",
            &[],
            Duration::from_secs(5),
        ))
        .unwrap_err();
        assert_eq!(
            err,
            CommandFailure::NotFound {
                program: "hubtrust-no-such-cli".into()
            }
        );
    }
}
