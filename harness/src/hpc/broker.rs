//! hubtrust's reference tunnel broker: the REST contract of the HPC tunnel
//! web service (REFERENCE.md), served over HTTPS with token auth, driving
//! real `ssh`.
//!
//! - hub → lab: one ControlMaster per login node; each tunnel is an
//!   `-O forward -L 127.0.0.1:<local>:<compute node>:<port>` on it.
//! - lab → hub: per login node, an `ssh -R <bind>:<proxy>` whose session
//!   runs the login node's forced command `start` (and `status`, `stop`).
//!
//! Tunnels are persisted, so a restarted broker knows them and re-creates
//! them on `POST /api/restart/`. A monitor notices dead `ssh` processes,
//! reports them on `/api/health/` and re-creates them.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::error::{HarnessError, Result};

/// Everything the broker needs besides its token (which comes from the
/// environment, `HUBTRUST_BROKER_TOKEN`, so no file holds it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where tunnels are persisted across restarts.
    pub state_file: PathBuf,
    /// ControlMaster sockets and the `ssh` processes' logs.
    pub control_dir: PathBuf,
    pub identity: PathBuf,
    /// Pinned host keys, one per login node (by name, via HostKeyAlias).
    pub known_hosts: PathBuf,
    pub login_nodes: Vec<LoginNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginNode {
    pub name: String,
    /// Where the broker reaches the node's sshd.
    pub address: Ipv4Addr,
    pub user: String,
    /// The remote tunnel's listen side on the login node (`addr:port`).
    pub remote_bind: String,
    /// Where the remote tunnel's connections go on the broker's side
    /// (the proxy, `addr:port`).
    pub remote_target: String,
    /// Where the broker connects to check that the remote tunnel listens.
    pub remote_check: SocketAddr,
}

/// `POST /api/tunnel/`'s body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelRequest {
    pub servername: String,
    /// The login node to tunnel through.
    pub hostname: String,
    #[serde(default)]
    pub svc_name: Option<String>,
    #[serde(default)]
    pub svc_port: Option<u16>,
    pub target_node: String,
    pub target_port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TunnelRecord {
    #[serde(flatten)]
    request: TunnelRequest,
    local_port: u16,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    tunnels: BTreeMap<String, TunnelRecord>,
    remotes: BTreeSet<String>,
}

struct Running {
    wanted: Persisted,
    masters: BTreeMap<String, Child>,
    remotes: BTreeMap<String, Child>,
    /// Pieces the monitor found dead and has not yet brought back, with
    /// when it may next try.
    down: BTreeMap<String, tokio::time::Instant>,
}

struct Broker {
    config: BrokerConfig,
    /// Where the config came from: re-read when a login node is asked for
    /// that the broker does not know yet (an operator added one).
    config_path: Option<PathBuf>,
    login_nodes: std::sync::RwLock<Vec<LoginNode>>,
    token: String,
    running: Mutex<Running>,
}

#[derive(Debug)]
struct ApiError(StatusCode, String);

