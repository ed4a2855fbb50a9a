use cucumber::{then, when};

use crate::world::Operator;

#[when(expr = "I ask the proxy for {string}")]
async fn ask_the_proxy(world: &mut Operator, path: String) -> anyhow::Result<()> {
    world.http_status = Some(world.deployment()?.get_via_proxy(&path).await?);
    Ok(())
}

#[then(expr = "the answer is HTTP {int}")]
fn the_answer_is(world: &mut Operator, status: u16) -> anyhow::Result<()> {
    let observed = world
        .http_status
        .ok_or_else(|| anyhow::anyhow!("no request was made"))?;
    anyhow::ensure!(
        observed == status,
        "the proxy answered HTTP {observed}, expected {status}"
    );
    Ok(())
}

#[then("a client with only the public URL, the public CA and the service token runs a cell in every user's lab")]
async fn outsider_runs_a_cell(world: &mut Operator) -> anyhow::Result<()> {
    let deployment = world.deployment()?;
    let users = deployment.users();
    anyhow::ensure!(!users.is_empty(), "the deployment has no lab to check");
    for user in users {
        let report = deployment
            .check_from_outside(&user, "print('hubtrust-' + 'outside')")
            .await?;
        anyhow::ensure!(
            report.cell == "hubtrust-outside",
            "the cell in {user}'s lab printed {:?}, not \"hubtrust-outside\"",
            report.cell
        );
    }
    Ok(())
}

#[then("every user's lab answers through the proxy")]
async fn every_lab_answers(world: &mut Operator) -> anyhow::Result<()> {
    let deployment = world.deployment()?;
    let users = deployment.users();
    anyhow::ensure!(!users.is_empty(), "the deployment has no lab to check");
    for user in users {
        let status = deployment
            .get_via_proxy(&format!("/user/{user}/api"))
            .await?;
        anyhow::ensure!(
            status == 200,
            "the lab of {user} answered HTTP {status} through the proxy{}",
            deployment.diagnoses()
        );
    }
    Ok(())
}
