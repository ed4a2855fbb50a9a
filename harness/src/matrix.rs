//! The internal trust matrix: every endpoint × every client identity,
//! expected verdict (from the trust graph) against observed verdict.

use serde::Serialize;

use crate::error::Result;
use crate::probe::Verdict;
use crate::stack::Stack;
use crate::trust::{expected_verdict, verdict_matches};

#[derive(Debug, Clone, Serialize)]
pub struct MatrixCell {
    pub endpoint: String,
    pub identity: String,
    pub expected: Verdict,
    pub reason: &'static str,
    pub observed: Verdict,
    pub detail: String,
    pub protocol: Option<String>,
    pub matches: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
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
                    reason,
                    observed: outcome.verdict,
                    matches: verdict_matches(expected, outcome.verdict),
                    detail: outcome.detail,
                    protocol: outcome.protocol,
                });
            }
        }
        Ok(Self {
            endpoints: endpoints.into_iter().map(|e| e.name).collect(),
            identities: identities.into_iter().map(|i| i.label).collect(),
            cells,
        })
    }

    pub fn unexpected(&self) -> Vec<&MatrixCell> {
        self.cells.iter().filter(|c| !c.matches).collect()
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
                    Some(c) => out += &format!(" ❌ {} (expected {}) |", c.observed, c.expected),
                    None => out += " – |",
                }
            }
            out += "\n";
        }
        out
    }
}
