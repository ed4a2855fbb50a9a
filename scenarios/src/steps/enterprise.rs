use std::time::Duration;

use cucumber::{given, then, when};
use hubtrust_harness::enterprise::{self, CA_VARIABLES};
use hubtrust_harness::report::EnterpriseSection;
use hubtrust_harness::under_test::MergedOrgBundle;

use crate::world::{report, Operator};

fn record(update: impl FnOnce(&mut EnterpriseSection)) {
    if let Ok(mut r) = report().lock() {
        update(r.enterprise.get_or_insert_with(Default::default));
    }
}

#[given("the stack merges the organisation's CA bundle into the labs' trust")]
fn merges_the_org_bundle(world: &mut Operator) -> anyhow::Result<()> {
    merged_org_bundle(world).map(|_| ())
}

/// The org bundle as the deployment merges it, whoever started it.
fn merged_org_bundle(world: &Operator) -> anyhow::Result<MergedOrgBundle> {
    world.deployment()?.merged_org_bundle().ok_or_else(|| {
        anyhow::anyhow!(
            "this deployment does not merge the org bundle into the labs' trust, so there is nothing to check (fix: an [enterprise] section with merge_org_bundle = true in the stack file; fixtures/stacks/enterprise.toml has one)"
        )
    })
}

#[then("the merged bundle holds every system certificate, then every org certificate, none lost at the seam")]
async fn merged_bundle_is_exact(world: &mut Operator) -> anyhow::Result<()> {
    let merged = merged_org_bundle(world)?.path;
    let texts = world.deployment()?.merged_bundle_texts().await?;
    let check = enterprise::check_merged_texts(&texts);
    record(|e| e.bundle = Some(check.clone()));
    if let Some(problem) = &check.problem {
        anyhow::bail!("{merged}: {problem}");
    }
    Ok(())
}

/// What `code` printed after `marker` in the first user's lab.
async fn lab_says(world: &Operator, code: &str, marker: &str) -> anyhow::Result<String> {
    let user = world.first_user()?;
    let run = world
        .deployment()?
        .run_cell(&user, code, Duration::from_secs(60))
        .await?;
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(marker))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("the lab printed no result: {}", run.stdout))
}

#[then("the lab's environment points all five CA variables at the merged bundle")]
async fn lab_environment_points_at_the_bundle(world: &mut Operator) -> anyhow::Result<()> {
    let merged = merged_org_bundle(world)?.path;
    let code = format!(
        "import json, os\nprint('HUBTRUST-ENV ' + json.dumps({{v: os.environ.get(v) for v in {CA_VARIABLES:?}}}))"
    );
    let line = lab_says(world, &code, "HUBTRUST-ENV ").await?;
    let env: std::collections::BTreeMap<String, Option<String>> = serde_json::from_str(&line)?;
    let wrong: Vec<String> = CA_VARIABLES
        .iter()
        .filter(|v| env.get(**v).cloned().flatten().as_deref() != Some(merged.as_str()))
        .map(|v| format!("{v}={:?}", env.get(*v).cloned().flatten()))
        .collect();
    anyhow::ensure!(
        wrong.is_empty(),
        "in the lab, these do not point at {merged}: {}",
        wrong.join(", ")
    );
    Ok(())
}

#[when("each tool in the lab fetches each outbound endpoint, with the merged bundle and with the system bundle alone")]
async fn run_the_discriminator(world: &mut Operator) -> anyhow::Result<()> {
    let user = world.first_user()?;
    let ran = world
        .deployment()?
        .run_outbound_tools(&user, &world.artifact_dir())
        .await?;
    record(|e| {
        e.targets = ran.targets.clone();
        e.runs = ran.runs.clone();
        e.proxy_paths = ran
            .proxy_paths
            .as_ref()
            .and_then(|p| p.as_ref().ok())
            .cloned();
    });
    world.tool_runs = Some(ran.runs);
    world.proxy_paths = ran.proxy_paths;
    Ok(())
}

