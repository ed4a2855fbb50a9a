//! The docker backend's offline images: built without any registry from
//! Debian's mirror (debootstrap) and the same PyPI and npm pins as the
//! local backend, then imported with `docker import`. The tag is a digest
//! of everything that goes in, so a machine builds each image once.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::DockerEngine;
use crate::error::{HarnessError, Result};
use crate::provision::{self, Components};

const BUILD_ROOTFS: &str = include_str!("../../../../fixtures/images/build-rootfs.sh");

/// Where the components live inside the image.
pub const COMPONENTS_IN_IMAGE: &str = "/opt/hubtrust";

/// What the runtime image is made from, by path in the repository: its
/// tag is their hash, and the `kind` job caches its archive under the
/// same files' hash.
pub const RUNTIME_IMAGE_INPUTS: [(&str, &str); 5] = [
    ("fixtures/images/build-rootfs.sh", BUILD_ROOTFS),
    ("fixtures/python/requirements.lock", provision::PYTHON_LOCK),
    ("fixtures/python/mitmproxy.lock", provision::MITMPROXY_LOCK),
    ("fixtures/npm/package.json", provision::NPM_PACKAGE),
    ("fixtures/npm/package-lock.json", provision::NPM_LOCK),
];

/// The runtime image's reference: one image carries hub, proxy, lab and
/// mitmproxy, as the local backend's one component cache does.
pub fn runtime_image() -> String {
    let mut hasher = Sha256::new();
    for (_, part) in RUNTIME_IMAGE_INPUTS {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let repository =
        std::env::var(IMAGE_REPOSITORY_ENV).unwrap_or_else(|_| "hubtrust/runtime".into());
    format!("{repository}:{}", hex::encode(&hasher.finalize()[..8]))
}

/// Names the runtime image's repository (default `hubtrust/runtime`), for
/// a site that keeps its images under its own names.
pub const IMAGE_REPOSITORY_ENV: &str = "HUBTRUST_IMAGE_REPOSITORY";

/// The components as a container of the runtime image sees them.
pub fn components_in_image() -> Components {
    Components::at(COMPONENTS_IN_IMAGE.into())
}

/// How an image build went.
#[derive(Debug)]
pub struct Built {
    pub image: String,
    /// False when the image was already there.
    pub built: bool,
    pub seconds: f64,
}

/// Builds the runtime image unless the daemon already has it.
pub async fn build_runtime(engine: &DockerEngine, progress: &mut dyn Write) -> Result<Built> {
    let started = Instant::now();
    let image = runtime_image();
    let work = provision::cache_root().join("image-build");
    let lock_path = provision::cache_root().join("image-build.lock");
    if engine.require_image(&image).await.is_ok() {
        // A build killed half-way left its work directory: remove it,
        // unless a build is running now (it holds the lock).
        let idle = std::fs::File::open(&lock_path).ok().and_then(|f| {
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()
        });
        if idle.is_some() {
            let _ = std::fs::remove_dir_all(&work);
        }
        let _ = writeln!(progress, "{image} is already built");
        return Ok(Built {
            image,
            built: false,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    // The npm install is made on this machine from the same lock (pure
    // JavaScript); the python venvs are made inside the image.
    let components = provision::ensure(progress)?;
    std::fs::create_dir_all(provision::cache_root())
        .map_err(|e| HarnessError::io("create the cache directory", e))?;
    let lock_file = std::fs::File::create(&lock_path)
        .map_err(|e| HarnessError::io(format!("create {}", lock_path.display()), e))?;
    // Two builds at once would share one work directory.
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| HarnessError::io(format!("lock {}", lock_path.display()), e.into()))?;
    // Another build may have made it while this one waited for the lock.
    if engine.require_image(&image).await.is_ok() {
        let _ = writeln!(progress, "{image} was built meanwhile");
        return Ok(Built {
            image,
            built: false,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    // A build killed half-way leaves its work directory; it starts over.
    let _ = std::fs::remove_dir_all(&work);
    let result = build_in(engine, &components, &work, &image, progress).await;
    let _ = std::fs::remove_dir_all(&work);
    result?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = writeln!(progress, "built {image} in {seconds:.1}s");
    Ok(Built {
        image,
        built: true,
        seconds,
    })
}

async fn build_in(
    engine: &DockerEngine,
    components: &Components,
    work: &Path,
    image: &str,
    progress: &mut dyn Write,
) -> Result<()> {
    let inputs = work.join("inputs");
    std::fs::create_dir_all(&inputs).map_err(|e| HarnessError::io("create the build inputs", e))?;
    let write = |name: &str, text: &str| {
        std::fs::write(inputs.join(name), text)
            .map_err(|e| HarnessError::io(format!("write {name}"), e))
    };
    write("requirements.lock", provision::PYTHON_LOCK)?;
    write("mitmproxy.lock", provision::MITMPROXY_LOCK)?;
    write("build-rootfs.sh", BUILD_ROOTFS)?;
    copy_tree(&components.node_modules, &inputs.join("node_modules"))?;
    let rootfs = work.join("rootfs");
    let _ = writeln!(
        progress,
        "  building the root filesystem (debootstrap, pip) …"
    );
    let step = Instant::now();
    // Tied to this process as the local backend's namespace is: if hubtrust
    // dies, even by SIGKILL, `setpriv`'s parent-death signal kills
    // `unshare`, `--kill-child` kills the script, the PID namespace's init,
    // and the kernel kills debootstrap, dpkg and pip with it.
    let output = tokio::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", "unshare"])
        .args(["--mount", "--pid", "--fork", "--kill-child", "bash"])
        .arg(inputs.join("build-rootfs.sh"))
        .arg(&rootfs)
        .arg(&inputs)
        .arg(provision::cache_root().join("pip"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| HarnessError::MissingPrerequisite {
            what: "setpriv and unshare".into(),
            why: e.to_string(),
            fix: "apt-get install -y util-linux".into(),
        })?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = text.lines().rev().take(12).collect();
        return Err(HarnessError::Provision {
            what: format!("the root filesystem of {image}"),
            message: format!(
                "{} (fix: the build needs root, debootstrap and access to Debian's mirror and the Python package index)\n{}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        });
    }
    let _ = writeln!(
        progress,
        "  root filesystem ready in {:.1}s; importing …",
        step.elapsed().as_secs_f64()
    );
    let step = Instant::now();
    import(engine, &rootfs, image).await?;
    let _ = writeln!(
        progress,
        "  imported in {:.1}s",
        step.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `docker import`: the root filesystem streamed as a tar, never held in
/// memory whole.
async fn import(engine: &DockerEngine, rootfs: &Path, image: &str) -> Result<()> {
    let mut tar = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["--numeric-owner", "-c", "."])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HarnessError::MissingPrerequisite {
            what: "tar".into(),
            why: e.to_string(),
            fix: "apt-get install -y tar".into(),
        })?;
    let stdout = tar.stdout.take().ok_or_else(|| HarnessError::Docker {
        what: format!("import {image}"),
        message: "tar has no output".into(),
    })?;
    // The whole reference as `repo` (the API allows a tag in it): Podman's
    // compatible API ignores a separate `tag` and would import as :latest.
    let options = bollard::query_parameters::CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(image)
        .changes(vec![
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            "ENV LANG=C.UTF-8".to_string(),
            "CMD [\"sleep\", \"infinity\"]".to_string(),
        ])
        .build();
    let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(stdout));
    let mut answers = engine
        .client()
        .create_image(Some(options), Some(body), None);
    while let Some(answer) = answers.next().await {
        answer.map_err(|e| HarnessError::Docker {
            what: format!("import {image}"),
            message: e.to_string(),
        })?;
    }
    let status = tar
        .wait()
        .await
        .map_err(|e| HarnessError::io("wait for tar", e))?;
    if !status.success() {
        return Err(HarnessError::Docker {
            what: format!("import {image}"),
            message: format!("tar of the root filesystem failed ({status})"),
        });
    }
    engine.require_image(image).await.map(|_| ())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| HarnessError::io("run cp", e))?;
    if !status.success() {
        return Err(HarnessError::io(
            format!("copy {} to {}", from.display(), to.display()),
            std::io::Error::other(status.to_string()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_jobs_cache_key_hashes_the_runtime_images_inputs() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let workflow = std::fs::read_to_string(root.join(".github/workflows/ci.yml")).unwrap();
        let key = workflow
            .lines()
            .find(|l| l.contains("key: runtime-image-"))
            .expect("the kind job caches the runtime image");
        for (path, text) in RUNTIME_IMAGE_INPUTS {
            assert!(key.contains(&format!("'{path}'")), "{path} not in {key}");
            assert_eq!(std::fs::read_to_string(root.join(path)).unwrap(), text);
        }
        assert_eq!(
            key.matches("'fixtures/").count(),
            RUNTIME_IMAGE_INPUTS.len(),
            "{key}"
        );
    }

    #[test]
    fn the_image_tag_follows_its_inputs() {
        let image = runtime_image();
        assert!(image.starts_with("hubtrust/runtime:"));
        assert_eq!(image, runtime_image());
        assert_eq!(image.len(), "hubtrust/runtime:".len() + 16);
    }
}
