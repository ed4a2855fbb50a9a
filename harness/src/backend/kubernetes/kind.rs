//! The kind cluster's config (`kind.x-k8s.io/v1alpha4`), as data: one
//! control-plane and one worker node, proxy-public's nodePort mapped to
//! loopback only, and pod and Service subnets of hubtrust's own.

use serde::Serialize;

/// Pod and Service ranges apart from kind's defaults (10.244/16, 10.96/12),
/// so a hubtrust cluster beside a developer's own kind cluster routes
/// neither's traffic into the other.
pub const POD_SUBNET: &str = "10.201.0.0/16";
pub const SERVICE_SUBNET: &str = "10.202.0.0/16";

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KindConfig {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub name: String,
    pub networking: Networking,
    pub nodes: Vec<KindNode>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Networking {
    pub pod_subnet: &'static str,
    pub service_subnet: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KindNode {
    pub role: NodeRole,
    pub image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_port_mappings: Vec<PortMapping>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    ControlPlane,
    Worker,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub container_port: u16,
    pub host_port: u16,
    /// Loopback only: the deployment is the operator's, not the network's.
    pub listen_address: &'static str,
    pub protocol: &'static str,
}

/// The platform kind's nodes run, `linux/<arch>` in the registry's names:
/// this machine's, whose docker daemon runs them. Each image archive holds
/// that platform alone.
pub fn host_node_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    format!("linux/{arch}")
}

/// Whether an image of `platform` (`os/arch[/variant]`) runs on nodes of
/// `node_platform` (`os/arch`): the variant is the image's detail.
pub fn runs_on(platform: &str, node_platform: &str) -> bool {
    platform
        .split('/')
        .take(2)
        .eq(node_platform.split('/').take(2))
}

impl KindConfig {
    /// kind accepts JSON as well as YAML: the config is written as JSON.
    pub fn new(cluster: &str, node_image: &str, node_port: u16, host_port: u16) -> Self {
        KindConfig {
            kind: "Cluster",
            api_version: "kind.x-k8s.io/v1alpha4",
            name: cluster.to_string(),
            networking: Networking {
                pod_subnet: POD_SUBNET,
                service_subnet: SERVICE_SUBNET,
            },
            nodes: vec![
                KindNode {
                    role: NodeRole::ControlPlane,
                    image: node_image.to_string(),
                    extra_port_mappings: vec![PortMapping {
                        container_port: node_port,
                        host_port,
                        listen_address: "127.0.0.1",
                        protocol: "TCP",
                    }],
                },
                KindNode {
                    role: NodeRole::Worker,
                    image: node_image.to_string(),
                    extra_port_mappings: Vec::new(),
                },
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_platform_is_named_as_registries_name_it() {
        let platform = host_node_platform();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(platform, "linux/amd64");
        #[cfg(target_arch = "aarch64")]
        assert_eq!(platform, "linux/arm64");
        assert!(runs_on(&platform, &platform));
    }
}
