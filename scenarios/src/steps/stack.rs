use cucumber::given;

use crate::world::{shared_stack, Operator};

#[given("the JupyterHub stack is up with internal SSL")]
fn stack_is_up(world: &mut Operator) -> anyhow::Result<()> {
    let stack = shared_stack().ok_or_else(|| anyhow::anyhow!("the run brought up no stack"))?;
    world.stack = Some(stack);
    Ok(())
}
