//! `hubtrust images pull LIST [--archives DIR]`: each listed image into
//! this machine's docker daemon, at the lock's digest, as kind's preflight
//! will check it. With `--archives`, an image is loaded from its archive
//! there when the archive holds the pinned image, and saved there after a
//! pull, so a CI cache of the directory spares the registry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use hubtrust_harness::backend::kubernetes::plan::PlannedCommand;
use hubtrust_harness::backend::kubernetes::{command, preflight};
use hubtrust_harness::images::list::{HeldImage, ImageList, ImageLock};
use hubtrust_harness::images::registry::{ImageReference, PlatformImage};

const INSPECT: Duration = Duration::from_secs(30);
/// A chart image is a few hundred MB; a slow registry gets minutes.
const TRANSFER: Duration = Duration::from_secs(600);

fn docker(purpose: String, args: &[&str], timeout: Duration) -> Result<String, String> {
    command::run(&PlannedCommand {
        purpose,
        program: "docker".into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        timeout,
    })
    .map(|out| out.stdout)
    .map_err(|e| e.to_string())
}

/// One listed image at its pin.
struct Pinned<'a> {
    image: &'a str,
    digest: &'a str,
    platforms: Option<&'a std::collections::BTreeMap<String, PlatformImage>>,
}

impl Pinned<'_> {
    /// `Ok(held)` when the daemon holds the pinned image under its tag;
    /// otherwise why not.
    fn check(&self) -> Result<HeldImage, String> {
        let inspected = docker(
            format!("inspect {}", self.image),
            &[
                "image",
                "inspect",
                "--format",
                HeldImage::INSPECT_FORMAT,
                self.image,
            ],
            INSPECT,
        )
        .map_err(|e| format!("the docker daemon does not hold it ({e})"))?;
        let held = HeldImage::parse(&inspected)
            .ok_or_else(|| format!("`docker image inspect` printed {:?}", inspected.trim()))?;
        held.is_pinned(self.image, self.digest, self.platforms)?;
        Ok(held)
    }

    fn load(&self, archive: &Path) -> Result<HeldImage, String> {
        docker(
            format!("load {}", archive.display()),
            &["load", "--input", &archive.to_string_lossy()],
            TRANSFER,
        )?;
        self.check()
    }

    fn pull(&self) -> Result<HeldImage, String> {
        let by_digest = ImageReference::parse(self.image)
            .map_err(|e| e.to_string())?
            .at_digest(self.digest);
        docker(
            format!("pull {by_digest}"),
            &["pull", "--quiet", &by_digest],
            TRANSFER,
        )?;
        docker(
            format!("tag {by_digest}"),
            &["tag", &by_digest, self.image],
            INSPECT,
        )?;
        self.check()
    }

    /// Writes the held image to `archive`, whole or not at all: only its
    /// own platform where the daemon can say so (API 1.48, Docker 28), which
    /// matters to the containerd image store; docker's own store holds one
    /// platform an image anyway.
    fn save(&self, held: &HeldImage, archive: &Path) -> Result<(), String> {
        let partial = archive.with_extension("tar.partial");
        let partial_path = partial.to_string_lossy();
        let mut args = vec!["save"];
        if preflight::docker_api_version().is_some_and(|api| api >= (1, 48)) {
            args.extend(["--platform", &held.platform]);
        }
        args.extend(["--output", &partial_path, self.image]);
        let saved = docker(format!("save {}", self.image), &args, TRANSFER)
            .and_then(|_| std::fs::rename(&partial, archive).map_err(|e| e.to_string()));
        if saved.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        saved
    }
}

/// Brings one image in: already held, from its archive, or pulled. Returns
/// where it came from, or why it is not there as pinned.
fn bring_in(pinned: &Pinned, archive: Option<&Path>) -> Result<String, String> {
    let mut from = None;
    if let Ok(held) = pinned.check() {
        from = Some((held, "already in the docker daemon".to_string()));
    } else if let Some(archive) = archive.filter(|a| a.exists()) {
        match pinned.load(archive) {
            Ok(held) => from = Some((held, format!("loaded from {}", archive.display()))),
            Err(why) => {
                eprintln!(
                    "{}: {} is not the pinned image ({why}); pulling it instead",
                    pinned.image,
                    archive.display()
                );
                let _ = std::fs::remove_file(archive);
            }
        }
    }
    let (held, mut said) = match from {
        Some(found) => found,
        None => (pinned.pull()?, format!("pulled at {}", pinned.digest)),
    };
    if let Some(archive) = archive.filter(|a| !a.exists()) {
        pinned.save(&held, archive)?;
        said.push_str(&format!(", saved to {}", archive.display()));
    }
    Ok(said)
}

/// A save cut short (the runner stopped, SIGKILL) leaves a `.tar.partial`
/// that no load reads: removed, so a cache of the folder never keeps it.
fn remove_interrupted_saves(dir: &Path) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("read {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.to_string_lossy().ends_with(".tar.partial") {
            std::fs::remove_file(&path)
                .map_err(|e| anyhow::anyhow!("remove {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

pub fn images_pull_command(list_path: &Path, archives: Option<&PathBuf>) -> ExitCode {
    let read = (|| -> anyhow::Result<_> {
        let list = ImageList::load(list_path)?;
        let lock = ImageLock::load_for(list_path)?;
        list.pinned(&lock, list_path)?;
        anyhow::ensure!(
            preflight::docker_api_version().is_some(),
            "no docker daemon answers `docker version` (fix: start it, e.g. `sudo systemctl start docker`)"
        );
        if let Some(dir) = archives {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
            remove_interrupted_saves(dir)?;
        }
        Ok((list, lock))
    })();
    let (list, lock) = match read {
        Ok(read) => read,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut failed = 0;
    for (role, listed) in &list.components {
        let pinned = Pinned {
            image: &listed.image,
            digest: &lock.digests[&listed.image],
            platforms: lock.platforms.get(&listed.image),
        };
        let archive = archives.map(|dir| dir.join(format!("{}.tar", role.as_str())));
        match bring_in(&pinned, archive.as_deref()) {
            Ok(said) => println!("{}: {said}", listed.image),
            Err(why) => {
                failed += 1;
                eprintln!(
                    "error: the {} image {}: {why} (fix: check that this machine reaches its registry, then run `hubtrust images pull {}` again)",
                    role.as_str(),
                    listed.image,
                    list_path.display()
                );
            }
        }
    }
    if failed > 0 {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
