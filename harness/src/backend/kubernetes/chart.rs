//! The Zero to JupyterHub chart's values for one deployment: internal SSL
//! across pods through the chart's documented values (the chart has no
//! `internal_ssl` of its own, z2jh issue 1520), and the org trust bundle
//! merged into each lab's CA bundle as Nebari does it.
//!
//! helm reads JSON values files (YAML is a superset), so the values are
//! rendered as JSON and pinned by snapshot.

use serde_json::{json, Map, Value};

use super::names::{trusted_alt_names, SERVICES};
use super::{inspecting_proxy, outbound, Deployment};
use crate::pki::CA_VARIABLES;
use crate::spec::ContainerRole;

/// Where the hub keeps the internal certificate store: an emptyDir the
/// unpack step fills, because the hub writes each lab's certificate there at
/// spawn time and a Secret mount is read-only.
pub const INTERNAL_SSL_DIR: &str = "/srv/jupyterhub/internal-ssl";
/// Where the Secret holding `ca_certs.tar.gz` is mounted in the hub pod.
pub const CA_CERTS_MOUNT: &str = "/etc/hubtrust/ca-certs";
/// The Secret with `ca_certs.tar.gz`, made before install and kept.
pub const CA_CERTS_SECRET: &str = "hubtrust-ca-certs";
/// The Secret `proxy.https.type: secret` mounts at /etc/chp/tls: the
/// public leaf and CHP's internal certificates, since the proxy pod has no
/// other volume to take them from.
pub const PROXY_TLS_SECRET: &str = "hubtrust-proxy-tls";
pub const CHP_TLS_DIR: &str = "/etc/chp/tls";

/// The ConfigMap trust-manager would project (key `ca-certificates.crt`).
pub const ORG_TRUST_CONFIGMAP: &str = "hubtrust-org-trust";
/// The ConfigMap with hubtrust's merge step (or none: a vendor's step runs
/// from its image).
pub const MERGE_STEP_CONFIGMAP: &str = "hubtrust-merge-step";
const ORG_CA_DIR: &str = "/org-ca";
const MERGED_DIR: &str = "/merged";
const MERGED_MOUNT: &str = "/etc/ssl/certs-extra";

/// Where the labs (and the hub, when it has it) find the merged bundle,
/// and where the five CA variables point.
pub fn merged_bundle_path() -> String {
    format!("{MERGED_MOUNT}/ca-certificates.crt")
}
const MERGE_STEP_DIR: &str = "/hubtrust-merge-step";
const SYSTEM_BUNDLE: &str = crate::pki::SYSTEM_STORE;

/// The files CHP reads from the proxy TLS Secret, by key.
pub const PROXY_TLS_KEYS: [(&str, &str); 8] = [
    ("tls.crt", "public leaf and chain"),
    ("tls.key", "public leaf's key"),
    ("proxy-api.crt", "proxy-api/proxy-api.crt"),
    ("proxy-api.key", "proxy-api/proxy-api.key"),
    ("proxy-api-ca_trust.crt", "proxy-api-ca_trust.crt"),
    ("proxy-client.crt", "proxy-client/proxy-client.crt"),
    ("proxy-client.key", "proxy-client/proxy-client.key"),
    ("proxy-client-ca_trust.crt", "proxy-client-ca_trust.crt"),
];

fn port_of(service: &str) -> u16 {
    SERVICES
        .iter()
        .find(|s| s.service == service)
        .map(|s| s.port)
        .unwrap_or_default()
}

/// `name:tag@digest` split as the chart's `image.name` and `image.tag`
/// (the chart joins them with a colon, so the tag carries the digest).
fn image(reference: &str) -> Value {
    let (name_and_tag, digest) = match reference.split_once('@') {
        Some((left, digest)) => (left, Some(digest)),
        None => (reference, None),
    };
    let slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[slash..].rfind(':') {
        Some(colon) => (
            &name_and_tag[..slash + colon],
            &name_and_tag[slash + colon + 1..],
        ),
        None => (name_and_tag, "latest"),
    };
    let tag = match digest {
        Some(digest) => format!("{tag}@{digest}"),
        None => tag.to_string(),
    };
    json!({ "name": name, "tag": tag, "pullPolicy": "IfNotPresent" })
}

