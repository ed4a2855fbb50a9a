//! What a lab on the cluster must show of the org trust bundle, judged from
//! a cell run in it: the five variables, and whether the bundle they name
//! holds the org CA. The expectation comes from the stack file (the gate,
//! the ConfigMap), never from what the lab happens to show.

use serde::Deserialize;

use super::OrgTrust;
use crate::pki::CA_VARIABLES;

const MERGED: &str = "/etc/ssl/certs-extra/ca-certificates.crt";

/// The cell that reports it; `marker` is one base64 line of the org CA.
pub fn cell(marker: &str) -> String {
    format!(
        "import json, os\n\
         v = {{k: os.environ.get(k) for k in {CA_VARIABLES:?}}}\n\
         p = os.environ.get('SSL_CERT_FILE') or ''\n\
         t = open(p).read() if p and os.path.isfile(p) else ''\n\
         print(json.dumps({{'variables': v, 'certificates': t.count('BEGIN CERTIFICATE'), 'org_ca': {marker:?} in t}}))"
    )
}

/// A line of `pem`'s body that identifies it in a bundle.
pub fn marker(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[derive(Debug, Deserialize)]
struct Seen {
    variables: std::collections::BTreeMap<String, Option<String>>,
    certificates: usize,
    org_ca: bool,
}

/// The verdict on what the cell printed: Ok with what was shown, or Err
/// naming what is wrong.
pub fn judge(trust: &OrgTrust, printed: &str) -> Result<String, String> {
    let seen: Seen = serde_json::from_str(printed.trim())
        .map_err(|e| format!("the lab's report is not readable ({e}): {printed}"))?;
    let pointing: Vec<&str> = CA_VARIABLES
        .iter()
        .copied()
        .filter(|v| seen.variables.get(*v).and_then(Option::as_deref) == Some(MERGED))
        .collect();
    if !trust.merge_into_labs {
        let set: Vec<&str> = CA_VARIABLES
            .iter()
            .copied()
            .filter(|v| seen.variables.get(*v).is_some_and(Option::is_some))
            .collect();
        return if set.is_empty() {
            Ok(
                "the gate is off: the lab's CA variables are unset, as without the org bundle"
                    .into(),
            )
        } else {
            Err(format!(
                "the gate is off, yet the lab has {} set",
                set.join(", ")
            ))
        };
    }
    if pointing.len() != CA_VARIABLES.len() {
        let astray: Vec<&str> = CA_VARIABLES
            .iter()
            .copied()
            .filter(|v| !pointing.contains(v))
            .collect();
        return Err(format!(
            "{} do not name the merged bundle {MERGED}",
            astray.join(", ")
        ));
    }
    if seen.certificates == 0 {
        return Err(format!("the merged bundle {MERGED} holds no certificate"));
    }
    match (trust.configmap_present, seen.org_ca) {
        (true, true) => Ok(format!(
            "all five variables name the merged bundle, which holds the org CA ({} certificates)",
            seen.certificates
        )),
        (true, false) => {
            Err("the merged bundle lacks the org CA, though the ConfigMap carries it".into())
        }
        (false, false) => Ok(format!(
            "without the ConfigMap the lab spawned with the system bundle alone ({} certificates)",
            seen.certificates
        )),
        (false, true) => {
            Err("the merged bundle holds the org CA though no ConfigMap carried it".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust(configmap_present: bool, merge_into_labs: bool) -> OrgTrust {
        OrgTrust {
            configmap_present,
            merge_into_labs,
            hub_included: false,
        }
    }

    fn printed(value: Option<&str>, certificates: usize, org_ca: bool) -> String {
        let variables: serde_json::Map<String, serde_json::Value> = CA_VARIABLES
            .iter()
            .map(|v| {
                (
                    v.to_string(),
                    value.map_or(serde_json::Value::Null, |p| p.into()),
                )
            })
            .collect();
        serde_json::json!({ "variables": variables, "certificates": certificates, "org_ca": org_ca }).to_string()
    }

    #[test]
    fn a_merged_bundle_with_the_org_ca_passes() {
        assert!(judge(&trust(true, true), &printed(Some(MERGED), 140, true)).is_ok());
    }

    #[test]
    fn a_bundle_without_the_org_ca_fails_when_the_configmap_carries_it() {
        let err = judge(&trust(true, true), &printed(Some(MERGED), 139, false)).unwrap_err();
        assert!(err.contains("lacks the org CA"), "{err}");
    }

    #[test]
    fn a_missing_configmap_passes_with_the_system_bundle_alone() {
        let said = judge(&trust(false, true), &printed(Some(MERGED), 139, false)).expect("passes");
        assert!(said.contains("system bundle alone"), "{said}");
    }

    #[test]
    fn variables_pointing_elsewhere_are_named() {
        let err = judge(
            &trust(true, true),
            &printed(Some("/etc/ssl/certs/ca-certificates.crt"), 139, false),
        )
        .unwrap_err();
        assert!(
            err.contains("REQUESTS_CA_BUNDLE") && err.contains("do not name the merged bundle"),
            "{err}"
        );
    }

    #[test]
    fn with_the_gate_off_the_variables_stay_unset() {
        assert!(judge(&trust(true, false), &printed(None, 0, false)).is_ok());
        let err = judge(&trust(true, false), &printed(Some(MERGED), 140, true)).unwrap_err();
        assert!(err.contains("gate is off"), "{err}");
    }

    #[test]
    fn the_marker_is_a_body_line_of_the_org_ca() {
        let ca = crate::pki::CertificateAuthority::root("org").expect("ca");
        let pem = ca.cert_pem();
        let mark = marker(&pem);
        assert!(mark.len() >= 32 && pem.contains(&mark));
    }
}
