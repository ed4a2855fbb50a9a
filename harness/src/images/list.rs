//! Image lists: the component images a docker run takes instead of
//! hubtrust's offline runtime image (`--images FILE`), each pinned by digest
//! in a lock beside the list (`FILE` with `.lock` for `.toml`).
//! `hubtrust images pin FILE` writes the lock from the registries; a run
//! uses locked digests only, and refuses a listed image the lock lacks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::registry::{self, ImageReference, PlatformImage};
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
    /// Per image, each platform's image behind its digest: how an image
    /// loaded from an archive, which has lost its registry digest, is
    /// still known to be the pinned one. Locks written before it have none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub platforms: BTreeMap<String, BTreeMap<String, PlatformImage>>,
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
        let mut lock = ImageLock::default();
        for listed in self.components.values() {
            let reference = ImageReference::parse(&listed.image)?;
            let resolved = registry::resolve(http, &reference).await?;
            lock.digests.insert(listed.image.clone(), resolved.digest);
            lock.platforms
                .insert(listed.image.clone(), resolved.platforms);
        }
        Ok(lock)
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
        let platform_digests = lock.platforms.iter().flat_map(|(image, platforms)| {
            platforms
                .values()
                .flat_map(move |p| [(image, &p.manifest), (image, &p.config)])
        });
        if let Some((image, digest)) = lock
            .digests
            .iter()
            .chain(platform_digests)
            .find(|(_, d)| !registry::is_digest(d))
        {
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

    /// The images whose digest, or whose platforms' images, differ between
    /// `self` and `now`, with both digests.
    pub fn moved(&self, now: &ImageLock) -> Vec<(String, Option<String>, String)> {
        now.digests
            .iter()
            .filter(|(image, digest)| {
                self.digests.get(*image) != Some(digest)
                    || self.platforms.get(*image) != now.platforms.get(*image)
            })
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

/// `repository` of `repository:tag`, as docker lists it in RepoDigests.
pub fn untagged(image: &str) -> &str {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(colon) => &image[..slash + colon],
        None => image,
    }
}

/// An image as this machine's docker daemon holds it under a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldImage {
    pub id: String,
    /// `os/architecture[/variant]`, as the image's own config states it.
    pub platform: String,
    pub repo_digests: Vec<String>,
}

impl HeldImage {
    /// `docker image inspect --format` for what `parse` reads.
    pub const INSPECT_FORMAT: &'static str =
        "{{.ID}} {{.Os}}/{{.Architecture}}{{with .Variant}}/{{.}}{{end}} {{join .RepoDigests \" \"}}";

    pub fn parse(inspected: &str) -> Option<Self> {
        let mut words = inspected.split_whitespace();
        let id = words.next()?.to_string();
        let platform = words.next()?.to_string();
        Some(HeldImage {
            id,
            platform,
            repo_digests: words.map(str::to_string).collect(),
        })
    }

