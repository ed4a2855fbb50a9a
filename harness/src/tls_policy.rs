//! The TLS policy a scan is judged against, and what a scan found: plain
//! data and rules, apart from the scanner, so a stack file can name them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A protocol version the scan offers on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "SSLv3")]
    Ssl3,
    #[serde(rename = "TLSv1.0")]
    Tls10,
    #[serde(rename = "TLSv1.1")]
    Tls11,
    #[serde(rename = "TLSv1.2")]
    Tls12,
    #[serde(rename = "TLSv1.3")]
    Tls13,
}

impl TlsVersion {
    pub const ALL: [TlsVersion; 5] = [
        TlsVersion::Ssl3,
        TlsVersion::Tls10,
        TlsVersion::Tls11,
        TlsVersion::Tls12,
        TlsVersion::Tls13,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TlsVersion::Ssl3 => "SSLv3",
            TlsVersion::Tls10 => "TLSv1.0",
            TlsVersion::Tls11 => "TLSv1.1",
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }
}

/// What one offer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Offer {
    Accepted,
    Refused,
    /// The scanner's own OpenSSL could not offer it (Debian builds no
    /// SSLv3): explicitly inconclusive, never a pass.
    CannotOffer,
}

/// What the scan found at one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointScan {
    pub endpoint: String,
    pub addr: String,
    pub from_host: String,
    pub versions: BTreeMap<TlsVersion, Offer>,
    /// IANA names of the suites accepted under TLS 1.2, in the order the
    /// server chose them.
    pub tls12_suites: Vec<String>,
    /// Why the endpoint could not be scanned at all, if it could not.
    pub error: Option<String>,
}

/// A named policy: the versions and TLS 1.2 suites it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// Mozilla's "intermediate": TLS 1.2 and 1.3; under 1.2 only ECDHE
    /// key exchange with an AEAD cipher.
    #[default]
    Intermediate,
    /// Mozilla's "modern": TLS 1.3 only.
    Modern,
}

/// The stack file's `[tls_policy]`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsPolicySpec {
    #[serde(default)]
    pub name: PolicyName,
    #[serde(default)]
    pub exceptions: Vec<TlsException>,
}

/// An endpoint allowed something the policy forbids, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsException {
    /// The endpoint's name as the report shows it (`hub API`, `lab of alice`).
    pub endpoint: String,
    /// Versions (`TLSv1.1`) or IANA suite names allowed there.
    pub allow: Vec<String>,
    pub reason: String,
}

/// A policy rule broken at an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyViolation {
    pub endpoint: String,
    pub addr: String,
    /// The host the endpoint was reached from, by its topology name.
    pub from_host: String,
    /// The version or suite.
    pub offered: String,
    pub rule: String,
}

impl PolicyViolation {
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, from host `{}`) accepts {}, which the policy forbids: {}",
            self.endpoint, self.addr, self.from_host, self.offered, self.rule
        )
    }
}

impl PolicyName {
    pub fn label(self) -> &'static str {
        match self {
            PolicyName::Intermediate => "intermediate",
            PolicyName::Modern => "modern",
        }
    }

    fn version_rule(self, version: TlsVersion) -> Option<&'static str> {
        match (self, version) {
            (_, TlsVersion::Tls13) => None,
            (PolicyName::Intermediate, TlsVersion::Tls12) => None,
            (PolicyName::Intermediate, _) => {
                Some("Mozilla intermediate allows only TLS 1.2 and TLS 1.3")
            }
            (PolicyName::Modern, _) => Some("Mozilla modern allows only TLS 1.3"),
        }
    }

    fn suite_rule(self, suite: &str) -> Option<&'static str> {
        let ecdhe = suite.starts_with("TLS_ECDHE_");
        let aead = ["_GCM_", "_CHACHA20_POLY1305", "_CCM"]
            .iter()
            .any(|a| suite.contains(a));
        match self {
            PolicyName::Modern => None,
            PolicyName::Intermediate if ecdhe && aead => None,
            PolicyName::Intermediate => Some(
                "Mozilla intermediate allows under TLS 1.2 only ECDHE key exchange with an AEAD cipher",
            ),
        }
    }
}

