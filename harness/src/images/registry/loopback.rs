//! A registry on loopback for tests: enough of the distribution API for
//! `docker push`, `docker pull` and hubtrust's resolver, with the anonymous
//! bearer-token dance public registries ask for. Blobs are kept in a
//! directory; nothing leaves this machine.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};

const TOKEN: &str = "loopback-pull-token";

/// A running loopback registry; stopped when dropped.
pub struct LoopbackRegistry {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    addr: SocketAddr,
    blobs: PathBuf,
    /// (repository, tag or digest) → (media type, manifest bytes).
    manifests: Mutex<HashMap<(String, String), (String, Bytes)>>,
    uploads: AtomicUsize,
    manifest_requests: AtomicUsize,
    require_token: bool,
}

type Answer = Response<Full<Bytes>>;

impl LoopbackRegistry {
    /// Serves on 127.0.0.1 (a free port), keeping blobs under `dir`. With
    /// `require_token`, every API call needs the bearer token its `/token`
    /// realm hands out, as Docker Hub and quay.io do.
    pub async fn start(dir: PathBuf, require_token: bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("uploads"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            addr,
            blobs: dir,
            manifests: Mutex::default(),
            uploads: AtomicUsize::new(0),
            manifest_requests: AtomicUsize::new(0),
            require_token,
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// `127.0.0.1:<port>`, the registry part of its image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stores a manifest under `tag` (and its digest), as a push would;
    /// returns the digest.
    pub fn put_manifest(
        &self,
        repository: &str,
        tag: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        self.state
            .store_manifest(repository, tag, media_type, Bytes::copy_from_slice(body))
    }

    /// Stores a blob, as a push would; returns its digest.
    pub fn put_blob(&self, body: &[u8]) -> std::io::Result<String> {
        let digest = digest_of(body);
        if let Some(path) = self.state.blob_path(&digest) {
            std::fs::write(path, body)?;
        }
        Ok(digest)
    }

    /// How many manifest requests (HEAD or GET) it has answered.
    pub fn manifest_requests(&self) -> usize {
        self.state.manifest_requests.load(Ordering::SeqCst)
    }
}

impl Drop for LoopbackRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(status: StatusCode, headers: &[(&str, String)], body: Bytes) -> Answer {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn status(status: StatusCode) -> Answer {
    answer(status, &[], Bytes::new())
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl State {
    fn store_manifest(&self, repository: &str, tag: &str, media_type: &str, body: Bytes) -> String {
        let digest = digest_of(&body);
        if let Ok(mut manifests) = self.manifests.lock() {
            for reference in [tag, digest.as_str()] {
                manifests.insert(
                    (repository.to_string(), reference.to_string()),
                    (media_type.to_string(), body.clone()),
                );
            }
        }
        digest
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        super::is_digest(digest).then(|| self.blobs.join(digest.replace(':', "-")))
    }

    fn authorised(&self, request: &Request<Incoming>) -> bool {
        !self.require_token
            || request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {TOKEN}"))
    }

    async fn handle(&self, request: Request<Incoming>) -> Answer {
        let path = request.uri().path().to_string();
        if path == "/token" {
            return answer(
                StatusCode::OK,
                &[("content-type", "application/json".into())],
                Bytes::from(serde_json::json!({ "token": TOKEN }).to_string()),
            );
        }
        let Some(api) = path.strip_prefix("/v2/") else {
            return status(StatusCode::NOT_FOUND);
        };
        if !self.authorised(&request) {
            let scope = api
                .rsplit_once("/manifests/")
                .or_else(|| api.rsplit_once("/blobs/"))
                .map(|(name, _)| format!(",scope=\"repository:{name}:pull\""))
                .unwrap_or_default();
            return answer(
                StatusCode::UNAUTHORIZED,
                &[(
                    "www-authenticate",
                    format!(
                        "Bearer realm=\"http://{}/token\",service=\"loopback\"{scope}",
                        self.addr
                    ),
                )],
                Bytes::new(),
            );
        }
        let query = request.uri().query().unwrap_or("").to_string();
        let digest_param = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("digest="))
            .map(|d| d.replace("%3A", ":").replace("%3a", ":"));
        let method = request.method().clone();
        if api.is_empty() {
            return answer(
                StatusCode::OK,
                &[("docker-distribution-api-version", "registry/2.0".into())],
                Bytes::from_static(b"{}"),
            );
        }
        if let Some((name, reference)) = api.rsplit_once("/manifests/") {
            return self.manifest(&method, name, reference, request).await;
        }
        if let Some((name, upload)) = api.split_once("/blobs/uploads") {
            let id = upload.trim_start_matches('/');
            return self.upload(&method, name, id, digest_param, request).await;
        }
        if let Some((_, digest)) = api.rsplit_once("/blobs/") {
            return self.blob(&method, digest);
        }
        status(StatusCode::NOT_FOUND)
    }

    async fn manifest(
        &self,
        method: &Method,
        name: &str,
        reference: &str,
        request: Request<Incoming>,
    ) -> Answer {
        if method == Method::PUT {
            let media_type = request
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/vnd.docker.distribution.manifest.v2+json")
                .to_string();
            let Ok(body) = request.into_body().collect().await else {
                return status(StatusCode::BAD_REQUEST);
            };
            let digest = self.store_manifest(name, reference, &media_type, body.to_bytes());
            return answer(
                StatusCode::CREATED,
                &[
                    ("location", format!("/v2/{name}/manifests/{digest}")),
                    ("docker-content-digest", digest),
                ],
                Bytes::new(),
            );
        }
        self.manifest_requests.fetch_add(1, Ordering::SeqCst);
        let found = self
            .manifests
            .lock()
            .ok()
            .and_then(|m| m.get(&(name.to_string(), reference.to_string())).cloned());
        let Some((media_type, body)) = found else {
            return status(StatusCode::NOT_FOUND);
        };
        let headers = [
            ("content-type", media_type),
            ("docker-content-digest", digest_of(&body)),
            ("content-length", body.len().to_string()),
        ];
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            body
        };
        answer(StatusCode::OK, &headers, body)
    }

    fn blob(&self, method: &Method, digest: &str) -> Answer {
        let Some(bytes) = self.blob_path(digest).and_then(|p| std::fs::read(p).ok()) else {
            return status(StatusCode::NOT_FOUND);
        };
        let headers = [
            ("content-type", "application/octet-stream".to_string()),
            ("docker-content-digest", digest.to_string()),
            ("content-length", bytes.len().to_string()),
        ];
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(bytes)
        };
        answer(StatusCode::OK, &headers, body)
    }

    /// Chunked and monolithic blob uploads: POST opens one, PATCH appends,
    /// PUT with `?digest=` appends the rest and checks the digest.
    async fn upload(
        &self,
        method: &Method,
        name: &str,
        id: &str,
        digest: Option<String>,
        request: Request<Incoming>,
    ) -> Answer {
        let id = if method == Method::POST {
            self.uploads.fetch_add(1, Ordering::SeqCst).to_string()
        } else {
            id.to_string()
        };
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return status(StatusCode::NOT_FOUND);
        }
        let partial = self.blobs.join("uploads").join(&id);
        let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
        else {
            return status(StatusCode::INTERNAL_SERVER_ERROR);
        };
        let mut body = request.into_body();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return status(StatusCode::BAD_REQUEST);
            };
            if let Some(data) = frame.data_ref() {
                if file.write_all(data).is_err() {
                    return status(StatusCode::INTERNAL_SERVER_ERROR);
                }
            }
        }
        drop(file);
        let location = format!("/v2/{name}/blobs/uploads/{id}");
        let size = std::fs::metadata(&partial).map_or(0, |m| m.len());
        let finish = matches!(*method, Method::PUT) || (method == Method::POST && digest.is_some());
        if !finish {
            return answer(
                StatusCode::ACCEPTED,
                &[
                    ("location", location),
                    ("docker-upload-uuid", id),
                    ("range", format!("0-{}", size.saturating_sub(1))),
                ],
                Bytes::new(),
            );
        }
        let Some((digest, target)) = digest.and_then(|d| Some((d.clone(), self.blob_path(&d)?)))
        else {
            return status(StatusCode::BAD_REQUEST);
        };
        let Ok(bytes) = std::fs::read(&partial) else {
            return status(StatusCode::INTERNAL_SERVER_ERROR);
        };
        if digest_of(&bytes) != digest || std::fs::rename(&partial, &target).is_err() {
            return status(StatusCode::BAD_REQUEST);
        }
        answer(
            StatusCode::CREATED,
            &[
                ("location", format!("/v2/{name}/blobs/{digest}")),
                ("docker-content-digest", digest),
            ],
            Bytes::new(),
        )
    }
}
