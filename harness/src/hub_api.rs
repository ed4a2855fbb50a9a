//! The hub's REST API as the operator calls it through the public proxy:
//! users, their servers, their tokens. A stack hubtrust started and a
//! deployment the chart started are called alike; [`check_public_side`] is
//! what hubtrust can judge of a deployment it reaches only from outside.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Serialize;

use crate::error::{HarnessError, Result};
use crate::lab::{CellRun, LabSession};
use crate::secret::Secret;

/// The HTTP client the operator uses: it trusts `roots` only, sends
/// `token`, and reaches `public_name` at `public_addr` whatever DNS says.
pub fn operator_client(
    roots: &[&str],
    public_name: &str,
    public_addr: SocketAddr,
    token: &Secret,
) -> Result<reqwest::Client> {
    let mut auth = reqwest::header::HeaderValue::from_str(&format!("token {}", token.expose()))
        .map_err(|e| HarnessError::Pki(format!("token header: {e}")))?;
    auth.set_sensitive(true);
    let headers = reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, auth)]);
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false);
    for pem in roots {
        let root = reqwest::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| HarnessError::Pki(format!("load a root into the HTTP client: {e}")))?;
        builder = builder.add_root_certificate(root);
    }
    builder
        .resolve(public_name, public_addr)
        .default_headers(headers)
        // A fresh connection per request: every handshake then happens
        // while a wire capture can see it.
        .pool_max_idle_per_host(0)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| HarnessError::Pki(format!("build the operator HTTP client: {e}")))
}

pub async fn hub_api_error(call: &str, response: reqwest::Response) -> HarnessError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    HarnessError::HubApi {
        call: call.into(),
        message: format!(
            "HTTP {status}: {}",
            body.chars().take(300).collect::<String>()
        ),
    }
}

fn unreachable(call: &str, e: reqwest::Error) -> HarnessError {
    HarnessError::HubApi {
        call: call.into(),
        message: e.to_string(),
    }
}

/// What asking the hub to start a server came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStart {
    /// Started, or already running (the hub answers 400 then).
    Accepted,
    /// The hub tried and the spawner failed: a defect of the deployment.
    SpawnerFailed { message: String },
}

/// The hub API at `base` (`https://<public name>:<port>`).
pub struct HubApi<'a> {
    pub http: &'a reqwest::Client,
    pub base: String,
}