/// CHP's mutual TLS on its API and towards hub and labs: the arguments
/// JupyterHub would give a proxy it starts itself under internal_ssl.
fn chp_tls_flags() -> Vec<String> {
    let file = |key: &str| format!("{CHP_TLS_DIR}/{key}");
    let mut flags = vec![
        format!("--api-ssl-key={}", file("proxy-api.key")),
        format!("--api-ssl-cert={}", file("proxy-api.crt")),
        format!("--api-ssl-ca={}", file("proxy-api-ca_trust.crt")),
        "--api-ssl-request-cert".to_string(),
        "--api-ssl-reject-unauthorized".to_string(),
        format!("--client-ssl-key={}", file("proxy-client.key")),
        format!("--client-ssl-cert={}", file("proxy-client.crt")),
        format!("--client-ssl-ca={}", file("proxy-client-ca_trust.crt")),
        "--client-ssl-request-cert".to_string(),
        "--client-ssl-reject-unauthorized".to_string(),
    ];
    // The public side narrowed to the TLS policy's suites, with the same
    // `--ssl-ciphers` hubtrust's own proxy manifest gives CHP (its default
    // list keeps CBC suites).
    flags.extend(proxy_manifest_args());
    flags.push("--log-level=info".into());
    flags
}

/// The `args` of the built-in proxy manifest, which carry no placeholders.
fn proxy_manifest_args() -> Vec<String> {
    toml::from_str::<toml::Value>(crate::component::builtin::PROXY)
        .ok()
        .and_then(|manifest| manifest.get("args").cloned())
        .and_then(|args| args.try_into().ok())
        .unwrap_or_default()
}

/// The hub's init container that unpacks the kept CAs into the store. z2jh
/// runs the hub pod `runAsNonRoot`: a container whose image defaults to
/// root must name a user, or the pod sticks in CreateContainerConfigError.
fn unpack_internal_ssl(hub_image: &str) -> Value {
    json!({
        "name": "unpack-internal-ssl",
        "image": hub_image,
        "command": ["tar", "-xzf", format!("{CA_CERTS_MOUNT}/ca_certs.tar.gz"), "-C", INTERNAL_SSL_DIR],
        "securityContext": non_root_security_context(),
        "volumeMounts": [
            { "name": "hubtrust-ca-certs", "mountPath": CA_CERTS_MOUNT, "readOnly": true },
            { "name": "hubtrust-internal-ssl", "mountPath": INTERNAL_SSL_DIR },
        ],
    })
}

fn non_root_security_context() -> Value {
    json!({
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "capabilities": { "drop": ["ALL"] },
    })
}

/// The merge step as an init container: the system bundle, the org bundle
/// (absent when the ConfigMap is: it is mounted `optional: true`) and the
/// output, the three arguments every merge step takes.
fn merge_ca_bundle(image: &str, merge_command: Option<&[String]>) -> Value {
    let mut command: Vec<String> = match merge_command {
        Some(vendor) => vendor.to_vec(),
        None => vec!["sh".into(), format!("{MERGE_STEP_DIR}/merge-ca-bundle.sh")],
    };
    command.extend([
        SYSTEM_BUNDLE.to_string(),
        format!("{ORG_CA_DIR}/ca-certificates.crt"),
        format!("{MERGED_DIR}/ca-certificates.crt"),
    ]);
    let mut mounts = vec![
        json!({ "name": "hubtrust-org-trust", "mountPath": ORG_CA_DIR, "readOnly": true }),
        json!({ "name": "hubtrust-merged-bundle", "mountPath": MERGED_DIR }),
    ];
    if merge_command.is_none() {
        mounts.push(
            json!({ "name": "hubtrust-merge-step", "mountPath": MERGE_STEP_DIR, "readOnly": true }),
        );
    }
    json!({
        "name": "merge-ca-bundle",
        "image": image,
        "command": command,
        "securityContext": non_root_security_context(),
        "volumeMounts": mounts,
    })
}

fn org_trust_volumes(merge_command: Option<&[String]>) -> Vec<Value> {
    let mut volumes = vec![
        json!({
            "name": "hubtrust-org-trust",
            "configMap": { "name": ORG_TRUST_CONFIGMAP, "optional": true },
        }),
        json!({ "name": "hubtrust-merged-bundle", "emptyDir": {} }),
    ];
    if merge_command.is_none() {
        volumes.push(json!({
            "name": "hubtrust-merge-step",
            "configMap": { "name": MERGE_STEP_CONFIGMAP, "defaultMode": 0o555 },
        }));
    }
    volumes
}

