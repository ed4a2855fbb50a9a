//! The enterprise outbound side as an add-on of the stack: the merged
//! bundle's shared directory, the outbound servers, the inspecting proxy
//! and the merge step it starts beside the hub, what it adds to the labs'
//! and the hub's environment, and its TLS endpoints.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::{lab_environment, EgressPlacement, Outbound, Placement};
use crate::error::{HarnessError, Result};
use crate::spec::StackSpec;
use crate::stack::sites::{Site, SiteContext, SitePlan};

/// The enterprise outbound side before the stack runs.
pub struct OutboundPlan;

#[async_trait::async_trait]
impl SitePlan for OutboundPlan {
    /// The merge step leaves the merged bundle where the lab's host reads
    /// it, as an init container leaves it in an emptyDir.
    fn shared_dirs(&self, spec: &StackSpec, run_dir: &Path) -> Vec<(String, PathBuf)> {
        spec.enterprise
            .iter()
            .filter(|e| e.merge_org_bundle)
            .map(|_| {
                (
                    spec.topology.lab_host.clone(),
                    run_dir.join("enterprise").join("certs-extra"),
                )
            })
            .collect()
    }

    /// The outbound test servers, the inspecting proxy and the merge step.
    async fn start(
        self: Box<Self>,
        ctx: &SiteContext<'_>,
        http: &reqwest::Client,
        _lab: &mut crate::component::ComponentManifest,
    ) -> Result<Box<dyn Site>> {
        (ctx.progress)("starting the outbound endpoints and the org-bundle merge step");
        Ok(Box::new(start_outbound(ctx, http).await?))
    }
}

/// The org bundle's side of the stack: outbound endpoints, the inspecting
/// proxy, the merged bundle.
async fn start_outbound(ctx: &SiteContext<'_>, http: &reqwest::Client) -> Result<Outbound> {
    let (spec, org, network, components, run_dir) =
        (ctx.spec, ctx.org, ctx.network, ctx.components, ctx.run_dir);
    let enterprise = spec
        .enterprise
        .as_ref()
        .ok_or_else(|| HarnessError::Network {
            host: spec.topology.lab_host.clone(),
            message: "this stack has no [enterprise] section".into(),
        })?;
    let lab_host = &spec.topology.lab_host;
    let internet = &enterprise.internet_host;
    // The address of `far` on its link with `near`.
    let address = |near: &str, far: &str| -> Result<Ipv4Addr> {
        let link = network
            .link_between(near, far)
            .ok_or_else(|| HarnessError::Network {
                host: far.into(),
                message: format!("no link to `{near}`"),
            })?;
        Ok(if link.a.0 == far { link.a.1 } else { link.b.1 })
    };
    let dir = run_dir.join("enterprise");
    std::fs::create_dir_all(&dir)
        .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
    // The init step is the script in fixtures/, written out and run as is.
    let script = dir.join("merge-ca-bundle.sh");
    crate::pki::write_with_mode(
        &script,
        crate::component::builtin::MERGE_CA_BUNDLE.as_bytes(),
        0o755,
    )?;
    let egress = match &enterprise.egress_host {
        Some(egress) => Some(EgressPlacement {
            host: network.host(egress)?,
            listen_ip: address(lab_host, egress)?,
            internet_far_ip: address(egress, internet)?,
            mitmdump: enterprise.mitmdump.as_ref().map_or_else(
                || components.mitmproxy_venv.join("bin/mitmdump"),
                PathBuf::from,
            ),
            network,
            http,
            command: enterprise.proxy_command.clone(),
            extra_args: enterprise.proxy_args.clone(),
            log: run_dir.join("logs").join("mitmproxy.log"),
            env: ctx.marker_env.clone(),
        }),
        None => None,
    };
    let placement = Placement {
        internet: network.host(internet)?,
        internet_ip: address(lab_host, internet)?,
        lab_host: network.host(lab_host)?,
        local_names: vec![
            "127.0.0.1".into(),
            "localhost".into(),
            spec.topology.public_name.clone(),
        ],
        egress,
    };
    Outbound::start(enterprise, org, placement, &dir, &script).await
}

#[async_trait::async_trait]
impl Site for Outbound {
    fn name(&self) -> &'static str {
        "enterprise outbound side"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn lab_environment(&self) -> Vec<(String, String)> {
        Outbound::lab_environment(self)
    }

    /// The merged bundle for the hub too, when the stack file says so.
    fn hub_environment(&self, spec: &StackSpec) -> BTreeMap<String, String> {
        match spec.enterprise.as_ref().is_some_and(|e| e.merge_into_hub) {
            true => lab_environment(self.merge.as_ref()).into_iter().collect(),
            false => BTreeMap::new(),
        }
    }

    fn tls_targets(&self, _spec: &StackSpec) -> Vec<crate::tls_scan::ScanTarget> {
        self.tls_servers.clone()
    }

    async fn stop(&mut self) {
        Outbound::stop(self, crate::stack::STOP_GRACE).await;
    }
}
