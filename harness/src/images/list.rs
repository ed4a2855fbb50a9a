//! Image lists: the component images a docker run takes instead of
//! hubtrust's offline runtime image (`--images FILE`), each pinned by digest
//! in a lock beside the list (`FILE` with `.lock` for `.toml`).
//! `hubtrust images pin FILE` writes the lock from the registries; a run
//! uses locked digests only, and refuses a listed image the lock lacks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::registry::{self, ImageReference};
use crate::error::{HarnessError, Result};
use crate::spec::{ContainerRole, StackSpec};

/// One component's image, by tag, and how to run the component in it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListedImage {
    /// A reference with a tag, e.g. `quay.io/jupyterhub/k8s-hub:4.3.3`.
    pub image: String,
    /// Where the component's program is in this image, replacing the
    /// manifest's command (placeholders as in a stack file). For
    /// mitmproxy, the one program that stands for `mitmdump`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
}

/// A list file: per component, its image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct ImageList {
    pub components: BTreeMap<ContainerRole, ListedImage>,
}

/// A lock file: each listed image's digest when it was pinned.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageLock {
    pub digests: BTreeMap<String, String>,
}

/// What a list changed about a stack: each component's pinned image.
pub type Applied = BTreeMap<ContainerRole, String>;

/// A fault in a list, fixed by editing it (fixtures/images/upstream.toml
/// shows the form).
fn invalid(path: &Path, message: impl Into<String>) -> HarnessError {
    HarnessError::ImageList {
        path: path.to_path_buf(),
        message: message.into(),
        fix: "correct the list; fixtures/images/upstream.toml shows its form".into(),
    }
}

