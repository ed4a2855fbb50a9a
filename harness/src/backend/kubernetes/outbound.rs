//! hubtrust's outbound test servers in the cluster, and the discriminator
//! a lab runs against them: one server presents a certificate from the
//! org's issuing CA, one from a foreign CA. Each user tool in the lab
//! fetches both with the bundle its environment names and with the system
//! bundle alone. The org server must verify exactly when the stack merges
//! the org bundle into labs (and the ConfigMap exists); the system bundle
//! alone and the foreign server must always be refused, for the
//! certificate, not for an unreachable server.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use super::names::dns_names;
use super::OrgTrust;
use crate::error::Result;
use crate::pki::{write_with_mode, OrgPki, Usage, Validity};

pub const SERVICE: &str = "hubtrust-outbound";
pub const TLS_SECRET: &str = "hubtrust-outbound-tls";
const SCRIPT_CONFIGMAP: &str = "hubtrust-outbound-server";
const ORG_PORT: u16 = 8443;
const FOREIGN_PORT: u16 = 9443;
const TLS_DIR: &str = "/etc/hubtrust-outbound";
const SCRIPT_DIR: &str = "/opt/hubtrust";

/// The server the pod runs, and the cell the lab runs.
pub const SERVER_SCRIPT: &str = include_str!("../../../../fixtures/kubernetes/outbound-server.py");
const FETCH_SCRIPT: &str = include_str!("../../../../fixtures/kubernetes/outbound-fetch.py");

/// Where the lab's image keeps its system bundle (Debian and Ubuntu
/// images, the chart's among them).
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Who signed a target's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Org,
    Foreign,
}

/// One server the lab's tools fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub url: String,
    pub signer: Signer,
    /// What the server answers, so a verified fetch shows it reached it.
    pub marker: String,
}

impl Signer {
    fn label(self) -> &'static str {
        match self {
            Signer::Org => "org-CA server",
            Signer::Foreign => "foreign-CA server",
        }
    }

    fn port(self) -> u16 {
        match self {
            Signer::Org => ORG_PORT,
            Signer::Foreign => FOREIGN_PORT,
        }
    }

    fn file_stem(self) -> &'static str {
        match self {
            Signer::Org => "org-server",
            Signer::Foreign => "foreign-server",
        }
    }

    const ALL: [Signer; 2] = [Signer::Org, Signer::Foreign];
}

/// The targets, at the Service's in-cluster name.
pub fn targets(namespace: &str) -> Vec<Target> {
    let host = &dns_names(SERVICE, namespace)[3];
    Signer::ALL
        .iter()
        .map(|signer| Target {
            name: signer.label().into(),
            url: format!("https://{host}:{}/", signer.port()),
            signer: *signer,
            marker: format!("hubtrust-{}", signer.file_stem()),
        })
        .collect()
}

/// Each server's certificate and key on this machine, before they go into
/// the Secret: `(signer, cert, key)`.
pub fn cert_files(run_dir: &Path) -> Vec<(Signer, PathBuf, PathBuf)> {
    let dir = run_dir.join("outbound");
    Signer::ALL
        .iter()
        .map(|s| {
            (
                *s,
                dir.join(format!("{}.crt", s.file_stem())),
                dir.join(format!("{}.key", s.file_stem())),
            )
        })
        .collect()
}

/// Issues both servers' certificates for every name of the Service; keys
/// 0600, the org server's chain holding its issuing intermediate.
pub fn issue(org: &OrgPki, namespace: &str, run_dir: &Path) -> Result<()> {
    let names = dns_names(SERVICE, namespace);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for (signer, cert, key) in cert_files(run_dir) {
        let ca = match signer {
            Signer::Org => &org.issuing,
            Signer::Foreign => &org.foreign,
        };
        let leaf = ca.issue(
            signer.file_stem(),
            &names,
            Usage::Server,
            Validity::fresh(2),
        )?;
        if let Some(dir) = cert.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                crate::error::HarnessError::io(format!("create {}", dir.display()), e)
            })?;
        }
        write_with_mode(&cert, leaf.chain_pem.as_bytes(), 0o644)?;
        write_with_mode(&key, leaf.key_pem().as_bytes(), 0o600)?;
    }
    Ok(())
}

