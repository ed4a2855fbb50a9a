//! The internal trust matrix: every endpoint × every client identity,
//! expected verdict (from the trust graph) against observed verdict.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::known_defects::KnownDefect;
use crate::probe::Verdict;
use crate::stack::Stack;
use crate::trust::{expected_verdict, verdict_matches};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatrixCell {
    pub endpoint: String,
    pub identity: String,
    pub expected: Verdict,
    pub reason: String,
    pub observed: Verdict,
    pub detail: String,
    pub protocol: Option<String>,
    pub matches: bool,
    /// The known upstream defect that explains a mismatch, by its id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_defect: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrustMatrix {
    pub endpoints: Vec<String>,
    pub identities: Vec<String>,
    pub cells: Vec<MatrixCell>,
}

impl TrustMatrix {
    /// Probes every cell. Cells run one after another: the verdicts must
    /// not depend on load, and the whole matrix takes a few seconds.
    pub async fn observe(stack: &Stack) -> Result<Self> {
        let endpoints = stack.endpoints();
        let identities = stack.client_identities()?;
        let mut cells = Vec::new();
        for endpoint in &endpoints {
            for identity in &identities {
                let (expected, reason) = expected_verdict(endpoint.client_auth, identity.origin);
                let outcome = stack.probe(endpoint, identity.identity.as_ref()).await;
                cells.push(MatrixCell {
                    endpoint: endpoint.name.clone(),
                    identity: identity.label.clone(),
                    expected,
                    reason: reason.into(),
                    observed: outcome.verdict,
                    matches: verdict_matches(expected, outcome.verdict),
                    detail: outcome.detail,
                    protocol: outcome.protocol,
                    known_defect: None,
                });
            }
        }
        Ok(Self {
            endpoints: endpoints.into_iter().map(|e| e.name).collect(),
            identities: identities.into_iter().map(|i| i.label).collect(),
            cells,
        })
    }

    /// Cells that differ from the trust graph, known defects included.
    pub fn mismatches(&self) -> Vec<&MatrixCell> {
        self.cells.iter().filter(|c| !c.matches).collect()
    }

    /// Cells that differ from the trust graph with no known defect to
    /// explain them: failures.
    pub fn unexpected(&self) -> Vec<&MatrixCell> {
        self.cells
            .iter()
            .filter(|c| !c.matches && c.known_defect.is_none())
            .collect()
    }

    /// The known defects that apply and did not reproduce, among those
    /// whose identity this matrix presented: an entry naming an identity
    /// that was not presented (a prober without the public-CA certificate)
    /// was not asked, so it is not stale.
    pub fn presented<'a>(&self, stale: &'a [KnownDefect]) -> Vec<&'a KnownDefect> {
        stale
            .iter()
            .filter(|d| {
                d.offered.iter().any(|offered| {
                    self.identities
                        .iter()
                        .any(|identity| crate::known_defects::glob(offered, identity))
                })
            })
            .collect()
    }

    /// Marks the cell of `endpoint` × `identity` as explained by `defect`.
    pub fn mark_known_defect(&mut self, endpoint: &str, identity: &str, defect: &str) {
        for cell in &mut self.cells {
            if cell.endpoint == endpoint && cell.identity == identity {
                cell.known_defect = Some(defect.to_string());
            }
        }
    }

    /// Markdown: rows are identities, columns endpoints, each cell
    /// "observed" with a mark, and the expectation when they differ.
    pub fn to_markdown(&self) -> String {
        let mut out = format!("| identity | {} |\n", self.endpoints.join(" | "));
        out += &format!("|---|{}\n", "---|".repeat(self.endpoints.len()));
        for identity in &self.identities {
            out += &format!("| {identity} |");
            for endpoint in &self.endpoints {
                let cell = self
                    .cells
                    .iter()
                    .find(|c| &c.endpoint == endpoint && &c.identity == identity);
                match cell {
                    Some(c) if c.matches => out += &format!(" ✅ {} |", c.observed),
                    Some(c) if c.known_defect.is_some() => {
                        out += &format!(
                            " ⚠️ {} (known defect {}) |",
                            c.observed,
                            c.known_defect.as_deref().unwrap_or_default()
                        )
                    }
                    Some(c) => out += &format!(" ❌ {} (expected {}) |", c.observed, c.expected),
                    None => out += " – |",
                }
            }
            out += "\n";
        }
        out
    }
}
