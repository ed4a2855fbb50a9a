//! Installs the pinned components into a cache keyed by the pins. A second
//! run with the same pins installs nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::{HarnessError, Result};

pub const PYTHON_LOCK: &str = include_str!("../../fixtures/python/requirements.lock");
pub const MITMPROXY_LOCK: &str = include_str!("../../fixtures/python/mitmproxy.lock");
pub const NPM_PACKAGE: &str = include_str!("../../fixtures/npm/package.json");
pub const NPM_LOCK: &str = include_str!("../../fixtures/npm/package-lock.json");

/// Where the provisioned components live.
#[derive(Debug, Clone)]
pub struct Components {
    pub root: PathBuf,
    pub venv: PathBuf,
    pub node_modules: PathBuf,
    /// mitmproxy's own venv (the enterprise profile's inspecting proxy).
    pub mitmproxy_venv: PathBuf,
}

impl Components {
    pub fn at(root: PathBuf) -> Self {
        Self {
            venv: root.join("venv"),
            node_modules: root.join("npm").join("node_modules"),
            mitmproxy_venv: root.join("mitmproxy-venv"),
            root,
        }
    }
}

/// `$HUBTRUST_CACHE`, else `$XDG_CACHE_HOME/hubtrust`, else `~/.cache/hubtrust`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("HUBTRUST_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("hubtrust");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("hubtrust")
}

/// The interpreter the venvs are built with: `$HUBTRUST_PYTHON`, else the
/// distribution's `/usr/bin/python3` (the pins are resolved for Debian 12's),
/// else `python3` on PATH. A distribution python also lives where lab users
/// on HPC compute nodes can run it, unlike a pyenv build in root's home.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("HUBTRUST_PYTHON") {
        return PathBuf::from(python);
    }
    let system = Path::new("/usr/bin/python3");
    if system.exists() {
        return system.to_path_buf();
    }
    PathBuf::from("python3")
}

