//! hubtrust's outbound test servers in the cluster, and the discriminator
//! a lab runs against them. Reached directly, as org services are: a
//! server with a certificate from the org's issuing CA and one from a
//! foreign CA. Reached through the inspecting proxy (kind only), standing
//! for the internet: a server under the run's public root and three bad
//! upstreams. Each user tool in the lab fetches every server with the
//! bundle its environment names and with the system bundle alone. The org
//! server and the re-signed public server must verify exactly when the
//! stack merges the org bundle into labs (and the ConfigMap exists);
//! everything else must be refused, for the certificate, not for an
//! unreachable server; a bad upstream must never verify.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use super::names::dns_names;
use super::objects::{labels, pod, service};
use super::{inspecting_proxy, OrgTrust, RuntimeImage};
use crate::enterprise::{self, Signer};
use crate::error::{HarnessError, Result};
use crate::pki::{write_with_mode, OrgPki, Usage, Validity};

pub const SERVICE: &str = "hubtrust-outbound";
/// What labs reach without the inspecting proxy: the deployment's own
/// Services and the org-CA server.
pub const REACHED_DIRECTLY: [&str; 4] = ["hub", "proxy-api", "proxy-public", SERVICE];
/// The servers that stand for the internet, reached through the
/// inspecting proxy.
pub const INTERNET_SERVICE: &str = "hubtrust-internet";
pub const TLS_SECRET: &str = "hubtrust-outbound-tls";
const SCRIPT_CONFIGMAP: &str = "hubtrust-outbound-server";
const TLS_DIR: &str = "/etc/hubtrust-outbound";
const SCRIPT_DIR: &str = "/opt/hubtrust-outbound";

/// The server the pod runs, and the cell the lab runs.
pub const SERVER_SCRIPT: &str = include_str!("../../../../fixtures/kubernetes/outbound-server.py");
const FETCH_SCRIPT: &str = include_str!("../../../../fixtures/kubernetes/outbound-fetch.py");

/// Where the lab's image keeps its system bundle (Debian and Ubuntu
/// images, the chart's among them).
pub const SYSTEM_BUNDLE: &str = crate::pki::SYSTEM_STORE;

/// One test server: who signed its certificate and how a lab reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// The org's issuing CA; reached directly, as org services are.
    Org,
    /// A CA nobody trusts; reached directly.
    Foreign,
    /// The run's public root, which the inspecting proxy trusts upstream
    /// and re-signs with the org's issuing CA.
    Public,
    /// Bad upstreams the inspecting proxy must refuse, never re-sign.
    Expired,
    WrongName,
    ForeignUpstream,
}

impl Server {
    const ALL: [Server; 6] = [
        Server::Org,
        Server::Foreign,
        Server::Public,
        Server::Expired,
        Server::WrongName,
        Server::ForeignUpstream,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Server::Org => "org-CA server",
            Server::Foreign => "foreign-CA server",
            Server::Public => "public server via the inspecting proxy",
            Server::Expired => "expired server via the inspecting proxy",
            Server::WrongName => "wrong-name server via the inspecting proxy",
            Server::ForeignUpstream => "foreign-CA server via the inspecting proxy",
        }
    }

    fn port(self) -> u16 {
        match self {
            Server::Org => 8443,
            Server::Foreign => 9443,
            Server::Public => 7443,
            Server::Expired => 7444,
            Server::WrongName => 7445,
            Server::ForeignUpstream => 7446,
        }
    }

    fn file_stem(self) -> &'static str {
        match self {
            Server::Org => "org-server",
            Server::Foreign => "foreign-server",
            Server::Public => "public-server",
            Server::Expired => "expired-server",
            Server::WrongName => "wrong-name-server",
            Server::ForeignUpstream => "foreign-upstream",
        }
    }

    /// Whether the lab reaches it through the inspecting proxy.
    pub fn behind_proxy(self) -> bool {
        !matches!(self, Server::Org | Server::Foreign)
    }

    /// A bad upstream: any outcome but a verified fetch is right.
    fn bad_upstream(self) -> bool {
        matches!(
            self,
            Server::Expired | Server::WrongName | Server::ForeignUpstream
        )
    }

    fn service(self) -> &'static str {
        if self.behind_proxy() {
            INTERNET_SERVICE
        } else {
            SERVICE
        }
    }

    /// The servers a run starts: the proxied ones only with the proxy.
    fn of_run(with_proxy: bool) -> impl Iterator<Item = Server> {
        Self::ALL
            .into_iter()
            .filter(move |s| with_proxy || !s.behind_proxy())
    }
}

