//! The private working directory of one run: PKI (keys included), configs,
//! logs. Removed when dropped; a run killed outright (SIGKILL) cannot clean
//! up, so every run first removes the directories of runs that are gone,
//! recognised by a lock only a live run holds.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{HarnessError, Result};

const PREFIX: &str = "hubtrust-run-";
const LOCK: &str = ".alive";
/// A directory without its lock is a run killed between the two, or one
/// being born this instant: only one older than this is taken as dead.
const NEWBORN: Duration = Duration::from_secs(60);

/// A run's working directory, locked for as long as the run lives.
pub struct RunDir {
    path: PathBuf,
    _alive: Flock<File>,
}

impl RunDir {
    /// Sweeps directories left by dead runs under `parent`, then creates
    /// and locks a fresh one.
    pub fn create(parent: &Path) -> Result<Self> {
        Self::create_at(&Self::path_for(
            parent,
            &hex::encode(rand::random::<[u8; 6]>()),
        ))
    }

    /// Where [`RunDir::create_at`] puts the run labelled `label`, for a
    /// plan that names the directory before it exists.
    pub fn path_for(parent: &Path, label: &str) -> PathBuf {
        parent.join(format!("{PREFIX}{label}"))
    }

    /// Sweeps as [`RunDir::create`] does, then creates and locks `path`,
    /// which must not exist yet.
    pub fn create_at(path: &Path) -> Result<Self> {
        let parent = path.parent().unwrap_or(Path::new("."));
        sweep_dead_runs(parent);
        let path = path.to_path_buf();
        std::fs::create_dir(&path)
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

/// Whether a live run holds the run directory at `path`.
pub fn is_held(path: &Path) -> bool {
    match File::open(path.join(LOCK)) {
        Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err(),
        Err(_) => false,
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
            // Killed between creating the directory and its lock, unless
            // it is another run's, being made right now.
            Err(_) => older_than(&dir, NEWBORN),
        };
        if dead && std::fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn older_than(dir: &Path, age: Duration) -> bool {
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
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
        assert!(is_held(live.path()));
        assert!(!is_held(&dead));
        assert_eq!(sweep_dead_runs(parent), 1);
        assert!(!dead.exists());
        assert!(live.path().exists());
        let path = live.path().to_path_buf();
        drop(live);
        assert!(!path.exists());
    }

    /// Another run's directory, made an instant before its lock, is not
    /// swept; an old one without a lock is.
    #[test]
    fn a_directory_without_its_lock_is_swept_only_once_it_is_old() {
        let held = tempfile::tempdir().unwrap();
        let parent = held.path();
        let newborn = RunDir::path_for(parent, "newborn");
        std::fs::create_dir(&newborn).unwrap();
        assert_eq!(sweep_dead_runs(parent), 0);
        assert!(newborn.exists());
        let old = std::time::SystemTime::now() - 2 * NEWBORN;
        File::open(&newborn).unwrap().set_modified(old).unwrap();
        assert_eq!(sweep_dead_runs(parent), 1);
        assert!(!newborn.exists());
    }

    /// A labelled directory is where the plan said, and is refused when it
    /// exists: two runs never share one.
    #[test]
    fn a_labelled_run_directory_is_made_where_planned_and_only_once() {
        let held = tempfile::tempdir().unwrap();
        let path = RunDir::path_for(held.path(), "kind-ab12");
        let run = RunDir::create_at(&path).unwrap();
        assert_eq!(run.path(), path);
        assert!(path.join(LOCK).exists());
        let again = RunDir::create_at(&path).err().expect("refused");
        assert!(again.to_string().contains("kind-ab12"), "{again}");
        drop(run);
        assert!(!path.exists());
    }
}
