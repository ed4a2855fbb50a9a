//! Pinning images by digest: a tag is resolved to the digest its registry
//! serves for it now, through the registry's HTTP API (the OCI distribution
//! spec), as `docker pull` does before it fetches anything. A run then
//! pulls and uses that digest only, so a tag moved upstream changes nothing
//! until someone pins again.

#[cfg(any(test, feature = "loopback-registry"))]
pub mod loopback;

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::body::Bytes;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{HarnessError, Result};

/// The manifest kinds a resolver accepts, multi-platform indexes first: the
/// digest pinned is then the index's, which every platform's pull accepts.
const MANIFEST_KINDS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// An image reference taken apart as docker reads it:
/// `[registry/]repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// As written, e.g. `quay.io`; `docker.io` when none is written.
    pub registry: String,
    /// e.g. `jupyterhub/k8s-hub`; Docker Hub's single names get `library/`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageReference {
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |why: &str| HarnessError::Registry {
            reference: text.into(),
            message: format!("not an image reference: {why}"),
        };
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                if !is_digest(digest) {
                    return Err(invalid("the digest is not `sha256:` and 64 hex digits"));
                }
                (name, Some(digest.to_string()))
            }
            None => (text, None),
        };
        // A tag is what follows the last colon after the last slash (a
        // colon before it belongs to the registry's port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(name[last_slash + i + 1..].to_string()),
            ),
            None => (name, None),
        };
        // The first part names a registry only if it looks like a host.
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let valid_part = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        };
        if !repository.split('/').all(valid_part) {
            return Err(invalid(
                "a repository is lowercase letters, digits, `.`, `_`, `-` and `/`",
            ));
        }
        if tag.as_deref().is_some_and(|t| t.is_empty()) {
            return Err(invalid("the tag after `:` is empty"));
        }
        if tag.is_none() && digest.is_none() {
            return Err(invalid(
                "it names neither a tag nor a digest (write `:tag`; hubtrust never assumes `latest`)",
            ));
        }
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry's API base. Loopback registries speak plain HTTP, as
    /// docker itself allows for 127.0.0.0/8 without configuration.
    fn api_base(&self) -> String {
        let host = if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            self.registry.as_str()
        };
        let host_only = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let loopback = host_only == "localhost"
            || host_only
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback());
        let scheme = if loopback { "http" } else { "https" };
        format!("{scheme}://{host}/v2/{}", self.repository)
    }

    /// The reference docker is given for a pinned image: the name as
    /// written, at `digest` (a tag beside a digest would be ignored by
    /// docker anyway, and would only mislead a reader).
    pub fn at_digest(&self, digest: &str) -> String {
        let name = if self.registry == "docker.io" {
            format!("docker.io/{}", self.repository)
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        format!("{name}@{digest}")
    }
}

impl std::fmt::Display for ImageReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// An HTTP client for registries: it trusts what the build host trusts
/// (`HUBTRUST_BUILD_CA`, default the system's CA bundle), like the offline
/// image build, and goes through the environment's proxy.
pub fn client() -> Result<reqwest::Client> {
    let bundle = std::env::var("HUBTRUST_BUILD_CA")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60));
    // A missing bundle leaves no roots: registries on loopback (plain
    // HTTP) still work, and an HTTPS registry fails naming the bundle.
    if let Ok(pem) = std::fs::read(&bundle) {
        for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
            if let Ok(cert) = reqwest::Certificate::from_der(&cert) {
                builder = builder.add_root_certificate(cert);
            }
        }
    }
    builder.build().map_err(|e| HarnessError::Registry {
        reference: "(any)".into(),
        message: format!("make an HTTP client: {e}"),
    })
}

/// One platform's image behind a pinned digest: its manifest's digest and
/// its config's. The config digest is the image id docker's own store
/// gives the image, and it survives `docker save` and `docker load`, which
/// drop the registry digest: it is how an image loaded from an archive is
/// known to be the pinned one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformImage {
    pub manifest: String,
    pub config: String,
}

