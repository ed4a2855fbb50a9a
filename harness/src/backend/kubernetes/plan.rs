//! A deployment's plan: the files it writes (kind config, chart values,
//! manifests) and every command in order, then the teardown. `--plan`
//! prints it; a run executes exactly it. No file in a plan holds a private
//! key or a token: Secrets are made from files on this machine by path
//! (`kubectl create secret --from-file`), so printing a plan leaks nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::chart::{
    self, CA_CERTS_SECRET, MERGE_STEP_CONFIGMAP, ORG_TRUST_CONFIGMAP, PROXY_TLS_KEYS,
    PROXY_TLS_SECRET,
};
use super::in_cluster::{self, ExpectedFlow, PlannedProbe, WireCapture};
use super::kind::KindConfig;
use super::names::{public_names, trusted_alt_names};
use super::user_manifests::ObjectName;
use super::{inspecting_proxy, outbound};
use super::{ClusterTarget, Deployment, RELEASE};
use crate::secret::{mask_all, Secret};

/// hubtrust's merge step, mounted into the merge-ca-bundle init container.
const MERGE_SCRIPT: &str = include_str!("../../../../fixtures/enterprise/merge-ca-bundle.sh");

/// One command of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedCommand {
    /// Why it runs, in the operator's words.
    pub purpose: String,
    pub program: String,
    pub args: Vec<String>,
    /// Past this the run stops, saying which command did not finish.
    #[serde(with = "seconds")]
    pub timeout: Duration,
}

mod seconds {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

impl PlannedCommand {
    pub(crate) fn new(
        purpose: impl Into<String>,
        program: &str,
        args: Vec<String>,
        timeout: Duration,
    ) -> Self {
        PlannedCommand {
            purpose: purpose.into(),
            program: program.into(),
            args,
            timeout,
        }
    }

