use cucumber::{given, then, when};
use hubtrust_harness::capture::{render_svg, FlowClass};
use hubtrust_harness::report::WireSection;

use crate::world::{report, Operator, WireCaptureHandle};

fn canary(what: &str) -> String {
    format!(
        "HUBTRUST-{what}-{}",
        hubtrust_harness::secret::Secret::generate()
            .expose()
            .get(..16)
            .unwrap_or("0")
    )
}

#[given("every link between hosts is being captured")]
async fn capture_every_link(world: &mut Operator) -> anyhow::Result<()> {
    let dir = world.artifact_dir().join("pcap");
    let capture = world.deployment()?.start_wire_capture(&dir).await?;
    world.capture = Some(WireCaptureHandle(capture));
    Ok(())
}

#[when("a user logs in, opens their lab and runs a notebook cell")]
async fn log_in_and_run_a_cell(world: &mut Operator) -> anyhow::Result<()> {
    let user = world.first_user()?;
    let sent = world.deployment()?.log_in(&user).await?;
    world.canaries.extend(
        sent.into_iter()
            .map(|(name, secret)| (name, secret.expose().to_string())),
    );
    run_a_cell(world, &user).await
}

#[when("a user runs a notebook cell through the kernel websocket")]
async fn run_a_cell_step(world: &mut Operator) -> anyhow::Result<()> {
    let user = world.first_user()?;
    run_a_cell(world, &user).await
}

async fn run_a_cell(world: &mut Operator, user: &str) -> anyhow::Result<()> {
    let cell_text = canary("CELL");
    let output = canary("OUT");
    // The output is assembled at run time, so it never appears in the code.
    let (head, tail) = output.split_at(8);
    let code = format!("cell_text = {cell_text:?}\nprint({head:?} + {tail:?})");
    let run = world
        .deployment()?
        .run_cell_in_new_kernel(user, &code)
        .await?;
    anyhow::ensure!(
        run.status == "ok",
        "the cell ended with status {:?}: {}",
        run.status,
        run.stdout
    );
    anyhow::ensure!(
        run.stdout.contains(&output),
        "the kernel printed {:?}, not the expected output",
        run.stdout
    );
    world
        .canaries
        .push(("the notebook cell's text".into(), cell_text));
    world
        .canaries
        .push(("the notebook cell's output".into(), output));
    world
        .canaries
        .push(("the user's API token".into(), run.token.expose().into()));
    world.kernel_id = Some(run.kernel_id);
    Ok(())
}

#[when("another host tries the kernel's ZeroMQ ports")]
async fn try_kernel_ports(world: &mut Operator) -> anyhow::Result<()> {
    let kernel = world
        .kernel_id
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no kernel was started"))?;
    let user = world.first_user()?;
    world.kernel_ports_answering = Some(
        world
            .deployment()?
            .kernel_ports_answering(&user, &kernel)
            .await?,
    );
    Ok(())
}

#[when("a test helper sends a canary in plaintext HTTP across a link")]
async fn send_plaintext_canary(world: &mut Operator) -> anyhow::Result<()> {
    let value = canary("SELFTEST");
    world.deployment()?.send_plaintext_canary(&value).await?;
    world.canaries.push(("the self-test canary".into(), value));
    Ok(())
}

/// Stops the capture (once) and records the census in the report.
pub async fn census(
    world: &mut Operator,
) -> anyhow::Result<&hubtrust_harness::capture::WireCensus> {
    if world.census.is_none() {
        let exceptions = world.deployment()?.plaintext_exceptions();
        let capture = world
            .capture
            .take()
            .ok_or_else(|| anyhow::anyhow!("the links were not being captured"))?;
        let census = capture.0.finish().await;
        let dir = world.artifact_dir();
        let dot = census.to_dot();
        let _ = std::fs::write(dir.join("flows.dot"), &dot);
        let svg = render_svg(&dot, &dir.join("flows.svg"));
        if let Ok(mut r) = report().lock() {
            r.wire
                .push(WireSection::new(&world.scenario, &census, exceptions, svg));
        }
        world.census = Some(census);
    }
    world
        .census
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no census"))
}