/// One server the lab's tools fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub url: String,
    pub server: Server,
    /// What the server answers, so a verified fetch shows it reached it.
    pub marker: String,
}

/// The targets, at their Services' in-cluster names.
pub fn targets(namespace: &str, with_proxy: bool) -> Vec<Target> {
    Server::of_run(with_proxy)
        .map(|server| Target {
            name: server.label().into(),
            url: format!(
                "https://{}:{}/",
                dns_names(server.service(), namespace)[3],
                server.port()
            ),
            server,
            marker: format!("hubtrust-{}", server.file_stem()),
        })
        .collect()
}

/// `targets` as the enterprise feature's steps judge them: who signed
/// what a lab meets at each, and the inspecting proxy for those behind it.
pub fn as_enterprise_targets(targets: &[Target], namespace: &str) -> Vec<enterprise::Target> {
    targets
        .iter()
        .map(|t| enterprise::Target {
            name: t.name.clone(),
            url: t.url.clone(),
            signer: match t.server {
                Server::Org => Signer::Org,
                Server::Foreign => Signer::Foreign,
                Server::Public => Signer::InspectingProxy,
                Server::Expired | Server::WrongName | Server::ForeignUpstream => {
                    Signer::BadUpstreamViaProxy
                }
            },
            proxy: t
                .server
                .behind_proxy()
                .then(|| inspecting_proxy::url(namespace)),
        })
        .collect()
}

/// Each server's certificate and key on this machine, before they go into
/// the Secret: `(server, cert, key)`.
pub fn cert_files(run_dir: &Path, with_proxy: bool) -> Vec<(Server, PathBuf, PathBuf)> {
    let dir = run_dir.join("outbound");
    Server::of_run(with_proxy)
        .map(|s| {
            (
                s,
                dir.join(format!("{}.crt", s.file_stem())),
                dir.join(format!("{}.key", s.file_stem())),
            )
        })
        .collect()
}

/// Issues every server's certificate for the names it is reached at (the
/// wrong-name server's for another); keys 0600, the org server's chain
/// holding its issuing intermediate.
pub fn issue(org: &OrgPki, namespace: &str, run_dir: &Path, with_proxy: bool) -> Result<()> {
    let outbound = dns_names(SERVICE, namespace);
    let internet = dns_names(INTERNET_SERVICE, namespace);
    let elsewhere = ["somewhere-else.hubtrust.invalid".to_string()];
    for (server, cert, key) in cert_files(run_dir, with_proxy) {
        let (ca, names, validity) = match server {
            Server::Org => (&org.issuing, &outbound[..], Validity::fresh(2)),
            Server::Foreign => (&org.foreign, &outbound[..], Validity::fresh(2)),
            Server::Public => (&org.public, &internet[..], Validity::fresh(2)),
            Server::Expired => (&org.public, &internet[..], Validity::expired()),
            Server::WrongName => (&org.public, &elsewhere[..], Validity::fresh(2)),
            Server::ForeignUpstream => (&org.foreign, &internet[..], Validity::fresh(2)),
        };
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let leaf = ca.issue(server.file_stem(), &names, Usage::Server, validity)?;
        if let Some(dir) = cert.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        }
        write_with_mode(&cert, leaf.chain_pem.as_bytes(), 0o644)?;
        write_with_mode(&key, leaf.key_pem().as_bytes(), 0o600)?;
    }
    Ok(())
}

/// `kubectl create secret generic`'s `--from-file` arguments: the keys
/// pass by path, never through a command line or a printed plan.
pub fn secret_from_files(run_dir: &Path, with_proxy: bool) -> Vec<String> {
    cert_files(run_dir, with_proxy)
        .into_iter()
        .flat_map(|(server, cert, key)| {
            let stem = server.file_stem();
            [
                format!("--from-file={stem}.crt={}", cert.display()),
                format!("--from-file={stem}.key={}", key.display()),
            ]
        })
        .collect()
}

/// The server script's arguments with the certificates in `tls_dir`:
/// each server's port, certificate, key and marker.
pub fn server_args(tls_dir: &Path, with_proxy: bool) -> Vec<String> {
    Server::of_run(with_proxy)
        .flat_map(|server| {
            let stem = server.file_stem();
            [
                server.port().to_string(),
                tls_dir.join(format!("{stem}.crt")).display().to_string(),
                tls_dir.join(format!("{stem}.key")).display().to_string(),
                format!("hubtrust-{stem}"),
            ]
        })
        .collect()
}