    /// The command as a shell would take it.
    pub fn shell_line(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .map(shell_quote)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The command as an error names it: a script given inline (a
    /// `python3 -c` for a pod) stands as its first line and its length, so
    /// the cause after it stays readable.
    pub fn short_line(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .map(|word| match word.split_once('\n') {
                Some((first, rest)) => format!(
                    "'{} …' ({} more lines)",
                    first.replace('\'', r"'\''"),
                    rest.lines().count()
                ),
                None => shell_quote(word),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+%".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A file the plan writes before its commands read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedFile {
    pub path: PathBuf,
    pub contents: Value,
}

/// What is made on this machine before install, from the trust graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedCertificates {
    /// `ca_certs.tar.gz`: JupyterHub's own `--generate-certs` store.
    pub ca_certs: PathBuf,
    pub trusted_alt_names: Vec<String>,
    /// The public leaf (and its key, 0600) CHP serves on proxy-public.
    pub public_cert: PathBuf,
    pub public_key: PathBuf,
    pub public_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KubernetesPlan {
    pub backend: &'static str,
    pub namespace: String,
    pub certificates: PlannedCertificates,
    pub files: Vec<PlannedFile>,
    pub steps: Vec<PlannedCommand>,
    /// Run once the public side works, from the prober pods
    /// (`docs/kubernetes.md`).
    pub probes: Vec<PlannedProbe>,
    /// How each probe runs in its pod.
    pub probes_run: ProbesRun,
    /// The pods whose own interfaces are captured for wire evidence, once
    /// the probes passed (kind only: their namespaces are on this machine).
    pub wire: Vec<WireCapture>,
    /// The inspecting proxy's pod, captured across the first spawn, when
    /// the run has one (kind with an org CA hubtrust made).
    pub proxy_wire: Option<WireCapture>,
    /// Each pod's secret files: on kind read through its
    /// `/proc/<pid>/root`, elsewhere from inside its own container.
    pub secret_files: Vec<super::secret_modes::PodSecrets>,
    /// What the probes judge each endpoint's TLS by: the stack's policy.
    pub tls_policy: crate::tls_policy::TlsPolicySpec,
    /// Runs on every path out: success, failure, Ctrl-C, and from the
    /// reaper when hubtrust itself is killed.
    pub teardown: Vec<PlannedCommand>,
    /// Values the files carry that a shown plan masks.
    #[serde(skip)]
    pub secrets: Vec<Secret>,
}

/// How `hubtrust probe` runs in a prober pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbesRun {
    /// Entering the pod's network namespace from this machine, which runs
    /// kind's nodes.
    FromThisMachine,
    /// Copied into the pod (`kubectl cp`) and run there (`kubectl exec`):
    /// a cluster elsewhere.
    CopiedIntoThePod,
}

/// Where a copied probe keeps itself, its inputs and its report in the
/// prober pod.
pub const PROBE_DIR_IN_POD: &str = "/tmp/hubtrust";

/// Copies `from` on this machine to `to` in `pod` (kubectl cp needs `tar`
/// in the pod's image; the hub's has it).
pub fn copy_into_pod_command(
    target: &ClusterTarget,
    namespace: &str,
    pod: &str,
    from: &Path,
    to: &str,
) -> PlannedCommand {
    let from = from.display().to_string();
    let to = format!("{pod}:{to}");
    PlannedCommand::new(
        format!("copy hubtrust and the probe's inputs into the pod {pod}"),
        "kubectl",
        kubectl(target, Some(namespace), &["cp", &from, &to]),
        LOAD,
    )
}

/// Copies `from` in `pod` to `to` on this machine.
pub fn copy_from_pod_command(
    target: &ClusterTarget,
    namespace: &str,
    pod: &str,
    from: &str,
    to: &Path,
) -> PlannedCommand {
    let from = format!("{pod}:{from}");
    let to = to.display().to_string();
    PlannedCommand::new(
        format!("copy the probe's report out of the pod {pod}"),
        "kubectl",
        kubectl(target, Some(namespace), &["cp", &from, &to]),
        QUICK,
    )
}

/// Runs `argv` in `pod`'s first container.
pub fn exec_in_pod_command(
    purpose: &str,
    target: &ClusterTarget,
    namespace: &str,
    pod: &str,
    argv: &[String],
) -> PlannedCommand {
    let mut args = vec!["exec", pod, "--"];
    args.extend(argv.iter().map(String::as_str));
    PlannedCommand::new(
        format!("{purpose} in the pod {pod}"),
        "kubectl",
        kubectl(target, Some(namespace), &args),
        LOAD,
    )
}

const KIND_CREATE: Duration = Duration::from_secs(300);
const LOAD: Duration = Duration::from_secs(300);
const QUICK: Duration = Duration::from_secs(60);
const INSTALL: Duration = Duration::from_secs(600);

fn kubectl(target: &ClusterTarget, namespace: Option<&str>, args: &[&str]) -> Vec<String> {
    let mut all = target.client_flags();
    if let Some(ns) = namespace {
        all.extend(["--namespace".to_string(), ns.to_string()]);
    }
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

/// The pod's UID, which names its cgroup.
pub fn pod_uid_command(target: &ClusterTarget, namespace: &str, pod: &str) -> PlannedCommand {
    kubectl_get(
        format!("read the UID of the pod {pod}"),
        target,
        namespace,
        &["pod", pod, "-o", "jsonpath={.metadata.uid}"],
    )
}

/// The pod's own address.
pub fn pod_ip_command(target: &ClusterTarget, namespace: &str, pod: &str) -> PlannedCommand {
    kubectl_get(
        format!("read the address of the pod {pod}"),
        target,
        namespace,
        &["pod", pod, "-o", "jsonpath={.status.podIP}"],
    )
}

/// The name of the first pod `selector` finds.
pub fn pod_named_by_command(
    target: &ClusterTarget,
    namespace: &str,
    selector: &str,
) -> PlannedCommand {
    kubectl_get(
        format!("find the pod -l {selector}"),
        target,
        namespace,
        &[
            "pods",
            "-l",
            selector,
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    )
}

/// Every pod's address, one `name=IP` a line.
pub fn pod_ips_command(target: &ClusterTarget, namespace: &str) -> PlannedCommand {
    kubectl_get(
        "read the pods' addresses".into(),
        target,
        namespace,
        &["pods", "-o", &name_equals("{.status.podIP}")],
    )
}

/// Every Service's ClusterIP, one `name=IP` a line.
pub fn cluster_ips_command(target: &ClusterTarget, namespace: &str) -> PlannedCommand {
    kubectl_get(
        "read the Services' cluster addresses".into(),
        target,
        namespace,
        &["services", "-o", &name_equals("{.spec.clusterIP}")],
    )
}

/// Asks whether what the run made is still there: its kind cluster
/// among kind's, or its namespace on the cluster it did not make.
pub fn leftovers_command(target: &ClusterTarget, namespace: &str) -> PlannedCommand {
    match target {
        ClusterTarget::Kind { .. } => PlannedCommand::new(
            "list the kind clusters",
            "kind",
            vec!["get".into(), "clusters".into()],
            Duration::from_secs(30),
        ),
        ClusterTarget::Existing { .. } => PlannedCommand::new(
            format!("look for the namespace `{namespace}`"),
            "kubectl",
            kubectl(
                target,
                None,
                &[
                    "get",
                    "namespace",
                    namespace,
                    "--ignore-not-found",
                    "-o",
                    "name",
                ],
            ),
            Duration::from_secs(30),
        ),
    }
}

/// What [`leftovers_command`]'s answer shows left behind, if anything.
pub fn left_behind(target: &ClusterTarget, namespace: &str, answer: &str) -> Option<String> {
    let mut lines = answer.lines().map(str::trim);
    match target {
        ClusterTarget::Kind { cluster } => lines.any(|line| line == cluster).then(|| {
            format!("the kind cluster `{cluster}` (fix: `kind delete cluster --name {cluster}`)")
        }),
        ClusterTarget::Existing { .. } => lines.any(|line| !line.is_empty()).then(|| {
            format!("the namespace `{namespace}` (fix: `kubectl delete namespace {namespace}`)")
        }),
    }
}

/// A jsonpath printing `name=<field>` a line for every item.
fn name_equals(field: &str) -> String {
    format!("jsonpath={{range .items[*]}}{{.metadata.name}}={field}{{\"\\n\"}}{{end}}")
}

/// `kubectl get ARGS` in the namespace, read by hubtrust.
fn kubectl_get(
    purpose: String,
    target: &ClusterTarget,
    namespace: &str,
    args: &[&str],
) -> PlannedCommand {
    let mut get = vec!["get"];
    get.extend_from_slice(args);
    PlannedCommand::new(
        purpose,
        "kubectl",
        kubectl(target, Some(namespace), &get),
        Duration::from_secs(60),
    )
}

/// The run's namespace: hubtrust's, this machine's, and in use while a
/// live run holds `run_dir`.
fn namespace(name: &str, made_on: &str, run_dir: &Path) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/managed-by": "hubtrust",
                super::MADE_ON_LABEL: made_on,
            },
            "annotations": { super::RUN_DIR_ANNOTATION: run_dir.display().to_string() },
        },
    })
}

/// `kubectl apply --server-side` of a planned manifest file.
fn apply(
    purpose: &str,
    target: &ClusterTarget,
    namespace: &str,
    manifest: &Path,
) -> PlannedCommand {
    PlannedCommand::new(
        purpose,
        "kubectl",
        kubectl(
            target,
            Some(namespace),
            &[
                "apply",
                "--server-side",
                "--field-manager=hubtrust",
                "-f",
                &manifest.display().to_string(),
            ],
        ),
        QUICK,
    )
}

/// `kubectl create secret generic NAME --from-file=…`: keys pass by path,
/// never through a command line or a printed plan.
fn secret_from_files(
    purpose: &str,
    target: &ClusterTarget,
    namespace: &str,
    name: &str,
    from_files: Vec<String>,
) -> PlannedCommand {
    let mut args = vec!["create", "secret", "generic", name];
    args.extend(from_files.iter().map(String::as_str));
    PlannedCommand::new(
        purpose,
        "kubectl",
        kubectl(target, Some(namespace), &args),
        QUICK,
    )
}

/// `kind load image-archive`: `what` into every node of `cluster`.
fn kind_load(what: &str, archive: &Path, cluster: &str) -> PlannedCommand {
    PlannedCommand::new(
        format!("load {what} into the cluster's nodes"),
        "kind",
        vec![
            "load".into(),
            "image-archive".into(),
            archive.display().to_string(),
            "--name".into(),
            cluster.into(),
        ],
        LOAD,
    )
}

fn config_map(name: &str, namespace: &str, key: &str, contents: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { "app.kubernetes.io/managed-by": "hubtrust" },
        },
        "data": { key: contents },
    })
}

