//! Known upstream defects (`fixtures/known-defects.toml`): findings that a
//! component's released versions are known to produce, each with its
//! reason and upstream reference. Within an entry's version range such a
//! finding shows as "known defect" instead of failing the run (`--strict`
//! fails it anyway), and an entry that no longer reproduces fails the run,
//! so the list never hides a fix or outlives one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{HarnessError, Result};
use crate::tls_scan::PolicyViolation;

pub const BUILTIN: &str = include_str!("../../fixtures/known-defects.toml");

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KnownDefect {
    pub id: String,
    /// Which check produces it (`tls-scan`, `trust-matrix`).
    pub check: String,
    /// The endpoint it shows at; `*` matches anything.
    pub endpoint: String,
    /// What is offered there (a version or suite; for the trust matrix, the
    /// client identity); `*` matches anything.
    pub offered: Vec<String>,
    /// The component whose version decides whether the entry applies.
    pub component: String,
    /// `>=5.0, <7`: every bound must hold.
    pub versions: String,
    pub reason: String,
    pub upstream: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KnownDefects {
    #[serde(default)]
    pub defect: Vec<KnownDefect>,
}

/// A finding matched to its entry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KnownDefectHit {
    pub scenario: String,
    pub id: String,
    pub finding: String,
    pub reason: String,
    pub upstream: String,
}

/// One check's findings, sorted.
#[derive(Debug)]
pub struct Sorted<F> {
    pub known: Vec<(KnownDefect, F)>,
    pub unknown: Vec<F>,
    /// Entries that apply to this run but matched nothing: fixed upstream.
    pub stale: Vec<KnownDefect>,
}

impl KnownDefects {
    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN)
    }

    pub fn parse(text: &str) -> Result<Self> {
        let list: Self = toml::from_str(text)
            .map_err(|e| HarnessError::KnownDefects(format!("fixtures/known-defects.toml: {e}")))?;
        for d in &list.defect {
            parse_range(&d.versions).map_err(|e| {
                HarnessError::KnownDefects(format!(
                    "fixtures/known-defects.toml, entry {}: {e}",
                    d.id
                ))
            })?;
        }
        Ok(list)
    }

    /// Sorts the TLS scan's findings. `versions` maps each component to the
    /// version that ran (absent when a vendor replaced it: then no entry
    /// for it applies); `scanned` names every endpoint the check looked at.
    pub fn sort_tls_scan(
        &self,
        findings: Vec<PolicyViolation>,
        versions: &BTreeMap<String, String>,
        scanned: &[String],
    ) -> Sorted<PolicyViolation> {
        self.sort("tls-scan", findings, versions, scanned, |f| {
            (
                f.endpoint.clone(),
                f.offered.trim_end_matches(" under TLS 1.2").to_string(),
            )
        })
    }

    /// Sorts `findings` of `check`; `key` gives each finding's endpoint and
    /// what was offered there (a version, a suite, a client identity).
    pub fn sort<F>(
        &self,
        check: &str,
        findings: Vec<F>,
        versions: &BTreeMap<String, String>,
        scanned: &[String],
        key: impl Fn(&F) -> (String, String),
    ) -> Sorted<F> {
        let applies: Vec<&KnownDefect> = self
            .defect
            .iter()
            .filter(|d| d.check == check)
            .filter(|d| {
                versions
                    .get(&d.component)
                    .is_some_and(|v| in_range(v, &d.versions))
            })
            .collect();
        let mut sorted = Sorted {
            known: Vec::new(),
            unknown: Vec::new(),
            stale: Vec::new(),
        };
        let mut matched: Vec<&str> = Vec::new();
        for finding in findings {
            let (endpoint, offered) = key(&finding);
            let entry = applies.iter().find(|d| {
                glob(&d.endpoint, &endpoint) && d.offered.iter().any(|o| glob(o, &offered))
            });
            match entry {
                Some(d) => {
                    matched.push(&d.id);
                    sorted.known.push(((*d).clone(), finding));
                }
                None => sorted.unknown.push(finding),
            }
        }
        sorted.stale = applies
            .into_iter()
            .filter(|d| scanned.iter().any(|e| glob(&d.endpoint, e)))
            .filter(|d| !matched.contains(&d.id.as_str()))
            .cloned()
            .collect();
        sorted
    }
}

/// `*` matches any run of characters; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(after) = text.strip_prefix(head) else {
                return false;
            };
            (0..=after.len())
                .filter(|i| after.is_char_boundary(*i))
                .any(|i| glob(rest, &after[i..]))
        }
    }
}

fn numbers(version: &str) -> Vec<u64> {
    version
        .split('.')
        .map(|p| {
            p.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap_or(0)
        })
        .collect()
}

fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (numbers(a), numbers(b));
    let len = a.len().max(b.len());
    a.resize(len, 0);
    b.resize(len, 0);
    a.cmp(&b)
}

