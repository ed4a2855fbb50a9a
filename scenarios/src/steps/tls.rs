use cucumber::{then, when};

use hubtrust_harness::known_defects::{KnownDefectHit, KnownDefects};

use crate::world::{known_defect_problems, report, Operator};

#[when("every TLS endpoint of the stack is scanned")]
async fn scan_every_endpoint(world: &mut Operator) -> anyhow::Result<()> {
    let deployment = world.deployment()?;
    let policy = deployment.tls_policy();
    let scans = deployment.tls_scan().await?;
    anyhow::ensure!(
        !scans.is_empty(),
        "the deployment exposes no TLS endpoint to scan"
    );
    let scanned: Vec<String> = scans.iter().map(|s| s.endpoint.clone()).collect();
    let sorted = KnownDefects::builtin()?.sort_tls_scan(
        scans.iter().flat_map(|scan| policy.judge(scan)).collect(),
        &deployment.component_versions(),
        &scanned,
    );
    let hits: Vec<KnownDefectHit> = sorted
        .known
        .iter()
        .map(|(defect, finding)| KnownDefectHit {
            scenario: world.scenario.clone(),
            id: defect.id.clone(),
            finding: finding.describe(),
            reason: defect.reason.clone(),
            upstream: defect.upstream.clone(),
        })
        .collect();
    let section = hubtrust_harness::report::TlsScanSection {
        policy: policy.name.label().into(),
        exceptions: policy.exceptions.clone(),
        violations: sorted.unknown.clone(),
        known: sorted.known.iter().map(|(_, f)| f.clone()).collect(),
        endpoints: scans,
    };
    if let Ok(mut r) = report().lock() {
        r.tls_scan = Some(section.clone());
        r.known_defects.extend(hits.iter().cloned());
    }
    world.tls_scan = Some(section);
    world.known_defects.extend(hits);
    world
        .stale_defects
        .extend(sorted.stale.iter().map(|d| d.id.clone()));
    Ok(())
}

#[then("no endpoint accepts a protocol version or TLS 1.2 suite the policy forbids")]
fn nothing_forbidden(world: &mut Operator) -> anyhow::Result<()> {
    let scan = world
        .tls_scan
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no TLS scan ran in this scenario"))?;
    let mut problems: Vec<String> = scan.violations.iter().map(|v| v.describe()).collect();
    let scanned: Vec<&str> = scan.endpoints.iter().map(|e| e.endpoint.as_str()).collect();
    let policy = world.deployment()?.tls_policy();
    for stray in policy.exceptions_for_no_endpoint(&scanned) {
        problems.push(format!(
            "the stack's exception for `{}` ({}) names no endpoint the scan met, so it excuses nothing (fix: one of {})",
            stray.endpoint,
            stray.reason,
            scanned.join(", ")
        ));
    }
    problems.extend(known_defect_problems(world));
    anyhow::ensure!(
        problems.is_empty(),
        "the TLS scan found what the `{}` policy forbids:\n  {}",
        scan.policy,
        problems.join("\n  ")
    );
    Ok(())
}
