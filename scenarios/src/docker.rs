//! The command line's side of the docker backend: bringing a stack up in
//! containers with a reaper watching, `images build`, `down` and the reaper
//! itself.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, ExitCode, Stdio};
use std::sync::Mutex;

use hubtrust_harness::backend::docker::images;
use hubtrust_harness::backend::docker::{
    remove_run, require_daemon_socket, runs_with_objects, DockerBackend, DockerEngine,
};
use hubtrust_harness::backend::Backend;
use hubtrust_harness::images::list::{ImageList, ImageLock};
use hubtrust_harness::spec::StackSpec;

/// The write end of the reaper's stdin. It is closed when this process
/// ends, however it ends (SIGKILL included), and that is what wakes the
/// reaper.
static REAPER: Mutex<Option<(String, ChildStdin)>> = Mutex::new(None);

/// What the reaper reads to stand down: a kept run stays for `down`.
const KEEP: &[u8] = b"keep\n";

/// The run id every docker object of the run carries as a label:
/// `$HUBTRUST_RUN_ID` when the caller chose one, else a fresh one.
pub fn new_run_id() -> String {
    if let Ok(run) = std::env::var(hubtrust_harness::stack::RUN_MARKER_ENV) {
        return run;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("run-{}-{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// Connects to docker, checks the stack and its image, and starts the
/// reaper: what a docker run needs before its first container.
/// With `keep_if_start_fails`, a stack that fails to come up leaves its
/// containers for inspection ([`keep_run`] then tells the reaper).
pub async fn prepare(
    spec: &StackSpec,
    keep_if_start_fails: bool,
) -> anyhow::Result<Box<dyn Backend>> {
    let mut images = spec
        .docker_images(&images::runtime_image())
        .map_err(|e| anyhow::anyhow!("{e} (fix: correct the stack file's [docker] section)"))?;
    let run = new_run_id();
    let mut engine = DockerEngine::connect(&run).await?;
    engine.keep_if_start_fails = keep_if_start_fails;
    require_daemon_socket()?;
    let mut ids = std::collections::BTreeMap::new();
    let progress = |line: &str| eprintln!("· {line}");
    for image in images.distinct() {
        ids.insert(
            image.to_string(),
            engine.require_or_pull(image, &progress).await?,
        );
    }
    images.ids = ids;
    spawn_reaper(&run)?;
    eprintln!("· docker run {run} (`hubtrust down {run}` removes it if it is ever left)");
    Ok(Box::new(DockerBackend { engine, images }))
}

fn spawn_reaper(run: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .args(["reap", run])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own process group: the terminal's Ctrl-C must not end it
        // before the run it watches has ended.
        .process_group(0)
        .spawn()
        .map_err(|e| anyhow::anyhow!("start the docker reaper: {e}"))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("the docker reaper has no stdin"))?;
    if let Ok(mut reaper) = REAPER.lock() {
        *reaper = Some((run.to_string(), stdin));
    }
    Ok(())
}

/// Tells the reaper to leave this run's containers for inspection;
/// returns the run's id, if a docker run was started.
pub fn keep_run() -> Option<String> {
    let mut reaper = REAPER.lock().ok()?;
    let (run, stdin) = reaper.as_mut()?;
    let _ = stdin.write_all(KEEP);
    Some(run.clone())
}

/// `hubtrust reap RUN`: waits until its stdin closes (the run's hubtrust
/// has ended), then removes everything labelled with the run, unless told
/// to keep it.
pub fn reap_command(run: &str) -> ExitCode {
    let mut said = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut said);
    if said.ends_with(KEEP) {
        return ExitCode::SUCCESS;
    }
    match remove(run) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hubtrust reaper: {e:#} (fix: `hubtrust down {run}`)");
            ExitCode::from(2)
        }
    }
}

/// `hubtrust down RUN`: removes a kept (or leaked) run's containers,
/// networks and volumes.
pub fn down_command(run: &str) -> ExitCode {
    match remove(run) {
        Ok(removed) if removed.containers + removed.networks + removed.volumes > 0 => {
            println!(
                "removed run {run}: {} containers, {} networks, {} volumes",
                removed.containers, removed.networks, removed.volumes
            );
            ExitCode::SUCCESS
        }
        Ok(_) => {
            let others = runtime()
                .and_then(|rt| {
                    rt.block_on(async {
                        let engine = DockerEngine::connect(run).await?;
                        Ok(runs_with_objects(engine.client()).await?)
                    })
                })
                .unwrap_or_default();
            eprintln!(
                "error: docker has nothing labelled with run {run} (runs that have: {})",
                if others.is_empty() {
                    "none".to_string()
                } else {
                    others.join(", ")
                }
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn remove(run: &str) -> anyhow::Result<hubtrust_harness::backend::docker::Removed> {
    runtime()?.block_on(async {
        let engine = DockerEngine::connect(run).await?;
        Ok(remove_run(engine.client(), run).await?)
    })
}

/// The offline runtime image, built unless the daemon has it.
pub fn ensure_runtime_image() -> anyhow::Result<String> {
    runtime()?.block_on(async {
        let engine = DockerEngine::connect("images").await?;
        Ok(images::build_runtime(&engine, &mut std::io::stderr())
            .await?
            .image)
    })
}

/// `hubtrust images build`: the offline runtime image, unless present.
pub fn images_build_command() -> ExitCode {
    match ensure_runtime_image() {
        Ok(image) => {
            println!("{image}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `hubtrust images pin LIST [--check]`: each listed image's digest from
/// its registry, written to the lock beside the list, or (with `--check`)
/// compared with it. Exit 0 when written or unchanged, 1 when `--check`
/// finds an image that moved or is not pinned, 2 when a registry cannot
/// answer or the list is bad.
pub fn images_pin_command(list_path: &std::path::Path, check: bool) -> ExitCode {
    let resolved = (|| -> anyhow::Result<_> {
        let list = ImageList::load(list_path)?;
        let locked = ImageLock::load_for(list_path)?;
        let http = hubtrust_harness::images::registry::client()?;
        let now = runtime()?.block_on(list.resolve(&http))?;
        Ok((locked, now))
    })();
    let (locked, now) = match resolved {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let lock_path = ImageList::lock_path(list_path);
    let moved = locked.moved(&now);
    for (image, was, is) in &moved {
        match was {
            Some(was) if was == is => {
                eprintln!("{image}: {is}, its platforms' images changed or newly recorded")
            }
            Some(was) => eprintln!("{image}: {was} -> {is}"),
            None => eprintln!("{image}: not pinned, now {is}"),
        }
    }
    if check {
        if moved.is_empty() {
            eprintln!("{} pins what the registries serve", lock_path.display());
            return ExitCode::SUCCESS;
        }
        eprintln!(
            "{} is stale for {} image(s) (fix: `hubtrust images pin {}`, then run the suite on the new digests before committing the lock)",
            lock_path.display(),
            moved.len(),
            list_path.display()
        );
        return ExitCode::from(1);
    }
    if let Err(e) = std::fs::write(&lock_path, now.render(list_path)) {
        eprintln!("error: write {}: {e}", lock_path.display());
        return ExitCode::from(2);
    }
    for (image, digest) in &now.digests {
        println!("{image} {digest}");
    }
    eprintln!("wrote {}", lock_path.display());
    ExitCode::SUCCESS
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
