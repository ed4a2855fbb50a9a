//! The TLS scan: which protocol versions each endpoint accepts, and which
//! cipher suites under TLS 1.2, judged against a named policy.
//!
//! rustls cannot offer TLS 1.1 or older, nor any non-AEAD suite, so the
//! scan speaks through the system's OpenSSL 3 with its security level
//! lowered to 0: a real TLS library offering real ClientHellos. Trust is
//! not judged here (the trust matrix does that); each handshake presents
//! an identity the endpoint accepts, so a refusal means the version or
//! suite, not the client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use openssl::ssl::{Ssl, SslContext, SslMethod, SslVerifyMode, SslVersion};

use crate::backend::HostNetwork;
use crate::error::{HarnessError, Result};
use crate::pki::Identity;
pub use crate::tls_policy::{
    EndpointScan, Offer, PolicyName, PolicyViolation, TlsException, TlsPolicySpec, TlsVersion,
};

/// The OpenSSL constant for `version`.
fn openssl_version(version: TlsVersion) -> SslVersion {
    match version {
        TlsVersion::Ssl3 => SslVersion::SSL3,
        TlsVersion::Tls10 => SslVersion::TLS1,
        TlsVersion::Tls11 => SslVersion::TLS1_1,
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
    }
}

/// One endpoint to scan, reached from `from_host` as its clients reach it.
#[derive(Debug, Clone)]
pub struct ScanTarget {
    pub endpoint: String,
    pub from_host: String,
    pub addr: SocketAddr,
    /// Sent as SNI when it is a DNS name.
    pub server_name: String,
    /// An identity the endpoint accepts, for endpoints that require one.
    pub client: Option<Identity>,
}

/// Scans one endpoint: every version alone, then every TLS 1.2 suite.
pub async fn scan<N: HostNetwork>(network: &N, target: &ScanTarget) -> EndpointScan {
    let mut result = EndpointScan {
        endpoint: target.endpoint.clone(),
        addr: target.addr.to_string(),
        from_host: target.from_host.clone(),
        versions: BTreeMap::new(),
        tls12_suites: Vec::new(),
        error: None,
    };
    // Every version at once, then every family of suites at once: the
    // scan's wall time is its longest chain of handshakes, not their sum.
    let versions = futures::future::join_all(
        TlsVersion::ALL
            .iter()
            .map(|version| handshake(network, target, *version, None)),
    )
    .await;
    for (version, outcome) in TlsVersion::ALL.iter().zip(versions) {
        match outcome {
            Ok(outcome) => {
                result.versions.insert(*version, outcome.offer);
            }
            Err(e) => {
                result.error = Some(e.to_string());
                return result;
            }
        }
    }
    if result.versions.get(&TlsVersion::Tls12) == Some(&Offer::Accepted) {
        let families = futures::future::join_all(
            SUITE_FAMILIES
                .iter()
                .map(|family| accepted_suites(network, target, family)),
        )
        .await;
        for family in families {
            match family {
                Ok(suites) => result.tls12_suites.extend(suites),
                Err(e) => {
                    result.error = Some(e.to_string());
                    break;
                }
            }
        }
    }
    result
}

/// Disjoint families whose union is every suite OpenSSL knows: each is
/// enumerated on its own chain of handshakes.
const SUITE_FAMILIES: [&str; 5] = [
    "kECDHE+aRSA",
    "kECDHE+aECDSA",
    "kRSA",
    "kDHE",
    "ALL:COMPLEMENTOFALL:!kECDHE:!kRSA:!kDHE",
];

/// The TLS 1.2 suites of `family` the endpoint accepts (IANA names). Each
/// suite the server picks is struck from the next offer, until it accepts
/// none of what is left: one handshake per accepted suite, plus one.
async fn accepted_suites<N: HostNetwork>(
    network: &N,
    target: &ScanTarget,
    family: &str,
) -> Result<Vec<String>> {
    let mut struck: Vec<String> = Vec::new();
    let mut accepted = Vec::new();
    for _ in 0..200 {
        let list = std::iter::once(family.to_string())
            .chain(struck.iter().map(|s| format!("!{s}")))
            .chain(std::iter::once("@SECLEVEL=0".to_string()))
            .collect::<Vec<_>>()
            .join(":");
        match handshake(network, target, TlsVersion::Tls12, Some(list)).await? {
            HandshakeOutcome {
                offer: Offer::Accepted,
                suite: Some((openssl_name, iana)),
            } => {
                struck.push(openssl_name);
                accepted.push(iana);
            }
            _ => break,
        }
    }
    Ok(accepted)
}