/// The server pod (the hub's image, for its Python), its script, its
/// Services, and a NetworkPolicy that lets labs reach it and the
/// inspecting proxy: policies add up, so the chart's own singleuser policy
/// stays exactly as rendered.
pub fn manifests(namespace: &str, image: &str, proxy_image: Option<&RuntimeImage>) -> Value {
    let with_proxy = proxy_image.is_some();
    let mut command = vec![
        "python3".to_string(),
        format!("{SCRIPT_DIR}/outbound-server.py"),
    ];
    command.extend(server_args(Path::new(TLS_DIR), with_proxy));
    let ports = |behind_proxy: bool| -> Vec<(String, u16)> {
        Server::of_run(with_proxy)
            .filter(|s| s.behind_proxy() == behind_proxy)
            .map(|s| (s.file_stem().to_string(), s.port()))
            .collect()
    };
    let mut lab_egress = vec![json!({
        "to": [{ "podSelector": { "matchLabels": { "app.kubernetes.io/name": SERVICE } } }],
        "ports": ports(false).iter().map(|(_, p)| json!({ "protocol": "TCP", "port": p })).collect::<Vec<_>>(),
    })];
    let mut items = vec![
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": SCRIPT_CONFIGMAP, "namespace": namespace, "labels": labels(SERVICE) },
            "data": { "outbound-server.py": SERVER_SCRIPT },
        }),
        pod(
            SERVICE,
            namespace,
            json!({
                "name": "servers",
                "image": image,
                "command": command,
                "ports": Server::of_run(with_proxy).map(|s| json!({ "containerPort": s.port() })).collect::<Vec<_>>(),
                "readinessProbe": {
                    "tcpSocket": { "port": Server::Foreign.port() },
                    "periodSeconds": 2,
                },
                "volumeMounts": [
                    { "name": "tls", "mountPath": TLS_DIR, "readOnly": true },
                    { "name": "script", "mountPath": SCRIPT_DIR, "readOnly": true },
                ],
            }),
            json!([
                { "name": "tls", "secret": { "secretName": TLS_SECRET, "defaultMode": 0o440 } },
                { "name": "script", "configMap": { "name": SCRIPT_CONFIGMAP } },
            ]),
        ),
        service(SERVICE, SERVICE, namespace, &ports(false)),
    ];
    if let Some(proxy_image) = proxy_image {
        items.push(service(INTERNET_SERVICE, SERVICE, namespace, &ports(true)));
        items.extend(inspecting_proxy::manifests(namespace, proxy_image));
        lab_egress.push(inspecting_proxy::lab_egress());
    }
    items.push(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": "hubtrust-labs-to-outbound", "namespace": namespace, "labels": labels(SERVICE) },
        "spec": {
            "podSelector": { "matchLabels": { "component": "singleuser-server" } },
            "policyTypes": ["Egress"],
            "egress": lab_egress,
        },
    }));
    json!({ "apiVersion": "v1", "kind": "List", "items": items })
}

/// The kernel cell: the fetch script with its targets in front.
pub fn cell(targets: &[Target], system_bundle: &str) -> String {
    let config = json!({
        "targets": targets
            .iter()
            .map(|t| json!({
                "name": t.name,
                "url": t.url,
                "marker": t.marker,
                "proxied": t.server.behind_proxy(),
            }))
            .collect::<Vec<_>>(),
        "system_bundle": system_bundle,
    });
    // JSON inside a Python string literal (JSON's string escapes are
    // Python's too): JSON's `true` is not Python.
    let literal = serde_json::to_string(&config.to_string()).unwrap_or_default();
    format!("import json\nCONFIG = json.loads({literal})\n{FETCH_SCRIPT}")
}

#[derive(Debug, Deserialize)]
struct Printed {
    fetches: Vec<Fetch>,
}

/// One tool's fetch of one target, as the cell printed it.
#[derive(Debug, Clone, Deserialize)]
pub struct Fetch {
    pub tool: String,
    pub target: String,
    /// `environment` (the lab's own variables) or `system bundle alone`.
    pub bundle: String,
    /// `verified`, `refused-certificate`, `error` or `absent`.
    pub outcome: String,
    pub detail: String,
    /// Through the inspecting proxy: the user name its proxy URL carried,
    /// so its CONNECT can be found on the wire.
    #[serde(default)]
    pub tag: Option<String>,
}

/// The fetches the cell printed.
pub fn fetches(printed: &str) -> std::result::Result<Vec<Fetch>, String> {
    let printed: Printed = serde_json::from_str(printed.trim())
        .map_err(|e| format!("the lab's fetch report is not readable ({e}): {printed}"))?;
    Ok(printed.fetches)
}

const ENVIRONMENT: &str = "environment";

