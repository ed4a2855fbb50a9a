//! Helpers the end-to-end test files share.

// Test helpers: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn hubtrust() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hubtrust"));
    c.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    c.stdin(Stdio::null());
    c
}

/// A test's own directory under the system's temporary directory, removed
/// when the test ends by any path: a failing assertion unwinds through its
/// drop, so a red test leaves nothing in /tmp either.
pub struct Scratch(PathBuf);

pub fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("hubtrust-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file alone in a [`Scratch`] directory, which goes with it.
pub struct ScratchFile {
    path: PathBuf,
    _dir: Scratch,
}

impl ScratchFile {
    pub fn new(name: &str, file_name: &str, contents: &str) -> Self {
        let dir = scratch(name);
        let path = dir.join(file_name);
        std::fs::write(&path, contents).unwrap();
        ScratchFile { path, _dir: dir }
    }
}

impl std::ops::Deref for ScratchFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for ScratchFile {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for ScratchFile {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Pids of processes whose command line contains `needle`.
pub fn processes_running(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(needle)
                .then_some(pid)
        })
        .collect()
}

/// Every file under `dir`.
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Pids of the processes a run marked (`HUBTRUST_RUN_ID=<run>`).
pub fn processes_of_run(run: &str) -> Vec<u32> {
    hubtrust_harness::process::marked_processes(&format!("HUBTRUST_RUN_ID={run}"))
}

/// Waits (bounded) until no process of `run` is left; names any that are.
pub fn assert_no_process_left(run: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left = processes_of_run(run);
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            let names: Vec<String> = left
                .iter()
                .map(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                        .unwrap_or_default()
                        .replace('\0', " ")
                })
                .collect();
            panic!("processes survived the run: {names:?}");
        }
        // Polling interval of a wait bounded by the deadline above: teardown
        // may still be reaping the last process.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Whether a docker daemon answers; with one, the offline image is built
/// (quick once built). Without one the caller's test did not run, which
/// it says, unless HUBTRUST_REQUIRE_DOCKER=1 (CI sets it) makes that a
/// failure.
pub fn docker_ready() -> bool {
    let up = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !up {
        assert!(
            std::env::var("HUBTRUST_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "HUBTRUST_REQUIRE_DOCKER=1 but no docker daemon answers"
        );
        eprintln!("no docker daemon: this docker test did not run");
        return false;
    }
    let built = hubtrust().args(["images", "build"]).output().unwrap();
    assert!(built.status.success(), "{}", text(&built));
    true
}

/// `docker ARGS`, which must succeed: its stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Containers, networks and volumes labelled with `run`.
pub fn labelled(run: &str) -> Vec<String> {
    let filter = format!("label=hubtrust.run={run}");
    ["container", "network", "volume"]
        .iter()
        .flat_map(|kind| {
            let mut args = vec![*kind, "ls", "-q", "--filter", &filter];
            if *kind == "container" {
                args.push("-a");
            }
            docker(&args)
                .lines()
                .map(|id| format!("{kind} {id}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits (bounded) until nothing labelled with `run` is left.
pub fn assert_nothing_labelled(run: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = labelled(run);
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {left:?}"
        );
        // Bounded poll interval while the reaper works.
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The run id a test's hubtrust runs under, unique to this test process.
pub fn run_id(test: &str) -> String {
    format!("test-{test}-{}", std::process::id())
}

/// Whether this process runs as real root (real sshd needs it).
pub fn real_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether `tool` is on PATH.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Exit 2, a message naming `needle`, and a fix.
pub fn expect_usage_error(out: &Output, needle: &str) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2:\n{}",
        text(out)
    );
    let t = text(out);
    assert!(
        t.contains(needle),
        "error does not mention {needle:?}:\n{t}"
    );
    assert!(t.contains("fix"), "error gives no fix hint:\n{t}");
}

/// `hubtrust run --tags TAGS --stack STACK --report REPORT`, marked as run
/// `id` (so the cleanup checks can find anything it left).
pub fn run_stack(tags: &str, stack: &Path, report: &Path, id: &str) -> Output {
    hubtrust()
        .args(["run", "--tags", tags, "--stack"])
        .arg(stack)
        .arg("--report")
        .arg(report)
        .env("HUBTRUST_RUN_ID", id)
        .output()
        .unwrap()
}

pub fn which(tool: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(())
}