impl HubApi<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}/hub/api{path}", self.base)
    }

    /// The hub's version, from `GET /hub/api`.
    pub async fn version(&self) -> Result<String> {
        let call = "GET /hub/api";
        let response = self
            .http
            .get(self.url(""))
            .send()
            .await
            .map_err(|e| unreachable(call, e))?;
        if !response.status().is_success() {
            return Err(hub_api_error(call, response).await);
        }
        let body: serde_json::Value = response.json().await.map_err(|e| unreachable(call, e))?;
        body["version"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| HarnessError::HubApi {
                call: call.into(),
                message: format!("the reply names no version: {body}"),
            })
    }

    /// Creates `user`; one that exists already is fine.
    pub async fn create_user(&self, user: &str) -> Result<()> {
        let call = format!("POST /users/{user}");
        match self
            .http
            .post(self.url(&format!("/users/{user}")))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() || r.status().as_u16() == 409 => Ok(()),
            Ok(r) => Err(hub_api_error(&call, r).await),
            Err(e) => Err(unreachable(&call, e)),
        }
    }

    pub async fn start_server(&self, user: &str) -> Result<ServerStart> {
        let call = format!("POST /users/{user}/server");
        match self
            .http
            .post(self.url(&format!("/users/{user}/server")))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() || r.status().as_u16() == 400 => {
                Ok(ServerStart::Accepted)
            }
            Ok(r) if r.status().is_server_error() => {
                let message = match hub_api_error(&call, r).await {
                    HarnessError::HubApi { message, .. } => message,
                    other => other.to_string(),
                };
                Ok(ServerStart::SpawnerFailed { message })
            }
            Ok(r) => Err(hub_api_error(&call, r).await),
            Err(e) => Err(unreachable(&call, e)),
        }
    }

    /// Whether `user`'s default server is ready, and the hub's word on it.
    pub async fn server_state(&self, user: &str) -> Result<(bool, String)> {
        let call = format!("GET /users/{user}");
        let response = self
            .http
            .get(self.url(&format!("/users/{user}")))
            .send()
            .await
            .map_err(|e| unreachable(&call, e))?;
        if !response.status().is_success() {
            return Err(hub_api_error(&call, response).await);
        }
        let body: serde_json::Value = response.json().await.map_err(|e| unreachable(&call, e))?;
        let server = &body["servers"][""];
        let ready = server["ready"].as_bool().unwrap_or(false);
        let pending = server["pending"].as_str().unwrap_or("none");
        Ok((ready, format!("ready: {ready}, pending: {pending}")))
    }

    /// A short-lived token of `user`'s own, with only what a browser
    /// session needs: access to this user's servers.
    pub async fn user_token(&self, user: &str) -> Result<Secret> {
        let call = format!("POST /users/{user}/tokens");
        let response = self
            .http
            .post(self.url(&format!("/users/{user}/tokens")))
            .json(&serde_json::json!({
                "expires_in": 3600,
                "note": "hubtrust lab session",
                "scopes": [format!("access:servers!user={user}")],
            }))
            .send()
            .await
            .map_err(|e| unreachable(&call, e))?;
        if !response.status().is_success() {
            return Err(hub_api_error(&call, response).await);
        }
        let body: serde_json::Value = response.json().await.map_err(|e| unreachable(&call, e))?;
        body["token"]
            .as_str()
            .map(Secret::new)
            .ok_or_else(|| HarnessError::HubApi {
                call,
                message: "the reply carries no token".into(),
            })
    }
}

/// Where a browser reaches the public side: the name it asks for, the
/// address it connects to, and the roots it verifies with.
pub struct PublicEntry {
    /// `https://<name>:<port>`
    pub base: String,
    pub name: String,
    pub addr: SocketAddr,
    pub roots_pem: String,
}

/// Logs `user` in through the hub's login form, as a browser does, then
/// opens the hub's home page with the session. Returns the login cookie.
pub async fn log_in_through_form(
    entry: &PublicEntry,
    user: &str,
    password: &Secret,
) -> Result<Secret> {
    let err = |call: &str, e: &dyn std::fmt::Display| HarnessError::HubApi {
        call: call.into(),
        message: e.to_string(),
    };
    let root = reqwest::Certificate::from_pem(entry.roots_pem.as_bytes())
        .map_err(|e| err("login client", &e))?;
    let browser = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve(&entry.name, entry.addr)
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| err("login client", &e))?;
    let base = &entry.base;
    let page = browser
        .get(format!("{base}/hub/login"))
        .send()
        .await
        .map_err(|e| err("GET /hub/login", &e))?
        .text()
        .await
        .map_err(|e| err("GET /hub/login", &e))?;
    let xsrf = regex::Regex::new(r#"name="_xsrf"\s+value="([^"]+)""#)
        .ok()
        .and_then(|re| re.captures(&page).map(|c| c[1].to_string()))
        .ok_or_else(|| err("GET /hub/login", &"the login form carries no _xsrf value"))?;
    let response = browser
        .post(format!("{base}/hub/login"))
        .form(&[
            ("username", user),
            ("password", password.expose()),
            ("_xsrf", &xsrf),
        ])
        .send()
        .await
        .map_err(|e| err("POST /hub/login", &e))?;
    let cookie = response
        .cookies()
        .find(|c| c.name() == "jupyterhub-hub-login")
        .map(|c| Secret::new(c.value()))
        .ok_or_else(|| {
            err(
                "POST /hub/login",
                &format!("HTTP {}: no login cookie was set", response.status()),
            )
        })?;
    let home = browser
        .get(format!("{base}/hub/home"))
        .send()
        .await
        .map_err(|e| err("GET /hub/home", &e))?;
    if !home.status().is_success() {
        return Err(err(
            "GET /hub/home",
            &format!("HTTP {} with the login cookie", home.status()),
        ));
    }
    Ok(cookie)
}

