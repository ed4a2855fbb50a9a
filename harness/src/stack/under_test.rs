//! A stack of hosts hubtrust started, as the scenarios see it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::{SecretFile, Stack, WireCapture};
use crate::capture::WireCensus;
use crate::enterprise::{self, MergedBundleTexts, Outbound, OutboundRuns, Target};
use crate::error::{HarnessError, Result};
use crate::hub_api::PublicSideReport;
use crate::inventory::Inventory;
use crate::lab::CellRun;
use crate::matrix::TrustMatrix;
use crate::probe::ProbeOutcome;
use crate::reachability::ReachCell;
use crate::report::ChainCheck;
use crate::secret::Secret;
use crate::tls_scan::{EndpointScan, TlsPolicySpec};
use crate::under_test::{DeploymentUnderTest, MergedOrgBundle, RunningCapture};

#[async_trait::async_trait]
impl DeploymentUnderTest for Stack {
    fn users(&self) -> Vec<String> {
        Stack::users(self)
    }

    fn component_versions(&self) -> BTreeMap<String, String> {
        self.component_versions.clone()
    }

    async fn get_via_proxy(&self, path: &str) -> Result<u16> {
        Stack::get_via_proxy(self, path).await
    }

    async fn check_from_outside(&self, user: &str, code: &str) -> Result<PublicSideReport> {
        Stack::check_from_outside(self, user, code).await
    }

    fn diagnoses(&self) -> String {
        self.site_diagnoses()
    }

    async fn trust_matrix(&self) -> Result<TrustMatrix> {
        TrustMatrix::observe(self).await
    }

    async fn real_client_chains(&self) -> Result<Vec<ChainCheck>> {
        let mut chains = Vec::new();
        for path in self.real_client_paths() {
            let outcome = self.probe_real_client(&path).await;
            chains.push(ChainCheck::of(
                path.server,
                path.client,
                path.bundle,
                path.server_name,
                outcome,
            ));
        }
        Ok(chains)
    }

    async fn call_proxy_api(&self, with_token: bool) -> Result<ProbeOutcome> {
        let token = with_token.then(|| self.proxy_token.clone());
        Ok(Stack::call_proxy_api(self, token).await)
    }

    fn secret_files(&self) -> Result<Vec<SecretFile>> {
        Ok(Stack::secret_files(self))
    }

    fn inventory(&self) -> Result<Inventory> {
        Stack::inventory(self)
    }

    fn merged_org_bundle(&self) -> Option<MergedOrgBundle> {
        let merge = self.site::<Outbound>()?.merge.as_ref()?;
        Some(MergedOrgBundle {
            path: merge.merged.display().to_string(),
            // The stack file always gives these backends an org bundle to
            // merge: one that went missing is a broken deployment, which
            // the tools' table must catch, not a design to judge by.
            holds_org: true,
            into_hub: self
                .spec
                .enterprise
                .as_ref()
                .is_some_and(|e| e.merge_into_hub),
        })
    }

    fn hub_environment(&self) -> Result<BTreeMap<String, String>> {
        Stack::hub_environment(self)
    }

    fn tls_policy(&self) -> TlsPolicySpec {
        self.spec.tls_policy.clone()
    }

    async fn tls_scan(&self) -> Result<Vec<EndpointScan>> {
        Stack::tls_scan(self).await
    }

    async fn reachability_matrix(&self) -> Result<Vec<ReachCell>> {
        Stack::reachability_matrix(self).await
    }

    async fn run_cell(&self, user: &str, code: &str, deadline: Duration) -> Result<CellRun> {
        self.run_cell_within(user, code, deadline).await
    }

