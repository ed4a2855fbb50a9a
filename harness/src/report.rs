//! The results model and its writers: JUnit XML (quick-junit), JSON and
//! Markdown. Structured results stay apart from terminal output.

use std::path::Path;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use serde::{Deserialize, Serialize};

use crate::error::{HarnessError, Result};
use crate::inventory::Inventory;
use crate::matrix::TrustMatrix;
use crate::probe::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Passed,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub feature: String,
    pub scenario: String,
    pub tags: Vec<String>,
    pub status: Status,
    /// The failing step and why, when it failed.
    pub failure: Option<String>,
    pub seconds: f64,
    /// Where the scenario's artifacts were kept, if they were.
    pub artifacts: Option<String>,
}

/// A server checked against one of its real clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainCheck {
    pub server: String,
    pub client: String,
    pub bundle: String,
    pub server_name: String,
    pub verdict: Verdict,
    pub detail: String,
    pub protocol: Option<String>,
    pub cipher: Option<String>,
    pub chain: Vec<String>,
}

impl ChainCheck {
    /// `server` as `client` reached it, verifying with `bundle` for
    /// `server_name`: what the probe saw.
    pub fn of(
        server: String,
        client: String,
        bundle: String,
        server_name: String,
        outcome: crate::probe::ProbeOutcome,
    ) -> Self {
        ChainCheck {
            server,
            client,
            bundle,
            server_name,
            verdict: outcome.verdict,
            detail: outcome.detail,
            protocol: outcome.protocol,
            cipher: outcome.cipher,
            chain: outcome
                .peer_chain
                .iter()
                .map(|c| c.subject.clone())
                .collect(),
        }
    }

    /// Accepted over TLS 1.2 or newer: what every real client needs.
    pub fn accepted(&self) -> bool {
        self.verdict == Verdict::Accepted
            && matches!(self.protocol.as_deref(), Some("TLSv1_2" | "TLSv1_3"))
    }
}

/// The enterprise-trust results: the merged bundle's check and the
/// discriminator table.
#[derive(Debug, Clone, Serialize, Default)]
pub struct EnterpriseSection {
    pub bundle: Option<crate::enterprise::BundleCheck>,
    pub targets: Vec<crate::enterprise::Target>,
    pub runs: Vec<crate::enterprise::ToolRun>,
    pub proxy_paths: Option<crate::enterprise::ProxyPaths>,
}

/// The TLS scan of every endpoint, with the policy it was judged by.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TlsScanSection {
    pub policy: String,
    pub exceptions: Vec<crate::tls_scan::TlsException>,
    pub endpoints: Vec<crate::tls_scan::EndpointScan>,
    /// What the policy forbids and no known defect explains: failures.
    pub violations: Vec<crate::tls_scan::PolicyViolation>,
    /// What the policy forbids and a listed upstream defect explains.
    pub known: Vec<crate::tls_scan::PolicyViolation>,
}

