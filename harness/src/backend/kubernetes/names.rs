//! The names clients use for the chart's Services, from the trust graph:
//! which certificate answers on each Service and who calls it by which
//! name. The certificates are made from these names (`trusted_alt_names`,
//! the public leaf's SANs) and checked against them before install.

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::inventory::describe_file;

/// The certificate that answers on a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServingCertificate {
    /// The hub's, from the hub CA (internal_ssl).
    HubInternal,
    /// CHP's API server's, from the proxy-api CA (internal_ssl).
    ProxyApi,
    /// The public side's leaf, which hubtrust issues.
    PublicLeaf,
}

impl ServingCertificate {
    /// Where certipy puts it in the internal certificate store.
    pub fn store_file(self) -> Option<&'static str> {
        match self {
            ServingCertificate::HubInternal => Some("hub-internal/hub-internal.crt"),
            ServingCertificate::ProxyApi => Some("proxy-api/proxy-api.crt"),
            ServingCertificate::PublicLeaf => None,
        }
    }
}

/// A Service the chart makes and who reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ServiceEndpoint {
    pub service: &'static str,
    pub port: u16,
    pub certificate: ServingCertificate,
    /// Each client and the setting that names the Service to it.
    pub clients: &'static [&'static str],
}

/// The chart's Services. Lab Services are KubeSpawner's, one per lab,
/// with certificates the hub issues at spawn time from KubeSpawner's own
/// `ssl_alt_names`: they are checked on the running deployment.
pub const SERVICES: [ServiceEndpoint; 3] = [
    ServiceEndpoint {
        service: "hub",
        port: 8081,
        certificate: ServingCertificate::HubInternal,
        clients: &[
            "the proxy (proxy.chp.defaultTarget)",
            "each lab (JupyterHub.hub_connect_url)",
        ],
    },
    ServiceEndpoint {
        service: "proxy-api",
        port: 8001,
        certificate: ServingCertificate::ProxyApi,
        clients: &["the hub (ConfigurableHTTPProxy.api_url)"],
    },
    ServiceEndpoint {
        service: "proxy-public",
        port: 443,
        certificate: ServingCertificate::PublicLeaf,
        clients: &["users, through the nodePort", "pods in the cluster"],
    },
];

/// Every DNS name a pod may use for a Service: short within the namespace,
/// then ever more qualified, as resolv.conf's search list allows.
pub fn dns_names(service: &str, namespace: &str) -> [String; 4] {
    [
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// `JupyterHub.trusted_alt_names`: every name of the Services the internal
/// certificates answer on.
pub fn trusted_alt_names(namespace: &str) -> Vec<String> {
    SERVICES
        .iter()
        .filter(|s| s.certificate != ServingCertificate::PublicLeaf)
        .flat_map(|s| dns_names(s.service, namespace))
        .map(|name| format!("DNS:{name}"))
        .collect()
}

/// The public leaf's names: proxy-public's, and loopback, where kind maps
/// the nodePort.
pub fn public_names(namespace: &str) -> Vec<String> {
    let mut names: Vec<String> = dns_names("proxy-public", namespace).into();
    names.push("localhost".into());
    names.push("127.0.0.1".into());
    names
}

/// A name a client uses that the certificate answering it does not carry:
/// that client's TLS handshake fails with a hostname mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingSan {
    pub service: &'static str,
    pub certificate: String,
    pub name: String,
    pub clients: &'static [&'static str],
}

impl std::fmt::Display for MissingSan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} does not list `{}`, the name {} use for Service `{}`",
            self.certificate,
            self.name,
            self.clients.join(" and "),
            self.service
        )
    }
}

/// Checks every Service name against the certificate that answers on it:
/// the internal ones in the store at `internal_dir`, the public leaf at
/// `public_cert` when one is given.
pub fn missing_sans(
    internal_dir: &Path,
    public_cert: Option<&Path>,
    namespace: &str,
) -> Result<Vec<MissingSan>> {
    let mut missing = Vec::new();
    for endpoint in SERVICES {
        let file = match (endpoint.certificate.store_file(), public_cert) {
            (Some(relative), _) => internal_dir.join(relative),
            (None, Some(public)) => public.to_path_buf(),
            (None, None) => continue,
        };
        let label = file.display().to_string();
        let sans = describe_file("kubernetes", internal_dir, &file)?
            .map(|record| record.sans)
            .unwrap_or_default();
        for name in dns_names(endpoint.service, namespace) {
            if !sans.iter().any(|san| san == &format!("DNS:{name}")) {
                missing.push(MissingSan {
                    service: endpoint.service,
                    certificate: label.clone(),
                    name,
                    clients: endpoint.clients,
                });
            }
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, Usage, Validity};

    fn write_leaf(ca: &CertificateAuthority, dir: &Path, relative: &str, sans: &[String]) {
        let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
        let leaf = ca
            .issue("leaf", &sans, Usage::Server, Validity::fresh(30))
            .expect("issue");
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, leaf.chain_pem.as_bytes()).expect("write");
    }

    fn names_of(service: &str, namespace: &str) -> Vec<String> {
        dns_names(service, namespace).into()
    }

    #[test]
    fn certificates_made_from_the_service_names_cover_every_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::root("test").expect("ca");
        write_leaf(
            &ca,
            dir.path(),
            "hub-internal/hub-internal.crt",
            &names_of("hub", "jhub"),
        );
        write_leaf(
            &ca,
            dir.path(),
            "proxy-api/proxy-api.crt",
            &names_of("proxy-api", "jhub"),
        );
        write_leaf(&ca, dir.path(), "public.crt", &public_names("jhub"));
        let missing =
            missing_sans(dir.path(), Some(&dir.path().join("public.crt")), "jhub").expect("check");
        assert_eq!(missing, Vec::new());
    }

    #[test]
    fn a_certificate_without_a_qualified_name_is_named_with_its_clients() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::root("test").expect("ca");
        // JSC's published names: short ones only.
        write_leaf(
            &ca,
            dir.path(),
            "hub-internal/hub-internal.crt",
            &["hub".into()],
        );
        write_leaf(
            &ca,
            dir.path(),
            "proxy-api/proxy-api.crt",
            &names_of("proxy-api", "jhub"),
        );
        write_leaf(&ca, dir.path(), "public.crt", &public_names("jhub"));
        let missing =
            missing_sans(dir.path(), Some(&dir.path().join("public.crt")), "jhub").expect("check");
        let names: Vec<&str> = missing.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["hub.jhub", "hub.jhub.svc", "hub.jhub.svc.cluster.local"]
        );
        let text = missing[0].to_string();
        assert!(
            text.contains("each lab (JupyterHub.hub_connect_url)"),
            "{text}"
        );
    }

    #[test]
    fn trusted_alt_names_leave_the_public_side_to_its_own_leaf() {
        let names = trusted_alt_names("jhub");
        assert_eq!(names.len(), 8);
        assert!(names.contains(&"DNS:proxy-api.jhub.svc.cluster.local".to_string()));
        assert!(!names.iter().any(|n| n.contains("proxy-public")));
    }
}
