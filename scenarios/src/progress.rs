//! A cucumber writer that prints one progress line per scenario and keeps
//! the structured result of each for the reports.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cucumber::event::{self, Cucumber, Feature, Hook, Rule, Scenario, Step};
use cucumber::{gherkin, parser, Event};
use hubtrust_harness::report::{ScenarioResult, Status};
use hubtrust_harness::under_test::NOT_OBSERVED;

use crate::world::Operator;

/// Called when a scenario fails, to keep its artifacts; returns where.
pub type KeepArtifacts = Box<dyn Fn(&str, bool) -> Option<String> + Send>;

pub struct ProgressWriter {
    pub results: Arc<Mutex<Vec<ScenarioResult>>>,
    keep_artifacts: KeepArtifacts,
    current: Option<Current>,
}

struct Current {
    started: Instant,
    failure: Option<String>,
    skipped: bool,
    /// A step asked what the deployment's run did not observe, and why:
    /// the scenario is not run, never passed.
    not_observed: Option<String>,
}

impl ProgressWriter {
    pub fn new(results: Arc<Mutex<Vec<ScenarioResult>>>, keep_artifacts: KeepArtifacts) -> Self {
        Self {
            results,
            keep_artifacts,
            current: None,
        }
    }

    fn on_scenario(
        &mut self,
        feature: &gherkin::Feature,
        scenario: &gherkin::Scenario,
        ev: Scenario<Operator>,
    ) {
        match ev {
            Scenario::Started => {
                self.current = Some(Current {
                    started: Instant::now(),
                    failure: None,
                    skipped: false,
                    not_observed: None,
                });
            }
            Scenario::Step(step, ev) | Scenario::Background(step, ev) => self.on_step(&step, ev),
            Scenario::Hook(kind, Hook::Failed(_, info)) => {
                let message = info
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| info.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                if let Some(c) = self.current.as_mut() {
                    c.failure
                        .get_or_insert(format!("{kind:?} hook failed: {message}"));
                }
            }
            Scenario::Finished => self.finish(feature, scenario),
            _ => {}
        }
    }

    fn on_step(&mut self, step: &gherkin::Step, ev: Step<Operator>) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        match ev {
            Step::Failed(_, _, _, error) => {
                let why = match &error {
                    event::StepError::Panic(info) => info
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| info.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| error.to_string()),
                    other => other.to_string(),
                };
                if let Some(said) = not_observed(&why) {
                    current.not_observed.get_or_insert(said);
                    return;
                }
                current.failure.get_or_insert(format!(
                    "step `{}{}` failed: {why}",
                    step.keyword, step.value
                ));
            }
            Step::Skipped => current.skipped = true,
            _ => {}
        }
    }

    fn finish(&mut self, feature: &gherkin::Feature, scenario: &gherkin::Scenario) {
        let Some(current) = self.current.take() else {
            return;
        };
        let status = match (&current.failure, current.skipped, &current.not_observed) {
            (Some(_), _, _) => Status::Failed,
            // fail_on_skipped turns undefined steps into failures; a skip
            // that still arrives here never counts as a pass.
            (None, true, _) | (None, false, Some(_)) => Status::Skipped,
            (None, false, None) => Status::Passed,
        };
        let failure = current.failure.or(current.not_observed);
        let seconds = current.started.elapsed().as_secs_f64();
        let artifacts = (self.keep_artifacts)(&scenario.name, status == Status::Failed);
        let mark = match status {
            Status::Passed => "✔",
            Status::Failed => "✘",
            Status::Skipped => "⏭",
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "{mark} {} / {} ({seconds:.1}s)",
            feature.name, scenario.name
        );
        if let Some(failure) = &failure {
            for line in failure.lines() {
                let _ = writeln!(err, "    {line}");
            }
            if let Some(dir) = &artifacts {
                let _ = writeln!(err, "    artifacts kept in {dir}");
            }
        }
        let tags = feature.tags.iter().chain(&scenario.tags).cloned().collect();
        if let Ok(mut results) = self.results.lock() {
            results.push(ScenarioResult {
                feature: feature.name.clone(),
                scenario: scenario.name.clone(),
                tags,
                status,
                failure,
                seconds,
                artifacts,
            });
        }
    }

    fn record_parse_error(&mut self, error: String) {
        let _ = writeln!(
            std::io::stderr(),
            "✘ a feature file could not be parsed: {error}"
        );
        if let Ok(mut results) = self.results.lock() {
            results.push(ScenarioResult {
                feature: "(parse error)".into(),
                scenario: "feature files".into(),
                tags: Vec::new(),
                status: Status::Failed,
                failure: Some(error),
                seconds: 0.0,
                artifacts: None,
            });
        }
    }
}

/// A step's failure that says the deployment's run did not observe what
/// it asks, as the report's "not run" reason.
fn not_observed(why: &str) -> Option<String> {
    let at = why.find(NOT_OBSERVED)?;
    Some(format!("not run: {}", &why[at + NOT_OBSERVED.len()..]))
}

impl cucumber::Writer<Operator> for ProgressWriter {
    type Cli = cucumber::cli::Empty;

    async fn handle_event(&mut self, ev: parser::Result<Event<Cucumber<Operator>>>, _: &Self::Cli) {
        let ev = match ev {
            Ok(ev) => ev.value,
            Err(e) => return self.record_parse_error(e.to_string()),
        };
        if let Cucumber::Feature(feature, ev) = ev {
            match ev {
                Feature::Scenario(scenario, ev) => self.on_scenario(&feature, &scenario, ev.event),
                Feature::Rule(_, Rule::Scenario(scenario, ev)) => {
                    self.on_scenario(&feature, &scenario, ev.event)
                }
                _ => {}
            }
        }
    }
}

// Scenarios run one at a time (they share one stack), so events already
// arrive in order.
impl cucumber::writer::Normalized for ProgressWriter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_step_that_was_not_observed_is_not_run() {
        let said = hubtrust_harness::HarnessError::NotObserved {
            what: "the proxy API from this machine".into(),
            why: "it is reachable only inside the cluster".into(),
        };
        assert_eq!(
            not_observed(&format!("{:#}", anyhow::Error::from(said))).as_deref(),
            Some(
                "not run: the proxy API from this machine: it is reachable only inside the cluster"
            )
        );
        assert_eq!(
            not_observed("the proxy API answered HTTP 200, expected 403"),
            None
        );
    }
}