/// `kubectl create secret generic`'s `--from-file` arguments: the keys
/// pass by path, never through a command line or a printed plan.
pub fn secret_from_files(run_dir: &Path) -> Vec<String> {
    cert_files(run_dir)
        .into_iter()
        .flat_map(|(signer, cert, key)| {
            let stem = signer.file_stem();
            [
                format!("--from-file={stem}.crt={}", cert.display()),
                format!("--from-file={stem}.key={}", key.display()),
            ]
        })
        .collect()
}

/// The server script's arguments with the certificates in `tls_dir`:
/// each server's port, certificate, key and marker.
pub fn server_args(tls_dir: &Path) -> Vec<String> {
    Signer::ALL
        .iter()
        .flat_map(|signer| {
            let stem = signer.file_stem();
            [
                signer.port().to_string(),
                tls_dir.join(format!("{stem}.crt")).display().to_string(),
                tls_dir.join(format!("{stem}.key")).display().to_string(),
                format!("hubtrust-{stem}"),
            ]
        })
        .collect()
}

/// The server pod (the hub's image, for its Python), its script and its
/// Service, and a NetworkPolicy that lets labs reach it: policies add up,
/// so the chart's own singleuser policy stays exactly as rendered.
pub fn manifests(namespace: &str, image: &str) -> Value {
    let labels =
        json!({ "app.kubernetes.io/name": SERVICE, "app.kubernetes.io/managed-by": "hubtrust" });
    let mut command = vec![
        "python3".to_string(),
        format!("{SCRIPT_DIR}/outbound-server.py"),
    ];
    command.extend(server_args(Path::new(TLS_DIR)));
    let ports: Vec<Value> = Signer::ALL
        .iter()
        .map(|s| json!({ "name": s.file_stem(), "port": s.port(), "targetPort": s.port() }))
        .collect();
    let items = vec![
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": SCRIPT_CONFIGMAP, "namespace": namespace, "labels": labels },
            "data": { "outbound-server.py": SERVER_SCRIPT },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": SERVICE, "namespace": namespace, "labels": labels },
            "spec": {
                "securityContext": { "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "runAsNonRoot": true },
                "containers": [{
                    "name": "servers",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "ports": Signer::ALL.iter().map(|s| json!({ "containerPort": s.port() })).collect::<Vec<_>>(),
                    "readinessProbe": {
                        "tcpSocket": { "port": FOREIGN_PORT },
                        "periodSeconds": 2,
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "capabilities": { "drop": ["ALL"] },
                    },
                    "volumeMounts": [
                        { "name": "tls", "mountPath": TLS_DIR, "readOnly": true },
                        { "name": "script", "mountPath": SCRIPT_DIR, "readOnly": true },
                    ],
                }],
                "volumes": [
                    { "name": "tls", "secret": { "secretName": TLS_SECRET, "defaultMode": 0o440 } },
                    { "name": "script", "configMap": { "name": SCRIPT_CONFIGMAP } },
                ],
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": SERVICE, "namespace": namespace, "labels": labels },
            "spec": { "selector": { "app.kubernetes.io/name": SERVICE }, "ports": ports },
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": { "name": "hubtrust-labs-to-outbound", "namespace": namespace, "labels": labels },
            "spec": {
                "podSelector": { "matchLabels": { "component": "singleuser-server" } },
                "policyTypes": ["Egress"],
                "egress": [{
                    "to": [{ "podSelector": { "matchLabels": { "app.kubernetes.io/name": SERVICE } } }],
                    "ports": Signer::ALL.iter().map(|s| json!({ "protocol": "TCP", "port": s.port() })).collect::<Vec<_>>(),
                }],
            },
        }),
    ];
    json!({ "apiVersion": "v1", "kind": "List", "items": items })
}