/// Renders the plan. `org_bundle_pem` is the org CA bundle the ConfigMap
/// carries (trust-manager's projection), when there is one.
pub fn plan(
    deployment: &Deployment,
    org_bundle_pem: Option<&str>,
    merge_command: Option<&[String]>,
) -> KubernetesPlan {
    let run = &deployment.run_dir;
    let ns = deployment.namespace.as_str();
    let target = &deployment.target;
    let file = |name: &str| run.join(name);
    let certificates = PlannedCertificates {
        ca_certs: file("ca_certs.tar.gz"),
        trusted_alt_names: trusted_alt_names(ns),
        public_cert: file("public/proxy-public.crt"),
        public_key: file("public/proxy-public.key"),
        public_names: public_names(ns),
    };

    let mut files = Vec::new();
    let mut steps = Vec::new();
    let mut teardown = Vec::new();

    match target {
        ClusterTarget::Kind { cluster } => {
            let config = KindConfig::new(
                cluster,
                &deployment.node_image,
                deployment.public_node_port,
                deployment.public_host_port,
            );
            files.push(PlannedFile {
                path: file("kind-config.json"),
                contents: serde_json::to_value(&config).unwrap_or(Value::Null),
            });
            steps.push(PlannedCommand::new(
                format!("create the kind cluster `{cluster}` (one control-plane, one worker)"),
                "kind",
                vec![
                    "create".into(),
                    "cluster".into(),
                    "--name".into(),
                    cluster.clone(),
                    "--config".into(),
                    file("kind-config.json").display().to_string(),
                    "--wait".into(),
                    "120s".into(),
                ],
                KIND_CREATE,
            ));
            for (role, image) in &deployment.images {
                let reference = &image.tagged;
                let archive = file(&format!("images/{}.tar", role.as_str()));
                steps.push(PlannedCommand::new(
                    format!(
                        "save the {} image for containerd's image store",
                        role.as_str()
                    ),
                    "docker",
                    vec![
                        "save".into(),
                        "--platform".into(),
                        deployment.node_platform.clone(),
                        "--output".into(),
                        archive.display().to_string(),
                        reference.clone(),
                    ],
                    LOAD,
                ));
                steps.push(kind_load(
                    &format!("the {} image", role.as_str()),
                    &archive,
                    cluster,
                ));
            }
            teardown.push(PlannedCommand::new(
                format!("delete the kind cluster `{cluster}`"),
                "kind",
                vec![
                    "delete".into(),
                    "cluster".into(),
                    "--name".into(),
                    cluster.clone(),
                ],
                Duration::from_secs(120),
            ));
        }
        ClusterTarget::Existing { .. } => {
            teardown.push(PlannedCommand::new(
                format!("delete the namespace `{ns}` and everything in it"),
                "kubectl",
                kubectl(
                    target,
                    None,
                    &["delete", "namespace", ns, "--wait=true", "--timeout=180s"],
                ),
                Duration::from_secs(200),
            ));
        }
    }

    let namespace_manifest = file("manifests/namespace.json");
    files.push(PlannedFile {
        path: namespace_manifest.clone(),
        contents: namespace(ns, &deployment.made_on, run),
    });
    steps.push(PlannedCommand::new(
        format!("create the namespace `{ns}` (refused if it exists), labelled with this machine and annotated with the run's directory, for `hubtrust doctor`"),
        "kubectl",
        kubectl(
            target,
            None,
            &["create", "-f", &namespace_manifest.display().to_string()],
        ),
        QUICK,
    ));
    let ca_certs = format!(
        "--from-file=ca_certs.tar.gz={}",
        certificates.ca_certs.display()
    );
    steps.push(PlannedCommand::new(
        "keep the internal CAs in a Secret (ca_certs.tar.gz, made before install)",
        "kubectl",
        kubectl(
            target,
            Some(ns),
            &["create", "secret", "generic", CA_CERTS_SECRET, &ca_certs],
        ),
        QUICK,
    ));
    let internal = file("internal-ssl");
    let proxy_tls: Vec<String> = PROXY_TLS_KEYS
        .iter()
        .map(|(key, source)| {
            let path = match *key {
                "tls.crt" => certificates.public_cert.clone(),
                "tls.key" => certificates.public_key.clone(),
                _ => internal.join(source),
            };
            format!("--from-file={key}={}", path.display())
        })
        .collect();
    let mut secret_args = vec!["create", "secret", "generic", PROXY_TLS_SECRET];
    secret_args.extend(proxy_tls.iter().map(String::as_str));
    steps.push(PlannedCommand::new(
        "give CHP its public leaf and internal certificates (mounted at /etc/chp/tls)",
        "kubectl",
        kubectl(target, Some(ns), &secret_args),
        QUICK,
    ));

    if let Some(trust) = &deployment.org_trust {
        let mut manifests = Vec::new();
        if trust.configmap_present {
            manifests.push(config_map(
                ORG_TRUST_CONFIGMAP,
                ns,
                "ca-certificates.crt",
                org_bundle_pem.unwrap_or_default(),
            ));
        }
        if merge_command.is_none() && trust.merges_anywhere() {
            manifests.push(config_map(
                MERGE_STEP_CONFIGMAP,
                ns,
                "merge-ca-bundle.sh",
                MERGE_SCRIPT,
            ));
        }
        if !manifests.is_empty() {
            let path = file("manifests/org-trust.json");
            files.push(PlannedFile {
                path: path.clone(),
                contents: json!({ "apiVersion": "v1", "kind": "List", "items": manifests }),
            });
            steps.push(apply(
                "project the org CA bundle as trust-manager would, and the merge step",
                target,
                ns,
                &path,
            ));
        }
    }

    let proxy_image = deployment.inspecting_proxy();
    if let (Some(image), ClusterTarget::Kind { cluster }) =
        (proxy_image.filter(|image| !image.listed), target)
    {
        let archive = file("images/runtime.tar");
        steps.push(PlannedCommand::new(
            "save hubtrust's runtime image (the inspecting proxy's) for containerd's image store",
            "docker",
            vec![
                "save".into(),
                "--output".into(),
                archive.display().to_string(),
                image.reference.clone(),
            ],
            LOAD,
        ));
        steps.push(kind_load("hubtrust's runtime image", &archive, cluster));
    }
    if deployment.outbound_servers {
        steps.push(secret_from_files(
            "give the outbound test servers their certificates",
            target,
            ns,
            outbound::TLS_SECRET,
            outbound::secret_from_files(run, proxy_image.is_some()),
        ));
        let path = file("manifests/outbound.json");
        let hub_image = deployment
            .images
            .get(&crate::spec::ContainerRole::Hub)
            .map(|image| image.reference_for(target))
            .unwrap_or_default();
        if proxy_image.is_some() {
            steps.push(secret_from_files(
                "give the inspecting proxy the org's issuing CA and the public root it trusts upstream",
                target,
                ns,
                inspecting_proxy::CA_SECRET,
                inspecting_proxy::secret_from_files(run),
            ));
        }
        files.push(PlannedFile {
            path: path.clone(),
            contents: outbound::manifests(ns, &hub_image, proxy_image),
        });
        steps.push(apply(
            if proxy_image.is_some() {
                "start the org-CA and foreign-CA test servers, the internet servers and the inspecting proxy (mitmproxy) in front of them, and let labs reach the servers and the proxy"
            } else {
                "start the org-CA and foreign-CA test servers, and let labs reach them"
            },
            target,
            ns,
            &path,
        ));
    }

    for theirs in &deployment.user_manifests {
        let objects: Vec<String> = theirs.objects.iter().map(ToString::to_string).collect();
        steps.push(apply(
            &format!(
                "make your own objects the chart values name ({})",
                objects.join(", ")
            ),
            target,
            ns,
            &theirs.path,
        ));
    }

    files.push(PlannedFile {
        path: file("values.json"),
        contents: chart::values(deployment, merge_command),
    });
    let mut helm = vec![
        "install".to_string(),
        RELEASE.into(),
        deployment.chart.name.clone(),
        "--repo".into(),
        deployment.chart.repository.clone(),
        "--version".into(),
        deployment.chart.version.clone(),
        "--namespace".into(),
        ns.into(),
    ];
    // helm merges values files in order: the deployment's own first, then
    // hubtrust's, which the checks need, over them.
    for theirs in &deployment.user_values {
        helm.extend(["--values".into(), theirs.path.display().to_string()]);
    }
    helm.extend(
        [
            "--values",
            &file("values.json").display().to_string(),
            "--wait",
            "--timeout",
            "10m",
        ]
        .map(String::from),
    );
    // helm takes the kubeconfig and context under its own flag names.
    helm.extend(match target {
        ClusterTarget::Kind { cluster } => vec!["--kube-context".into(), format!("kind-{cluster}")],
        ClusterTarget::Existing {
            kubeconfig: Some(path),
        } => vec!["--kubeconfig".into(), path.display().to_string()],
        ClusterTarget::Existing { kubeconfig: None } => Vec::new(),
    });
    steps.push(PlannedCommand::new(
        format!(
            "install the Zero to JupyterHub chart {} (pinned){}",
            deployment.chart.version,
            if deployment.user_values.is_empty() {
                ""
            } else {
                " with your values, hubtrust's over them"
            }
        ),
        "helm",
        helm,
        INSTALL,
    ));
    for deployment_name in ["hub", "proxy"] {
        steps.push(PlannedCommand::new(
            format!("wait until the {deployment_name} Deployment is available"),
            "kubectl",
            kubectl(
                target,
                Some(ns),
                &[
                    "rollout",
                    "status",
                    &format!("deployment/{deployment_name}"),
                    "--timeout=300s",
                ],
            ),
            Duration::from_secs(310),
        ));
    }
    if deployment.outbound_servers {
        let mut wait = vec![
            "wait".to_string(),
            "--for=condition=Ready".into(),
            "--timeout=120s".into(),
            format!("pod/{}", outbound::SERVICE),
        ];
        if proxy_image.is_some() {
            wait.push(format!("pod/{}", inspecting_proxy::SERVICE));
        }
        steps.push(PlannedCommand::new(
            "wait until the outbound test servers answer",
            "kubectl",
            kubectl(
                target,
                Some(ns),
                &wait.iter().map(String::as_str).collect::<Vec<_>>(),
            ),
            Duration::from_secs(130),
        ));
    }

    // A kind cluster's nodes run on this machine, so the probes, captures
    // and file checks enter its pods from here; on another cluster the
    // probes are copied into their pods, the file checks run inside them,
    // and the captures are not made.
    let probes =
        in_cluster::planned_probes(&deployment.user, &deployment.chart.component_versions());
    let (probes_run, pods_here) = match target {
        ClusterTarget::Kind { .. } => (ProbesRun::FromThisMachine, true),
        ClusterTarget::Existing { .. } => (ProbesRun::CopiedIntoThePod, false),
    };
    let probers = file("manifests/probers.json");
    let hub_image = deployment
        .images
        .get(&crate::spec::ContainerRole::Hub)
        .map(|image| image.reference_for(target))
        .unwrap_or_default();
    if !probes.is_empty() {
        files.push(PlannedFile {
            path: probers.clone(),
            contents: in_cluster::prober_pods(ns, &hub_image, &probes),
        });
        steps.push(apply(
            "start the prober pods, one with the chart's network-access labels and one without",
            target,
            ns,
            &probers,
        ));
        let mut wait = vec!["wait", "--for=condition=Ready", "--timeout=120s"];
        let pods: Vec<String> = probes.iter().map(|p| format!("pod/{}", p.pod)).collect();
        wait.extend(pods.iter().map(String::as_str));
        steps.push(PlannedCommand::new(
            "wait until the prober pods run",
            "kubectl",
            kubectl(target, Some(ns), &wait),
            Duration::from_secs(130),
        ));
    }

    KubernetesPlan {
        backend: target.backend_name(),
        namespace: ns.to_string(),
        certificates,
        files,
        steps,
        wire: match pods_here {
            true => in_cluster::planned_wire(&deployment.user),
            false => Vec::new(),
        },
        proxy_wire: (pods_here && deployment.inspecting_proxy().is_some())
            .then(super::inspecting_proxy::wire_capture),
        secret_files: super::secret_modes::planned(&deployment.user),
        probes,
        probes_run,
        tls_policy: deployment.tls_policy.clone(),
        teardown,
        secrets: vec![
            deployment.service_token.clone(),
            deployment.proxy_token.clone(),
            deployment.user_password.clone(),
        ],
    }
}

