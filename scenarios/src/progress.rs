//! A cucumber writer that prints one progress line per scenario and keeps
//! the structured result of each for the reports.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cucumber::event::{self, Cucumber, Feature, Hook, Rule, Scenario, Step};
use cucumber::{gherkin, parser, Event};
use hubtrust_harness::report::{ScenarioResult, Status};

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
        let status = match (&current.failure, current.skipped) {
            (Some(_), _) => Status::Failed,
            // fail_on_skipped turns undefined steps into failures; a skip
            // that still arrives here never counts as a pass.
            (None, true) => Status::Skipped,
            (None, false) => Status::Passed,
        };
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
        if let Some(failure) = &current.failure {
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
                failure: current.failure,
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