impl ImageList {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| HarnessError::ImageList {
            path: path.to_path_buf(),
            message: e.to_string(),
            fix: "check the path given to --images or `images pin`".into(),
        })?;
        Self::parse(&text, path)
    }

    /// A list's text, `path` naming it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let list: Self = toml::from_str(text).map_err(|e| {
            invalid(
                path,
                format!("{} (an image list has [hub], [proxy], [lab] or [mitmproxy] tables with `image` and optional `command`)", e.message()),
            )
        })?;
        for (role, listed) in &list.components {
            let reference = ImageReference::parse(&listed.image)
                .map_err(|e| invalid(path, format!("[{}] {e}", role.as_str())))?;
            if reference.tag.is_none() || reference.digest.is_some() {
                return Err(invalid(
                    path,
                    format!("[{}] image `{}`: list images by tag; their digests go in the lock (`hubtrust images pin`)", role.as_str(), listed.image),
                ));
            }
            if listed.command.as_ref().is_some_and(Vec::is_empty) {
                return Err(invalid(
                    path,
                    format!("[{}] command is empty", role.as_str()),
                ));
            }
            if *role == ContainerRole::Mitmproxy
                && listed.command.as_ref().is_some_and(|c| c.len() != 1)
            {
                return Err(invalid(path, "[mitmproxy] command is the one program that stands for mitmdump (hubtrust gives its arguments)"));
            }
        }
        Ok(list)
    }

    /// The lock beside `list`: the same name with `.lock`.
    pub fn lock_path(list: &Path) -> PathBuf {
        list.with_extension("lock")
    }

    /// Each listed image's digest as its registry serves it now.
    pub async fn resolve(&self, http: &reqwest::Client) -> Result<ImageLock> {
        let mut digests = BTreeMap::new();
        for listed in self.components.values() {
            let reference = ImageReference::parse(&listed.image)?;
            let digest = registry::resolve_digest(http, &reference).await?;
            digests.insert(listed.image.clone(), digest);
        }
        Ok(ImageLock { digests })
    }

    /// Puts the listed images, at their locked digests, into `spec`'s
    /// docker section, and their commands into its component overrides,
    /// wherever the stack file names none itself. Fails closed: a listed
    /// image the lock does not pin is an error, never a pull by tag.
    pub fn apply(&self, lock: &ImageLock, list: &Path, spec: &mut StackSpec) -> Result<Applied> {
        if spec.topology.hpc.is_some() {
            return Err(HarnessError::ImageList {
                path: list.to_path_buf(),
                message: "an HPC site's nodes run sshd and its hub starts the proxy in its own container, which component images do not carry".into(),
                fix: "run HPC stacks without --images, on hubtrust's runtime image".into(),
            });
        }
        let mut applied = Applied::new();
        for (role, pinned) in self.pinned(lock, list)? {
            let command = self.components.get(&role).and_then(|l| l.command.clone());
            let uses_role = match role {
                ContainerRole::Mitmproxy => spec
                    .enterprise
                    .as_ref()
                    .is_some_and(|e| e.egress_host.is_some()),
                _ => true,
            };
            if !uses_role || spec.docker.components.contains_key(&role) {
                continue;
            }
            spec.docker.components.insert(role, pinned.clone());
            match role {
                ContainerRole::Hub => spec.hub.command = spec.hub.command.take().or(command),
                ContainerRole::Proxy => spec.proxy.command = spec.proxy.command.take().or(command),
                ContainerRole::Lab => spec.lab.command = spec.lab.command.take().or(command),
                ContainerRole::Mitmproxy => {
                    if let Some(enterprise) = spec.enterprise.as_mut() {
                        enterprise.mitmdump = enterprise
                            .mitmdump
                            .take()
                            .or(command.and_then(|c| c.into_iter().next()));
                    }
                }
            }
            applied.insert(role, pinned);
        }
        Ok(applied)
    }

    /// Each listed image at the lock's digest. Fails closed: a listed image
    /// the lock does not pin is an error, never a pull by tag.
    pub fn pinned(&self, lock: &ImageLock, list: &Path) -> Result<Applied> {
        self.components
            .iter()
            .map(|(role, listed)| {
                let digest = lock.digests.get(&listed.image).ok_or_else(|| {
                    let registry = ImageReference::parse(&listed.image)
                        .map(|r| r.registry)
                        .unwrap_or_default();
                    HarnessError::ImageList {
                        path: ImageList::lock_path(list),
                        message: format!("it does not pin {}", listed.image),
                        fix: format!(
                            "run `hubtrust images pin {}` on a machine that reaches {registry}; a run never pulls a tag",
                            list.display()
                        ),
                    }
                })?;
                Ok((*role, ImageReference::parse(&listed.image)?.at_digest(digest)))
            })
            .collect()
    }
}