/// A deployment as an outsider knows it: its public URL, the CA its public
/// side chains to, a service token.
pub struct PublicSide<'a> {
    pub http: &'a reqwest::Client,
    /// `https://<public name>:<port>`
    pub base: String,
    pub public_name: String,
    pub roots_pem: String,
    /// Opens a TCP connection to the public side (the kernel websocket
    /// runs over it).
    pub connect: &'a (dyn Fn() -> BoxFuture<'a, std::io::Result<tokio::net::TcpStream>> + Sync),
}

/// What [`check_public_side`] found, each step with how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct PublicSideReport {
    pub hub_version: String,
    pub lab_ready_after_seconds: f64,
    pub cell: String,
}

/// The hub answers through the proxy over verified TLS, `user`'s lab
/// spawns and becomes ready within `spawn_deadline`, and a kernel cell
/// runs through the public proxy. Each failure names the step and what the
/// hub last said.
pub async fn check_public_side(
    side: &PublicSide<'_>,
    user: &str,
    code: &str,
    answer_deadline: Duration,
    spawn_deadline: Duration,
) -> Result<(PublicSideReport, CellRun)> {
    let api = HubApi {
        http: side.http,
        base: side.base.clone(),
    };
    let hub_version = poll_until(
        answer_deadline,
        "the hub through the public proxy",
        || async { api.version().await.map(Some) },
    )
    .await?;
    api.create_user(user).await?;
    if let ServerStart::SpawnerFailed { message } = api.start_server(user).await? {
        return Err(HarnessError::DeploymentDefect {
            component: format!("the lab of {user}"),
            check: format!("POST /users/{user}/server"),
            finding: format!("the hub could not start it: {message}"),
            last_lines: Vec::new(),
        });
    }
    let started = Instant::now();
    poll_until(spawn_deadline, &format!("the lab of {user}"), || async {
        let (ready, said) = api.server_state(user).await?;
        Ok(ready.then_some(said))
    })
    .await?;
    let lab_ready_after_seconds = started.elapsed().as_secs_f64();
    // Room for the slowest cell it carries: the tools' table on the chart,
    // each tool bounded by itself (40 s).
    let cell = run_cell_through_public_side(side, user, code, Duration::from_secs(120)).await?;
    Ok((
        PublicSideReport {
            hub_version,
            lab_ready_after_seconds,
            cell: cell.stdout.trim().to_string(),
        },
        cell,
    ))
}

/// Runs `code` in a new kernel of `user`'s running lab, as the user (a
/// token of theirs minted through the hub API), through the public side;
/// the cell gets `deadline`.
pub async fn run_cell_through_public_side(
    side: &PublicSide<'_>,
    user: &str,
    code: &str,
    deadline: Duration,
) -> Result<CellRun> {
    let api = HubApi {
        http: side.http,
        base: side.base.clone(),
    };
    let token = api.user_token(user).await?;
    let stream = (side.connect)()
        .await
        .map_err(|e| HarnessError::io("connect to the public proxy", e))?;
    LabSession {
        http: side.http,
        base_url: side.base.clone(),
        public_name: side.public_name.clone(),
        trust_pem: side.roots_pem.clone(),
        token,
        user: user.to_string(),
        stream,
        kernel_id: None,
    }
    .run_cell_within(code, deadline)
    .await
}

/// Asks `attempt` until it yields a value or `deadline` passes; a timeout
/// names what was awaited and its last answer. The interval between asks
/// is a poll period, not a wait for something to happen.
async fn poll_until<T, F, Fut>(deadline: Duration, what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    const POLL_PERIOD: Duration = Duration::from_millis(500);
    let started = Instant::now();
    loop {
        let last = match attempt().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "not yet".to_string(),
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= deadline {
            return Err(HarnessError::NotReady {
                component: what.into(),
                check: "answers through the public proxy".into(),
                seconds: deadline.as_secs(),
                last_lines: vec![format!("last answer: {last}")],
            });
        }
        tokio::time::sleep(POLL_PERIOD).await;
    }
}