impl TlsPolicySpec {
    /// A policy written on its own, as `hubtrust probe --policy-file` takes
    /// it: the same keys as a stack file's `[tls_policy]` table.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let spec: Self = toml::from_str(text).map_err(|e| e.message().to_string())?;
        spec.validate()?;
        Ok(spec)
    }

    /// The policy as [`TlsPolicySpec::from_toml`] reads it back.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a TLS policy is plain strings and lists")
    }

    /// An exception must say why and what it allows: one that allows
    /// nothing, or gives no reason, is a policy nobody can review.
    pub fn validate(&self) -> Result<(), String> {
        for e in &self.exceptions {
            if e.reason.trim().is_empty() {
                return Err(format!(
                    "the TLS policy exception for `{}` gives no reason (fix: reason = \"why this endpoint may\")",
                    e.endpoint
                ));
            }
            if e.allow.is_empty() {
                return Err(format!(
                    "the TLS policy exception for `{}` allows nothing (fix: allow = [\"TLSv1.1\"] or IANA suite names)",
                    e.endpoint
                ));
            }
        }
        Ok(())
    }

    /// The exceptions naming none of `endpoints`: a misspelt or stale name
    /// excuses nothing, and must not look as if it did.
    pub fn exceptions_for_no_endpoint(&self, endpoints: &[&str]) -> Vec<&TlsException> {
        self.exceptions
            .iter()
            .filter(|e| !endpoints.contains(&e.endpoint.as_str()))
            .collect()
    }

    /// Every rule `scan` breaks, less the stack's own exceptions. An
    /// endpoint that could not be scanned is a violation: nothing was shown.
    pub fn judge(&self, scan: &EndpointScan) -> Vec<PolicyViolation> {
        let excepted = |offered: &str| {
            self.exceptions
                .iter()
                .any(|e| e.endpoint == scan.endpoint && e.allow.iter().any(|a| a == offered))
        };
        let violation = |offered: String, rule: &str| PolicyViolation {
            endpoint: scan.endpoint.clone(),
            addr: scan.addr.clone(),
            from_host: scan.from_host.clone(),
            offered,
            rule: rule.to_string(),
        };
        if let Some(error) = &scan.error {
            return vec![violation(
                "nothing".into(),
                &format!("the scan could not run there: {error}"),
            )];
        }
        let mut found = Vec::new();
        for (version, offer) in &scan.versions {
            if *offer != Offer::Accepted || excepted(version.label()) {
                continue;
            }
            if let Some(rule) = self.name.version_rule(*version) {
                found.push(violation(version.label().into(), rule));
            }
        }
        if scan.versions.get(&TlsVersion::Tls12) == Some(&Offer::Accepted) {
            for suite in &scan.tls12_suites {
                if excepted(suite) {
                    continue;
                }
                if let Some(rule) = self.name.suite_rule(suite) {
                    found.push(violation(format!("{suite} under TLS 1.2"), rule));
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_file_takes_the_stack_files_keys() {
        let spec = TlsPolicySpec::from_toml(
            "name = \"modern\"\nexceptions = [{ endpoint = \"proxy public\", allow = [\"TLSv1.2\"], reason = \"an old kiosk browser\" }]\n",
        )
        .unwrap();
        assert_eq!(spec.name, PolicyName::Modern);
        assert_eq!(spec.exceptions[0].allow, ["TLSv1.2"]);
        assert_eq!(
            TlsPolicySpec::from_toml("").unwrap(),
            TlsPolicySpec::default()
        );
        assert_eq!(TlsPolicySpec::from_toml(&spec.to_toml()).unwrap(), spec);
    }

    #[test]
    fn an_exception_without_a_reason_or_an_allowance_is_refused() {
        let no_reason = TlsPolicySpec::from_toml(
            "exceptions = [{ endpoint = \"hub API\", allow = [\"TLSv1.1\"], reason = \" \" }]",
        )
        .unwrap_err();
        assert!(
            no_reason.contains("`hub API` gives no reason"),
            "{no_reason}"
        );
        let allows_nothing = TlsPolicySpec::from_toml(
            "exceptions = [{ endpoint = \"hub API\", allow = [], reason = \"legacy\" }]",
        )
        .unwrap_err();
        assert!(
            allows_nothing.contains("allows nothing"),
            "{allows_nothing}"
        );
        let unknown_key = TlsPolicySpec::from_toml("nmae = \"modern\"").unwrap_err();
        assert!(unknown_key.contains("nmae"), "{unknown_key}");
    }

    #[test]
    fn an_exception_lifts_exactly_what_it_allows_at_its_endpoint() {
        let scan = EndpointScan {
            endpoint: "proxy public".into(),
            addr: "10.0.0.1:443".into(),
            from_host: "operator".into(),
            versions: [
                (TlsVersion::Tls12, Offer::Accepted),
                (TlsVersion::Tls13, Offer::Accepted),
            ]
            .into_iter()
            .collect(),
            tls12_suites: vec!["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()],
            error: None,
        };
        let modern = TlsPolicySpec {
            name: PolicyName::Modern,
            exceptions: Vec::new(),
        };
        assert_eq!(modern.judge(&scan)[0].offered, "TLSv1.2");
        let excepted = TlsPolicySpec {
            exceptions: vec![TlsException {
                endpoint: "proxy public".into(),
                allow: vec!["TLSv1.2".into()],
                reason: "kiosk".into(),
            }],
            ..modern.clone()
        };
        assert!(excepted.judge(&scan).is_empty());
        let elsewhere = TlsPolicySpec {
            exceptions: vec![TlsException {
                endpoint: "hub API".into(),
                ..excepted.exceptions[0].clone()
            }],
            ..modern
        };
        assert_eq!(elsewhere.judge(&scan).len(), 1);
        let stray = elsewhere.exceptions_for_no_endpoint(&["proxy public"]);
        assert_eq!(stray.len(), 1);
        assert!(excepted
            .exceptions_for_no_endpoint(&["proxy public"])
            .is_empty());
    }
}