/// The kernel cell: the fetch script with its targets in front.
pub fn cell(targets: &[Target], system_bundle: &str) -> String {
    let config = json!({
        "targets": targets
            .iter()
            .map(|t| json!({ "name": t.name, "url": t.url, "marker": t.marker }))
            .collect::<Vec<_>>(),
        "system_bundle": system_bundle,
    });
    format!("CONFIG = {config}\n{FETCH_SCRIPT}")
}

#[derive(Debug, Deserialize)]
struct Printed {
    fetches: Vec<Fetch>,
}

#[derive(Debug, Deserialize)]
struct Fetch {
    tool: String,
    target: String,
    bundle: String,
    outcome: String,
    detail: String,
}

/// The verdict on what the cell printed: Ok with one line per tool that
/// ran, or Err naming every fetch that broke the expectation. A fetch that
/// could not reach its server shows nothing about trust: it fails, named,
/// never passes. Tools the image lacks are said, and python's own must run.
pub fn judge(
    trust: &OrgTrust,
    targets: &[Target],
    printed: &str,
) -> std::result::Result<Vec<String>, String> {
    let printed: Printed = serde_json::from_str(printed.trim())
        .map_err(|e| format!("the lab's fetch report is not readable ({e}): {printed}"))?;
    let org_trusted = trust.merge_into_labs && trust.configmap_present;
    let mut problems = Vec::new();
    let mut said = Vec::new();
    let mut ran_python = false;
    for fetch in &printed.fetches {
        let signer = targets
            .iter()
            .find(|t| t.name == fetch.target)
            .map(|t| t.signer)
            .ok_or_else(|| {
                format!(
                    "the lab fetched `{}`, which hubtrust did not ask for",
                    fetch.target
                )
            })?;
        if fetch.outcome == "absent" {
            said.push(format!("{} not checked: {}", fetch.tool, fetch.detail));
            continue;
        }
        ran_python |= fetch.tool == "python urllib";
        let should_verify = signer == Signer::Org && fetch.bundle == "environment" && org_trusted;
        let what = format!(
            "{} fetching the {} with the {}",
            fetch.tool, fetch.target, fetch.bundle
        );
        match (fetch.outcome.as_str(), should_verify) {
            ("verified", true) | ("refused-certificate", false) => {}
            ("verified", false) => problems.push(format!(
                "{what} verified it, which it must refuse{}",
                match signer {
                    Signer::Foreign => ": the lab trusts a foreign CA".to_string(),
                    Signer::Org if fetch.bundle != "environment" => ": the system bundle holds the org CA".to_string(),
                    Signer::Org => " with the org bundle not merged into labs (the gate is off or the ConfigMap absent)".to_string(),
                }
            )),
            ("refused-certificate", true) => problems.push(format!(
                "{what} refused its certificate, which the merged bundle must verify: {}",
                fetch.detail
            )),
            _ => problems.push(format!(
                "{what} did not reach it, so it shows nothing about trust: {} (fix: the outbound server's pod and the NetworkPolicy hubtrust-labs-to-outbound)",
                fetch.detail
            )),
        }
    }
    if !ran_python {
        problems
            .push("python urllib did not run in the lab: the discriminator showed nothing".into());
    }
    if problems.is_empty() {
        let verdict = if org_trusted {
            "with the merged bundle each tool verified the org-CA server; with the system bundle alone, and the foreign-CA server always, each refused the certificate"
        } else {
            "without the org bundle merged, each tool refused the org-CA server's certificate, and the foreign-CA server's"
        };
        said.insert(0, verdict.to_string());
        Ok(said)
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust(merge: bool, configmap: bool) -> OrgTrust {
        OrgTrust {
            configmap_present: configmap,
            merge_into_labs: merge,
            hub_included: false,
        }
    }

    fn printed(rows: &[(&str, &str, &str, &str)]) -> String {
        let fetches: Vec<Value> = rows
            .iter()
            .map(|(tool, target, bundle, outcome)| {
                json!({ "tool": tool, "target": target, "bundle": bundle, "outcome": outcome, "detail": "d" })
            })
            .collect();
        json!({ "fetches": fetches }).to_string()
    }

    const ENV: &str = "environment";
    const SYS: &str = "system bundle alone";
    const ORG: &str = "org-CA server";
    const FOREIGN: &str = "foreign-CA server";

    fn healthy(org_env: &str) -> String {
        printed(&[
            ("python urllib", ORG, ENV, org_env),
            ("python urllib", ORG, SYS, "refused-certificate"),
            ("python urllib", FOREIGN, ENV, "refused-certificate"),
            ("python urllib", FOREIGN, SYS, "refused-certificate"),
            ("curl", ORG, ENV, "absent"),
        ])
    }

    #[test]
    fn the_targets_are_the_services_in_cluster_name() {
        let t = targets("ns");
        assert_eq!(
            t[0].url,
            "https://hubtrust-outbound.ns.svc.cluster.local:8443/"
        );
        assert_eq!(t[1].signer, Signer::Foreign);
    }

    #[test]
    fn merged_labs_verify_the_org_server_and_nothing_else() {
        let t = targets("ns");
        let said = judge(&trust(true, true), &t, &healthy("verified")).unwrap();
        assert!(said[0].starts_with("with the merged bundle"), "{said:?}");
        assert!(
            said.iter().any(|s| s.starts_with("curl not checked")),
            "{said:?}"
        );
        let err = judge(&trust(true, true), &t, &healthy("refused-certificate")).unwrap_err();
        assert!(err.contains("python urllib fetching the org-CA server with the environment refused its certificate"), "{err}");
    }

    #[test]
    fn without_the_gate_or_the_configmap_the_org_server_must_be_refused() {
        let t = targets("ns");
        for trust in [trust(false, true), trust(true, false)] {
            assert!(judge(&trust, &t, &healthy("refused-certificate")).is_ok());
            let err = judge(&trust, &t, &healthy("verified")).unwrap_err();
            assert!(err.contains("verified it, which it must refuse"), "{err}");
        }
    }

    #[test]
    fn a_foreign_ca_verified_or_a_server_not_reached_fails_naming_it() {
        let t = targets("ns");
        let foreign = printed(&[
            ("python urllib", ORG, ENV, "verified"),
            ("python urllib", FOREIGN, ENV, "verified"),
        ]);
        let err = judge(&trust(true, true), &t, &foreign).unwrap_err();
        assert!(err.contains("the lab trusts a foreign CA"), "{err}");
        let unreachable = printed(&[("python urllib", ORG, SYS, "error")]);
        let err = judge(&trust(true, true), &t, &unreachable).unwrap_err();
        assert!(
            err.contains("did not reach it, so it shows nothing about trust"),
            "{err}"
        );
        let nothing_ran = printed(&[("curl", ORG, ENV, "absent")]);
        let err = judge(&trust(true, true), &t, &nothing_ran).unwrap_err();
        assert!(err.contains("python urllib did not run"), "{err}");
        assert!(judge(&trust(true, true), &t, "Traceback").is_err());
    }

    #[test]
    fn the_pod_mounts_the_keys_for_its_own_user_only_and_labs_may_reach_it() {
        let list = manifests("ns", "quay.io/jupyterhub/k8s-hub:4.4.0");
        let items = list["items"].as_array().unwrap();
        let pod = items.iter().find(|i| i["kind"] == "Pod").unwrap();
        assert_eq!(pod["spec"]["volumes"][0]["secret"]["defaultMode"], 0o440);
        assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
        let policy = items.iter().find(|i| i["kind"] == "NetworkPolicy").unwrap();
        assert_eq!(
            policy["spec"]["podSelector"]["matchLabels"]["component"],
            "singleuser-server"
        );
        assert_eq!(policy["spec"]["egress"][0]["ports"][1]["port"], 9443);
    }
}