/// The verdict on what the cell printed: Ok with one line per tool that
/// ran, or Err naming every fetch that broke the expectation. A fetch that
/// could not reach its server shows nothing about trust: it fails, named,
/// never passes. Tools the image lacks are said, and python's own must run.
pub fn judge(
    trust: &OrgTrust,
    targets: &[Target],
    printed: &str,
) -> std::result::Result<Vec<String>, String> {
    let fetched = fetches(printed)?;
    let org_trusted = trust.merge_into_labs && trust.configmap_present;
    let mut problems = Vec::new();
    let mut said = Vec::new();
    let mut ran_python = false;
    for fetch in &fetched {
        let server = targets
            .iter()
            .find(|t| t.name == fetch.target)
            .map(|t| t.server)
            .ok_or_else(|| {
                format!(
                    "the lab fetched `{}`, which hubtrust did not ask for",
                    fetch.target
                )
            })?;
        if fetch.outcome == "absent" {
            let line = format!("{} not checked: {}", fetch.tool, fetch.detail);
            if !said.contains(&line) {
                said.push(line);
            }
            continue;
        }
        ran_python |= fetch.tool == "python urllib";
        let with_merged = fetch.bundle == ENVIRONMENT && org_trusted;
        let what = format!(
            "{} fetching the {} with the {}",
            fetch.tool, fetch.target, fetch.bundle
        );
        if server.bad_upstream() {
            if fetch.outcome == "verified" {
                problems.push(if with_merged {
                    format!("{what}: the inspecting proxy re-signed a bad upstream instead of refusing it, and the tool accepted it")
                } else {
                    format!("{what} verified it, though nothing the lab trusts should vouch for it")
                });
            }
            continue;
        }
        let should_verify = with_merged && matches!(server, Server::Org | Server::Public);
        match (fetch.outcome.as_str(), should_verify) {
            ("verified", true) | ("refused-certificate", false) => {}
            ("verified", false) => problems.push(format!(
                "{what} verified it, which it must refuse{}",
                match server {
                    Server::Foreign => ": the lab trusts a foreign CA",
                    Server::Public => ": either it bypassed the inspecting proxy (check the lab's HTTPS_PROXY and NO_PROXY) or the bundle holds the org CA",
                    _ if fetch.bundle != ENVIRONMENT => ": the system bundle holds the org CA",
                    _ => " with the org bundle not merged into labs (the gate is off or the ConfigMap absent)",
                }
            )),
            ("refused-certificate", true) => problems.push(format!(
                "{what} refused its certificate, which the merged bundle must verify: {}",
                fetch.detail
            )),
            _ => problems.push(format!(
                "{what} did not reach it, so it shows nothing about trust: {} (fix: {})",
                fetch.detail,
                if server.behind_proxy() {
                    "the inspecting proxy's pod, the lab's HTTPS_PROXY and the NetworkPolicy hubtrust-labs-to-outbound"
                } else {
                    "the outbound server's pod and the NetworkPolicy hubtrust-labs-to-outbound"
                }
            )),
        }
    }
    if !ran_python {
        problems
            .push("python urllib did not run in the lab: the discriminator showed nothing".into());
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let proxied = targets.iter().any(|t| t.server.behind_proxy());
    let verdict = match (org_trusted, proxied) {
        (true, true) => "with the merged bundle each tool verified the org-CA server and the public server re-signed by the inspecting proxy; with the system bundle alone, the foreign-CA server, and every bad upstream through the proxy, each refused",
        (true, false) => "with the merged bundle each tool verified the org-CA server; with the system bundle alone, and the foreign-CA server always, each refused the certificate",
        (false, true) => "without the org bundle merged, each tool refused the org-CA server and the inspecting proxy's re-signed certificates, and the foreign-CA server's",
        (false, false) => "without the org bundle merged, each tool refused the org-CA server's certificate, and the foreign-CA server's",
    };
    said.insert(0, verdict.to_string());
    Ok(said)
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
    const PUBLIC: &str = "public server via the inspecting proxy";
    const EXPIRED: &str = "expired server via the inspecting proxy";

    fn healthy(org_env: &str) -> String {
        printed(&[
            ("python urllib", ORG, ENV, org_env),
            ("python urllib", ORG, SYS, "refused-certificate"),
            ("python urllib", FOREIGN, ENV, "refused-certificate"),
            ("python urllib", FOREIGN, SYS, "refused-certificate"),
            ("python urllib", PUBLIC, ENV, org_env),
            ("python urllib", PUBLIC, SYS, "refused-certificate"),
            ("python urllib", EXPIRED, ENV, "error"),
            ("python urllib", EXPIRED, SYS, "refused-certificate"),
            ("curl", ORG, ENV, "absent"),
            ("curl", FOREIGN, ENV, "absent"),
        ])
    }

    #[test]
    fn the_targets_are_the_services_in_cluster_names() {
        let direct = targets("ns", false);
        assert_eq!(direct.len(), 2);
        assert_eq!(
            direct[0].url,
            "https://hubtrust-outbound.ns.svc.cluster.local:8443/"
        );
        let all = targets("ns", true);
        assert_eq!(all.len(), 6);
        let public = all.iter().find(|t| t.server == Server::Public).unwrap();
        assert_eq!(
            public.url,
            "https://hubtrust-internet.ns.svc.cluster.local:7443/"
        );
    }

    #[test]
    fn merged_labs_verify_the_org_server_and_the_proxy_and_nothing_else() {
        let t = targets("ns", true);
        let said = judge(&trust(true, true), &t, &healthy("verified")).unwrap();
        assert!(said[0].starts_with("with the merged bundle"), "{said:?}");
        assert_eq!(
            said.iter()
                .filter(|s| s.starts_with("curl not checked"))
                .count(),
            1,
            "{said:?}"
        );
        let err = judge(&trust(true, true), &t, &healthy("refused-certificate")).unwrap_err();
        assert!(err.contains("python urllib fetching the org-CA server with the environment refused its certificate"), "{err}");
        assert!(err.contains("python urllib fetching the public server via the inspecting proxy with the environment refused its certificate"), "{err}");
    }

    #[test]
    fn without_the_gate_or_the_configmap_the_org_ca_must_be_refused() {
        let t = targets("ns", true);
        for trust in [trust(false, true), trust(true, false)] {
            assert!(judge(&trust, &t, &healthy("refused-certificate")).is_ok());
            let err = judge(&trust, &t, &healthy("verified")).unwrap_err();
            assert!(err.contains("verified it, which it must refuse"), "{err}");
        }
    }

    #[test]
    fn a_proxy_that_re_signs_a_bad_upstream_fails_naming_the_tool_and_target() {
        let t = targets("ns", true);
        let resigned = printed(&[
            ("python urllib", ORG, ENV, "verified"),
            ("requests", EXPIRED, ENV, "verified"),
        ]);
        let err = judge(&trust(true, true), &t, &resigned).unwrap_err();
        assert!(err.contains("requests fetching the expired server via the inspecting proxy with the environment: the inspecting proxy re-signed a bad upstream"), "{err}");
    }

    #[test]
    fn a_foreign_ca_verified_or_a_server_not_reached_fails_naming_it() {
        let t = targets("ns", false);
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
        // A target the proxy was not asked for is not judged silently.
        let stray = printed(&[("python urllib", PUBLIC, ENV, "verified")]);
        assert!(judge(&trust(true, true), &t, &stray).is_err());
    }

    #[test]
    fn the_pod_mounts_the_keys_for_its_own_user_only_and_labs_may_reach_it() {
        let runtime = RuntimeImage {
            reference: "hubtrust/runtime:abc".into(),
            mitmdump: "/opt/hubtrust/mitmproxy-venv/bin/mitmdump".into(),
        };
        let list = manifests("ns", "quay.io/jupyterhub/k8s-hub:4.4.0", Some(&runtime));
        let items = list["items"].as_array().unwrap();
        let pod = items
            .iter()
            .find(|i| i["kind"] == "Pod" && i["metadata"]["name"] == SERVICE)
            .unwrap();
        assert_eq!(pod["spec"]["volumes"][0]["secret"]["defaultMode"], 0o440);
        assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
        let policy = items.iter().find(|i| i["kind"] == "NetworkPolicy").unwrap();
        assert_eq!(
            policy["spec"]["podSelector"]["matchLabels"]["component"],
            "singleuser-server"
        );
        let egress = policy["spec"]["egress"].as_array().unwrap();
        // The direct servers, and the proxy; never the internet servers.
        assert_eq!(egress.len(), 2);
        assert_eq!(egress[0]["ports"][1]["port"], 9443);
        assert!(!policy["spec"]["egress"].to_string().contains("7443"));
        let services: Vec<&str> = items
            .iter()
            .filter(|i| i["kind"] == "Service")
            .filter_map(|i| i["metadata"]["name"].as_str())
            .collect();
        assert_eq!(
            services,
            [SERVICE, INTERNET_SERVICE, inspecting_proxy::SERVICE]
        );
        let direct_only = manifests("ns", "hub", None);
        assert!(!direct_only.to_string().contains(INTERNET_SERVICE));
    }
}