fn ca_variables() -> Map<String, Value> {
    CA_VARIABLES
        .iter()
        .map(|var| (var.to_string(), json!(merged_bundle_path())))
        .collect()
}

fn merged_bundle_mount() -> Value {
    json!({ "name": "hubtrust-merged-bundle", "mountPath": MERGED_MOUNT, "readOnly": true })
}

/// The values helm installs the chart with.
pub fn values(deployment: &Deployment, merge_command: Option<&[String]>) -> Value {
    let reference = |role: ContainerRole| {
        deployment
            .images
            .get(&role)
            .map(|image| image.reference_for(&deployment.target))
            .unwrap_or_default()
    };
    let (hub_image, lab_image, proxy_image) = (
        reference(ContainerRole::Hub),
        reference(ContainerRole::Lab),
        reference(ContainerRole::Proxy),
    );
    let (hub_image, lab_image, proxy_image) =
        (hub_image.as_str(), lab_image.as_str(), proxy_image.as_str());
    let hub_port = port_of("hub");
    let hub_url = format!("https://hub:{hub_port}");

    let mut hub_volumes = vec![
        json!({ "name": "hubtrust-ca-certs", "secret": { "secretName": CA_CERTS_SECRET, "defaultMode": 0o440 } }),
        json!({ "name": "hubtrust-internal-ssl", "emptyDir": {} }),
    ];
    let mut hub_mounts =
        vec![json!({ "name": "hubtrust-internal-ssl", "mountPath": INTERNAL_SSL_DIR })];
    let mut hub_init = vec![unpack_internal_ssl(hub_image)];
    let mut hub_env = Map::new();

    let mut singleuser = json!({
        "image": image(lab_image),
        "profileList": [],
        "storage": { "type": "none" },
        // The chart's iptables init container needs NET_ADMIN and an image
        // of its own; the metadata server it blocks does not exist on kind.
        "cloudMetadata": { "blockWithIptables": false },
        "startTimeout": 180,
    });

    if let Some(trust) = &deployment.org_trust {
        if trust.merge_into_labs {
            let su = singleuser.as_object_mut().expect("an object");
            su.insert(
                "initContainers".into(),
                json!([merge_ca_bundle(lab_image, merge_command)]),
            );
            let storage = su
                .get_mut("storage")
                .and_then(Value::as_object_mut)
                .expect("storage is an object");
            storage.insert(
                "extraVolumes".into(),
                Value::Array(org_trust_volumes(merge_command)),
            );
            storage.insert("extraVolumeMounts".into(), json!([merged_bundle_mount()]));
            su.insert("extraEnv".into(), Value::Object(ca_variables()));
            // Labs reach the inspecting proxy and the test servers at pod
            // addresses; the chart's singleuser egress policy blocks
            // private ranges unless this rule allows them.
            su.insert(
                "networkPolicy".into(),
                json!({ "egressAllowRules": { "privateIPs": true } }),
            );
        }
        // The org's network: labs reach the internet through the inspecting
        // proxy whether or not the bundle is merged (without it, they
        // cannot verify what the proxy re-signs, which is the point).
        if deployment.inspecting_proxy().is_some() {
            let su = singleuser.as_object_mut().expect("an object");
            let env = su
                .entry("extraEnv")
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("extraEnv is an object");
            for (name, value) in
                inspecting_proxy::lab_env(&deployment.namespace, &outbound::REACHED_DIRECTLY)
            {
                env.insert(name, Value::String(value));
            }
        }
        if trust.hub_included {
            hub_init.push(merge_ca_bundle(hub_image, merge_command));
            hub_volumes.extend(org_trust_volumes(merge_command));
            hub_mounts.push(merged_bundle_mount());
            hub_env.extend(ca_variables());
        }
    }

    // The chart's defaults for the names and paths that the certificates'
    // SANs and hubtrust's requests rely on, said outright so that a
    // deployment's own (`--values`) is named as replaced rather than
    // failing the run in words about a missing Service or a 404: the
    // Services with no prefix, the hub at `/`, and the labs in the run's
    // namespace, which goes with the run. `hub.existingSecret` is off
    // for the same reason: the hub merges that Secret's values over these
    // and prefers its tokens, where hubtrust cannot see them. Profiles
    // are off too: a spawn through the API takes the default profile,
    // whose overrides (an image of its own, above all) would replace the
    // lab the images list names.
    let mut values = json!({
        "fullnameOverride": "",
        "hub": {
            "image": image(hub_image),
            "db": { "type": "sqlite-memory" },
            "baseUrl": "/",
            "existingSecret": "",
            "config": {
                // Applied after the chart's own hub config, which hardcodes
                // http:// for these three URLs.
                "JupyterHub": {
                    "internal_ssl": true,
                    "internal_certs_location": INTERNAL_SSL_DIR,
                    "trusted_alt_names": trusted_alt_names(&deployment.namespace),
                    "hub_bind_url": format!("https://:{hub_port}"),
                    "hub_connect_url": hub_url,
                    // The chart's default, said here so that a deployment's
                    // own authenticator (`--values`) is named as replaced:
                    // the `@wire` steps log in through the form with a
                    // password, and only the dummy authenticator takes
                    // one hubtrust chooses.
                    "authenticator_class": "dummy",
                    "base_url": "/",
                },
                "KubeSpawner": {
                    "namespace": deployment.namespace,
                    "enable_user_namespaces": false,
                    "profile_list": [],
                },
                // The run's own, so that a deployment's (`--values`) is
                // named as replaced rather than turning the log-in away,
                // and so that no other password logs in as the test user.
                "DummyAuthenticator": { "password": deployment.user_password.expose() },
                // A deployment's own allow lists (`Authenticator.allowed_users`,
                // from `--values`) would turn the test user away at log-in.
                "Authenticator": { "allow_all": true },
                "ConfigurableHTTPProxy": {
                    "api_url": format!("https://proxy-api:{}", port_of("proxy-api")),
                    // Read by the chart into its hub Secret, which both the
                    // hub and CHP take it from (CONFIGPROXY_AUTH_TOKEN).
                    "auth_token": deployment.proxy_token.expose(),
                },
            },
            // kubelet's httpGet probes speak plain HTTP and carry no client
            // certificate: against the mTLS-only hub they can never pass.
            // hubtrust waits on the hub itself, through the proxy.
            "livenessProbe": { "enabled": false },
            "readinessProbe": { "enabled": false },
            "initContainers": hub_init,
            "extraVolumes": hub_volumes,
            "extraVolumeMounts": hub_mounts,
            // hubtrust drives the hub through the REST API as this
            // service, with the scopes it has on the other backends.
            "services": {
                "hubtrust": { "api_token": deployment.service_token.expose() },
            },
            "loadRoles": {
                "hubtrust-operator": {
                    "scopes": ["admin:users", "admin:servers", "access:servers", "read:hub", "tokens"],
                    "services": ["hubtrust"],
                },
            },
        },
        "proxy": {
            "service": {
                "type": "NodePort",
                "nodePorts": { "https": deployment.public_node_port },
                "disableHttpPort": true,
            },
            "https": {
                "enabled": true,
                "type": "secret",
                "secret": { "name": PROXY_TLS_SECRET, "crt": "tls.crt", "key": "tls.key" },
            },
            "chp": {
                "image": image(proxy_image),
                "defaultTarget": hub_url,
                "errorTarget": format!("{hub_url}/hub/error"),
                "extraCommandLineFlags": chp_tls_flags(),
            },
        },
        "singleuser": singleuser,
        // The culler calls http://localhost:8081, which the TLS-only hub
        // does not answer.
        "cull": { "enabled": false },
        // Scheduler, placeholders and pre-pullers run images of their own
        // that the cluster would have to pull; none of them is under test.
        "scheduling": {
            "userScheduler": { "enabled": false },
            "userPlaceholder": { "enabled": false },
            "podPriority": { "enabled": false },
        },
        "prePuller": {
            "hook": { "enabled": false },
            "continuous": { "enabled": false },
        },
    });
    // Only when there is some: an empty mapping would replace a
    // deployment's own variables given as a list.
    if !hub_env.is_empty() {
        values["hub"]["extraEnv"] = Value::Object(hub_env);
    }
    for theirs in &deployment.user_values {
        super::user_values::collections_in_their_form(&mut values, &theirs.values);
        super::user_values::keep_their_lists(&mut values, &theirs.values);
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_rides_in_the_chart_tag() {
        assert_eq!(
            image("quay.io/jupyterhub/k8s-hub:4.4.0@sha256:abc"),
            json!({ "name": "quay.io/jupyterhub/k8s-hub", "tag": "4.4.0@sha256:abc", "pullPolicy": "IfNotPresent" })
        );
        assert_eq!(image("localhost:5000/hub")["name"], "localhost:5000/hub");
        assert_eq!(image("localhost:5000/hub")["tag"], "latest");
    }
}
