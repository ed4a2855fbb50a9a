use cucumber::{then, when};

use crate::world::{report, Operator};

#[then(expr = "every private key and the cookie secret has mode {word}")]
fn secrets_have_mode(world: &mut Operator, mode: String) -> anyhow::Result<()> {
    let files = world.stack()?.secret_files();
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
    let inventory = world.stack()?.inventory()?;
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
    let found = inventory
        .certificates
        .iter()
        .any(|c| c.source == "internal-ssl" && c.path == format!("{ca}/{ca}.crt") && c.is_ca);
    anyhow::ensure!(found, "internal-ssl/{ca}/{ca}.crt is missing or not a CA");
    Ok(())
}

#[then(expr = "every internal leaf is RSA of at least {int} bits with serverAuth and clientAuth")]
fn internal_leaves_are_strong(world: &mut Operator, bits: usize) -> anyhow::Result<()> {
    let inventory = world
        .inventory
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no inventory was taken"))?;
    let leaves: Vec<_> = inventory
        .certificates
        .iter()
        .filter(|c| c.source == "internal-ssl" && !c.is_ca && c.certificates_in_file == 1)
        .collect();
    anyhow::ensure!(!leaves.is_empty(), "no internal leaf certificate was found");
    let weak: Vec<String> = leaves
        .iter()
        .filter(|c| {
            c.key_type != "RSA"
                || c.key_bits < bits
                || !c.eku.iter().any(|e| e == "serverAuth")
                || !c.eku.iter().any(|e| e == "clientAuth")
        })
        .map(|c| format!("{}: {} {} EKU {:?}", c.path, c.key_type, c.key_bits, c.eku))
        .collect();
    anyhow::ensure!(
        weak.is_empty(),
        "internal leaves that fall short:\n  {}",
        weak.join("\n  ")
    );
    Ok(())
}
