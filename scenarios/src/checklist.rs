//! The checks of a chart-started deployment, each a scenario of the run's
//! report: what `run --backend kind|kubernetes` reports, and what `up`
//! requires before it says `ready:`. A check that could not run is said
//! as not run, with why: never as passed.

use std::time::Instant;

use hubtrust_harness::report::{ScenarioResult, Status};

/// How a check that ran to its end came out; a failure is its `Err`.
pub enum Outcome {
    Passed,
    /// It ran, and what it saw cannot decide the verdict.
    Inconclusive(String),
}

pub struct Checklist {
    feature: String,
    started: Instant,
    pub results: Vec<ScenarioResult>,
    /// Seconds from the list's start until the deployment and its first
    /// lab were ready; `None` while they are not.
    pub ready_seconds: Option<f64>,
    /// Findings a listed upstream defect explains: shown, not failed.
    pub known_defects: Vec<hubtrust_harness::known_defects::KnownDefectHit>,
    /// The certificates the deployment holds, when they were read.
    pub inventory: Option<hubtrust_harness::inventory::Inventory>,
}

impl Checklist {
    pub fn new(feature: impl Into<String>) -> Self {
        Checklist {
            feature: feature.into(),
            started: Instant::now(),
            results: Vec::new(),
            ready_seconds: None,
            known_defects: Vec::new(),
            inventory: None,
        }
    }

    /// The deployment and its first lab are ready now.
    pub fn mark_ready(&mut self) {
        self.ready_seconds = Some(self.started.elapsed().as_secs_f64());
    }

    /// Runs `check`, unless `blocked` says why it cannot run. Whether it
    /// passed.
    pub fn check(
        &mut self,
        scenario: &str,
        blocked: Option<&str>,
        check: impl FnOnce() -> anyhow::Result<Outcome>,
    ) -> bool {
        if let Some(why) = blocked {
            self.not_run(scenario, format!("not run: {why}"));
            return false;
        }
        let clock = Instant::now();
        let (status, failure) = match check() {
            Ok(Outcome::Passed) => (Status::Passed, None),
            Ok(Outcome::Inconclusive(why)) => {
                (Status::Skipped, Some(format!("inconclusive: {why}")))
            }
            Err(e) => (Status::Failed, Some(format!("{e:#}"))),
        };
        match (&status, &failure) {
            (Status::Passed, _) => eprintln!("· ✔ {scenario}"),
            (_, Some(said)) => eprintln!("· ✘ {scenario}: {said}"),
            _ => {}
        }
        let passed = status == Status::Passed;
        self.push(&self.feature.clone(), scenario, status, failure, clock);
        passed
    }

    /// A check that was not run, and why.
    pub fn not_run(&mut self, scenario: &str, why: String) {
        eprintln!("· – {scenario}: {why}");
        self.push(
            &self.feature.clone(),
            scenario,
            Status::Skipped,
            Some(why),
            Instant::now(),
        );
    }

    /// Another tool's checks (a probe's report), under `feature`.
    pub fn lift(&mut self, feature: &str, results: Vec<ScenarioResult>) {
        self.results
            .extend(results.into_iter().map(|r| ScenarioResult {
                feature: feature.to_string(),
                ..r
            }));
    }

    fn push(
        &mut self,
        feature: &str,
        scenario: &str,
        status: Status,
        failure: Option<String>,
        clock: Instant,
    ) {
        self.results.push(ScenarioResult {
            feature: feature.to_string(),
            scenario: scenario.to_string(),
            tags: Vec::new(),
            status,
            failure,
            seconds: clock.elapsed().as_secs_f64(),
            artifacts: None,
        });
    }

    /// Each failed check, named, with why.
    pub fn failures(&self) -> Vec<String> {
        self.results
            .iter()
            .filter(|r| r.status == Status::Failed)
            .map(|r| {
                format!(
                    "{}: {}",
                    r.scenario,
                    r.failure.as_deref().unwrap_or("(no reason given)")
                )
            })
            .collect()
    }

    /// Nothing failed, and something passed: a list where nothing ran
    /// proves nothing.
    pub fn passed(&self) -> bool {
        self.failures().is_empty() && self.results.iter().any(|r| r.status == Status::Passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_that_could_not_run_is_never_passed() {
        let mut list = Checklist::new("f");
        assert!(!list.check("blocked", Some("the lab never spawned"), || {
            Ok(Outcome::Passed)
        }));
        assert!(!list.passed(), "a list where nothing ran passed");
        assert_eq!(list.results[0].status, Status::Skipped);
        assert_eq!(
            list.results[0].failure.as_deref(),
            Some("not run: the lab never spawned")
        );
        assert!(!list.check("unsure", None, || Ok(Outcome::Inconclusive(
            "nothing crossed".into()
        ))));
        assert!(!list.passed());
        assert!(list.check("fine", None, || Ok(Outcome::Passed)));
        assert!(list.passed());
        assert!(!list.check("broken", None, || anyhow::bail!("plaintext on 8081")));
        assert!(!list.passed());
        assert_eq!(list.failures(), vec!["broken: plaintext on 8081"]);
    }
}
