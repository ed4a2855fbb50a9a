use cucumber::given;

use crate::world::{shared_deployment, shared_stack, Operator, NOT_RESTORED};

#[given("the JupyterHub stack is up with internal SSL")]
fn stack_is_up(world: &mut Operator) -> anyhow::Result<()> {
    let deployment =
        shared_deployment().ok_or_else(|| anyhow::anyhow!("the run brought up no deployment"))?;
    if let Some(why) = NOT_RESTORED.lock().ok().and_then(|w| w.clone()) {
        anyhow::bail!("an earlier scenario disturbed the site and it could not be restored, so this scenario cannot be judged: {why}");
    }
    world.stack = shared_stack();
    world.deployment = Some(deployment);
    Ok(())
}
