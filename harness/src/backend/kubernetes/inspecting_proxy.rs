//! The TLS-inspecting proxy in the cluster: real mitmproxy from hubtrust's
//! runtime image or a listed image (or a vendor's replacement), re-signing
//! with the org's issuing CA and trusting only the run's public root
//! upstream, as the enterprise site runs it on the other backends. Labs reach it through `HTTPS_PROXY`; their org services
//! (the hub, the proxy API, the org-CA server) stay direct, in `NO_PROXY`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::in_cluster::{ExpectedFlow, WireCapture};
use super::names::dns_names;
use super::objects::{pod, service};
use super::ProxyImage;
use crate::error::Result;
use crate::pki::{write_with_mode, OrgPki};

pub const SERVICE: &str = "hubtrust-inspecting-proxy";
pub const CA_SECRET: &str = "hubtrust-inspecting-proxy-ca";
pub const PORT: u16 = 8080;
const CA_DIR: &str = "/etc/hubtrust-proxy-ca";
const CONF_DIR: &str = "/conf";

/// The proxy's signing file (the issuing CA's key and chain, then the
/// root, as mitmproxy's `mitmproxy-ca.pem` takes them) and the roots it
/// trusts upstream, on this machine.
pub fn files(run_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = run_dir.join("outbound");
    (dir.join("mitmproxy-ca.pem"), dir.join("upstream-trust.crt"))
}

/// Writes both; the signing file 0600.
pub fn write_files(org: &OrgPki, run_dir: &Path) -> Result<()> {
    let (signing, upstream) = files(run_dir);
    if let Some(dir) = signing.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| crate::error::HarnessError::io(format!("create {}", dir.display()), e))?;
    }
    let pem = format!("{}{}", org.issuing.signing_pem(), org.root.cert_pem());
    write_with_mode(&signing, pem.as_bytes(), 0o600)?;
    write_with_mode(&upstream, org.public.cert_pem().as_bytes(), 0o644)
}

/// `--from-file` arguments for the proxy's Secret.
pub fn secret_from_files(run_dir: &Path) -> Vec<String> {
    let (signing, upstream) = files(run_dir);
    vec![
        format!("--from-file=mitmproxy-ca.pem={}", signing.display()),
        format!("--from-file=upstream-trust.crt={}", upstream.display()),
    ]
}

/// mitmdump's arguments: a regular proxy on [`PORT`], its CA in
/// `confdir`, upstreams verified against `upstream_trust` alone.
pub fn mitmdump_args(confdir: &Path, upstream_trust: &Path) -> Vec<String> {
    vec![
        "--mode".into(),
        "regular".into(),
        "--listen-port".into(),
        PORT.to_string(),
        "--set".into(),
        format!("confdir={}", confdir.display()),
        "--set".into(),
        format!(
            "ssl_verify_upstream_trusted_ca={}",
            upstream_trust.display()
        ),
    ]
}

/// The proxy's pod, captured from before the first lab's spawn: the
/// lab's fetches through it must show their CONNECTs arriving and the
/// proxy's own connections going on to `hubtrust-internet`. Judged apart
/// from the other captures, since a CONNECT is plain HTTP by design.
pub fn wire_capture() -> WireCapture {
    WireCapture {
        what: "the inspecting proxy".into(),
        selector: format!("app.kubernetes.io/name={SERVICE}"),
        across_spawn: true,
        expected: vec![ExpectedFlow::Into { port: PORT }],
    }
}

/// The proxy's pod and Service. mitmproxy writes beside its CA file, so
/// the file is copied from the read-only Secret into an emptyDir first. A
/// replacement proxy (`[enterprise] proxy_command`) is run as it is, with
/// the three variables the other backends give it.
pub fn manifests(namespace: &str, image: &ProxyImage) -> Vec<Value> {
    let upstream_trust = Path::new(CA_DIR).join("upstream-trust.crt");
    let mut env = vec![json!({ "name": "HOME", "value": CONF_DIR })];
    let command = match &image.replacement {
        Some(replacement) => {
            env.extend(
                [
                    ("HUBTRUST_PROXY_LISTEN", format!("0.0.0.0:{PORT}")),
                    ("HUBTRUST_PROXY_CA", format!("{CA_DIR}/mitmproxy-ca.pem")),
                    (
                        "HUBTRUST_PROXY_UPSTREAM_TRUST",
                        upstream_trust.display().to_string(),
                    ),
                ]
                .map(|(name, value)| json!({ "name": name, "value": value })),
            );
            replacement.clone()
        }
        None => {
            let mut command = vec![
                "sh".to_string(),
                "-c".into(),
                format!("cp {CA_DIR}/mitmproxy-ca.pem {CONF_DIR}/ && exec \"$0\" \"$@\""),
                image.mitmdump.clone(),
            ];
            command.extend(mitmdump_args(Path::new(CONF_DIR), &upstream_trust));
            command.extend(image.extra_args.iter().cloned());
            command
        }
    };
    vec![
        pod(
            SERVICE,
            namespace,
            json!({
                "name": "mitmproxy",
                "image": image.reference,
                "command": command,
                "env": env,
                "ports": [{ "containerPort": PORT }],
                "readinessProbe": { "tcpSocket": { "port": PORT }, "periodSeconds": 2 },
                "volumeMounts": [
                    { "name": "ca", "mountPath": CA_DIR, "readOnly": true },
                    { "name": "conf", "mountPath": CONF_DIR },
                ],
            }),
            json!([
                { "name": "ca", "secret": { "secretName": CA_SECRET, "defaultMode": 0o440 } },
                { "name": "conf", "emptyDir": {} },
            ]),
        ),
        service(SERVICE, SERVICE, namespace, &[("proxy".into(), PORT)]),
    ]
}

