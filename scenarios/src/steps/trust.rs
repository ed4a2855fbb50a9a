use cucumber::{then, when};

use hubtrust_harness::known_defects::{KnownDefectHit, KnownDefects};

use crate::world::{known_defect_problems, report, Operator};

#[when("I probe every endpoint with every client identity")]
async fn probe_the_matrix(world: &mut Operator) -> anyhow::Result<()> {
    let deployment = world.deployment()?;
    let mut matrix = deployment.trust_matrix().await?;
    let sorted = KnownDefects::builtin()?.sort(
        "trust-matrix",
        matrix.mismatches().into_iter().cloned().collect(),
        &deployment.component_versions(),
        &matrix.endpoints,
        |c| (c.endpoint.clone(), c.identity.clone()),
    );
    let mut hits = Vec::new();
    for (defect, cell) in &sorted.known {
        matrix.mark_known_defect(&cell.endpoint, &cell.identity, &defect.id);
        hits.push(KnownDefectHit {
            scenario: world.scenario.clone(),
            id: defect.id.clone(),
            finding: format!(
                "{} × {}: {} ({}), where the trust graph says {}",
                cell.endpoint, cell.identity, cell.observed, cell.detail, cell.expected
            ),
            reason: defect.reason.clone(),
            upstream: defect.upstream.clone(),
        });
    }
    if let Ok(mut r) = report().lock() {
        r.trust_matrix = Some(matrix.clone());
        r.known_defects.extend(hits.iter().cloned());
    }
    let stale: Vec<String> = matrix
        .presented(&sorted.stale)
        .into_iter()
        .map(|d| d.id.clone())
        .collect();
    world.matrix = Some(matrix);
    world.stale_defects.extend(stale);
    world.known_defects.extend(hits);
    Ok(())
}

#[then("every verdict matches JupyterHub's trust graph")]
fn every_verdict_matches(world: &mut Operator) -> anyhow::Result<()> {
    let matrix = world
        .matrix
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the matrix was not probed"))?;
    anyhow::ensure!(
        !matrix.cells.is_empty(),
        "the matrix is empty: nothing was checked"
    );
    let mut unexpected: Vec<String> = matrix
        .unexpected()
        .iter()
        .map(|c| {
            format!(
                "{} × {}: observed {} ({}), expected {} because {}",
                c.endpoint, c.identity, c.observed, c.detail, c.expected, c.reason
            )
        })
        .collect();
    let cells = matrix.cells.len();
    unexpected.extend(known_defect_problems(world));
    anyhow::ensure!(
        unexpected.is_empty(),
        "{} of {cells} cells differ from the trust graph:\n  {}",
        unexpected.len(),
        unexpected.join("\n  ")
    );
    Ok(())
}

#[when("each real client connects with its own bundle, name and certificate")]
async fn real_clients_connect(world: &mut Operator) -> anyhow::Result<()> {
    let chains = world.deployment()?.real_client_chains().await?;
    if let Ok(mut r) = report().lock() {
        r.chains = chains.clone();
    }
    world.chains = chains;
    Ok(())
}

#[then("every connection is accepted over TLS 1.2 or newer")]
fn every_connection_accepted(world: &mut Operator) -> anyhow::Result<()> {
    anyhow::ensure!(!world.chains.is_empty(), "no real client path was probed");
    let bad: Vec<String> = world
        .chains
        .iter()
        .filter(|c| !c.accepted())
        .map(|c| {
            format!(
                "{} as seen by {} ({} for {}): {} {}",
                c.server, c.client, c.bundle, c.server_name, c.verdict, c.detail
            )
        })
        .collect();
    anyhow::ensure!(
        bad.is_empty(),
        "some real clients cannot verify their server:\n  {}",
        bad.join("\n  ")
    );
    Ok(())
}

#[when(expr = "the hub's certificate calls the proxy API {word} the auth token")]
async fn call_proxy_api(world: &mut Operator, with: String) -> anyhow::Result<()> {
    let with_token = match with.as_str() {
        "with" => true,
        "without" => false,
        other => anyhow::bail!("say `with` or `without` the auth token, not {other:?}"),
    };
    world.proxy_api = Some(world.deployment()?.call_proxy_api(with_token).await?);
    Ok(())
}

#[then(expr = "the proxy API answers HTTP {int}")]
fn proxy_api_answers(world: &mut Operator, status: u16) -> anyhow::Result<()> {
    let outcome = world
        .proxy_api
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the proxy API was not called"))?;
    let observed = outcome.http.as_ref().map(|h| h.status).ok_or_else(|| {
        anyhow::anyhow!(
            "no HTTP answer from the proxy API: {} ({})",
            outcome.verdict,
            outcome.detail
        )
    })?;
    anyhow::ensure!(
        observed == status,
        "the proxy API answered HTTP {observed}, expected {status}"
    );
    Ok(())
}