impl ImageLock {
    /// The lock beside `list`, empty when there is none yet.
    pub fn load_for(list: &Path) -> Result<Self> {
        let path = ImageList::lock_path(list);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(cause) => return Err(HarnessError::io(format!("read {}", path.display()), cause)),
        };
        Self::parse(&text, &path)
    }

    /// A lock's text, `path` naming it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let lock: Self = toml::from_str(text).map_err(|e| invalid(&path, e.message()))?;
        if let Some((image, digest)) = lock.digests.iter().find(|(_, d)| !registry::is_digest(d)) {
            return Err(invalid(
                &path,
                format!("the digest of {image} is not `sha256:` and 64 hex digits: {digest}"),
            ));
        }
        Ok(lock)
    }

    /// The lock's text, with a header saying where it came from.
    pub fn render(&self, list: &Path) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# Written by `hubtrust images pin {}`: each listed image's digest\n# when it was pinned. Runs pull and use these digests only.\n\n{body}",
            list.display()
        )
    }

    /// The images whose digest differs between `self` and `now`, with both.
    pub fn moved(&self, now: &ImageLock) -> Vec<(String, Option<String>, String)> {
        now.digests
            .iter()
            .filter(|(image, digest)| self.digests.get(*image) != Some(digest))
            .map(|(image, digest)| {
                (
                    image.clone(),
                    self.digests.get(image).cloned(),
                    digest.clone(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn list() -> ImageList {
        toml::from_str(
            r#"
            [hub]
            image = "quay.io/jupyterhub/k8s-hub:4.3.3"
            command = ["jupyterhub", "-f", "{{config}}"]
            [proxy]
            image = "quay.io/jupyterhub/configurable-http-proxy:5.2.0"
            command = ["configurable-http-proxy"]
            [mitmproxy]
            image = "mitmproxy/mitmproxy:11.0.2"
            command = ["mitmdump"]
            "#,
        )
        .unwrap()
    }

    fn lock() -> ImageLock {
        ImageLock {
            digests: BTreeMap::from([
                ("quay.io/jupyterhub/k8s-hub:4.3.3".into(), digest('a')),
                (
                    "quay.io/jupyterhub/configurable-http-proxy:5.2.0".into(),
                    digest('b'),
                ),
                ("mitmproxy/mitmproxy:11.0.2".into(), digest('c')),
            ]),
        }
    }

    #[test]
    fn a_pinned_list_names_each_image_by_digest_and_sets_its_command() {
        let mut spec = StackSpec::default();
        spec.docker
            .components
            .insert(ContainerRole::Lab, "vendor/lab:1".into());
        let applied = list()
            .apply(&lock(), Path::new("upstream.toml"), &mut spec)
            .unwrap();
        let hub = format!("quay.io/jupyterhub/k8s-hub@{}", digest('a'));
        assert_eq!(applied.get(&ContainerRole::Hub), Some(&hub));
        assert_eq!(spec.docker.components[&ContainerRole::Hub], hub);
        assert_eq!(
            spec.hub.command.as_deref(),
            Some(&["jupyterhub".to_string(), "-f".into(), "{{config}}".into()][..])
        );
        // The stack file's own lab image stays; no egress host, no mitmproxy.
        assert_eq!(spec.docker.components[&ContainerRole::Lab], "vendor/lab:1");
        assert!(!spec
            .docker
            .components
            .contains_key(&ContainerRole::Mitmproxy));
        assert!(!applied.contains_key(&ContainerRole::Mitmproxy));
    }

    #[test]
    fn an_image_the_lock_lacks_is_refused_naming_pin() {
        let mut partial = lock();
        partial
            .digests
            .remove("quay.io/jupyterhub/configurable-http-proxy:5.2.0");
        let err = list()
            .apply(
                &partial,
                Path::new("fixtures/images/upstream.toml"),
                &mut StackSpec::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream.lock"), "{err}");
        assert!(
            err.contains("hubtrust images pin fixtures/images/upstream.toml"),
            "{err}"
        );
        assert!(err.contains("quay.io"), "{err}");
    }

    #[test]
    fn a_lock_reports_what_moved_and_round_trips() {
        let old = lock();
        let mut now = lock();
        now.digests
            .insert("mitmproxy/mitmproxy:11.0.2".into(), digest('d'));
        let moved = old.moved(&now);
        assert_eq!(
            moved,
            vec![(
                "mitmproxy/mitmproxy:11.0.2".to_string(),
                Some(digest('c')),
                digest('d')
            )]
        );
        let text = now.render(Path::new("upstream.toml"));
        assert!(text.starts_with("# Written by `hubtrust images pin upstream.toml`"));
        let back: ImageLock = toml::from_str(&text).unwrap();
        assert_eq!(back, now);
    }

    #[test]
    fn the_shipped_upstream_list_parses_and_lists_by_tag() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/images/upstream.toml");
        let list = ImageList::load(&path).unwrap();
        for role in [
            ContainerRole::Hub,
            ContainerRole::Proxy,
            ContainerRole::Lab,
            ContainerRole::Mitmproxy,
        ] {
            assert!(list.components.contains_key(&role), "{role:?}");
        }
        ImageLock::load_for(&path).unwrap();
    }
}