/// The egress rule that lets labs reach the proxy.
pub fn lab_egress() -> Value {
    json!({
        "to": [{ "podSelector": { "matchLabels": { "app.kubernetes.io/name": SERVICE } } }],
        "ports": [{ "protocol": "TCP", "port": PORT }],
    })
}

/// The proxy as labs reach it.
pub fn url(namespace: &str) -> String {
    format!("http://{}:{PORT}", dns_names(SERVICE, namespace)[3])
}

/// The lab's proxy variables, both spellings as tools read either: the
/// internet through the proxy; every name of `direct_services`, and
/// loopback, direct.
pub fn lab_env(namespace: &str, direct_services: &[&str]) -> Vec<(String, String)> {
    let url = url(namespace);
    let direct: Vec<String> = direct_services
        .iter()
        .flat_map(|service| dns_names(service, namespace))
        .chain(["localhost".to_string(), "127.0.0.1".to_string()])
        .collect();
    let direct = direct.join(",");
    vec![
        ("HTTPS_PROXY".into(), url.clone()),
        ("https_proxy".into(), url),
        ("NO_PROXY".into(), direct.clone()),
        ("no_proxy".into(), direct),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labs_reach_the_internet_through_the_proxy_and_org_services_directly() {
        let env: std::collections::BTreeMap<_, _> = lab_env(
            "ns",
            &crate::backend::kubernetes::outbound::REACHED_DIRECTLY,
        )
        .into_iter()
        .collect();
        assert_eq!(
            env["HTTPS_PROXY"],
            "http://hubtrust-inspecting-proxy.ns.svc.cluster.local:8080"
        );
        let direct: Vec<&str> = env["NO_PROXY"].split(',').collect();
        for name in [
            "hub",
            "hub.ns.svc.cluster.local",
            "proxy-api.ns.svc",
            "hubtrust-outbound.ns.svc.cluster.local",
            "127.0.0.1",
        ] {
            assert!(direct.contains(&name), "{name} not direct: {direct:?}");
        }
        assert!(
            !env["NO_PROXY"].contains("hubtrust-internet"),
            "the internet would bypass the proxy"
        );
        assert!(
            !direct.iter().any(|d| d.starts_with('.')),
            "a suffix would let the internet servers bypass it"
        );
    }

    #[test]
    fn the_proxy_copies_its_ca_into_a_writable_dir_and_trusts_only_the_public_root_upstream() {
        let image = ProxyImage {
            reference: "hubtrust/runtime:abc".into(),
            mitmdump: "/opt/hubtrust/mitmproxy-venv/bin/mitmdump".into(),
            extra_args: vec![],
            listed: false,
            replacement: None,
        };
        let items = manifests("ns", &image);
        let command = items[0]["spec"]["containers"][0]["command"]
            .as_array()
            .unwrap();
        let line: Vec<&str> = command.iter().filter_map(Value::as_str).collect();
        assert_eq!(line[3], "/opt/hubtrust/mitmproxy-venv/bin/mitmdump");
        assert!(line.contains(&"confdir=/conf"), "{line:?}");
        assert!(
            line.contains(
                &"ssl_verify_upstream_trusted_ca=/etc/hubtrust-proxy-ca/upstream-trust.crt"
            ),
            "{line:?}"
        );
        assert_eq!(items[0]["spec"]["volumes"][1]["emptyDir"], json!({}));
    }

    #[test]
    fn a_replacement_proxy_runs_as_given_with_the_three_variables_of_the_contract() {
        let image = ProxyImage {
            reference: "vendor/proxy:1.0".into(),
            mitmdump: "mitmdump".into(),
            extra_args: vec!["--ignored".into()],
            listed: true,
            replacement: Some(vec!["/opt/vendor/proxy".into(), "--serve".into()]),
        };
        let items = manifests("ns", &image);
        let container = &items[0]["spec"]["containers"][0];
        assert_eq!(
            container["command"],
            json!(["/opt/vendor/proxy", "--serve"])
        );
        let env: std::collections::BTreeMap<&str, &str> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
            .collect();
        assert_eq!(env["HUBTRUST_PROXY_LISTEN"], "0.0.0.0:8080");
        assert_eq!(
            env["HUBTRUST_PROXY_CA"],
            "/etc/hubtrust-proxy-ca/mitmproxy-ca.pem"
        );
        assert_eq!(
            env["HUBTRUST_PROXY_UPSTREAM_TRUST"],
            "/etc/hubtrust-proxy-ca/upstream-trust.crt"
        );
    }
}