    /// Whether this is the image `image` (`repository:tag`) pinned at
    /// `digest`, with `platforms` its platforms' images. Pulled by digest,
    /// docker lists the digest among RepoDigests (or, with the containerd
    /// image store, as its id). Loaded from an archive, it has no registry
    /// digest, and its id must be the pinned image's for its own platform:
    /// its config's digest (or its manifest's), which covers every layer.
    pub fn is_pinned(
        &self,
        image: &str,
        digest: &str,
        platforms: Option<&BTreeMap<String, PlatformImage>>,
    ) -> std::result::Result<(), String> {
        let by_digest = format!("{}@{digest}", untagged(image));
        let pinned_platform = platforms.and_then(|p| p.get(&self.platform));
        if self.repo_digests.contains(&by_digest)
            || self.id == digest
            || pinned_platform.is_some_and(|p| self.id == p.config || self.id == p.manifest)
        {
            return Ok(());
        }
        let held = match self.repo_digests.as_slice() {
            [] => "no registry digest".to_string(),
            digests => digests.join(" "),
        };
        let platform = match (platforms, pinned_platform) {
            (None, _) => " and records no platform's image for it (the lock was written before hubtrust recorded them: pin it again)".to_string(),
            (Some(_), Some(pinned)) => format!(", whose {} image is {}", self.platform, pinned.config),
            (Some(pinned), None) => format!(
                ", for {} only, not {}",
                pinned.keys().cloned().collect::<Vec<_>>().join(" and "),
                self.platform
            ),
        };
        Err(format!(
            "the docker daemon holds {} ({}, {held}), which is not the pinned image: the lock pins {by_digest}{platform}",
            self.id, self.platform
        ))
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
            platforms: BTreeMap::new(),
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

    fn pinned_platforms() -> BTreeMap<String, PlatformImage> {
        BTreeMap::from([(
            "linux/amd64".to_string(),
            PlatformImage {
                manifest: digest('f'),
                config: digest('e'),
            },
        )])
    }

    fn held(id: String, platform: &str, repo_digests: &[String]) -> HeldImage {
        HeldImage {
            id,
            platform: platform.into(),
            repo_digests: repo_digests.to_vec(),
        }
    }

    #[test]
    fn a_held_image_is_the_pinned_one_by_registry_digest_or_by_its_platforms_id() {
        let image = "quay.io/jupyterhub/k8s-hub:4.4.0";
        let pin = digest('a');
        let platforms = pinned_platforms();
        // Pulled by digest: docker lists it.
        let pulled = held(
            digest('9'),
            "linux/amd64",
            &[format!("quay.io/jupyterhub/k8s-hub@{pin}")],
        );
        assert_eq!(pulled.is_pinned(image, &pin, None), Ok(()));
        // Loaded from an archive: no registry digest, the config's id.
        let loaded = held(digest('e'), "linux/amd64", &[]);
        assert_eq!(loaded.is_pinned(image, &pin, Some(&platforms)), Ok(()));
        // The containerd image store names an image by its index.
        assert_eq!(
            held(pin.clone(), "linux/amd64", &[]).is_pinned(image, &pin, None),
            Ok(())
        );

        // Another image under the tag, another repository's digest, the
        // right id for another platform, or a lock without platforms: each
        // refused, naming what is held and what is pinned.
        let other = held(digest('7'), "linux/amd64", &[]);
        let why = other.is_pinned(image, &pin, Some(&platforms)).unwrap_err();
        assert!(
            why.contains(&digest('7'))
                && why.contains("no registry digest")
                && why.contains(&format!("quay.io/jupyterhub/k8s-hub@{pin}"))
                && why.contains(&format!("linux/amd64 image is {}", digest('e'))),
            "{why}"
        );
        let elsewhere = held(
            digest('9'),
            "linux/amd64",
            &[format!("quay.io/someone/k8s-hub@{pin}")],
        );
        assert!(elsewhere.is_pinned(image, &pin, Some(&platforms)).is_err());
        let arm = held(digest('e'), "linux/arm64", &[]);
        let why = arm.is_pinned(image, &pin, Some(&platforms)).unwrap_err();
        assert!(
            why.contains("for linux/amd64 only, not linux/arm64"),
            "{why}"
        );
        let why = loaded.is_pinned(image, &pin, None).unwrap_err();
        assert!(why.contains("pin it again"), "{why}");
    }

    #[test]
    fn inspect_output_is_read_and_a_lock_keeps_platforms_and_refuses_a_bad_one() {
        let line = format!(
            "{} linux/arm64/v8 quay.io/a/b@{} quay.io/a/c@{}\n",
            digest('1'),
            digest('2'),
            digest('3')
        );
        let read = HeldImage::parse(&line).unwrap();
        assert_eq!(read.platform, "linux/arm64/v8");
        assert_eq!(read.repo_digests.len(), 2);
        assert_eq!(HeldImage::parse(""), None);

        let mut with_platforms = lock();
        with_platforms
            .platforms
            .insert("mitmproxy/mitmproxy:11.0.2".into(), pinned_platforms());
        let text = with_platforms.render(Path::new("upstream.toml"));
        let back = ImageLock::parse(&text, Path::new("upstream.lock")).unwrap();
        assert_eq!(back, with_platforms);
        // The same digests with platforms newly recorded count as moved.
        assert_eq!(lock().moved(&with_platforms).len(), 1);
        let bad = text.replace(&digest('e'), "sha256:short");
        let err = ImageLock::parse(&bad, Path::new("upstream.lock"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sha256:short"), "{err}");
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
