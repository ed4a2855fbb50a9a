//! On kind, the enterprise check that every fetch through the inspecting
//! proxy crossed it on the wire: the capture on the proxy's pod, judged by
//! the code that judges it on the other backends
//! (`enterprise::judge_proxy_paths`): each fetch's own tagged CONNECT
//! arriving from the lab, and the proxy's connections going on to the
//! internet Service.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use super::{inspecting_proxy, outbound};
use crate::capture::WireCensus;
// The verdict is the enterprise site's own, so both judge alike.
use crate::enterprise::{self, ProxyPaths, ProxyRoute, Signer, ToolRun};

/// Where the proxy and the internet are, as the census names them.
pub struct ProxyPlaces {
    /// The proxy's pod, by its own address.
    pub proxy_pod: String,
    pub proxy_ip: Ipv4Addr,
    /// The internet Service, by its ClusterIP (as the proxy's own
    /// interface sees a connection to it).
    pub internet_service: String,
    pub internet_ip: Ipv4Addr,
}

/// Err starts with "inconclusive:" when the capture cannot decide.
pub fn judge(
    runs: &[ToolRun],
    targets: &[outbound::Target],
    census: &WireCensus,
    places: &ProxyPlaces,
    lab_env: &BTreeMap<String, String>,
) -> Result<ProxyPaths, String> {
    let proxy_addr = SocketAddr::from((places.proxy_ip, inspecting_proxy::PORT));
    let proxied: Vec<enterprise::Target> = targets
        .iter()
        .filter(|t| t.server.behind_proxy())
        .map(|t| enterprise::Target {
            name: t.name.clone(),
            // The CONNECT asks for the authority alone.
            url: t.url.trim_end_matches('/').to_string(),
            signer: Signer::InspectingProxy,
            proxy: Some(proxy_addr.to_string()),
        })
        .collect();
    let runs: Vec<ToolRun> = runs
        .iter()
        .filter(|r| proxied.iter().any(|t| t.name == r.target))
        .cloned()
        .collect();
    if !runs.iter().any(|r| r.outcome != "absent") {
        return Err(
            "no tool fetched through the inspecting proxy, so the wire shows nothing".into(),
        );
    }
    let route = ProxyRoute {
        proxy_host: places.proxy_pod.clone(),
        proxy_addr,
        internet_host: places.internet_service.clone(),
        internet_far_ip: places.internet_ip,
    };
    let paths = enterprise::judge_proxy_paths(&proxied, &runs, census, &route, lab_env)?;
    if !paths.problems.is_empty() {
        return Err(paths.problems.join("\n"));
    }
    Ok(paths)
}