impl KubernetesPlan {
    /// The objects hubtrust itself makes in the run's namespace before
    /// the chart: its manifests' and its Secrets'.
    pub fn objects_made(&self) -> Vec<ObjectName> {
        let mut made = Vec::new();
        for planned in &self.files {
            let items = match planned.contents.get("items").and_then(Value::as_array) {
                Some(items) => items.clone(),
                None => vec![planned.contents.clone()],
            };
            made.extend(items.iter().filter_map(|object| {
                Some(ObjectName {
                    kind: object.get("kind")?.as_str()?.to_string(),
                    name: object.get("metadata")?.get("name")?.as_str()?.to_string(),
                })
            }));
        }
        for step in &self.steps {
            if let Some(at) = step
                .args
                .windows(3)
                .position(|w| w[0] == "secret" && w[1] == "generic")
            {
                made.push(ObjectName {
                    kind: "Secret".into(),
                    name: step.args[at + 2].clone(),
                });
            }
        }
        made
    }

    /// The plan as `--plan` prints it: what is made here, each file, each
    /// command, the teardown.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# hubtrust plan: --backend {}, namespace {}",
            self.backend, self.namespace
        );
        let _ = writeln!(out, "\n## made on this machine before install");
        let c = &self.certificates;
        let _ = writeln!(
            out,
            "- the internal CAs and certificates (jupyterhub --generate-certs), packed as {}\n  trusted_alt_names: {}",
            c.ca_certs.display(),
            c.trusted_alt_names.join(", ")
        );
        let _ = writeln!(
            out,
            "- the public leaf {} (key {}, 0600)\n  names: {}",
            c.public_cert.display(),
            c.public_key.display(),
            c.public_names.join(", ")
        );
        let _ = writeln!(
            out,
            "- every Service name checked against the certificate answering on it"
        );
        for planned in &self.files {
            let _ = writeln!(out, "\n## file {}", planned.path.display());
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&planned.contents).unwrap_or_default()
            );
        }
        let _ = writeln!(out, "\n## commands, in order");
        for (i, step) in self.steps.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:>2}. {} (at most {} s)\n    {}",
                i + 1,
                step.purpose,
                step.timeout.as_secs(),
                step.shell_line()
            );
        }
        if !self.wire.is_empty() {
            let _ = writeln!(
                out,
                "\n## wire evidence, from the first spawn until before the probes"
            );
            for capture in &self.wire {
                let expected: Vec<String> = capture
                    .expected
                    .iter()
                    .map(|flow| match flow {
                        ExpectedFlow::Into { port } => format!("a connection into port {port}"),
                        ExpectedFlow::To { service, port } => format!("one to {service}:{port}"),
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "- capture eth0 of {}'s pod (-l {}) {}, as root in its network namespace; must see {}",
                    capture.what,
                    capture.selector,
                    if capture.across_spawn {
                        "from before the first lab's spawn"
                    } else {
                        "once it runs"
                    },
                    expected.join(", ")
                );
            }
            let _ = writeln!(
                out,
                "- then the hub API and the lab are asked through the proxy; every flow TLS 1.2 or newer, else fail; evidence that cannot be trusted, or an expected connection not seen, is inconclusive"
            );
        }
        if !self.secret_files.is_empty() {
            // Where the probes run from this machine, the pods' files are
            // here too.
            let how = match self.probes_run {
                ProbesRun::FromThisMachine => "through each pod's /proc/<pid>/root as root",
                ProbesRun::CopiedIntoThePod => {
                    "from inside each component's container (kubectl exec, as the component's user)"
                }
            };
            let _ = writeln!(
                out,
                "\n## secrets, read {how}: no bit for other users, group bits only for a group the component runs in"
            );
            for pod in &self.secret_files {
                let dirs: Vec<String> = pod
                    .dirs
                    .iter()
                    .map(|d| match d.kind {
                        super::secret_modes::Kind::PrivateKeys => format!("{}/*.key", d.path),
                        super::secret_modes::Kind::Everything => format!("{}/*", d.path),
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "- {} (-l {}): {}",
                    pod.what,
                    pod.selector,
                    dirs.join(", ")
                );
            }
        }
        if let Some(capture) = &self.proxy_wire {
            let _ = writeln!(
                out,
                "- capture eth0 of {}'s pod (-l {}) from before the first lab's spawn; each lab fetch through it must show its own tagged CONNECT arriving and the proxy's connection on to hubtrust-internet; judged apart (a CONNECT is plain HTTP by design)",
                capture.what, capture.selector
            );
        }
        let _ = writeln!(
            out,
            "\n## probes from inside the cluster, once the public side works"
        );
        if !self.probes.is_empty() {
            let _ = writeln!(
                out,
                "{}",
                match self.probes_run {
                    ProbesRun::FromThisMachine =>
                        "each probe runs here, as root, in its pod's network namespace",
                    ProbesRun::CopiedIntoThePod =>
                        "each probe is copied into its pod with its inputs (kubectl cp, under /tmp/hubtrust), runs there (kubectl exec), and its report is copied back",
                }
            );
            let _ = writeln!(out, "TLS policy: Mozilla {}", self.tls_policy.name.label());
            for exception in &self.tls_policy.exceptions {
                let _ = writeln!(
                    out,
                    "    except at {}: {} ({})",
                    exception.endpoint,
                    exception.allow.join(", "),
                    exception.reason
                );
            }
        }
        for probe in &self.probes {
            let _ = writeln!(
                out,
                "- from pod {} ({}):",
                probe.pod,
                if probe.labelled {
                    "with the network-access labels"
                } else {
                    "without labels"
                }
            );
            for endpoint in &probe.endpoints {
                let _ = writeln!(
                    out,
                    "    scan and trust matrix: {} (Service {} port {})",
                    endpoint.name, endpoint.service, endpoint.port
                );
            }
            for identity in &probe.identities {
                let _ = writeln!(
                    out,
                    "    identity {}: accepted by {}",
                    identity.label,
                    if identity.accepted_by.is_empty() {
                        "none".to_string()
                    } else {
                        identity.accepted_by.join(", ")
                    }
                );
            }
            for closed in &probe.closed {
                let _ = writeln!(
                    out,
                    "    must not answer: {} (Service {} port {})",
                    closed.name, closed.service, closed.port
                );
            }
            if self.probes_run == ProbesRun::FromThisMachine {
                let _ = writeln!(
                    out,
                    "    must not answer: every other port the first user's lab pod listens on (its kernel's), at the pod's address, read from its /proc/<pid>/net/tcp"
                );
            }
        }
        let _ = writeln!(out, "\n## teardown, on every path out");
        for step in &self.teardown {
            let _ = writeln!(out, "- {}\n    {}", step.purpose, step.shell_line());
        }
        mask_all(&out, &self.secrets.iter().collect::<Vec<_>>())
    }

    /// The files' paths relative to the run directory, for output that
    /// does not depend on where a run lives.
    pub fn relative_to(mut self, run_dir: &Path) -> Self {
        let strip = |p: &mut PathBuf| {
            if let Ok(rest) = p.strip_prefix(run_dir) {
                *p = Path::new("$RUN").join(rest);
            }
        };
        strip(&mut self.certificates.ca_certs);
        strip(&mut self.certificates.public_cert);
        strip(&mut self.certificates.public_key);
        for planned in &mut self.files {
            strip(&mut planned.path);
        }
        let prefix = run_dir.display().to_string();
        for step in self.steps.iter_mut().chain(self.teardown.iter_mut()) {
            for arg in &mut step.args {
                *arg = arg.replace(&prefix, "$RUN");
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kubernetes::{ChartImage, ChartPins, OrgTrust};
    use crate::spec::ContainerRole;

    fn deployment(target: ClusterTarget, org_trust: Option<OrgTrust>) -> Deployment {
        let pins = ChartPins::builtin().expect("pins");
        Deployment {
            target,
            namespace: "hubtrust-run1".into(),
            chart: pins.chart,
            node_image: pins.kind.node_image,
            node_platform: "linux/amd64".into(),
            images: [
                (
                    ContainerRole::Hub,
                    "quay.io/jupyterhub/k8s-hub:4.4.0",
                    "sha256:1111",
                ),
                (
                    ContainerRole::Proxy,
                    "quay.io/jupyterhub/configurable-http-proxy:5.2.0",
                    "sha256:2222",
                ),
                (
                    ContainerRole::Lab,
                    "quay.io/jupyterhub/k8s-singleuser-sample:4.4.0",
                    "sha256:3333",
                ),
            ]
            .map(|(role, tagged, digest)| {
                (
                    role,
                    ChartImage {
                        tagged: tagged.into(),
                        digest: Some(digest.into()),
                        platforms: std::collections::BTreeMap::new(),
                    },
                )
            })
            .into(),
            public_node_port: 30443,
            public_host_port: 18443,
            run_dir: PathBuf::from("/run/hubtrust/run1"),
            made_on: "0123456789abcdef".into(),
            user_values: Vec::new(),
            user_manifests: Vec::new(),
            artifacts_dir: PathBuf::from("hubtrust-in-cluster/hubtrust-run1"),
            service_token: Secret::new("0123456789abcdef0123456789abcdef"),
            proxy_token: Secret::new("fedcba9876543210fedcba9876543210"),
            user_password: Secret::new("5ec2e75ec2e75ec2e75ec2e75ec2e75e"),
            user: "alice".into(),
            tls_policy: Default::default(),
            outbound_servers: org_trust.is_some(),
            proxy_image: org_trust.as_ref().map(|_| super::super::ProxyImage {
                reference: "hubtrust/runtime:0123456789abcdef".into(),
                mitmdump: "/opt/hubtrust/mitmproxy-venv/bin/mitmdump".into(),
                extra_args: vec![],
                listed: false,
                replacement: None,
            }),
            org_trust,
        }
    }

    fn kind() -> ClusterTarget {
        ClusterTarget::Kind {
            cluster: "hubtrust-run1".into(),
        }
    }

    fn nebari() -> Option<OrgTrust> {
        Some(OrgTrust {
            configmap_present: true,
            merge_into_labs: true,
            hub_included: false,
        })
    }

    const ORG_PEM: &str = "-----BEGIN CERTIFICATE-----\n(org root)\n-----END CERTIFICATE-----\n";

    #[test]
    fn what_a_run_left_behind_is_named_with_how_to_remove_it() {
        let kind = ClusterTarget::Kind {
            cluster: "hubtrust-ab12".into(),
        };
        assert_eq!(left_behind(&kind, "ns", "kind\nhubtrust-ab1\n"), None);
        let left = left_behind(&kind, "ns", "hubtrust-ab12\nother\n").expect("left");
        assert!(
            left.contains("kind delete cluster --name hubtrust-ab12"),
            "{left}"
        );
        let existing = ClusterTarget::Existing { kubeconfig: None };
        assert_eq!(left_behind(&existing, "hubtrust-x", "\n"), None);
        let left = left_behind(&existing, "hubtrust-x", "namespace/hubtrust-x\n").expect("left");
        assert!(
            left.contains("kubectl delete namespace hubtrust-x"),
            "{left}"
        );
        let asks = leftovers_command(&existing, "hubtrust-x");
        assert_eq!(
            asks.shell_line(),
            "kubectl get namespace hubtrust-x --ignore-not-found -o name"
        );
    }

    /// The namespace the plan creates is what `doctor` reads back: this
    /// machine's, in use while its run holds the directory, left after.
    #[test]
    fn the_planned_namespace_is_judged_left_only_once_its_run_is_gone() {
        let parent = tempfile::tempdir().unwrap();
        let existing = ClusterTarget::Existing { kubeconfig: None };
        let mut live = deployment(existing, None);
        live.run_dir = super::super::run_dir(parent.path(), &live.target, "run1");
        let held = crate::workdir::RunDir::create_at(&live.run_dir).unwrap();
        let planned = plan(&live, None, None);
        let namespace = planned
            .files
            .iter()
            .find(|f| f.path.ends_with("manifests/namespace.json"))
            .expect("the namespace's manifest");
        assert!(planned.steps.iter().any(|step| step
            .shell_line()
            .contains(&format!("create -f {}", namespace.path.display()))));
        let listed = json!({ "items": [namespace.contents] }).to_string();
        let judged = |machine| super::super::namespaces_left(&listed, machine).unwrap();
        assert!(judged(Some("0123456789abcdef")).left.is_empty());
        drop(held);
        assert_eq!(judged(Some("0123456789abcdef")).left, ["hubtrust-run1"]);
        assert_eq!(
            judged(Some("fedcba9876543210")).elsewhere,
            ["hubtrust-run1"]
        );
        assert_eq!(judged(None).elsewhere, ["hubtrust-run1"]);
    }

    #[test]
    fn a_kind_plan_for_the_core_profile() {
        let plan = plan(&deployment(kind(), None), None, None)
            .relative_to(Path::new("/run/hubtrust/run1"));
        insta::assert_snapshot!("kind_core_plan", plan.render());
    }

    #[test]
    fn the_values_with_the_org_bundle_for_labs_and_hub() {
        let trust = Some(OrgTrust {
            configmap_present: true,
            merge_into_labs: true,
            hub_included: true,
        });
        let values = chart::values(&deployment(kind(), trust), None);
        insta::assert_json_snapshot!("values_org_trust_hub_too", values);
    }

    #[test]
    fn an_existing_cluster_gets_a_namespace_and_loses_only_that() {
        let target = ClusterTarget::Existing {
            kubeconfig: Some(PathBuf::from("/home/op/.kube/ci")),
        };
        let plan = plan(&deployment(target, nebari()), Some(ORG_PEM), None);
        assert!(plan
            .files
            .iter()
            .all(|f| !f.path.ends_with("kind-config.json")));
        assert!(!plan
            .steps
            .iter()
            .any(|s| s.program == "kind" || s.program == "docker"));
        let teardown: Vec<String> = plan
            .teardown
            .iter()
            .map(PlannedCommand::shell_line)
            .collect();
        assert_eq!(
            teardown,
            ["kubectl --kubeconfig /home/op/.kube/ci delete namespace hubtrust-run1 --wait=true --timeout=180s"]
        );
        let helm = plan
            .steps
            .iter()
            .find(|s| s.program == "helm")
            .expect("helm install");
        assert!(
            helm.shell_line().contains("--kubeconfig /home/op/.kube/ci"),
            "{}",
            helm.shell_line()
        );
    }

    #[test]
    fn an_enterprise_plan_starts_the_outbound_servers_with_their_keys_passed_by_path() {
        let plan = plan(&deployment(kind(), nebari()), Some(ORG_PEM), None);
        let lines: Vec<String> = plan.steps.iter().map(PlannedCommand::shell_line).collect();
        let secret = lines
            .iter()
            .find(|l| l.contains("create secret generic hubtrust-outbound-tls"))
            .expect("the outbound servers' Secret");
        assert!(
            secret
                .contains("--from-file=org-server.key=/run/hubtrust/run1/outbound/org-server.key"),
            "{secret}"
        );
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no step with {needle}: {lines:#?}"))
        };
        assert!(at("manifests/outbound.json") > at("hubtrust-outbound-tls"));
        // The inspecting proxy's image is loaded, its CA passed by path.
        assert!(
            at("kind load image-archive /run/hubtrust/run1/images/runtime.tar")
                > at(
                    "docker save --output /run/hubtrust/run1/images/runtime.tar hubtrust/runtime:"
                )
        );
        assert!(lines[at("hubtrust-inspecting-proxy-ca")]
            .contains("--from-file=mitmproxy-ca.pem=/run/hubtrust/run1/outbound/mitmproxy-ca.pem"));
        assert!(lines[at("pod/hubtrust-outbound")].contains("pod/hubtrust-inspecting-proxy"));
        assert!(at("pod/hubtrust-outbound") > at("deployment/proxy"));
        assert!(plan
            .files
            .iter()
            .any(|f| f.path.ends_with("manifests/outbound.json")));
        let core = super::plan(&deployment(kind(), None), None, None);
        assert!(!core.render().contains("hubtrust-outbound"));
    }

    #[test]
    fn a_listed_mitmproxy_image_runs_the_inspecting_proxy_with_the_stacks_extra_arguments() {
        let mut d = deployment(kind(), nebari());
        d.images.insert(
            ContainerRole::Mitmproxy,
            ChartImage {
                tagged: "docker.io/mitmproxy/mitmproxy:11.0.2".into(),
                digest: Some("sha256:4444".into()),
                platforms: Default::default(),
            },
        );
        d.proxy_image = Some(super::super::ProxyImage {
            reference: "docker.io/mitmproxy/mitmproxy:11.0.2".into(),
            mitmdump: "mitmdump".into(),
            extra_args: vec!["--set".into(), "connection_strategy=lazy".into()],
            listed: true,
            replacement: None,
        });
        let plan = plan(&d, Some(ORG_PEM), None);
        let rendered = plan.render();
        // Loaded with the chart's images; hubtrust's runtime image is
        // neither saved nor loaded.
        assert!(rendered.contains("images/mitmproxy.tar docker.io/mitmproxy/mitmproxy:11.0.2"));
        assert!(!rendered.contains("runtime.tar"), "{rendered}");
        let outbound = plan
            .files
            .iter()
            .find(|f| f.path.ends_with("manifests/outbound.json"))
            .expect("outbound manifests");
        let proxy = outbound.contents["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == "Pod" && o["metadata"]["name"] == "hubtrust-inspecting-proxy")
            .expect("the proxy's pod");
        let container = &proxy["spec"]["containers"][0];
        assert_eq!(container["image"], "docker.io/mitmproxy/mitmproxy:11.0.2");
        let command: Vec<&str> = container["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(command[3], "mitmdump");
        assert_eq!(
            command[command.len() - 2..],
            ["--set", "connection_strategy=lazy"]
        );
    }

    #[test]
    fn the_org_bundle_configmap_is_the_one_trust_manager_projects() {
        let plan = plan(&deployment(kind(), nebari()), Some(ORG_PEM), None);
        let manifests = plan
            .files
            .iter()
            .find(|f| f.path.ends_with("manifests/org-trust.json"))
            .expect("org trust manifests");
        insta::assert_json_snapshot!("org_trust_manifests", manifests.contents);
    }

    #[test]
    fn a_missing_configmap_still_mounts_optionally_and_merges() {
        let trust = Some(OrgTrust {
            configmap_present: false,
            merge_into_labs: true,
            hub_included: false,
        });
        let d = deployment(kind(), trust);
        let plan = plan(&d, None, None);
        let manifests = plan
            .files
            .iter()
            .find(|f| f.path.ends_with("manifests/org-trust.json"))
            .expect("the merge step's ConfigMap");
        let kinds: Vec<&str> = manifests.contents["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|m| m["metadata"]["name"].as_str())
            .collect();
        assert_eq!(kinds, [MERGE_STEP_CONFIGMAP]);
        let values = chart::values(&d, None);
        let volumes = values["singleuser"]["storage"]["extraVolumes"]
            .as_array()
            .expect("volumes");
        assert_eq!(volumes[0]["configMap"]["optional"], true);
    }

    #[test]
    fn a_vendor_merge_step_replaces_the_script_and_takes_the_three_paths() {
        let vendor = vec![
            "sh".to_string(),
            "-c".into(),
            "cat \"$0\" \"$1\" > \"$2\"".into(),
        ];
        let values = chart::values(&deployment(kind(), nebari()), Some(&vendor));
        let init = &values["singleuser"]["initContainers"][0];
        assert_eq!(
            init["command"],
            json!([
                "sh",
                "-c",
                "cat \"$0\" \"$1\" > \"$2\"",
                "/etc/ssl/certs/ca-certificates.crt",
                "/org-ca/ca-certificates.crt",
                "/merged/ca-certificates.crt"
            ])
        );
        let plan = plan(&deployment(kind(), nebari()), Some(ORG_PEM), Some(&vendor));
        let text = plan.render();
        assert!(
            !text.contains("merge-ca-bundle.sh"),
            "hubtrust's script is not shipped with a vendor's step"
        );
    }

    #[test]
    fn the_gate_is_off_by_default_labs_keep_their_environment() {
        let trust = Some(OrgTrust {
            configmap_present: true,
            merge_into_labs: false,
            hub_included: false,
        });
        let values = chart::values(&deployment(kind(), trust), None);
        assert!(values["singleuser"].get("initContainers").is_none());
        // The org's network stays (labs still go through the inspecting
        // proxy); the org bundle's variables are not set at all.
        let env = values["singleuser"]["extraEnv"].as_object().unwrap();
        let names: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["HTTPS_PROXY", "NO_PROXY", "https_proxy", "no_proxy"]
        );
    }

    #[test]
    fn no_plan_file_or_command_carries_key_material() {
        let plan = plan(&deployment(kind(), nebari()), Some(ORG_PEM), None);
        let text = plan.render();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(text.contains("--from-file=tls.key="));
    }

    #[test]
    fn your_own_objects_go_in_before_the_chart_and_hubtrusts_own_names_are_known() {
        let mut d = deployment(kind(), nebari());
        d.user_manifests = vec![crate::backend::kubernetes::user_manifests::UserManifests {
            path: PathBuf::from("/repo/objects.yaml"),
            objects: vec![ObjectName {
                kind: "ConfigMap".into(),
                name: "hub-templates".into(),
            }],
        }];
        let plan = plan(&d, Some(ORG_PEM), None);
        let at = |purpose: &str| {
            plan.steps
                .iter()
                .position(|step| step.purpose.contains(purpose))
                .unwrap_or_else(|| panic!("no step {purpose}"))
        };
        let theirs = at("make your own objects the chart values name (ConfigMap/hub-templates)");
        assert!(at("create the namespace") < theirs);
        assert!(theirs < at("install the Zero to JupyterHub chart"));
        assert!(plan.steps[theirs]
            .shell_line()
            .contains("apply --server-side --field-manager=hubtrust -f /repo/objects.yaml"));
        let made: Vec<String> = plan
            .objects_made()
            .iter()
            .map(ToString::to_string)
            .collect();
        for ours in [
            format!("Secret/{CA_CERTS_SECRET}"),
            format!("Secret/{PROXY_TLS_SECRET}"),
            format!("ConfigMap/{ORG_TRUST_CONFIGMAP}"),
            format!("Secret/{}", outbound::TLS_SECRET),
        ] {
            assert!(made.contains(&ours), "{ours} not in {made:?}");
        }
        assert!(!made.iter().any(|name| name.contains("hub-templates")));
    }

    #[test]
    fn a_shown_plan_masks_the_tokens_the_values_carry() {
        let plan = plan(&deployment(kind(), None), None, None);
        let values = plan
            .files
            .iter()
            .find(|f| f.path.ends_with("values.json"))
            .expect("values");
        assert_eq!(
            values.contents["hub"]["services"]["hubtrust"]["api_token"],
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            values.contents["hub"]["config"]["ConfigurableHTTPProxy"]["auth_token"],
            "fedcba9876543210fedcba9876543210"
        );
        assert_eq!(
            values.contents["hub"]["config"]["DummyAuthenticator"]["password"],
            "5ec2e75ec2e75ec2e75ec2e75ec2e75e"
        );
        let text = plan.render();
        for (token, masked) in [
            ("0123456789abcdef0123456789abcdef", "0123…(32 chars)"),
            ("fedcba9876543210fedcba9876543210", "fedc…(32 chars)"),
            ("5ec2e75ec2e75ec2e75ec2e75ec2e75e", "5ec2…(32 chars)"),
        ] {
            assert!(!text.contains(token), "{text}");
            assert!(text.contains(masked), "{text}");
        }
    }

    #[test]
    fn the_lookups_at_run_time_read_one_name_and_address_a_line() {
        let target = ClusterTarget::Kind {
            cluster: "c".into(),
        };
        let services = cluster_ips_command(&target, "ns");
        assert_eq!(
            services.args,
            [
                "--context",
                "kind-c",
                "--namespace",
                "ns",
                "get",
                "services",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.spec.clusterIP}{\"\\n\"}{end}"
            ]
        );
        let pods = pod_ips_command(&target, "ns");
        assert_eq!(
            pods.args.last().unwrap(),
            "jsonpath={range .items[*]}{.metadata.name}={.status.podIP}{\"\\n\"}{end}"
        );
        let hub = pod_named_by_command(&target, "ns", "component=hub");
        assert_eq!(
            hub.args[4..],
            [
                "get",
                "pods",
                "-l",
                "component=hub",
                "-o",
                "jsonpath={.items[0].metadata.name}"
            ]
        );
    }
}