/// What a tag resolves to now: the digest its registry serves, and each
/// platform's image behind it, keyed `os/architecture[/variant]` as
/// `docker image inspect` names a platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    pub digest: String,
    pub platforms: BTreeMap<String, PlatformImage>,
}

/// The parts of an image index or manifest a pin reads.
#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
    #[serde(default)]
    config: Option<Descriptor>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

/// A platform as an index entry or an image config states it.
#[derive(Deserialize)]
struct Platform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Platform {
    fn key(&self) -> String {
        match &self.variant {
            Some(variant) if !variant.is_empty() => {
                format!("{}/{}/{variant}", self.os, self.architecture)
            }
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// Anonymous reads from one repository of a registry, with the bearer
/// token it asks for once it has asked.
struct Session<'a> {
    http: &'a reqwest::Client,
    reference: &'a ImageReference,
    token: Option<String>,
}

impl Session<'_> {
    fn error(&self, message: String) -> HarnessError {
        HarnessError::Registry {
            reference: self.reference.to_string(),
            message,
        }
    }

    /// `GET <api base>/<path>`: its bytes, which must hash to `digest`
    /// when the caller knows it, or `None` when the registry has no such
    /// thing.
    async fn get(&mut self, path: &str, expected: Option<&str>) -> Result<Option<Bytes>> {
        let (http, reference) = (self.http, self.reference);
        let url = format!("{}/{path}", reference.api_base());
        let unreachable = |e: reqwest::Error| HarnessError::Registry {
            reference: reference.to_string(),
            message: format!(
                "{} does not answer: {e} (fix: pin on a machine that reaches it; {})",
                reference.registry,
                "a proxy is taken from HTTPS_PROXY, a private CA from HUBTRUST_BUILD_CA"
            ),
        };
        let send = |token: Option<&String>| {
            let mut request = http.get(&url).header(ACCEPT, MANIFEST_KINDS);
            if let Some(token) = token {
                request = request.header(AUTHORIZATION, format!("Bearer {token}"));
            }
            request.send()
        };
        let mut answer = send(self.token.as_ref()).await.map_err(unreachable)?;
        if answer.status() == StatusCode::UNAUTHORIZED && self.token.is_none() {
            let challenge = bearer_challenge(answer.headers()).ok_or_else(|| {
                self.error("the registry wants credentials other than an anonymous bearer token (hubtrust pins public images only)".into())
            })?;
            let token = anonymous_token(http, &challenge, reference)
                .await
                .map_err(|e| self.error(e))?;
            answer = send(Some(&token)).await.map_err(unreachable)?;
            self.token = Some(token);
        }
        match answer.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.error(format!(
                    "{} refuses an anonymous pull ({})",
                    self.reference.registry,
                    answer.status()
                )))
            }
            status => {
                return Err(self.error(format!(
                    "{} answered {status} for {path}",
                    self.reference.registry
                )))
            }
        }
        let named = header(answer.headers(), "docker-content-digest");
        let body = answer.bytes().await.map_err(unreachable)?;
        let hashed = digest_of(&body);
        // A registry's word for what it sent, and the caller's, are both
        // checked against the bytes themselves.
        for claimed in [named.as_deref(), expected].into_iter().flatten() {
            if claimed != hashed {
                return Err(self.error(format!(
                    "{path} was sent as {claimed}, but its bytes hash to {hashed}"
                )));
            }
        }
        Ok(Some(body))
    }

    /// A manifest, read for the config it names.
    async fn config_of(&mut self, digest: &str) -> Result<String> {
        let body = self
            .get(&format!("manifests/{digest}"), Some(digest))
            .await?
            .ok_or_else(|| {
                self.error(format!("its index names {digest}, which it does not serve"))
            })?;
        let manifest: Manifest = serde_json::from_slice(&body)
            .map_err(|e| self.error(format!("the manifest {digest} is not JSON: {e}")))?;
        manifest
            .config
            .map(|c| c.digest)
            .filter(|c| is_digest(c))
            .ok_or_else(|| self.error(format!("the manifest {digest} names no config")))
    }
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The digest the registry serves for `reference`'s tag now (or confirms
/// its digest), with each platform's image behind it. Anonymous pulls are
/// what public images need; a registry that asks for a bearer token gets
/// one from the realm it names.
pub async fn resolve(http: &reqwest::Client, reference: &ImageReference) -> Result<ResolvedImage> {
    let wanted = reference
        .tag
        .as_deref()
        .or(reference.digest.as_deref())
        .unwrap_or_default();
    let mut session = Session {
        http,
        reference,
        token: None,
    };
    let body = session
        .get(&format!("manifests/{wanted}"), None)
        .await?
        .ok_or_else(|| {
            session.error(format!(
                "{} has no such manifest (fix: check the tag in the image list)",
                reference.registry
            ))
        })?;
    let digest = digest_of(&body);
    if let Some(expected) = &reference.digest {
        if reference.tag.is_none() && expected != &digest {
            return Err(session.error(format!("the registry serves {digest} for it")));
        }
    }
    let manifest: Manifest = serde_json::from_slice(&body)
        .map_err(|e| session.error(format!("its manifest is not JSON: {e}")))?;
    let mut platforms = BTreeMap::new();
    match (manifest.manifests, manifest.config) {
        (Some(entries), _) => {
            // Attestations sit in indexes as `unknown/unknown` entries.
            for entry in entries {
                let Some(platform) = entry.platform.filter(|p| p.os != "unknown") else {
                    continue;
                };
                let config = session.config_of(&entry.digest).await?;
                platforms.insert(
                    platform.key(),
                    PlatformImage {
                        manifest: entry.digest,
                        config,
                    },
                );
            }
        }
        (None, Some(config)) => {
            // A single image: its platform is in its config.
            let blob = session
                .get(&format!("blobs/{}", config.digest), Some(&config.digest))
                .await?
                .ok_or_else(|| {
                    session.error(format!("it does not serve its config {}", config.digest))
                })?;
            let platform: Platform = serde_json::from_slice(&blob)
                .map_err(|e| session.error(format!("its config names no platform: {e}")))?;
            platforms.insert(
                platform.key(),
                PlatformImage {
                    manifest: digest.clone(),
                    config: config.digest,
                },
            );
        }
        (None, None) => {}
    }
    if platforms.is_empty() {
        return Err(session.error(format!(
            "{digest} is neither an image index with a platform's image nor an image manifest"
        )));
    }
    Ok(ResolvedImage { digest, platforms })
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// `Bearer realm="…",service="…",scope="…"` as key-value pairs.
fn bearer_challenge(headers: &HeaderMap) -> Option<Vec<(String, String)>> {
    let value = header(headers, WWW_AUTHENTICATE.as_str())?;
    let params = value.strip_prefix("Bearer ")?;
    let mut pairs = Vec::new();
    let mut rest = params.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let after = after.trim_start();
        let (value, remaining) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').map_or((after, ""), |(v, r)| (v, r)),
        };
        pairs.push((key.trim().to_string(), value.to_string()));
        rest = remaining.trim_start_matches([',', ' ']);
    }
    pairs.iter().any(|(k, _)| k == "realm").then_some(pairs)
}