struct HandshakeOutcome {
    offer: Offer,
    /// (OpenSSL name, IANA name) of the suite chosen.
    suite: Option<(String, String)>,
}

/// One handshake offering only `version` (and, if given, only `ciphers`).
/// A connection that cannot be made at all is an error, not a refusal.
async fn handshake<N: HostNetwork>(
    network: &N,
    target: &ScanTarget,
    version: TlsVersion,
    ciphers: Option<String>,
) -> Result<HandshakeOutcome> {
    let connector = match connector(target, version, ciphers.as_deref()) {
        Ok(c) => c,
        Err(_) => {
            return Ok(HandshakeOutcome {
                offer: Offer::CannotOffer,
                suite: None,
            })
        }
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        network.connect_from(&target.from_host, target.addr),
    )
    .await
    .unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out after 5s",
        ))
    })
    .map_err(|e| HarnessError::Network {
        host: target.from_host.clone(),
        message: format!(
            "the TLS scan cannot connect to {} ({}): {e}",
            target.endpoint, target.addr
        ),
    })?;
    let tcp = tcp
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|_| s))
        .map_err(|e| HarnessError::io("hand a scan connection to OpenSSL", e))?;
    let server_name = target.server_name.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = tcp.set_write_timeout(Some(Duration::from_secs(5)));
        let mut ssl = match Ssl::new(&connector) {
            Ok(ssl) => ssl,
            Err(_) => return (Offer::CannotOffer, None),
        };
        if server_name.parse::<std::net::IpAddr>().is_err()
            && ssl.set_hostname(&server_name).is_err()
        {
            return (Offer::CannotOffer, None);
        }
        match ssl.connect(tcp) {
            Ok(stream) => {
                let ssl = stream.ssl();
                let chosen_right = ssl.version2() == Some(openssl_version(version));
                let suite = ssl.current_cipher().map(|c| {
                    (
                        c.name().to_string(),
                        c.standard_name().unwrap_or(c.name()).to_string(),
                    )
                });
                match chosen_right {
                    true => (Offer::Accepted, suite),
                    false => (Offer::Refused, None),
                }
            }
            Err(e) if could_not_offer(&e.to_string()) => (Offer::CannotOffer, None),
            Err(_) => (Offer::Refused, None),
        }
    })
    .await;
    let (offer, suite) =
        joined.map_err(|e| HarnessError::io("run a scan handshake", std::io::Error::other(e)))?;
    Ok(HandshakeOutcome { offer, suite })
}

/// A client context offering only `version` (and `ciphers`). A bare
/// context, not an `SslConnector`: that one loads the system's CA store for
/// every handshake, and the scan verifies nothing.
fn connector(
    target: &ScanTarget,
    version: TlsVersion,
    ciphers: Option<&str>,
) -> std::result::Result<SslContext, openssl::error::ErrorStack> {
    let mut builder = SslContext::builder(SslMethod::tls_client())?;
    builder.set_verify(SslVerifyMode::NONE);
    builder.set_security_level(0);
    builder.set_cipher_list(ciphers.unwrap_or("ALL:COMPLEMENTOFALL:@SECLEVEL=0"))?;
    builder.set_min_proto_version(Some(openssl_version(version)))?;
    builder.set_max_proto_version(Some(openssl_version(version)))?;
    if let Some(identity) = &target.client {
        let mut certs = openssl::x509::X509::stack_from_pem(identity.chain_pem.as_bytes())?;
        let key = openssl::pkey::PKey::private_key_from_pem(identity.key_pem().as_bytes())?;
        if !certs.is_empty() {
            builder.set_certificate(&certs.remove(0))?;
        }
        for intermediate in certs {
            builder.add_extra_chain_cert(intermediate)?;
        }
        builder.set_private_key(&key)?;
    }
    Ok(builder.build())
}

/// Whether a failed handshake failed on this side, before any offer was
/// made: this OpenSSL has no such protocol (Debian builds no SSLv3) or no
/// suite for it.
fn could_not_offer(error: &str) -> bool {
    error.contains("no protocols available") || error.contains("no ciphers available")
}