/// A short digest of every pin and of the interpreter, so a changed pin
/// or python gets a fresh install.
pub fn pins_key() -> String {
    let mut hasher = Sha256::new();
    let interpreter = python();
    let interpreter = std::fs::canonicalize(&interpreter).unwrap_or(interpreter);
    let interpreter = interpreter.display().to_string();
    for part in [
        PYTHON_LOCK,
        MITMPROXY_LOCK,
        NPM_PACKAGE,
        NPM_LOCK,
        interpreter.as_str(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// The components for the current pins, if already installed.
pub fn cached() -> Option<Components> {
    let root = cache_root().join(format!("components-{}", pins_key()));
    root.join(".complete")
        .exists()
        .then(|| Components::at(root))
}

/// Returns the cached components, installing them first when needed.
/// `progress` receives one line per step.
pub fn ensure(progress: &mut dyn Write) -> Result<Components> {
    if let Some(components) = cached() {
        return Ok(components);
    }
    let cache = cache_root();
    std::fs::create_dir_all(&cache)
        .map_err(|e| HarnessError::io(format!("create {}", cache.display()), e))?;
    // Two runs provisioning at once would trample each other's venv.
    let lock_path = cache.join(format!("components-{}.lock", pins_key()));
    let lock_file = std::fs::File::create(&lock_path)
        .map_err(|e| HarnessError::io(format!("create {}", lock_path.display()), e))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| HarnessError::io(format!("lock {}", lock_path.display()), e.into()))?;
    if let Some(components) = cached() {
        return Ok(components);
    }
    // Virtualenvs are not relocatable, so the install happens in place;
    // the `.complete` marker, written last, is what makes it count.
    let root = cache.join(format!("components-{}", pins_key()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)
        .map_err(|e| HarnessError::io(format!("create {}", root.display()), e))?;
    if let Err(e) = install(&root, progress) {
        let _ = std::fs::remove_dir_all(&root);
        return Err(e);
    }
    std::fs::write(root.join(".complete"), pins_key())
        .map_err(|e| HarnessError::io("mark the cache complete", e))?;
    Ok(Components::at(root))
}

fn install(root: &Path, progress: &mut dyn Write) -> Result<()> {
    let started = Instant::now();
    let _ = writeln!(
        progress,
        "provisioning components into {} (first use of these pins)",
        root.display()
    );
    // The installers' own temporary files (ensurepip's wheels, pip's
    // builds, npm's cache) stay inside the install: one killed half-way
    // leaves them where the next install removes them, never in /tmp.
    let tmp = root.join(".tmp");
    std::fs::create_dir_all(&tmp)
        .map_err(|e| HarnessError::io("create the installers' TMPDIR", e))?;
    let installer = |program: &dyn AsRef<std::ffi::OsStr>| tied(program, &tmp);
    let venv = root.join("venv");
    step(progress, "1/4 python venv", || {
        run(
            "python venv",
            installer(&python()).arg("-m").arg("venv").arg(&venv),
            "apt-get install -y python3-venv",
        )
    })?;
    let lock = root.join("requirements.lock");
    std::fs::write(&lock, PYTHON_LOCK)
        .map_err(|e| HarnessError::io("write requirements.lock", e))?;
    step(
        progress,
        "2/4 pip install jupyterhub, jupyterlab (pinned)",
        || pip_install_lock(&venv, &lock, &tmp),
    )?;
    let npm = root.join("npm");
    std::fs::create_dir_all(&npm).map_err(|e| HarnessError::io("create npm dir", e))?;
    std::fs::write(npm.join("package.json"), NPM_PACKAGE)
        .map_err(|e| HarnessError::io("write package.json", e))?;
    std::fs::write(npm.join("package-lock.json"), NPM_LOCK)
        .map_err(|e| HarnessError::io("write package-lock.json", e))?;
    step(
        progress,
        "3/4 npm ci configurable-http-proxy (pinned)",
        || {
            run(
                "npm ci",
                installer(&"npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&npm),
                "apt-get install -y nodejs npm",
            )
        },
    )?;
    let mitmproxy = root.join("mitmproxy-venv");
    let mitmproxy_lock = root.join("mitmproxy.lock");
    std::fs::write(&mitmproxy_lock, MITMPROXY_LOCK)
        .map_err(|e| HarnessError::io("write mitmproxy.lock", e))?;
    step(progress, "4/4 mitmproxy in its own venv (pinned)", || {
        run(
            "python venv",
            installer(&python()).arg("-m").arg("venv").arg(&mitmproxy),
            "apt-get install -y python3-venv",
        )?;
        pip_install_lock(&mitmproxy, &mitmproxy_lock, &tmp)
    })?;
    // What is left there is inside the install, harmless.
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = writeln!(
        progress,
        "provisioned in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Installs exactly the pins of `lock` (every transitive dependency is
/// pinned, so `--no-deps`) into `venv`.
fn pip_install_lock(venv: &Path, lock: &Path, tmp: &Path) -> Result<()> {
    run(
        "pip install",
        tied(venv.join("bin/pip"), tmp)
            .args([
                "install",
                "--no-deps",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                "-r",
            ])
            .arg(lock),
        "check access to the Python package index, and that python3 meets the pins' Requires-Python (scripts/relock resolves them for Debian 12's 3.11.2)",
    )
}

fn step(progress: &mut dyn Write, what: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let started = Instant::now();
    let _ = writeln!(progress, "  {what} …");
    f()?;
    let _ = writeln!(
        progress,
        "  {what} done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `program`, run so that it dies with hubtrust, children and all: an
/// install killed half-way must not go on writing into the cache the next
/// run installs into. `setpriv`'s parent-death signal kills `unshare`,
/// `--kill-child` kills `program`, the init of a PID namespace of its own,
/// and the kernel kills whatever it started (ensurepip, pip's builds, npm's
/// scripts). Without root, a user namespace that maps only the caller's own
/// uid makes the PID namespace possible and changes no file's owner.
/// Its temporary files go to `tmp`.
fn tied(program: impl AsRef<std::ffi::OsStr>, tmp: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command.env("TMPDIR", tmp);
    command.args(["--pdeathsig", "KILL", "--", "unshare"]);
    if !nix::unistd::geteuid().is_root() {
        command.args(["--user", "--map-current-user"]);
    }
    command
        .args(["--pid", "--fork", "--kill-child", "--"])
        .arg(program);
    command
}

fn run(what: &str, command: &mut Command, fix: &str) -> Result<()> {
    let output =
        command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| HarnessError::MissingPrerequisite {
                what: what.into(),
                why: e.to_string(),
                fix: fix.into(),
            })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
    Err(HarnessError::Provision {
        what: what.into(),
        message: format!(
            "{} (fix: {fix})\n{}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_key_is_stable_and_short() {
        assert_eq!(pins_key(), pins_key());
        assert_eq!(pins_key().len(), 16);
    }

    #[test]
    fn locks_pin_every_component() {
        assert!(PYTHON_LOCK.lines().any(|l| l.starts_with("jupyterhub==")));
        assert!(PYTHON_LOCK.lines().any(|l| l.starts_with("jupyterlab==")));
        assert!(PYTHON_LOCK
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .all(|l| l.contains("==")));
        assert!(NPM_LOCK.contains("\"node_modules/configurable-http-proxy\""));
        assert!(MITMPROXY_LOCK.lines().any(|l| l == "mitmproxy==11.0.2"));
    }
}
