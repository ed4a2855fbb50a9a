//! Bringing a stack up on the chosen backend, for runs and benchmarks.

use std::path::Path;

use hubtrust_harness::backend::local::LocalBackend;
use hubtrust_harness::backend::Backend;
use hubtrust_harness::provision;
use hubtrust_harness::spec::StackSpec;
use hubtrust_harness::stack::Stack;

use crate::BackendChoice;

pub async fn bring_up(spec: StackSpec, work: &Path) -> anyhow::Result<Stack> {
    bring_up_on(spec, work, BackendChoice::Local, false).await
}

/// Brings `spec` up on `backend`. With `keep_if_start_fails`, a docker
/// stack that fails to come up leaves its containers (the caller keeps
/// them from the reaper with [`crate::docker::keep_run`]).
pub async fn bring_up_on(
    spec: StackSpec,
    work: &Path,
    backend: BackendChoice,
    keep_if_start_fails: bool,
) -> anyhow::Result<Stack> {
    let progress = |line: &str| eprintln!("· {line}");
    let (components, backend) = match backend {
        BackendChoice::Local => {
            if let Some(why) = spec.local_unsupported() {
                anyhow::bail!(
                    "stack `{}` cannot run on the local backend: {why} (fix: run it with --backend docker, where each lab is a container of its own on its host, or use the HPC topology)",
                    spec.name
                );
            }
            let components = provision::cached().ok_or_else(|| {
                anyhow::anyhow!(
                    "components are not provisioned (fix: run `hubtrust doctor`, then `hubtrust run`)"
                )
            })?;
            (components, Box::new(LocalBackend) as Box<dyn Backend>)
        }
        BackendChoice::Docker => (
            hubtrust_harness::backend::docker::images::components_in_image(),
            crate::docker::prepare(&spec, keep_if_start_fails).await?,
        ),
        BackendChoice::Kind | BackendChoice::Kubernetes => anyhow::bail!(
            "the {} backend deploys the Zero to JupyterHub chart, which starts the components itself (fix: `hubtrust up --backend {}`)",
            backend.name(),
            backend.name()
        ),
    };
    Ok(Stack::up(spec, &components, backend, work, &progress).await?)
}
