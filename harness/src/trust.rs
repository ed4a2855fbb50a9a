//! JupyterHub's documented trust graph (`init_internal_ssl`) and the
//! verdicts it implies. Expectations come from here, never from whatever a
//! stack happens to do.

use serde::Serialize;

use crate::pki::ZooDefect;
use crate::probe::Verdict;

/// The five internal CAs JupyterHub creates with `internal_ssl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InternalCa {
    Hub,
    ProxyApi,
    ProxyClient,
    Notebooks,
    Services,
}

impl InternalCa {
    pub const ALL: [InternalCa; 5] = [
        InternalCa::Hub,
        InternalCa::ProxyApi,
        InternalCa::ProxyClient,
        InternalCa::Notebooks,
        InternalCa::Services,
    ];

    /// The directory certipy gives the CA in `internal-ssl/`.
    pub fn dir_name(self) -> &'static str {
        match self {
            InternalCa::Hub => "hub-ca",
            InternalCa::ProxyApi => "proxy-api-ca",
            InternalCa::ProxyClient => "proxy-client-ca",
            InternalCa::Notebooks => "notebooks-ca",
            InternalCa::Services => "services-ca",
        }
    }

    /// The `<ca>_trust.crt` bundle: which CAs components of this CA trust.
    pub fn trusts(self) -> &'static [InternalCa] {
        use InternalCa::*;
        match self {
            Hub => &[Hub, ProxyApi, ProxyClient, Notebooks, Services],
            ProxyApi => &[Hub, Services, Notebooks],
            ProxyClient => &[Hub, Notebooks],
            Notebooks => &[Hub, ProxyClient],
            Services => &[Hub, ProxyApi],
        }
    }

    pub fn trust_bundle_file(self) -> String {
        format!("{}_trust.crt", self.dir_name())
    }
}

/// Who issued a client identity, as far as trust is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum IdentityOrigin {
    /// No client certificate at all.
    Anonymous,
    Internal(InternalCa),
    /// Signed by the organisation's CA (trusted by browsers, not internally).
    Org,
    /// Signed by the run's public root, which every host's system store
    /// holds: the kind of certificate anyone can buy.
    Public,
    Foreign,
    /// A zoo certificate, signed by `hub-ca`, which every internal endpoint
    /// trusts, so only its defect decides.
    Zoo(ZooDefect),
}

/// How an endpoint treats client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "trust")]
pub enum ClientAuth {
    /// Does not ask for a certificate (the browser-facing proxy).
    NotRequested,
    /// Requires one, verified against this CA's trust bundle.
    Required(InternalCa),
}

/// The verdict the trust graph predicts, and why.
pub fn expected_verdict(auth: ClientAuth, origin: IdentityOrigin) -> (Verdict, &'static str) {
    let ClientAuth::Required(bundle) = auth else {
        return (
            Verdict::Accepted,
            "the endpoint does not request client certificates",
        );
    };
    match origin {
        IdentityOrigin::Anonymous => (
            Verdict::ClientCertRequired,
            "internal_ssl endpoints require a client certificate",
        ),
        IdentityOrigin::Internal(ca) if bundle.trusts().contains(&ca) => (
            Verdict::Accepted,
            "the issuing CA is in the endpoint's trust bundle",
        ),
        IdentityOrigin::Internal(_) => (
            Verdict::ClientCertRejected,
            "the issuing CA is not in the endpoint's trust bundle",
        ),
        IdentityOrigin::Org => (
            Verdict::ClientCertRejected,
            "the org CA must not gain internal access",
        ),
        IdentityOrigin::Public => (
            Verdict::ClientCertRejected,
            "the system store's roots must not gain internal access",
        ),
        IdentityOrigin::Foreign => (Verdict::ClientCertRejected, "nobody trusts the foreign CA"),
        IdentityOrigin::Zoo(defect) => match defect {
            ZooDefect::WrongSan => (
                Verdict::Accepted,
                "servers do not match client certificates against names; the issuer is trusted",
            ),
            ZooDefect::Expired => (Verdict::ClientCertRejected, "expired"),
            ZooDefect::NotYetValid => (Verdict::ClientCertRejected, "not yet valid"),
            ZooDefect::SelfSigned => (
                Verdict::ClientCertRejected,
                "self-signed: no trusted issuer",
            ),
            ZooDefect::ServerAuthOnlyEku => (
                Verdict::ClientCertRejected,
                "its EKU does not allow clientAuth",
            ),
            ZooDefect::SignedByNonCa => (Verdict::ClientCertRejected, "its issuer is not a CA"),
        },
    }
}

/// Whether an observed verdict matches the expected one.
///
/// A rejection is a rejection whether the server says "required" or
/// "rejected" (TLS 1.2 and 1.3 servers word it differently), or, as
/// configurable-http-proxy's node does, completes the TLS 1.3 handshake and
/// then closes without an alert or an answer. A server that accepts a client
/// answers the probe's HTTP request, so a silent close is never mistaken for
/// acceptance; the report still shows the exact verdict.
pub fn verdict_matches(expected: Verdict, observed: Verdict) -> bool {
    expected == observed
        || (expected.is_client_rejection()
            && (observed.is_client_rejection() || observed == Verdict::PeerClosed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_graph() {
        // REFERENCE.md: proxy-api-ca_trust = hub, services, notebooks.
        let auth = ClientAuth::Required(InternalCa::ProxyApi);
        assert_eq!(
            expected_verdict(auth, IdentityOrigin::Internal(InternalCa::Notebooks)).0,
            Verdict::Accepted
        );
        assert_eq!(
            expected_verdict(auth, IdentityOrigin::Internal(InternalCa::ProxyClient)).0,
            Verdict::ClientCertRejected
        );
        // notebooks-ca_trust = hub, proxy-client: a lab does not trust other labs.
        let lab = ClientAuth::Required(InternalCa::Notebooks);
        assert_eq!(
            expected_verdict(lab, IdentityOrigin::Internal(InternalCa::Notebooks)).0,
            Verdict::ClientCertRejected
        );
        assert_eq!(
            expected_verdict(lab, IdentityOrigin::Anonymous).0,
            Verdict::ClientCertRequired
        );
        // Every internal bundle trusts hub-ca, which signs the zoo.
        assert!(InternalCa::ALL
            .iter()
            .all(|ca| ca.trusts().contains(&InternalCa::Hub)));
    }

    #[test]
    fn a_rejection_cannot_pass_as_acceptance() {
        assert!(!verdict_matches(
            Verdict::ClientCertRejected,
            Verdict::Accepted
        ));
        assert!(!verdict_matches(Verdict::Accepted, Verdict::Timeout));
        assert!(!verdict_matches(
            Verdict::ClientCertRejected,
            Verdict::Timeout
        ));
        assert!(verdict_matches(
            Verdict::ClientCertRejected,
            Verdict::ClientCertRequired
        ));
        assert!(verdict_matches(
            Verdict::ClientCertRejected,
            Verdict::PeerClosed
        ));
        assert!(!verdict_matches(Verdict::Accepted, Verdict::PeerClosed));
    }
}