/// The scan table of one endpoint, for report.md.
pub fn markdown_table(
    scan: &EndpointScan,
    violations: &[PolicyViolation],
    known: &[PolicyViolation],
) -> String {
    let mut out = format!(
        "#### {} ({}, from `{}`)\n\n| offered | result |\n|---|---|\n",
        scan.endpoint, scan.addr, scan.from_host
    );
    if let Some(error) = &scan.error {
        out.push_str(&format!("| everything | not scanned: {error} |\n"));
        return out;
    }
    let flagged = |offered: &str| violations.iter().any(|v| v.offered.starts_with(offered));
    let explained = |offered: &str| known.iter().any(|v| v.offered.starts_with(offered));
    for (version, offer) in &scan.versions {
        let text = match offer {
            Offer::Accepted if flagged(version.label()) => "accepted — forbidden by the policy",
            Offer::Accepted if explained(version.label()) => "accepted — known defect",
            Offer::Accepted => "accepted",
            Offer::Refused => "refused",
            Offer::CannotOffer => "inconclusive: the scanner's OpenSSL cannot offer it",
        };
        out.push_str(&format!("| {} | {text} |\n", version.label()));
    }
    for suite in &scan.tls12_suites {
        let text = if flagged(suite) {
            "accepted under TLS 1.2 — forbidden by the policy"
        } else if explained(suite) {
            "accepted under TLS 1.2 — known defect"
        } else {
            "accepted under TLS 1.2"
        };
        out.push_str(&format!("| {suite} | {text} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(versions: &[(TlsVersion, Offer)], suites: &[&str]) -> EndpointScan {
        EndpointScan {
            endpoint: "hub API".into(),
            addr: "127.0.0.1:8081".into(),
            from_host: "hub".into(),
            versions: versions.iter().copied().collect(),
            tls12_suites: suites.iter().map(|s| s.to_string()).collect(),
            error: None,
        }
    }

    #[test]
    fn intermediate_forbids_old_versions_and_non_aead_or_static_rsa_suites() {
        let scan = scanned(
            &[
                (TlsVersion::Tls10, Offer::Accepted),
                (TlsVersion::Tls12, Offer::Accepted),
                (TlsVersion::Tls13, Offer::Accepted),
            ],
            &[
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_RSA_WITH_AES_256_CBC_SHA",
                "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
            ],
        );
        let found = TlsPolicySpec::default().judge(&scan);
        let offered: Vec<&str> = found.iter().map(|v| v.offered.as_str()).collect();
        assert_eq!(
            offered,
            [
                "TLSv1.0",
                "TLS_RSA_WITH_AES_256_CBC_SHA under TLS 1.2",
                "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA under TLS 1.2"
            ]
        );
        assert!(found[0]
            .describe()
            .contains("hub API (127.0.0.1:8081, from host `hub`) accepts TLSv1.0"));
        assert!(found[0].rule.contains("intermediate"));
    }

    #[test]
    fn an_exception_allows_only_what_it_names_where_it_names_it() {
        let scan = scanned(
            &[(TlsVersion::Tls12, Offer::Accepted)],
            &[
                "TLS_RSA_WITH_AES_256_CBC_SHA",
                "TLS_RSA_WITH_AES_128_CBC_SHA",
            ],
        );
        let mut policy = TlsPolicySpec::default();
        policy.exceptions.push(TlsException {
            endpoint: "hub API".into(),
            allow: vec!["TLS_RSA_WITH_AES_256_CBC_SHA".into()],
            reason: "a legacy client".into(),
        });
        let found = policy.judge(&scan);
        assert_eq!(found.len(), 1);
        assert!(found[0].offered.starts_with("TLS_RSA_WITH_AES_128_CBC_SHA"));
        policy.exceptions[0].endpoint = "proxy API".into();
        assert_eq!(policy.judge(&scan).len(), 2);
    }

    #[test]
    fn modern_forbids_tls12_and_an_unscanned_endpoint_fails_closed() {
        let policy = TlsPolicySpec {
            name: PolicyName::Modern,
            exceptions: vec![],
        };
        let scan = scanned(
            &[
                (TlsVersion::Ssl3, Offer::CannotOffer),
                (TlsVersion::Tls12, Offer::Accepted),
            ],
            &[],
        );
        let found = policy.judge(&scan);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].offered, "TLSv1.2");
        let mut broken = scanned(&[], &[]);
        broken.error = Some("connection refused".into());
        assert_eq!(policy.judge(&broken).len(), 1);
        assert!(markdown_table(&broken, &[], &[]).contains("not scanned"));
    }
}