fn parse_range(range: &str) -> std::result::Result<Vec<(String, String)>, String> {
    range
        .split(',')
        .map(str::trim)
        .map(|bound| {
            let op = ["<=", ">=", "==", "<", ">"]
                .into_iter()
                .find(|op| bound.starts_with(op))
                .ok_or_else(|| format!("bound {bound:?} needs one of <, <=, >, >=, =="))?;
            Ok((op.to_string(), bound[op.len()..].trim().to_string()))
        })
        .collect()
}

fn in_range(version: &str, range: &str) -> bool {
    let Ok(bounds) = parse_range(range) else {
        return false;
    };
    bounds.iter().all(|(op, bound)| {
        let order = compare(version, bound);
        match op.as_str() {
            "<" => order.is_lt(),
            "<=" => order.is_le(),
            ">" => order.is_gt(),
            ">=" => order.is_ge(),
            _ => order.is_eq(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(endpoint: &str, offered: &str) -> PolicyViolation {
        PolicyViolation {
            endpoint: endpoint.into(),
            addr: "127.0.0.1:1".into(),
            from_host: "hub".into(),
            offered: offered.into(),
            rule: "r".into(),
        }
    }

    fn versions(hub: &str) -> BTreeMap<String, String> {
        [("jupyterhub".to_string(), hub.to_string())].into()
    }

    #[test]
    fn the_builtin_list_parses_and_ranges_compare_numerically() {
        assert!(!KnownDefects::builtin().unwrap().defect.is_empty());
        assert!(in_range("6.1.1", ">=5.0, <7"));
        assert!(!in_range("7.0.0", ">=5.0, <7"));
        assert!(in_range("6.10", ">6.9"));
        assert!(KnownDefects::parse("[[defect]]\nid='x'\ncheck='tls-scan'\nendpoint='a'\noffered=[]\ncomponent='c'\nversions='~6'\nreason=''\nupstream=''").is_err());
        assert!(glob("lab of *", "lab of alice"));
        assert!(glob(
            "TLS_ECDHE_*_CBC_*",
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
        ));
        assert!(!glob(
            "TLS_ECDHE_*_CBC_*",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        ));
    }

    #[test]
    fn findings_in_range_are_known_others_fail_and_unreproduced_entries_are_stale() {
        let list = KnownDefects::builtin().unwrap();
        let scanned = ["hub API".to_string(), "lab of alice".to_string()];
        let sorted = list.sort_tls_scan(
            vec![
                finding("hub API", "TLS_RSA_WITH_AES_256_CBC_SHA under TLS 1.2"),
                finding("hub API", "TLSv1.0"),
            ],
            &versions("6.1.1"),
            &scanned,
        );
        assert_eq!(sorted.known.len(), 1);
        assert_eq!(sorted.unknown.len(), 1, "TLS 1.0 is no known defect");
        assert_eq!(
            sorted
                .stale
                .iter()
                .map(|d| d.id.as_str())
                .collect::<Vec<_>>(),
            ["singleuser-internal-tls12-suites"]
        );
        let outside = list.sort_tls_scan(
            vec![finding(
                "hub API",
                "TLS_RSA_WITH_AES_256_CBC_SHA under TLS 1.2",
            )],
            &versions("7.0.0"),
            &scanned,
        );
        assert!(outside.known.is_empty() && outside.stale.is_empty());
        assert_eq!(outside.unknown.len(), 1);
        let vendor = list.sort_tls_scan(vec![], &BTreeMap::new(), &scanned);
        assert!(
            vendor.stale.is_empty(),
            "a replaced component has no version to match"
        );
    }

    #[test]
    fn a_lab_that_takes_another_labs_certificate_is_known_only_on_the_chart() {
        let list = KnownDefects::builtin().unwrap();
        let scanned = ["hub API".to_string(), "lab of alice".to_string()];
        let cells = || {
            vec![
                ("lab of alice", "lab cert (another user)"),
                ("lab of alice", "proxy-api"),
                ("hub API", "proxy-api"),
            ]
        };
        let key = |c: &(&str, &str)| (c.0.to_string(), c.1.to_string());
        let mut chart = versions("5.5.0");
        chart.insert("zero-to-jupyterhub".into(), "4.4.0".into());
        let on_chart = list.sort("trust-matrix", cells(), &chart, &scanned, key);
        assert_eq!(
            on_chart
                .known
                .iter()
                .map(|(d, c)| (d.id.as_str(), c.1))
                .collect::<Vec<_>>(),
            [
                (
                    "kubespawner-lab-trusts-every-internal-ca",
                    "lab cert (another user)"
                ),
                ("kubespawner-lab-trusts-every-internal-ca", "proxy-api"),
            ]
        );
        assert_eq!(on_chart.unknown, [("hub API", "proxy-api")]);
        // A lab that refuses them on the chart leaves the entry stale.
        let refused = list.sort("trust-matrix", Vec::new(), &chart, &scanned, key);
        assert!(refused
            .stale
            .iter()
            .any(|d| d.id == "kubespawner-lab-trusts-every-internal-ca"));
        // Without the chart (LocalProcessSpawner), the same finding fails.
        let local = list.sort("trust-matrix", cells(), &versions("5.5.0"), &scanned, key);
        assert!(local.known.is_empty());
        assert_eq!(local.unknown.len(), 3);
    }
}