type ApiResult = std::result::Result<(StatusCode, serde_json::Value), ApiError>;

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// Serves the broker until the process ends.
pub async fn serve(
    config: BrokerConfig,
    config_path: Option<PathBuf>,
    token: String,
) -> Result<()> {
    let identity = crate::pki::Identity::load("tunnel-broker", &config.cert, &config.key)?;
    let tls = crate::probe::server_tls_config(&identity)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    std::fs::create_dir_all(&config.control_dir)
        .map_err(|e| HarnessError::io(format!("create {}", config.control_dir.display()), e))?;
    let wanted = match std::fs::read(&config.state_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| HarnessError::Provision {
            what: "tunnel broker state".into(),
            message: format!("{} is not broker state: {e}", config.state_file.display()),
        })?,
        Err(_) => Persisted::default(),
    };
    if !wanted.tunnels.is_empty() || !wanted.remotes.is_empty() {
        eprintln!(
            "broker: restarted with {} tunnel(s) and {} remote tunnel(s) on record; POST /api/restart/ re-creates them",
            wanted.tunnels.len(),
            wanted.remotes.len()
        );
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| HarnessError::io(format!("bind the broker to {}", config.listen), e))?;
    let broker = Arc::new(Broker {
        login_nodes: std::sync::RwLock::new(config.login_nodes.clone()),
        config,
        config_path,
        token,
        running: Mutex::new(Running {
            wanted,
            masters: BTreeMap::new(),
            remotes: BTreeMap::new(),
            down: BTreeMap::new(),
        }),
    });
    eprintln!("broker: listening on https://{}", broker.config.listen);
    tokio::spawn(monitor(broker.clone()));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, broker) = (acceptor.clone(), broker.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let broker = broker.clone();
                async move { Ok::<_, Infallible>(broker.handle(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

impl Broker {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let result = if !self.authorised(&request) {
            Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token (send `Authorization: token <token>`)".into(),
            ))
        } else {
            match read_json(request).await {
                Ok(body) => self.route(&method, &path, body).await,
                Err(e) => Err(e),
            }
        };
        let (status, body) = match result {
            Ok((status, body)) => (status, body),
            Err(ApiError(status, message)) => {
                eprintln!("broker: {method} {path} → {status}: {message}");
                (status, serde_json::json!({ "error": message }))
            }
        };
        let bytes = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let mut response = Response::new(Full::new(bytes));
        *response.status_mut() = status;
        response
    }

    fn authorised(&self, request: &Request<Incoming>) -> bool {
        let Some(value) = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let presented = value
            .strip_prefix("token ")
            .or_else(|| value.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(presented.as_bytes(), self.token.as_bytes())
    }

    async fn route(&self, method: &Method, path: &str, body: serde_json::Value) -> ApiResult {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match (method, segments.as_slice()) {
            (&Method::GET, ["api", "health"]) => self.health().await,
            (&Method::POST, ["api", "tunnel"]) => {
                let request: TunnelRequest = serde_json::from_value(body)
                    .map_err(|e| bad_request(format!("not a tunnel request: {e}")))?;
                self.create_tunnel(request).await
            }
            (&Method::GET, ["api", "tunnel"]) => self.list_tunnels().await,
            (&Method::GET, ["api", "tunnel", name]) => self.tunnel_status(name).await,
            (&Method::DELETE, ["api", "tunnel", name]) => self.delete_tunnel(name).await,
            (&Method::POST, ["api", "remote"]) => {
                let node = body
                    .get("hostname")
                    .and_then(|h| h.as_str())
                    .ok_or_else(|| bad_request("POST /api/remote/ needs {\"hostname\": …}"))?;
                self.start_remote(node).await
            }
            (&Method::GET, ["api", "remote", node])
            | (&Method::GET, ["api", "remotecheck", node]) => self.remote_status(node).await,
            (&Method::GET, ["api", "remote"]) | (&Method::GET, ["api", "remotecheck"]) => {
                let mut all = serde_json::Map::new();
                for node in self.login_node_names() {
                    all.insert(node.clone(), self.remote_status(&node).await?.1);
                }
                Ok((StatusCode::OK, all.into()))
            }
            (&Method::DELETE, ["api", "remote", node]) => self.stop_remote(node).await,
            (&Method::POST, ["api", "restart"]) => self.restart().await,
            _ => Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {method} {path}"),
            )),
        }
    }

    fn login_node(&self, name: &str) -> std::result::Result<LoginNode, ApiError> {
        let find = |nodes: &[LoginNode]| nodes.iter().find(|n| n.name == name).cloned();
        if let Some(node) = self.login_nodes.read().ok().and_then(|n| find(&n)) {
            return Ok(node);
        }
        if let Some(reloaded) = self.reload_login_nodes() {
            if let Some(node) = find(&reloaded) {
                eprintln!("broker: login node {name} added from the config file");
                return Ok(node);
            }
        }
        let known: Vec<String> = self
            .login_nodes
            .read()
            .map(|n| n.iter().map(|n| n.name.clone()).collect())
            .unwrap_or_default();
        Err(bad_request(format!(
            "unknown login node {name:?}; known: {known:?}"
        )))
    }

    fn reload_login_nodes(&self) -> Option<Vec<LoginNode>> {
        let bytes = std::fs::read(self.config_path.as_ref()?).ok()?;
        let config: BrokerConfig = serde_json::from_slice(&bytes).ok()?;
        let mut nodes = self.login_nodes.write().ok()?;
        *nodes = config.login_nodes;
        Some(nodes.clone())
    }

    fn login_node_names(&self) -> Vec<String> {
        self.login_nodes
            .read()
            .map(|n| n.iter().map(|n| n.name.clone()).collect())
            .unwrap_or_default()
    }

    async fn health(&self) -> ApiResult {
        let running = self.running.lock().await;
        if running.down.is_empty() && self.missing(&running).is_empty() {
            return Ok((StatusCode::OK, serde_json::Value::Null));
        }
        let mut down: Vec<String> = running.down.keys().cloned().collect();
        down.extend(self.missing(&running));
        Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "down": down }),
        ))
    }

    /// Wanted pieces with no process at all (after a broker restart).
    fn missing(&self, running: &Running) -> Vec<String> {
        let masters = running
            .wanted
            .tunnels
            .values()
            .map(|t| t.request.hostname.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|n| !running.masters.contains_key(n))
            .map(|n| format!("ssh master to {n}"));
        let remotes = running
            .wanted
            .remotes
            .iter()
            .filter(|n| !running.remotes.contains_key(*n))
            .map(|n| format!("remote tunnel on {n}"));
        masters.chain(remotes).collect()
    }

    async fn create_tunnel(&self, request: TunnelRequest) -> ApiResult {
        if request.servername.is_empty()
            || !request
                .servername
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad_request(format!(
                "servername {:?} must be letters, digits, '-', '_' or '.'",
                request.servername
            )));
        }
        let node = self.login_node(&request.hostname)?;
        let mut running = self.running.lock().await;
        if let Some(old) = running.wanted.tunnels.remove(&request.servername) {
            let _ = self.cancel_forward(&node, &old).await;
        }
        self.ensure_master(&mut running, &node).await?;
        let local_port = free_local_port()
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let record = TunnelRecord {
            request,
            local_port,
        };
        self.forward(&node, &record).await?;
        running
            .wanted
            .tunnels
            .insert(record.request.servername.clone(), record.clone());
        self.persist(&running)?;
        eprintln!(
            "broker: tunnel {} → 127.0.0.1:{} via {} to {}:{}",
            record.request.servername,
            local_port,
            node.name,
            record.request.target_node,
            record.request.target_port
        );
        Ok((StatusCode::CREATED, describe(&record, true)))
    }

    async fn list_tunnels(&self) -> ApiResult {
        let names: Vec<String> = {
            let running = self.running.lock().await;
            running.wanted.tunnels.keys().cloned().collect()
        };
        let mut all = Vec::new();
        for name in names {
            all.push(self.tunnel_status(&name).await?.1);
        }
        Ok((StatusCode::OK, all.into()))
    }

    async fn tunnel_status(&self, name: &str) -> ApiResult {
        let (record, master_alive) = {
            let mut running = self.running.lock().await;
            let record = running.wanted.tunnels.get(name).cloned().ok_or_else(|| {
                ApiError(
                    StatusCode::NOT_FOUND,
                    format!("no tunnel for servername {name:?}"),
                )
            })?;
            let alive = running
                .masters
                .get_mut(&record.request.hostname)
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            (record, alive)
        };
        let node = self.login_node(&record.request.hostname)?;
        let running = master_alive
            && self.control(&node, &["-O", "check"]).await.is_ok()
            && self.round_trip(&node).await
            && connects(SocketAddr::from((Ipv4Addr::LOCALHOST, record.local_port))).await;
        Ok((StatusCode::OK, describe(&record, running)))
    }

    async fn delete_tunnel(&self, name: &str) -> ApiResult {
        let mut running = self.running.lock().await;
        let record = running.wanted.tunnels.remove(name).ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no tunnel for servername {name:?}"),
            )
        })?;
        let node = self.login_node(&record.request.hostname)?;
        let _ = self.cancel_forward(&node, &record).await;
        self.persist(&running)?;
        Ok((StatusCode::NO_CONTENT, serde_json::Value::Null))
    }

    async fn start_remote(&self, name: &str) -> ApiResult {
        let node = self.login_node(name)?;
        let mut running = self.running.lock().await;
        if let Some(mut old) = running.remotes.remove(name) {
            let _ = old.kill().await;
        }
        let child = self.spawn_remote(&node).await?;
        running.remotes.insert(node.name.clone(), child);
        running.wanted.remotes.insert(node.name.clone());
        running
            .down
            .remove(&format!("remote tunnel on {}", node.name));
        self.persist(&running)?;
        Ok((
            StatusCode::CREATED,
            serde_json::json!({ "hostname": node.name, "running": true }),
        ))
    }

    async fn remote_status(&self, name: &str) -> ApiResult {
        let node = self.login_node(name)?;
        let alive = {
            let mut running = self.running.lock().await;
            running
                .remotes
                .get_mut(name)
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        };
        // The login node's own view, through its forced command.
        let status = self
            .one_shot(&node, "status")
            .await
            .unwrap_or_else(|e| format!("unknown ({e})"));
        let listening = connects(node.remote_check).await;
        Ok((
            StatusCode::OK,
            serde_json::json!({
                "hostname": node.name,
                "running": alive && listening && status.trim() == "running",
                "login_node_says": status.trim(),
            }),
        ))
    }

    async fn stop_remote(&self, name: &str) -> ApiResult {
        let node = self.login_node(name)?;
        let mut running = self.running.lock().await;
        running.wanted.remotes.remove(name);
        let _ = self.one_shot(&node, "stop").await;
        if let Some(mut child) = running.remotes.remove(name) {
            let _ = child.kill().await;
        }
        self.persist(&running)?;
        Ok((StatusCode::NO_CONTENT, serde_json::Value::Null))
    }

    /// Re-creates every master, forward and remote tunnel on record.
    async fn restart(&self) -> ApiResult {
        let mut running = self.running.lock().await;
        for (_, mut child) in std::mem::take(&mut running.masters) {
            let _ = child.kill().await;
        }
        for (_, mut child) in std::mem::take(&mut running.remotes) {
            let _ = child.kill().await;
        }
        let mut restored = 0;
        let tunnels: Vec<TunnelRecord> = running.wanted.tunnels.values().cloned().collect();
        for record in &tunnels {
            let node = self.login_node(&record.request.hostname)?;
            self.ensure_master(&mut running, &node).await?;
            self.forward(&node, record).await?;
            restored += 1;
        }
        let remotes: Vec<String> = running.wanted.remotes.iter().cloned().collect();
        for name in &remotes {
            let node = self.login_node(name)?;
            let child = self.spawn_remote(&node).await?;
            running.remotes.insert(name.clone(), child);
        }
        running.down.clear();
        eprintln!(
            "broker: restart re-created {restored} tunnel(s) and {} remote tunnel(s)",
            remotes.len()
        );
        Ok((
            StatusCode::OK,
            serde_json::json!({ "tunnels": restored, "remotes": remotes.len() }),
        ))
    }

    fn persist(&self, running: &Running) -> std::result::Result<(), ApiError> {
        let text = serde_json::to_vec_pretty(&running.wanted)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let tmp = self.config.state_file.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &self.config.state_file))
            .map_err(|e| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot save {}: {e}", self.config.state_file.display()),
                )
            })
    }

    fn control_socket(&self, node: &LoginNode) -> PathBuf {
        self.config.control_dir.join(format!("{}.ctl", node.name))
    }

    fn ssh_log(&self, node: &LoginNode, what: &str) -> PathBuf {
        self.config
            .control_dir
            .join(format!("ssh-{what}-{}.log", node.name))
    }

    fn ssh_options(&self, node: &LoginNode) -> Vec<String> {
        ssh_options(
            &self.config.identity,
            &self.config.known_hosts,
            &node.name,
            &node.user,
        )
    }

    /// Starts the node's ControlMaster unless one is alive, and waits until
    /// it answers `-O check`.
    async fn ensure_master(
        &self,
        running: &mut Running,
        node: &LoginNode,
    ) -> std::result::Result<(), ApiError> {
        if let Some(child) = running.masters.get_mut(&node.name) {
            if matches!(child.try_wait(), Ok(None)) && self.round_trip(node).await {
                return Ok(());
            }
            let _ = child.kill().await;
            running.masters.remove(&node.name);
        }
        let socket = self.control_socket(node);
        let _ = std::fs::remove_file(&socket);
        let log_path = self.ssh_log(node, "master");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("ssh log: {e}")))?;
        let mut child = Command::new("setpriv")
            .args(["--pdeathsig", "TERM", "--", "ssh", "-M", "-N", "-S"])
            .arg(&socket)
            .args(["-o", "ControlPersist=no"])
            .args(self.ssh_options(node))
            .arg(node.address.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot run ssh: {e} (fix: apt-get install -y openssh-client)"),
                )
            })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ApiError(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "cannot connect to login node {} ({}): ssh exited {status}: {}",
                        node.name,
                        node.address,
                        tail(&log_path)
                    ),
                ));
            }
            if socket.exists() && self.control(node, &["-O", "check"]).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(ApiError(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "login node {} ({}) did not answer within 15 s: {}",
                        node.name,
                        node.address,
                        tail(&log_path)
                    ),
                ));
            }
            // Bounded readiness-poll interval while the master connects.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running.masters.insert(node.name.clone(), child);
        Ok(())
    }

    /// Whether the login node answers through the master right now: its
    /// forced command's `status` (any exit status means it ran). `-O check`
    /// alone only proves the local master process is alive, not that the
    /// connection behind it still reaches the node.
    async fn round_trip(&self, node: &LoginNode) -> bool {
        let output = tokio::time::timeout(
            Duration::from_secs(5),
            Command::new("ssh")
                .arg("-S")
                .arg(self.control_socket(node))
                .args(self.ssh_options(node))
                .arg(node.address.to_string())
                .arg("status")
                .stdin(Stdio::null())
                .output(),
        )
        .await;
        matches!(output, Ok(Ok(out)) if matches!(out.status.code(), Some(0) | Some(3)))
    }

    /// Runs `ssh -S <socket> <args> <node>` against the node's master.
    async fn control(
        &self,
        node: &LoginNode,
        args: &[&str],
    ) -> std::result::Result<String, String> {
        let output = Command::new("ssh")
            .arg("-S")
            .arg(self.control_socket(node))
            .args(args)
            .args(self.ssh_options(node))
            .arg(node.address.to_string())
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
        }
    }

    fn forward_spec(record: &TunnelRecord) -> String {
        format!(
            "127.0.0.1:{}:{}:{}",
            record.local_port, record.request.target_node, record.request.target_port
        )
    }

    async fn forward(
        &self,
        node: &LoginNode,
        record: &TunnelRecord,
    ) -> std::result::Result<(), ApiError> {
        self.forward_op(node, record, "forward")
            .await
            .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e))
    }

    async fn cancel_forward(
        &self,
        node: &LoginNode,
        record: &TunnelRecord,
    ) -> std::result::Result<(), String> {
        self.forward_op(node, record, "cancel").await
    }

    /// `ssh -O <op> -L <spec>` on the node's master (`forward`, `cancel`).
    async fn forward_op(
        &self,
        node: &LoginNode,
        record: &TunnelRecord,
        op: &str,
    ) -> std::result::Result<(), String> {
        let spec = Self::forward_spec(record);
        self.control(node, &["-O", op, "-L", &spec])
            .await
            .map(|_| ())
            .map_err(|e| format!("ssh -O {op} -L {spec} via {} failed: {e}", node.name))
    }

    /// `ssh -R` whose session is the login node's forced command `start`;
    /// ready once the node says so.
    async fn spawn_remote(&self, node: &LoginNode) -> std::result::Result<Child, ApiError> {
        let log_path = self.ssh_log(node, "remote");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("ssh log: {e}")))?;
        let forward = format!("{}:{}", node.remote_bind, node.remote_target);
        let mut child = Command::new("setpriv")
            .args(["--pdeathsig", "TERM", "--", "ssh", "-S", "none"])
            .args(["-o", "ExitOnForwardFailure=yes", "-R", &forward])
            .args(self.ssh_options(node))
            .arg(node.address.to_string())
            .arg("start")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot run ssh: {e}"),
                )
            })?;
        let stdout = child.stdout.take();
        let said_up = async {
            let mut lines = tokio::io::BufReader::new(stdout?).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("remote tunnel up") {
                    return Some(());
                }
            }
            None
        };
        match tokio::time::timeout(Duration::from_secs(15), said_up).await {
            Ok(Some(())) if connects(node.remote_check).await => {
                eprintln!("broker: remote tunnel {forward} up on {}", node.name);
                Ok(child)
            }
            _ => {
                let _ = child.kill().await;
                Err(ApiError(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "the remote tunnel -R {forward} on login node {} did not come up: {}",
                        node.name,
                        tail(&log_path)
                    ),
                ))
            }
        }
    }

    /// One forced-command action (`status`, `stop`) on the node.
    async fn one_shot(
        &self,
        node: &LoginNode,
        action: &str,
    ) -> std::result::Result<String, String> {
        let output = tokio::time::timeout(
            Duration::from_secs(10),
            Command::new("ssh")
                .args(["-S", "none"])
                .args(self.ssh_options(node))
                .arg(node.address.to_string())
                .arg(action)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// How often the monitor looks for dead `ssh` processes.
const MONITOR_TICK: Duration = Duration::from_millis(100);

/// How long an outage stays on `/api/health/` before the monitor heals it:
/// long enough for a client polling health to see it, rather than healed
/// unseen.
const OUTAGE_SHOWN_FOR: Duration = Duration::from_millis(500);

/// How long the monitor waits after a failed attempt to re-create a piece.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// `ssh` processes found dead are reported (on `/api/health/`, and in the
/// log) at once and re-created once they have shown for
/// [`OUTAGE_SHOWN_FOR`].
async fn monitor(broker: Arc<Broker>) {
    loop {
        // Bounded poll interval of the liveness monitor.
        tokio::time::sleep(MONITOR_TICK).await;
        let mut running = broker.running.lock().await;
        broker.recover(&mut running).await;
        let heal_at = tokio::time::Instant::now() + OUTAGE_SHOWN_FOR;
        for name in take_dead(&mut running.masters) {
            eprintln!("broker: ssh master to {name} died; its tunnels are down");
            running
                .down
                .insert(format!("ssh master to {name}"), heal_at);
        }
        for name in take_dead(&mut running.remotes) {
            eprintln!("broker: remote tunnel on {name} died");
            running
                .down
                .insert(format!("remote tunnel on {name}"), heal_at);
        }
    }
}

/// Removes the children that have exited and names them.
fn take_dead(children: &mut BTreeMap<String, Child>) -> Vec<String> {
    let dead: Vec<String> = children
        .iter_mut()
        .filter_map(|(n, c)| (!matches!(c.try_wait(), Ok(None))).then(|| n.clone()))
        .collect();
    for name in &dead {
        children.remove(name);
    }
    dead
}

impl Broker {
    /// Re-creates what the monitor found dead and is due for a try.
    async fn recover(&self, running: &mut Running) {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = running
            .down
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(what, _)| what.clone())
            .collect();
        for what in due {
            let result = if let Some(name) = what.strip_prefix("ssh master to ") {
                self.recover_master(running, name).await
            } else if let Some(name) = what.strip_prefix("remote tunnel on ") {
                match self.login_node(name) {
                    Ok(node) => self.spawn_remote(&node).await.map(|child| {
                        running.remotes.insert(node.name.clone(), child);
                    }),
                    Err(e) => Err(e),
                }
            } else {
                Ok(())
            };
            match result {
                Ok(()) => {
                    running.down.remove(&what);
                    eprintln!("broker: {what} recovered");
                }
                Err(ApiError(_, e)) => {
                    eprintln!("broker: cannot re-create the {what}: {e}");
                    running
                        .down
                        .insert(what, tokio::time::Instant::now() + RETRY_AFTER);
                }
            }
        }
    }

    async fn recover_master(
        &self,
        running: &mut Running,
        name: &str,
    ) -> std::result::Result<(), ApiError> {
        let node = self.login_node(name)?;
        self.ensure_master(running, &node).await?;
        let tunnels: Vec<TunnelRecord> = running
            .wanted
            .tunnels
            .values()
            .filter(|t| t.request.hostname == name)
            .cloned()
            .collect();
        for record in tunnels {
            self.forward(&node, &record).await?;
        }
        Ok(())
    }
}

/// Options every `ssh` with the broker's key shares: host keys pinned by
/// the node's name, never asked about, never skipped.
pub fn ssh_options(
    identity: &std::path::Path,
    known_hosts: &std::path::Path,
    node: &str,
    user: &str,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=2",
        // AES-GCM first: with AES-NI it moves bulk data through the
        // tunnel a little faster than ChaCha20.
        "-o",
        "Ciphers=aes128-gcm@openssh.com,chacha20-poly1305@openssh.com",
        "-F",
        "/dev/null",
    ]
    .map(String::from)
    .into();
    args.extend([
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        format!("HostKeyAlias={node}"),
        "-i".into(),
        identity.display().to_string(),
        "-l".into(),
        user.into(),
    ]);
    args
}

fn describe(record: &TunnelRecord, running: bool) -> serde_json::Value {
    let mut value = serde_json::to_value(record).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("running".into(), running.into());
    }
    value
}

async fn read_json(request: Request<Incoming>) -> std::result::Result<serde_json::Value, ApiError> {
    let body = Limited::new(request.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| bad_request(format!("cannot read the body: {e}")))?
        .to_bytes();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| bad_request(format!("the body is not JSON: {e}")))
}

async fn connects(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

async fn free_local_port() -> std::result::Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| format!("no free local port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn tail(path: &std::path::Path) -> String {
    crate::process::last_lines(path, 5).join(" | ")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