fn conclusive(census: &hubtrust_harness::capture::WireCensus) -> anyhow::Result<()> {
    let inconclusive = census.inconclusive();
    anyhow::ensure!(
        inconclusive.is_empty(),
        "inconclusive: the capture cannot be trusted:\n  {}",
        inconclusive.join("\n  ")
    );
    Ok(())
}

#[then("every flow that crosses hosts is TLS 1.2 or newer, or SSH")]
async fn only_protected_flows(world: &mut Operator) -> anyhow::Result<()> {
    let exceptions = world.deployment()?.plaintext_exceptions();
    let census = census(world).await?;
    conclusive(census)?;
    anyhow::ensure!(
        census
            .flows
            .iter()
            .any(|f| matches!(f.class, FlowClass::Tls { .. })),
        "the capture saw no TLS flow at all, so it proved nothing"
    );
    let bad: Vec<String> = census
        .unprotected(&exceptions)
        .iter()
        .map(|f| f.describe())
        .collect();
    anyhow::ensure!(
        bad.is_empty(),
        "unprotected flows cross hosts:\n  {}",
        bad.join("\n  ")
    );
    Ok(())
}

#[then("no canary appears in plaintext on any link")]
async fn no_canary(world: &mut Operator) -> anyhow::Result<()> {
    anyhow::ensure!(
        !world.canaries.is_empty(),
        "no canary was planted, so nothing was checked"
    );
    let canaries = world.canaries.clone();
    let census = census(world).await?;
    conclusive(census)?;
    let planted: Vec<(&str, &[u8])> = canaries
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let hits = census.canary_hits(&planted)?;
    let named: Vec<String> = hits
        .iter()
        .map(|h| format!("{} in {}", h.canary, h.flow))
        .collect();
    anyhow::ensure!(
        named.is_empty(),
        "canaries readable on the wire:\n  {}",
        named.join("\n  ")
    );
    Ok(())
}

#[then("no ZeroMQ flow crosses any link")]
async fn no_zmtp(world: &mut Operator) -> anyhow::Result<()> {
    let census = census(world).await?;
    conclusive(census)?;
    let zmtp: Vec<String> = census
        .flows
        .iter()
        .filter(|f| matches!(f.class, FlowClass::Zmtp { .. }))
        .map(|f| f.describe())
        .collect();
    anyhow::ensure!(
        zmtp.is_empty(),
        "kernel channels leave the lab host in plaintext:\n  {}",
        zmtp.join("\n  ")
    );
    Ok(())
}

#[then("no kernel port answered from another host")]
fn no_kernel_port_answered(world: &mut Operator) -> anyhow::Result<()> {
    let answering = world
        .kernel_ports_answering
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the kernel's ports were not tried"))?;
    anyhow::ensure!(
        answering.is_empty(),
        "kernel ports reachable from another host:\n  {}",
        answering.join("\n  ")
    );
    Ok(())
}

#[then("the census shows a plaintext HTTP flow carrying the canary")]
async fn census_catches_the_canary(world: &mut Operator) -> anyhow::Result<()> {
    let canaries = world.canaries.clone();
    let census = census(world).await?;
    conclusive(census)?;
    let planted: Vec<(&str, &[u8])> = canaries
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let hits = census.canary_hits(&planted)?;
    anyhow::ensure!(
        !hits.is_empty(),
        "the detector missed a canary sent in plaintext: it cannot be trusted"
    );
    let flagged = census.unprotected(&[]);
    anyhow::ensure!(
        flagged
            .iter()
            .any(|f| matches!(f.class, FlowClass::PlaintextHttp { .. })),
        "the plaintext flow was not classified as plaintext HTTP"
    );
    Ok(())
}
