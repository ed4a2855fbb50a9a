//! hubtrust's outbound test servers in the cluster, and the discriminator
//! a lab runs against them. Reached directly, as org services are: a
//! server with a certificate from the org's issuing CA and one from a
//! foreign CA. Reached through the inspecting proxy, when one runs, standing
//! for the internet: a server under the run's public root and three bad
//! upstreams. Each user tool in the lab fetches every server with the
//! bundle its environment names and with the system bundle alone. The org
//! server and the re-signed public server must verify exactly when the
//! stack merges the org bundle into labs (and the ConfigMap exists);
//! everything else must be refused, for the certificate, not for an
//! unreachable server; a bad upstream must never verify.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::names::dns_names;
use super::objects::{labels, pod, service};
use super::{inspecting_proxy, OrgTrust, ProxyImage};
use crate::enterprise::{self, Signer, ToolRun};
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
pub fn manifests(namespace: &str, image: &str, proxy_image: Option<&ProxyImage>) -> Value {
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

/// The kernel cell: the enterprise site's discriminator, every tool of its
/// table against every target, with the lab's own bundle (its
/// environment) and with the system bundle alone.
pub fn cell(targets: &[Target], namespace: &str) -> String {
    enterprise::driver_code(
        &as_enterprise_targets(targets, namespace),
        Path::new(SYSTEM_BUNDLE),
    )
}

/// The verdict on the lab's tool runs, by the enterprise trust table as on
/// the other backends: Ok with what was shown, or Err naming every run
/// that broke it. Without the org bundle in the lab (the gate off, or the
/// ConfigMap absent) the lab's own bundle must do what the system bundle
/// does. A run that did not reach its server shows nothing about trust:
/// it fails, named, never passes. Tools the image lacks are said; python's
/// own always runs.
pub fn judge(
    trust: &OrgTrust,
    targets: &[enterprise::Target],
    runs: &[ToolRun],
) -> std::result::Result<Vec<String>, String> {
    let org_trusted = trust.merge_into_labs && trust.configmap_present;
    let judgement = enterprise::judge_with(targets, runs, org_trusted)?;
    let expected_runs = enterprise::full_table_runs(targets);
    if runs.len() != expected_runs {
        return Err(format!(
            "inconclusive: {} of {expected_runs} tool runs reported",
            runs.len()
        ));
    }
    if judgement.absent.contains("python urllib") {
        return Err(
            "python urllib did not run in the lab: the discriminator showed nothing".into(),
        );
    }
    if !judgement.differences.is_empty() {
        return Err(format!(
            "{} (fix: a run that did not reach its server shows nothing about trust: check the outbound servers' and the inspecting proxy's pods, the lab's HTTPS_PROXY and NO_PROXY, and the NetworkPolicy hubtrust-labs-to-outbound; a verdict on a certificate: the lab's CA variables and merged bundle against docs/kubernetes.md's recipe)",
            judgement.differences.join("; ")
        ));
    }
    let proxied = targets.iter().any(|t| t.proxy.is_some());
    let verdict = match (org_trusted, proxied) {
        (true, true) => "with the merged bundle each tool verified the org-CA server and the public server re-signed by the inspecting proxy; with the system bundle alone, the foreign-CA server, and every bad upstream through the proxy, each refused",
        (true, false) => "with the merged bundle each tool verified the org-CA server; with the system bundle alone, and the foreign-CA server always, each refused the certificate",
        (false, true) => "without the org bundle merged, each tool refused the org-CA server and the inspecting proxy's re-signed certificates, and the foreign-CA server's",
        (false, false) => "without the org bundle merged, each tool refused the org-CA server's certificate, and the foreign-CA server's",
    };
    let mut said = vec![verdict.to_string()];
    said.extend(
        judgement
            .absent
            .iter()
            .map(|tool| format!("{tool} not checked: it is not in the lab")),
    );
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enterprise::Bundle;

    fn trust(merge: bool, configmap: bool) -> OrgTrust {
        OrgTrust {
            configmap_present: configmap,
            merge_into_labs: merge,
            hub_included: false,
        }
    }

    const REFUSED: &str = "certificate verify failed: unable to get local issuer certificate";

    /// Every tool × target × bundle, each answering as `answer` says: `ok`,
    /// or a failure whose detail is the given text.
    fn table(
        targets: &[enterprise::Target],
        answer: impl Fn(&str, &enterprise::Target, Bundle) -> &'static str,
    ) -> Vec<ToolRun> {
        let mut runs = Vec::new();
        for tool in enterprise::TOOLS {
            for target in targets {
                for bundle in [Bundle::Merged, Bundle::System] {
                    let said = answer(tool, target, bundle);
                    runs.push(ToolRun {
                        tool: tool.into(),
                        target: target.name.clone(),
                        bundle,
                        outcome: match said {
                            "ok" | "absent" => said.into(),
                            _ => "failed".into(),
                        },
                        detail: said.into(),
                        tag: None,
                    });
                }
            }
        }
        runs
    }

    /// What a healthy lab's tools answer, with the org bundle merged or
    /// not.
    fn healthy(org_merged: bool) -> impl Fn(&str, &enterprise::Target, Bundle) -> &'static str {
        move |_, target, bundle| match target.signer {
            Signer::Org | Signer::InspectingProxy if org_merged && bundle == Bundle::Merged => "ok",
            _ => REFUSED,
        }
    }

    fn all(ns: &str) -> Vec<enterprise::Target> {
        as_enterprise_targets(&targets(ns, true), ns)
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
    fn as_the_enterprise_table_sees_them_only_the_internet_is_behind_the_proxy() {
        let signers: Vec<(Signer, bool)> = all("ns")
            .iter()
            .map(|t| (t.signer, t.proxy.is_some()))
            .collect();
        assert_eq!(
            signers,
            [
                (Signer::Org, false),
                (Signer::Foreign, false),
                (Signer::InspectingProxy, true),
                (Signer::BadUpstreamViaProxy, true),
                (Signer::BadUpstreamViaProxy, true),
                (Signer::BadUpstreamViaProxy, true),
            ]
        );
        assert_eq!(
            all("ns")[2].proxy.as_deref(),
            Some("http://hubtrust-inspecting-proxy.ns.svc.cluster.local:8080")
        );
    }

    #[test]
    fn merged_labs_verify_the_org_server_and_the_proxy_and_nothing_else() {
        let t = all("ns");
        let said = judge(&trust(true, true), &t, &table(&t, healthy(true))).unwrap();
        assert!(said[0].starts_with("with the merged bundle"), "{said:?}");
        let err = judge(&trust(true, true), &t, &table(&t, healthy(false))).unwrap_err();
        assert!(
            err.contains("python urllib → org-CA server with the merged bundle: expected ok, got unknown-issuer"),
            "{err}"
        );
        assert!(
            err.contains("curl → public server via the inspecting proxy with the merged bundle: expected ok, got unknown-issuer"),
            "{err}"
        );
    }

    #[test]
    fn without_the_gate_or_the_configmap_the_org_ca_must_be_refused() {
        let t = all("ns");
        for trust in [trust(false, true), trust(true, false)] {
            let said = judge(&trust, &t, &table(&t, healthy(false))).unwrap();
            assert!(
                said[0].starts_with("without the org bundle merged"),
                "{said:?}"
            );
            let err = judge(&trust, &t, &table(&t, healthy(true))).unwrap_err();
            assert!(
                err.contains(
                    "node → org-CA server with the merged bundle: expected unknown-issuer, got ok"
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn a_proxy_that_re_signs_a_bad_upstream_fails_naming_the_tool_and_target() {
        let t = all("ns");
        let resigned = table(&t, |tool, target, bundle| match (tool, target.signer) {
            ("requests", Signer::BadUpstreamViaProxy) if bundle == Bundle::Merged => "ok",
            _ => healthy(true)(tool, target, bundle),
        });
        let err = judge(&trust(true, true), &t, &resigned).unwrap_err();
        assert!(
            err.contains("requests → expired server via the inspecting proxy with the merged bundle: the inspecting proxy re-signed a bad upstream instead of refusing it"),
            "{err}"
        );
    }

    #[test]
    fn a_foreign_ca_verified_a_server_not_reached_or_a_short_table_fails_naming_it() {
        let t = as_enterprise_targets(&targets("ns", false), "ns");
        let foreign = table(&t, |tool, target, bundle| match target.signer {
            Signer::Foreign => "ok",
            _ => healthy(true)(tool, target, bundle),
        });
        let err = judge(&trust(true, true), &t, &foreign).unwrap_err();
        assert!(
            err.contains(
                "git → foreign-CA server with the merged bundle: expected unknown-issuer, got ok"
            ),
            "{err}"
        );
        let unreachable = table(&t, |tool, target, bundle| match target.signer {
            Signer::Org => "connect: Network is unreachable",
            _ => healthy(true)(tool, target, bundle),
        });
        let err = judge(&trust(true, true), &t, &unreachable).unwrap_err();
        assert!(err.contains("got network-unreachable"), "{err}");
        assert!(err.contains("shows nothing about trust"), "{err}");
        let mut short = table(&t, healthy(true));
        short.pop();
        let err = judge(&trust(true, true), &t, &short).unwrap_err();
        assert!(err.starts_with("inconclusive: 23 of 24"), "{err}");
        let no_python = table(&t, |tool, target, bundle| match tool {
            "python urllib" => "absent",
            _ => healthy(true)(tool, target, bundle),
        });
        let err = judge(&trust(true, true), &t, &no_python).unwrap_err();
        assert!(err.contains("python urllib did not run"), "{err}");
        let no_node = table(&t, |tool, target, bundle| match tool {
            "node" => "absent",
            _ => healthy(true)(tool, target, bundle),
        });
        let said = judge(&trust(true, true), &t, &no_node).unwrap();
        assert!(
            said.contains(&"node not checked: it is not in the lab".to_string()),
            "{said:?}"
        );
        // A run of a target hubtrust did not ask for is not judged silently.
        let mut stray = table(&t, healthy(true));
        stray[0].target = "elsewhere".into();
        assert!(judge(&trust(true, true), &t, &stray).is_err());
    }

    #[test]
    fn the_pod_mounts_the_keys_for_its_own_user_only_and_labs_may_reach_it() {
        let runtime = ProxyImage {
            reference: "hubtrust/runtime:abc".into(),
            mitmdump: "/opt/hubtrust/mitmproxy-venv/bin/mitmdump".into(),
            extra_args: vec![],
            listed: false,
            replacement: None,
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
