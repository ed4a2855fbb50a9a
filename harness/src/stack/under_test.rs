//! A stack of hosts hubtrust started, as the scenarios see it.

use std::collections::BTreeMap;

use super::{SecretFile, Stack};
use crate::enterprise::Outbound;
use crate::error::Result;
use crate::hub_api::PublicSideReport;
use crate::inventory::Inventory;
use crate::matrix::TrustMatrix;
use crate::probe::ProbeOutcome;
use crate::reachability::ReachCell;
use crate::report::ChainCheck;
use crate::tls_scan::{EndpointScan, TlsPolicySpec};
use crate::under_test::{DeploymentUnderTest, MergedOrgBundle};

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
}