#[then("every run through the inspecting proxy crossed it on the wire: lab to proxy, then proxy to internet")]
fn proxied_runs_crossed_the_proxy(world: &mut Operator) -> anyhow::Result<()> {
    let paths = match world.proxy_paths.take() {
        Some(Ok(paths)) => paths,
        Some(Err(inconclusive)) => anyhow::bail!(inconclusive),
        None => anyhow::bail!(
            "inconclusive: this stack has no inspecting proxy to cross (fix: enterprise.egress_host)"
        ),
    };
    anyhow::ensure!(
        paths.problems.is_empty(),
        "{} runs or ports did not take the inspecting proxy's path:\n  {}",
        paths.problems.len(),
        paths.problems.join("\n  ")
    );
    anyhow::ensure!(
        paths.tunnelled_runs > 0,
        "inconclusive: no run through the inspecting proxy was seen on the wire"
    );
    Ok(())
}

#[then("every result matches the enterprise trust table")]
fn results_match_the_table(world: &mut Operator) -> anyhow::Result<()> {
    let holds_org = merged_org_bundle(world)?.holds_org;
    let targets = world.deployment()?.outbound_targets()?;
    let runs = world
        .tool_runs
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the tools were not run"))?;
    let judgement =
        enterprise::judge_with(&targets, runs, holds_org).map_err(anyhow::Error::msg)?;
    let expected_runs = enterprise::full_table_runs(&targets);
    anyhow::ensure!(
        runs.len() == expected_runs,
        "inconclusive: {} of {expected_runs} tool runs reported",
        runs.len()
    );
    anyhow::ensure!(
        judgement.absent.len() < enterprise::TOOLS.len(),
        "inconclusive: no tool is present in the lab"
    );
    if !judgement.absent.is_empty() {
        // Reported as absent in the table, never as passed.
        eprintln!(
            "note: absent from the lab, so not judged: {}",
            judgement.absent.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let wrong = judgement.differences;
    anyhow::ensure!(
        wrong.is_empty(),
        "{} results differ from the enterprise trust table:\n  {}",
        wrong.len(),
        wrong.join("\n  ")
    );
    Ok(())
}

#[given("the hub carries the merged bundle exactly when the stack file puts it there")]
fn hub_environment_matches_the_stack_file(world: &mut Operator) -> anyhow::Result<()> {
    let merged = merged_org_bundle(world)?;
    let wanted = merged.into_hub;
    let merged = merged.path;
    // Only the five variables are looked at: the hub's environment also
    // holds its tokens.
    let env = world.deployment()?.hub_environment()?;
    let wrong: Vec<String> = CA_VARIABLES
        .iter()
        .filter(|v| {
            let points_at_merged = env.get(**v) == Some(&merged);
            points_at_merged != wanted
        })
        .map(|v| format!("{v}={:?}", env.get(*v)))
        .collect();
    anyhow::ensure!(
        wrong.is_empty(),
        "the hub's environment {} the merged bundle, but: {}",
        if wanted {
            "should point every CA variable at"
        } else {
            "should not point any CA variable at"
        },
        wrong.join(", ")
    );
    Ok(())
}

#[then("the lab's own system store trusts the public endpoint and not the org CA")]
async fn lab_default_store(world: &mut Operator) -> anyhow::Result<()> {
    let targets = world.deployment()?.outbound_targets()?;
    // Both halves need a server reached directly: one under a root the
    // lab's own store holds, one under the org CA. Without one, that half
    // was never tried: not run, never passed.
    for (signer, half) in [
        (
            enterprise::Signer::Public,
            "an endpoint under a root of the lab's own system store",
        ),
        (enterprise::Signer::Org, "the org-CA server"),
    ] {
        if !targets
            .iter()
            .any(|t| t.signer == signer && t.proxy.is_none())
        {
            return Err(hubtrust_harness::HarnessError::NotObserved {
                what: format!("python in the lab with its own system store against {half}"),
                why: format!("the deployment's outbound servers reach the lab directly with none such (a lab image's own system bundle holds only real public roots, which no server of hubtrust's can present): {}", targets.iter().filter(|t| t.proxy.is_none()).map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")),
            }
            .into());
        }
    }
    let code = enterprise::default_store_probe_code(&targets);
    let line = lab_says(world, &code, enterprise::STORE_MARKER).await?;
    let outcomes: std::collections::BTreeMap<String, String> = serde_json::from_str(&line)?;
    let wrong = enterprise::judge_default_store(&targets, &outcomes).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        wrong.is_empty(),
        "with no CA variable set, python in the lab does not trust exactly its system store {}:\n  {}",
        enterprise::SYSTEM_STORE,
        wrong.join("\n  ")
    );
    Ok(())
}
