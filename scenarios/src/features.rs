//! Feature files on disk: discovery, tags, and tag-expression checks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cucumber::gherkin::{self, tagexpr::TagOperation, GherkinEnv};
use cucumber::tag::Ext as _;

/// Where the features are: `--features`, else `$HUBTRUST_FEATURES`, else
/// `./features`, else the repository the binary was built from.
pub fn locate(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("HUBTRUST_FEATURES") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from("features");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("features")
}

pub struct ScenarioInfo {
    pub feature: String,
    pub file: PathBuf,
    pub name: String,
    pub tags: Vec<String>,
}

pub fn scenarios(dir: &Path) -> anyhow::Result<Vec<ScenarioInfo>> {
    anyhow::ensure!(
        dir.is_dir(),
        "no features directory at {} (fix: run from the repository root or pass --features DIR)",
        dir.display()
    );
    let mut files = Vec::new();
    collect(dir, &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let feature = gherkin::Feature::parse_path(&file, GherkinEnv::default())
            .map_err(|e| anyhow::anyhow!("cannot parse {}: {e}", file.display()))?;
        let rule_scenarios = feature
            .rules
            .iter()
            .flat_map(|r| r.scenarios.iter().map(move |s| (Some(r), s)));
        for (rule, scenario) in feature
            .scenarios
            .iter()
            .map(|s| (None, s))
            .chain(rule_scenarios)
        {
            let tags = feature
                .tags
                .iter()
                .chain(rule.map(|r| r.tags.iter()).into_iter().flatten())
                .chain(&scenario.tags)
                .cloned()
                .collect();
            out.push(ScenarioInfo {
                feature: feature.name.clone(),
                file: file.clone(),
                name: scenario.name.clone(),
                tags,
            });
        }
    }
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "feature") {
            out.push(path);
        }
    }
}

/// Parses a tag expression and checks that every tag it names exists, so
/// a typo is an error rather than a run of nothing.
pub fn parse_tags(expr: &str, scenarios: &[ScenarioInfo]) -> anyhow::Result<TagOperation> {
    let op = crate::tag_expression::parse(expr)
        .map_err(|e| anyhow::anyhow!("invalid tag expression {expr:?}: {e} (fix: write tags like `@core` or `@core and not @wire`)"))?;
    let known: BTreeSet<&str> = scenarios
        .iter()
        .flat_map(|s| s.tags.iter().map(String::as_str))
        .collect();
    let mut named = Vec::new();
    tags_in(&op, &mut named);
    let unknown: Vec<&String> = named
        .iter()
        .filter(|t| !known.contains(t.as_str()))
        .collect();
    anyhow::ensure!(
        unknown.is_empty(),
        "unknown tag {} (fix: use one of {}; `hubtrust list` shows them all)",
        unknown
            .iter()
            .map(|t| format!("@{t}"))
            .collect::<Vec<_>>()
            .join(", "),
        known
            .iter()
            .map(|t| format!("@{t}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(op)
}

fn tags_in(op: &TagOperation, out: &mut Vec<String>) {
    match op {
        TagOperation::And(a, b) | TagOperation::Or(a, b) => {
            tags_in(a, out);
            tags_in(b, out);
        }
        TagOperation::Not(a) => tags_in(a, out),
        TagOperation::Tag(t) => out.push(t.trim_start_matches('@').to_string()),
    }
}

pub fn selected<'a>(
    scenarios: &'a [ScenarioInfo],
    op: Option<&TagOperation>,
) -> Vec<&'a ScenarioInfo> {
    scenarios
        .iter()
        .filter(|s| op.is_none_or(|op| op.eval(s.tags.iter())))
        .collect()
}

/// The profiles whose scenarios run only on a stack with their site.
const SITE_PROFILES: [(&str, &str); 2] = [
    (
        "hpc",
        "an HPC site ([topology.hpc] in the stack file; fix: --stack fixtures/stacks/hpc.toml)",
    ),
    (
        "enterprise",
        "an [enterprise] section (fix: --stack fixtures/stacks/enterprise.toml, or add [enterprise] to your stack file)",
    ),
];

/// The profile tags: a scenario tagged only with a site's profile needs
/// that site; one also tagged @core or @wire runs on any stack.
const PROFILES: [&str; 4] = ["core", "wire", "enterprise", "hpc"];

/// Why `selected` cannot run on a stack with (`has_hpc`, `has_enterprise`):
/// the first scenario that needs a site the stack lacks, and that site.
pub fn missing_site(
    selected: &[&ScenarioInfo],
    has_hpc: bool,
    has_enterprise: bool,
) -> Option<String> {
    for scenario in selected {
        let profiles: Vec<&str> = scenario
            .tags
            .iter()
            .map(|t| t.trim_start_matches('@'))
            .filter(|t| PROFILES.contains(t))
            .collect();
        let [only] = profiles[..] else { continue };
        let Some((_, site)) = SITE_PROFILES.iter().find(|(p, _)| *p == only) else {
            continue;
        };
        let present = match only {
            "hpc" => has_hpc,
            _ => has_enterprise,
        };
        if !present {
            return Some(format!(
                "scenario {:?} (@{only}) needs {site}, and this stack has none",
                scenario.name
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(tags: &[&str]) -> ScenarioInfo {
        ScenarioInfo {
            feature: "f".into(),
            file: PathBuf::from("f.feature"),
            name: "s".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn only_a_scenario_of_a_site_profile_alone_needs_the_site() {
        let hpc_only = scenario(&["@hpc"]);
        let everywhere = scenario(&["@core", "@wire", "@enterprise", "@hpc", "@tls"]);
        let enterprise_only = scenario(&["@enterprise"]);
        assert!(missing_site(&[&everywhere], false, false).is_none());
        assert!(missing_site(&[&hpc_only], true, false).is_none());
        assert!(missing_site(&[&hpc_only], false, true)
            .unwrap()
            .contains("fixtures/stacks/hpc.toml"));
        assert!(missing_site(&[&everywhere, &enterprise_only], true, false)
            .unwrap()
            .contains("fixtures/stacks/enterprise.toml"));
    }
}
