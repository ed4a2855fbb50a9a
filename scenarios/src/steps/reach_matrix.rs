use cucumber::{then, when};

use crate::world::{report, Operator};

#[when("every internal endpoint is probed from every host of the topology")]
async fn probe_matrix(world: &mut Operator) -> anyhow::Result<()> {
    let cells = world.deployment()?.reachability_matrix().await?;
    anyhow::ensure!(
        !cells.is_empty(),
        "the deployment has no internal endpoint to probe"
    );
    if let Ok(mut r) = report().lock() {
        r.reachability = cells.clone();
    }
    world.reach_cells = Some(cells);
    Ok(())
}

#[then("each answers from the hosts of its clients and from no other host")]
fn answers_as_designed(world: &mut Operator) -> anyhow::Result<()> {
    let cells = world
        .reach_cells
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no endpoint was probed in this scenario"))?;
    let found = hubtrust_harness::reachability::judge(cells);
    anyhow::ensure!(
        found.is_empty(),
        "{} cell(s) of the reachability matrix differ from the design:\n  {}",
        found.len(),
        found.join("\n  ")
    );
    Ok(())
}
