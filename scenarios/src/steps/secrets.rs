use cucumber::{then, when};

use crate::world::{report, Operator};

#[then(expr = "every private key and the cookie secret has mode {word}")]
fn secrets_have_mode(world: &mut Operator, mode: String) -> anyhow::Result<()> {
    let files = world.deployment()?.secret_files()?;
    anyhow::ensure!(
        files
            .iter()
            .any(|f| f.path.ends_with("jupyterhub_cookie_secret")),
        "the cookie secret file was not found, so its mode could not be checked"
    );
    anyhow::ensure!(
        files
            .iter()
            .any(|f| f.path.extension().is_some_and(|e| e == "key")),
        "no private key was found"
    );
    let exposed: Vec<String> = files
        .iter()
        .filter(|f| f.mode != mode)
        .map(|f| format!("{} is {}", f.path.display(), f.mode))
        .collect();
    anyhow::ensure!(
        exposed.is_empty(),
        "secrets with the wrong mode:\n  {}",
        exposed.join("\n  ")
    );
    Ok(())
}

#[when("I take the certificate inventory")]
fn take_inventory(world: &mut Operator) -> anyhow::Result<()> {
    let inventory = world.deployment()?.inventory()?;
    if let Ok(mut r) = report().lock() {
        r.inventory = Some(inventory.clone());
    }
    world.inventory = Some(inventory);
    Ok(())
}

#[then(expr = "it lists the internal CA {string}")]
fn lists_internal_ca(world: &mut Operator, ca: String) -> anyhow::Result<()> {
    let inventory = world
        .inventory
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no inventory was taken"))?;
    let found = inventory.lists_internal_ca(&ca);
    anyhow::ensure!(found, "internal-ssl/{ca}/{ca}.crt is missing or not a CA");
    Ok(())
}

#[then(expr = "every internal leaf is RSA of at least {int} bits with serverAuth and clientAuth")]
fn internal_leaves_are_strong(world: &mut Operator, bits: usize) -> anyhow::Result<()> {
    let inventory = world
        .inventory
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no inventory was taken"))?;
    let weak = inventory
        .weak_internal_leaves(bits)
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        weak.is_empty(),
        "internal leaves that fall short:\n  {}",
        weak.join("\n  ")
    );
    Ok(())
}
