//! `hubtrust run --repeat N`: the same selection run N times, each round on
//! a fresh stack, tallied per scenario. A scenario that failed in any round
//! fails the whole: a flake is a defect, not noise to average away.

use std::path::Path;

use serde::Serialize;

use crate::error::{HarnessError, Result};
use crate::report::{ScenarioResult, Status};

/// One scenario's record over every round.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScenarioTally {
    pub feature: String,
    pub scenario: String,
    pub passed: u32,
    /// (round, why) for every round it did not pass in.
    pub failures: Vec<(u32, String)>,
}

/// Every round's outcome, scenario by scenario.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct RepeatSummary {
    pub rounds: u32,
    pub scenarios: Vec<ScenarioTally>,
    /// Rounds that wrote no report at all, with why.
    pub rounds_without_report: Vec<(u32, String)>,
}

impl RepeatSummary {
    /// Adds round `round`'s results. A scenario first seen in a later round
    /// counts as not passed in the rounds before it.
    pub fn add_round(&mut self, round: u32, results: &[ScenarioResult]) {
        self.rounds = self.rounds.max(round);
        for result in results {
            let index = match self
                .scenarios
                .iter()
                .position(|t| t.feature == result.feature && t.scenario == result.scenario)
            {
                Some(i) => i,
                None => {
                    self.scenarios.push(ScenarioTally {
                        feature: result.feature.clone(),
                        scenario: result.scenario.clone(),
                        passed: 0,
                        failures: (1..round)
                            .map(|r| (r, "not run in this round".to_string()))
                            .collect(),
                    });
                    self.scenarios.len() - 1
                }
            };
            let tally = &mut self.scenarios[index];
            match result.status {
                Status::Passed => tally.passed += 1,
                Status::Failed | Status::Skipped => tally.failures.push((
                    round,
                    result
                        .failure
                        .clone()
                        .unwrap_or_else(|| format!("{:?}", result.status).to_lowercase()),
                )),
            }
        }
        for tally in &mut self.scenarios {
            let seen = results
                .iter()
                .any(|r| r.feature == tally.feature && r.scenario == tally.scenario);
            if !seen {
                tally
                    .failures
                    .push((round, "not run in this round".to_string()));
            }
        }
    }

    /// Round `round` ended without a report (the run could not start).
    pub fn add_missing_round(&mut self, round: u32, why: String) {
        self.rounds = self.rounds.max(round);
        for tally in &mut self.scenarios {
            tally.failures.push((round, why.clone()));
        }
        self.rounds_without_report.push((round, why));
    }

    /// Every scenario passed in every round, and there was one to pass.
    pub fn all_passed(&self) -> bool {
        self.rounds_without_report.is_empty()
            && !self.scenarios.is_empty()
            && self.scenarios.iter().all(|t| t.passed == self.rounds)
    }

    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "# hubtrust: {} round(s), each on a fresh stack\n\n| scenario | passed |\n|---|---|\n",
            self.rounds
        );
        for t in &self.scenarios {
            out.push_str(&format!(
                "| {} | {}/{} |\n",
                t.scenario.replace('|', "\\|"),
                t.passed,
                self.rounds
            ));
        }
        let failures: Vec<String> = self
            .scenarios
            .iter()
            .flat_map(|t| {
                t.failures
                    .iter()
                    .map(move |(round, why)| format!("- round {round}, {}: {why}", t.scenario))
            })
            .chain(
                self.rounds_without_report
                    .iter()
                    .map(|(round, why)| format!("- round {round}: no report ({why})")),
            )
            .collect();
        if !failures.is_empty() {
            out.push_str("\n## Failures\n\n");
            out.push_str(&failures.join("\n"));
            out.push('\n');
        }
        out
    }

    /// `repeat.json` and `repeat.md` in `dir`.
    pub fn write_all(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| HarnessError::io("serialise the repeat summary", e.into()))?;
        for (name, text) in [("repeat.json", json), ("repeat.md", self.to_markdown())] {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map_err(|e| HarnessError::io(format!("write {}", path.display()), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, status: Status) -> ScenarioResult {
        ScenarioResult {
            feature: "F".into(),
            scenario: name.into(),
            tags: vec![],
            status,
            failure: (status != Status::Passed).then(|| format!("{name} broke")),
            seconds: 0.0,
            artifacts: None,
        }
    }

    #[test]
    fn a_scenario_that_fails_in_one_round_fails_the_whole() {
        let mut summary = RepeatSummary::default();
        summary.add_round(
            1,
            &[result("a", Status::Passed), result("b", Status::Passed)],
        );
        summary.add_round(
            2,
            &[result("a", Status::Passed), result("b", Status::Failed)],
        );
        assert!(!summary.all_passed());
        assert_eq!(summary.scenarios[0].passed, 2);
        assert_eq!(summary.scenarios[1].passed, 1);
        assert_eq!(summary.scenarios[1].failures, vec![(2, "b broke".into())]);
        assert!(summary.to_markdown().contains("| b | 1/2 |"));
        assert!(summary.to_markdown().contains("round 2, b: b broke"));
    }

    #[test]
    fn every_round_passed_is_a_pass_and_a_round_without_report_is_not() {
        let mut summary = RepeatSummary::default();
        summary.add_round(1, &[result("a", Status::Passed)]);
        summary.add_round(2, &[result("a", Status::Passed)]);
        assert!(summary.all_passed());
        summary.add_missing_round(3, "exit 2".into());
        assert!(!summary.all_passed());
        assert_eq!(summary.scenarios[0].failures, vec![(3, "exit 2".into())]);
    }

    #[test]
    fn a_scenario_missing_from_a_round_counts_against_it() {
        let mut summary = RepeatSummary::default();
        summary.add_round(1, &[result("a", Status::Passed)]);
        summary.add_round(2, &[result("b", Status::Passed)]);
        assert!(!summary.all_passed());
        assert_eq!(summary.scenarios[0].failures.len(), 1);
        assert_eq!(summary.scenarios[1].failures.len(), 1);
        assert!(RepeatSummary::default().to_markdown().contains("0 round"));
        assert!(!RepeatSummary::default().all_passed());
    }
}