/// An anonymous pull token from the challenge's realm.
async fn anonymous_token(
    http: &reqwest::Client,
    challenge: &[(String, String)],
    reference: &ImageReference,
) -> std::result::Result<String, String> {
    let get = |key: &str| {
        challenge
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let realm = get("realm").unwrap_or_default();
    let scope = get("scope").unwrap_or_else(|| format!("repository:{}:pull", reference.repository));
    let mut query = vec![("scope", scope)];
    if let Some(service) = get("service") {
        query.push(("service", service));
    }
    let answer = http
        .get(&realm)
        .query(&query)
        .send()
        .await
        .map_err(|e| format!("the token service {realm} does not answer: {e}"))?;
    if !answer.status().is_success() {
        return Err(format!(
            "the token service {realm} refused an anonymous token ({})",
            answer.status()
        ));
    }
    let body: serde_json::Value = answer
        .json()
        .await
        .map_err(|e| format!("the token service {realm} sent no JSON: {e}"))?;
    body.get("token")
        .or_else(|| body.get("access_token"))
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("the token service {realm} sent no token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_read_as_docker_reads_them() {
        let hub = ImageReference::parse("quay.io/jupyterhub/k8s-hub:4.3.3").unwrap();
        assert_eq!(
            (hub.registry.as_str(), hub.repository.as_str()),
            ("quay.io", "jupyterhub/k8s-hub")
        );
        assert_eq!(hub.tag.as_deref(), Some("4.3.3"));
        assert_eq!(hub.api_base(), "https://quay.io/v2/jupyterhub/k8s-hub");

        let hubbed = ImageReference::parse("mitmproxy/mitmproxy:11.0.2").unwrap();
        assert_eq!(hubbed.registry, "docker.io");
        assert_eq!(
            hubbed.api_base(),
            "https://registry-1.docker.io/v2/mitmproxy/mitmproxy"
        );
        let official = ImageReference::parse("debian:12").unwrap();
        assert_eq!(official.repository, "library/debian");

        let local = ImageReference::parse("127.0.0.1:5000/vendor/chp:5").unwrap();
        assert_eq!(local.registry, "127.0.0.1:5000");
        assert_eq!(local.api_base(), "http://127.0.0.1:5000/v2/vendor/chp");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            local.at_digest(&digest),
            format!("127.0.0.1:5000/vendor/chp@{digest}")
        );
    }

    #[test]
    fn a_reference_without_a_tag_or_with_a_bad_digest_is_refused() {
        for bad in [
            "quay.io/jupyterhub/k8s-hub",
            "quay.io/jupyterhub/k8s-hub:",
            "quay.io/Jupyterhub/hub:1",
            "quay.io/jupyterhub/k8s-hub@sha256:abc",
        ] {
            let err = ImageReference::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains(bad) && err.contains("not an image reference"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_bearer_challenge_is_read_with_quoted_commas() {
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
                .parse()
                .unwrap(),
        );
        let pairs = bearer_challenge(&headers).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "registry.example".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
    }
}

#[cfg(test)]
mod resolving {
    use super::loopback::LoopbackRegistry;
    use super::*;

    const INDEX: &str = "application/vnd.oci.image.index.v1+json";

    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    /// An image manifest naming `config`, stored under its digest.
    fn put_image(registry: &LoopbackRegistry, repository: &str, config: &str) -> String {
        let body = format!(r#"{{"config":{{"digest":"{config}"}},"layers":[]}}"#);
        let digest = digest_of(body.as_bytes());
        registry.put_manifest(repository, &digest, MANIFEST, body.as_bytes())
    }

    fn config(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[tokio::test]
    async fn a_tag_resolves_to_its_index_and_each_platforms_image_behind_a_bearer_challenge() {
        let dir = scratch();
        let registry = LoopbackRegistry::start(dir.path().to_path_buf(), true)
            .await
            .unwrap();
        let amd64 = put_image(&registry, "vendor/hub", &config('a'));
        let arm64 = put_image(&registry, "vendor/hub", &config('b'));
        let attestation = put_image(&registry, "vendor/hub", &config('c'));
        let index = format!(
            r#"{{"manifests":[
            {{"digest":"{amd64}","platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"digest":"{arm64}","platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"digest":"{attestation}","platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#
        );
        let served = registry.put_manifest("vendor/hub", "5.0", INDEX, index.as_bytes());
        let http = client().unwrap();
        let reference =
            ImageReference::parse(&format!("{}/vendor/hub:5.0", registry.host())).unwrap();
        let resolved = resolve(&http, &reference).await.unwrap();
        assert_eq!(resolved.digest, served);
        assert_eq!(resolved.digest, digest_of(index.as_bytes()));
        assert_eq!(
            resolved.platforms,
            BTreeMap::from([
                (
                    "linux/amd64".to_string(),
                    PlatformImage {
                        manifest: amd64,
                        config: config('a')
                    }
                ),
                (
                    "linux/arm64/v8".to_string(),
                    PlatformImage {
                        manifest: arm64,
                        config: config('b')
                    }
                ),
            ])
        );
        // The tag moves: the next resolution follows it.
        let moved_index = index.replace("arm64", "s390x");
        let moved = registry.put_manifest("vendor/hub", "5.0", INDEX, moved_index.as_bytes());
        assert_ne!(moved, served);
        let again = resolve(&http, &reference).await.unwrap();
        assert_eq!(again.digest, moved);
        assert!(again.platforms.contains_key("linux/s390x/v8"));
    }

    #[tokio::test]
    async fn a_single_image_is_pinned_for_the_platform_its_config_states() {
        let dir = scratch();
        let registry = LoopbackRegistry::start(dir.path().to_path_buf(), false)
            .await
            .unwrap();
        let config = registry
            .put_blob(br#"{"architecture":"amd64","os":"linux","rootfs":{}}"#)
            .unwrap();
        let body = format!(r#"{{"config":{{"digest":"{config}"}},"layers":[]}}"#);
        let served = registry.put_manifest("vendor/lab", "1", MANIFEST, body.as_bytes());
        let http = client().unwrap();
        let reference =
            ImageReference::parse(&format!("{}/vendor/lab:1", registry.host())).unwrap();
        let resolved = resolve(&http, &reference).await.unwrap();
        assert_eq!(
            resolved.platforms,
            BTreeMap::from([(
                "linux/amd64".to_string(),
                PlatformImage {
                    manifest: served,
                    config
                }
            )])
        );
    }

    #[tokio::test]
    async fn an_index_entry_whose_bytes_are_not_its_digest_is_refused() {
        let dir = scratch();
        let registry = LoopbackRegistry::start(dir.path().to_path_buf(), false)
            .await
            .unwrap();
        let honest = format!(r#"{{"config":{{"digest":"{}"}}}}"#, config('a'));
        let claimed = digest_of(honest.as_bytes());
        // The registry serves other bytes under the digest the index names.
        let other = format!(r#"{{"config":{{"digest":"{}"}}}}"#, config('d'));
        registry.put_manifest("vendor/proxy", &claimed, MANIFEST, other.as_bytes());
        let index = format!(
            r#"{{"manifests":[{{"digest":"{claimed}","platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        registry.put_manifest("vendor/proxy", "2", INDEX, index.as_bytes());
        let http = client().unwrap();
        let reference =
            ImageReference::parse(&format!("{}/vendor/proxy:2", registry.host())).unwrap();
        let err = resolve(&http, &reference).await.unwrap_err().to_string();
        assert!(
            err.contains(&claimed) && err.contains("its bytes hash to"),
            "{err}"
        );
        // An index with no platform's image pins nothing.
        registry.put_manifest("vendor/proxy", "3", INDEX, br#"{"manifests":[]}"#);
        let empty = ImageReference::parse(&format!("{}/vendor/proxy:3", registry.host())).unwrap();
        let err = resolve(&http, &empty).await.unwrap_err().to_string();
        assert!(err.contains("neither an image index"), "{err}");
    }

    #[tokio::test]
    async fn an_unknown_tag_and_a_silent_registry_are_named() {
        let dir = scratch();
        let registry = LoopbackRegistry::start(dir.path().to_path_buf(), false)
            .await
            .unwrap();
        let http = client().unwrap();
        let missing =
            ImageReference::parse(&format!("{}/vendor/hub:9.9", registry.host())).unwrap();
        let err = resolve(&http, &missing).await.unwrap_err().to_string();
        assert!(
            err.contains("vendor/hub:9.9") && err.contains("no such manifest"),
            "{err}"
        );

        // A port nobody listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let silent = ImageReference::parse(&format!("127.0.0.1:{port}/vendor/hub:5.0")).unwrap();
        let err = resolve(&http, &silent).await.unwrap_err().to_string();
        assert!(
            err.contains("does not answer") && err.contains("fix:"),
            "{err}"
        );
    }
}