/// The HPC site as the run found it, and what labs saw of each login node.
#[derive(Debug, Clone, Serialize, Default)]
pub struct HpcSection {
    pub login_nodes: Vec<HpcLoginNode>,
    pub compute_nodes: Vec<String>,
    /// The proxy's public certificate: its SANs and notBefore.
    pub proxy_sans: Vec<String>,
    pub proxy_not_before: String,
    /// Per scenario that asked: one line per login node the lab tried.
    pub lab_views: Vec<HpcLabView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HpcLoginNode {
    pub name: String,
    pub hub_facing: String,
    pub bind_addresses: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HpcLabView {
    pub scenario: String,
    pub bind: String,
    pub tls: String,
    pub hub_api_user: String,
}

/// One scenario's wire census.
#[derive(Debug, Clone, Serialize)]
pub struct WireSection {
    pub scenario: String,
    /// Plaintext flows the topology declares, by server port, with why.
    pub declared_exceptions: Vec<(u16, String)>,
    pub links: Vec<crate::capture::LinkEvidence>,
    pub flows: Vec<crate::capture::Flow>,
    pub mermaid: String,
    pub svg: Option<std::path::PathBuf>,
}

impl WireSection {
    pub fn new(
        scenario: &str,
        census: &crate::capture::WireCensus,
        declared_exceptions: Vec<(u16, String)>,
        svg: Option<std::path::PathBuf>,
    ) -> Self {
        Self {
            scenario: scenario.into(),
            declared_exceptions,
            links: census.links.clone(),
            flows: census.flows.clone(),
            mermaid: census.to_mermaid(),
            svg,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub tool: String,
    pub tags: Option<String>,
    pub stack: String,
    pub backend: String,
    /// On docker, the image each component and host ran from, with its id.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub images: std::collections::BTreeMap<String, String>,
    pub scenarios: Vec<ScenarioResult>,
    pub trust_matrix: Option<TrustMatrix>,
    pub chains: Vec<ChainCheck>,
    pub inventory: Option<Inventory>,
    pub wire: Vec<WireSection>,
    /// The enterprise discriminator: tool × target × bundle.
    #[serde(default)]
    pub enterprise: Option<EnterpriseSection>,
    /// The HPC site: login nodes, the proxy's SANs, the labs' views.
    #[serde(default)]
    pub hpc: Option<HpcSection>,
    /// The TLS scan: per endpoint, what it accepted and what the policy
    /// forbade.
    pub tls_scan: Option<TlsScanSection>,
    /// Findings a listed upstream defect explains (not failures unless
    /// the run was `--strict`).
    pub known_defects: Vec<crate::known_defects::KnownDefectHit>,
    /// Who can reach what: internal endpoints × hosts.
    pub reachability: Vec<crate::reachability::ReachCell>,
    pub seconds: f64,
    /// From the start of the run until hub, proxy and every lab were ready;
    /// `None` when the stack never came up.
    pub stack_ready_seconds: Option<f64>,
    /// Settings of the deployment's own config files that ended up with
    /// another value.
    #[serde(default)]
    pub deployment_overridden: Vec<crate::stack::OverriddenSetting>,
    /// Peak resident memory of the hubtrust process that ran the scenarios.
    pub peak_rss_kb: u64,
    /// What the backend had to work around during the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_notes: Vec<String>,
    /// `hubtrust probe --proxy-api`: the proxy API called without and with
    /// its token, for the `@core` scenario to judge on a chart deployment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_api_calls: Vec<ProxyApiCall>,
}

/// The proxy's REST API called with a certificate it accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyApiCall {
    pub endpoint: String,
    pub identity: String,
    pub with_token: bool,
    pub outcome: crate::probe::ProbeOutcome,
}

impl RunReport {
    pub fn failed(&self) -> usize {
        self.scenarios
            .iter()
            .filter(|s| s.status == Status::Failed)
            .count()
    }

    pub fn passed(&self) -> usize {
        self.scenarios
            .iter()
            .filter(|s| s.status == Status::Passed)
            .count()
    }

    /// Writes `report.xml`, `report.json` and `report.md` into `dir`.
    pub fn write_all(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map_err(|e| HarnessError::io(format!("write {}", path.display()), e))
        };
        write("report.xml", self.to_junit())?;
        write(
            "report.json",
            serde_json::to_string_pretty(self)
                .map_err(|e| HarnessError::io("serialise the report", e.into()))?,
        )?;
        write("report.md", self.to_markdown())
    }

    pub fn to_junit(&self) -> String {
        let mut report = Report::new("hubtrust");
        let mut features: Vec<&str> = self.scenarios.iter().map(|s| s.feature.as_str()).collect();
        features.dedup();
        for feature in features {
            let mut suite = TestSuite::new(feature);
            for s in self.scenarios.iter().filter(|s| s.feature == feature) {
                let status = match s.status {
                    Status::Passed => TestCaseStatus::success(),
                    Status::Skipped => TestCaseStatus::skipped(),
                    Status::Failed => {
                        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                        status.set_message(s.failure.clone().unwrap_or_default());
                        status
                    }
                };
                let mut case = TestCase::new(s.scenario.as_str(), status);
                let known: Vec<String> = self
                    .known_defects
                    .iter()
                    .filter(|k| k.scenario == s.scenario)
                    .map(|k| format!("known defect {}: {} ({})", k.id, k.finding, k.upstream))
                    .collect();
                if !known.is_empty() {
                    case.add_property(quick_junit::Property::new(
                        "known-defects",
                        known.len().to_string(),
                    ));
                    case.set_system_out(known.join("\n"));
                }
                case.set_classname(feature);
                case.set_time(Duration::from_secs_f64(s.seconds));
                suite.add_test_case(case);
            }
            report.add_test_suite(suite);
        }
        report.set_time(Duration::from_secs_f64(self.seconds));
        report.to_string().unwrap_or_default()
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::from("# hubtrust conformance report\n\n");
        let ready = match self.stack_ready_seconds {
            Some(seconds) => format!("stack ready after {seconds:.1}s"),
            None => "the stack did not come up".into(),
        };
        md += &format!(
            "- stack: `{}` on the `{}` backend\n- tags: `{}`\n- result: **{} passed, {} failed** in {:.1}s ({ready})\n\n",
            self.stack,
            self.backend,
            self.tags.as_deref().unwrap_or("(all)"),
            self.passed(),
            self.failed(),
            self.seconds,
        );
        if !self.images.is_empty() {
            md += "| ran from | image |\n|---|---|\n";
            for (what, image) in &self.images {
                md += &format!("| {what} | `{image}` |\n");
            }
            md += "\n";
        }
        md += "## Scenarios\n\n| | feature | scenario | seconds |\n|---|---|---|---|\n";
        for s in &self.scenarios {
            let mark = match s.status {
                Status::Passed => "✅",
                Status::Failed => "❌",
                Status::Skipped => "⏭",
            };
            md += &format!(
                "| {mark} | {} | {} | {:.1} |\n",
                s.feature, s.scenario, s.seconds
            );
        }
        let failures: Vec<_> = self
            .scenarios
            .iter()
            .filter(|s| s.failure.is_some())
            .collect();
        if !failures.is_empty() {
            md += "\n### Failures\n\n";
            for s in failures {
                md += &format!(
                    "**{} / {}**\n\n```text\n{}\n```\n\n",
                    s.feature,
                    s.scenario,
                    s.failure.as_deref().unwrap_or("")
                );
                if let Some(a) = &s.artifacts {
                    md += &format!("Artifacts: `{a}`\n\n");
                }
            }
        }
        if let Some(matrix) = &self.trust_matrix {
            md += "\n## Internal trust matrix\n\nRows are client identities, columns endpoints; ✅ means the observed verdict is the one JupyterHub's trust graph predicts.\n\n";
            md += &matrix.to_markdown();
        }
        if !self.chains.is_empty() {
            md += "\n## Server chains as their real clients see them\n\n| server | client | bundle | name | verdict | protocol | chain |\n|---|---|---|---|---|---|---|\n";
            for c in &self.chains {
                md += &format!(
                    "| {} | {} | `{}` | {} | {} | {} | {} |\n",
                    c.server,
                    c.client,
                    c.bundle,
                    c.server_name,
                    c.verdict,
                    c.protocol.as_deref().unwrap_or("-"),
                    c.chain.join(" ← ")
                );
            }
        }
        if !self.reachability.is_empty() {
            md += "\n## Who can reach what\n\nEach internal endpoint probed from every host at every address its host has; ✅ means as the topology's design says.\n\n";
            md += &crate::reachability::markdown(&self.reachability);
        }
        if !self.known_defects.is_empty() {
            md += "\n## Known defects\n\nFindings a listed upstream defect explains (`fixtures/known-defects.toml`); they do not fail the run unless it is `--strict`.\n\n| scenario | defect | finding | upstream |\n|---|---|---|---|\n";
            for k in &self.known_defects {
                md += &format!(
                    "| {} | `{}`: {} | {} | {} |\n",
                    k.scenario, k.id, k.reason, k.finding, k.upstream
                );
            }
        }
        if let Some(scan) = &self.tls_scan {
            md += &format!(
                "\n## TLS scan\n\nEvery TLS endpoint, offered each protocol version alone and every TLS 1.2 suite, judged against the `{}` policy.\n\n",
                scan.policy
            );
            for e in &scan.exceptions {
                md += &format!(
                    "- exception at {}: {} ({})\n",
                    e.endpoint,
                    e.allow.join(", "),
                    e.reason
                );
            }
            for endpoint in &scan.endpoints {
                let own = |list: &[crate::tls_scan::PolicyViolation]| -> Vec<_> {
                    list.iter()
                        .filter(|v| v.endpoint == endpoint.endpoint)
                        .cloned()
                        .collect()
                };
                md += "\n";
                md += &crate::tls_scan::markdown_table(
                    endpoint,
                    &own(&scan.violations),
                    &own(&scan.known),
                );
            }
        }
        if !self.backend_notes.is_empty() {
            md += "\n## What the backend worked around\n\n";
            for note in &self.backend_notes {
                md += &format!("- {note}\n");
            }
        }
        if !self.deployment_overridden.is_empty() {
            md += "\n## The deployment's settings that run otherwise\n\nSet by the deployment's own config files, then given another value by hubtrust's required settings or the stack file's `extra_config`.\n\n| setting | the deployment's value | the value the hub ran with |\n|---|---|---|\n";
            for o in &self.deployment_overridden {
                md += &format!(
                    "| `{}` | `{}` | `{}` |\n",
                    o.setting,
                    o.deployment.replace('|', "\\|"),
                    o.final_value.replace('|', "\\|")
                );
            }
        }
        if let Some(e) = &self.enterprise {
            md += "\n## Enterprise trust\n\n";
            if let Some(b) = &e.bundle {
                md += &format!(
                    "Merged bundle: {} system + {} org certificates → {} in the merged file{}.\n\n",
                    b.system_certs,
                    b.org_certs,
                    b.merged_certs,
                    b.problem
                        .as_ref()
                        .map_or(String::new(), |p| format!(" — **{p}**"))
                );
            }
            if !e.runs.is_empty() {
                md += "Each tool ran in the lab; a cell shows `ok` or the error class, in bold where it differs from the expected table.\n\n";
                md += &crate::enterprise::table_markdown(&e.targets, &e.runs);
            }
            if let Some(paths) = &e.proxy_paths {
                md += &format!(
                    "\nOn the wire, {} runs sent their own CONNECT to the inspecting proxy.\n\n| internet port | CONNECTs from the lab | connections onward from the proxy |\n|---|---|---|\n",
                    paths.tunnelled_runs
                );
                for (port, (connects, onward)) in &paths.legs {
                    md += &format!("| {port} | {connects} | {onward} |\n");
                }
                for problem in &paths.problems {
                    md += &format!("\n- **{problem}**");
                }
                md += "\n";
            }
        }
        if let Some(h) = &self.hpc {
            md += "\n## HPC site\n\n| login node | hub-facing | bind addresses (labs call) |\n|---|---|---|\n";
            for l in &h.login_nodes {
                md += &format!(
                    "| {} | {} | {} |\n",
                    l.name,
                    l.hub_facing,
                    l.bind_addresses.join(", ")
                );
            }
            md += &format!(
                "\nCompute nodes: {}. Proxy certificate notBefore {}; SANs: {}.\n",
                h.compute_nodes.join(", "),
                h.proxy_not_before,
                h.proxy_sans.join(", ")
            );
            if !h.lab_views.is_empty() {
                md += "\n| scenario | login node address | TLS from the lab | hub API says |\n|---|---|---|---|\n";
                for v in &h.lab_views {
                    md += &format!(
                        "| {} | {} | {} | {} |\n",
                        v.scenario, v.bind, v.tls, v.hub_api_user
                    );
                }
            }
        }
        for w in &self.wire {
            md += &format!("\n## Wire: {}\n\n", w.scenario);
            for l in &w.links {
                md += &format!(
                    "- link `{}`: {} packets captured, {} crossed the interface{} — `{}`\n",
                    l.link,
                    l.packets_captured
                        .map(|n| n.to_string())
                        .unwrap_or("?".into()),
                    l.packets_on_interface
                        .map(|n| n.to_string())
                        .unwrap_or("?".into()),
                    l.inconclusive
                        .as_ref()
                        .map(|w| format!(" (**inconclusive**: {w})"))
                        .unwrap_or_default(),
                    l.pcap.display()
                );
            }
            if w.declared_exceptions.is_empty() {
                md += "- declared plaintext exceptions: none\n";
            }
            for (port, why) in &w.declared_exceptions {
                md += &format!("- declared plaintext exception, port {port}: {why}\n");
            }
            md += &format!("\n```mermaid\n{}```\n\n", w.mermaid);
            if let Some(svg) = &w.svg {
                md += &format!("Rendered: `{}`\n\n", svg.display());
            }
            md += "| link | from | to | bytes → | bytes ← | what |\n|---|---|---|---|---|---|\n";
            for f in &w.flows {
                md += &format!(
                    "| {} | {}:{} | {}:{} | {} | {} | {} |\n",
                    f.link,
                    f.client_host,
                    f.client_port,
                    f.server_host,
                    f.server_port,
                    f.bytes_to_server,
                    f.bytes_to_client,
                    f.label
                );
            }
        }
        if let Some(inventory) = &self.inventory {
            md += "\n## Certificate inventory\n\n| file | subject | issuer | SANs | key | EKU | CA | valid until | mode | key mode |\n|---|---|---|---|---|---|---|---|---|---|\n";
            for c in &inventory.certificates {
                md += &format!(
                    "| {}/{} | {} | {} | {} | {} {} | {} | {} | {} | {} | {} |\n",
                    c.source,
                    c.path,
                    c.subject,
                    c.issuer,
                    c.sans.join(", "),
                    c.key_type,
                    c.key_bits,
                    c.eku.join(", "),
                    if c.is_ca { "yes" } else { "no" },
                    c.not_after,
                    c.file_mode,
                    c.key_file_mode.as_deref().unwrap_or("-")
                );
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunReport {
        RunReport {
            tool: "hubtrust".into(),
            stack: "default".into(),
            backend: "local".into(),
            scenarios: vec![
                ScenarioResult {
                    feature: "Internal trust".into(),
                    scenario: "matrix".into(),
                    tags: vec!["core".into()],
                    status: Status::Passed,
                    failure: None,
                    seconds: 1.0,
                    artifacts: None,
                },
                ScenarioResult {
                    feature: "Internal trust".into(),
                    scenario: "secrets <&>".into(),
                    tags: vec!["core".into()],
                    status: Status::Failed,
                    failure: Some("key.pem is 0644".into()),
                    seconds: 0.5,
                    artifacts: None,
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn junit_counts_failures_and_escapes_names() {
        let xml = sample().to_junit();
        assert!(xml.contains("tests=\"2\""), "{xml}");
        assert!(xml.contains("failures=\"1\""), "{xml}");
        assert!(xml.contains("secrets &lt;&amp;&gt;"), "{xml}");
    }

    #[test]
    fn markdown_names_the_failure() {
        let md = sample().to_markdown();
        assert!(md.contains("1 passed, 1 failed"));
        assert!(md.contains("key.pem is 0644"));
        assert!(!md.contains("worked around"));
    }

    #[test]
    fn what_the_backend_worked_around_is_reported() {
        let mut report = sample();
        report.backend_notes = vec!["a copy was fetched again".into()];
        assert!(report
            .to_markdown()
            .contains("## What the backend worked around\n\n- a copy was fetched again\n"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["backend_notes"][0], "a copy was fetched again");
        assert!(serde_json::to_value(sample())
            .unwrap()
            .get("backend_notes")
            .is_none());
    }
}