    async fn merged_bundle_texts(&self) -> Result<MergedBundleTexts> {
        let outbound = self.outbound()?;
        let merge = outbound
            .merge
            .as_ref()
            .ok_or_else(|| HarnessError::NotConfigured {
                what: "the stack does not merge the org bundle".into(),
                fix: "enterprise.merge_org_bundle = true".into(),
            })?;
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| HarnessError::io(format!("read {}", path.display()), e))
        };
        Ok(MergedBundleTexts {
            system: read(&outbound.system_bundle)?,
            org: match outbound.org_bundle.exists() {
                true => Some(read(&outbound.org_bundle)?),
                false => None,
            },
            merged: read(&merge.merged)?,
        })
    }

    fn outbound_targets(&self) -> Result<Vec<Target>> {
        Ok(self.outbound()?.targets.clone())
    }

    async fn run_outbound_tools(&self, user: &str, evidence_dir: &Path) -> Result<OutboundRuns> {
        let outbound = self.outbound()?;
        // "System bundle alone" is the lab's own default store.
        let code = enterprise::driver_code(&outbound.targets, Path::new(enterprise::SYSTEM_STORE));
        let route = outbound.proxy_route.clone();
        // With an inspecting proxy, the egress links are captured
        // meanwhile: the evidence that proxied runs crossed it.
        let capture = match &route {
            Some(_) => Some(self.start_wire_capture(&evidence_dir.join("pcap")).await?),
            None => None,
        };
        // Every tool bounds itself (40 s); the cell as a whole gets room
        // for the slowest of them, then fails with what it printed so far.
        let run = self
            .run_cell_within(user, &code, Duration::from_secs(120))
            .await;
        let census = match capture {
            Some(capture) => Some(capture.finish().await),
            None => None,
        };
        let run = run?;
        let unreadable = |message: String| HarnessError::CellOutput {
            what: "the lab's tools".into(),
            message,
        };
        let runs = enterprise::parse_results(&run.stdout).map_err(unreadable)?;
        let lab_env = enterprise::parse_proxy_env(&run.stdout).map_err(unreadable)?;
        let proxy_paths = match (&route, &census) {
            (Some(route), Some(census)) => Some(enterprise::judge_proxy_paths(
                &outbound.targets,
                &runs,
                census,
                route,
                &lab_env,
            )),
            _ => None,
        };
        Ok(OutboundRuns {
            targets: outbound.targets.clone(),
            runs,
            proxy_paths,
        })
    }

    async fn start_wire_capture(&self, dir: &Path) -> Result<Box<dyn RunningCapture>> {
        Ok(Box::new(Stack::start_wire_capture(self, dir).await?))
    }

    fn plaintext_exceptions(&self) -> Vec<(u16, String)> {
        Stack::plaintext_exceptions(self)
    }

    async fn log_in(&self, user: &str) -> Result<Vec<(String, Secret)>> {
        let cookie = Stack::log_in(self, user).await?;
        Ok(vec![
            ("the hub API token".into(), self.service_token.clone()),
            ("the user's password".into(), self.user_password.clone()),
            ("the user's login cookie".into(), cookie),
        ])
    }

    async fn run_cell_in_new_kernel(&self, user: &str, code: &str) -> Result<CellRun> {
        Stack::run_cell_in_new_kernel(self, user, code).await
    }

    async fn kernel_ports_answering(&self, _user: &str, kernel_id: &str) -> Result<Vec<String>> {
        self.kernel_ports_reachable(kernel_id, "operator").await
    }

    async fn send_plaintext_canary(&self, canary: &str) -> Result<()> {
        Stack::send_plaintext_canary(self, canary).await.map(drop)
    }
}

#[async_trait::async_trait]
impl RunningCapture for WireCapture {
    async fn finish(self: Box<Self>) -> WireCensus {
        WireCapture::finish(*self).await
    }
}

impl Stack {
    fn outbound(&self) -> Result<&Outbound> {
        self.site::<Outbound>()
            .ok_or_else(|| HarnessError::NotConfigured {
                what: "this stack has no [enterprise] section, so there is nothing to check".into(),
                fix: "--stack fixtures/stacks/enterprise.toml, or add [enterprise] to your stack file".into(),
            })
    }
}
