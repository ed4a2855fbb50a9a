//! The private working directory of one run: PKI (keys included), configs,
//! logs. Removed when dropped; a run killed outright (SIGKILL) cannot clean
//! up, so every run first removes the directories of runs that are gone,
//! recognised by a lock only a live run holds.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{HarnessError, Result};

const PREFIX: &str = "hubtrust-run-";
const LOCK: &str = ".alive";

/// A run's working directory, locked for as long as the run lives.
pub struct RunDir {
    path: PathBuf,
    _alive: Flock<File>,
}

impl RunDir {
    /// Sweeps directories left by dead runs under `parent`, then creates
    /// and locks a fresh one.
    pub fn create(parent: &Path) -> Result<Self> {
        sweep_dead_runs(parent);
        let path = parent.join(format!(
            "{PREFIX}{}",
            hex::encode(rand::random::<[u8; 6]>())
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| HarnessError::io(format!("create {}", path.display()), e))?;
        let file = File::create(path.join(LOCK))
            .map_err(|e| HarnessError::io(format!("create {}/{LOCK}", path.display()), e))?;
        let alive = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| HarnessError::io(format!("lock {}", path.display()), e.into()))?;
        Ok(Self {
            path,
            _alive: alive,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes every run directory under `parent` whose lock nobody holds: its
/// run died without cleaning up. Returns how many were removed.
pub fn sweep_dead_runs(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let dir = entry.path();
        let dead = match File::open(dir.join(LOCK)) {
            // Taking the lock proves its run is gone; it is dropped (and
            // released) right after, with the directory.
            Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok(),
            // Killed between creating the directory and its lock.
            Err(_) => true,
        };
        if dead && std::fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_runs_directory_is_swept_and_a_live_ones_is_not() {
        let held = tempfile::tempdir().unwrap();
        let parent = held.path();
        let live = RunDir::create(parent).unwrap();
        // A run killed outright leaves its directory and an unheld lock.
        let dead = parent.join(format!("{PREFIX}dead"));
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join(LOCK), "").unwrap();
        std::fs::write(dead.join("key.pem"), "secret").unwrap();
        assert_eq!(sweep_dead_runs(parent), 1);
        assert!(!dead.exists());
        assert!(live.path().exists());
        let path = live.path().to_path_buf();
        drop(live);
        assert!(!path.exists());
    }
}
