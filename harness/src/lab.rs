//! `LabSession`: run code in a user's real kernel through the Jupyter
//! websocket channels API, via the public proxy, as a browser would.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::error::{HarnessError, Result};
use crate::probe::parse_certs;
use crate::secret::Secret;

fn lab_err(call: &str, message: impl std::fmt::Display) -> HarnessError {
    HarnessError::HubApi {
        call: call.into(),
        message: message.to_string(),
    }
}

/// What running one cell produced.
#[derive(Debug, Clone)]
pub struct CellRun {
    pub kernel_id: String,
    pub stdout: String,
    pub status: String,
    /// The token the session used: a canary for the wire checks.
    pub token: Secret,
}

/// Where a lab is reached and who may use it.
pub struct LabSession<'a> {
    pub http: &'a reqwest::Client,
    /// `https://<public name>:<port>`
    pub base_url: String,
    pub public_name: String,
    pub trust_pem: String,
    pub token: Secret,
    pub user: String,
    pub stream: tokio::net::TcpStream,
    /// A kernel of this user's to run the cell in, as a notebook runs its
    /// cells one after another in one kernel; `None` starts one.
    pub kernel_id: Option<String>,
}

impl LabSession<'_> {
    /// Runs `code` over the websocket channels API in the session's kernel
    /// (a new one when it has none) and returns its stdout. The kernel
    /// stays running (its ports are checked afterwards, and later cells
    /// may use it); the lab stops it on teardown.
    pub async fn run_cell(self, code: &str) -> Result<CellRun> {
        self.run_cell_within(code, Duration::from_secs(60)).await
    }

    fn kernels_url(&self) -> String {
        format!("{}/user/{}/api/kernels", self.base_url, self.user)
    }

    async fn start_kernel(&self) -> Result<String> {
        let response = self
            .http
            .post(self.kernels_url())
            // No name: the lab's default kernel, wherever the stack puts it.
            .json(&json!({}))
            .send()
            .await
            .map_err(|e| lab_err("POST kernels", e))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| lab_err("POST kernels", e))?;
        body["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| lab_err("POST kernels", format!("HTTP {status}: {body}")))
    }

    /// Whether the lab still has kernel `id`, alive: a kernel that died or
    /// was shut down is replaced by a new one, never reported as a failure
    /// of the cell.
    pub async fn kernel_alive(&self, id: &str) -> bool {
        let Ok(response) = self
            .http
            .get(format!("{}/{id}", self.kernels_url()))
            .send()
            .await
        else {
            return false;
        };
        if !response.status().is_success() {
            return false;
        }
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        body["execution_state"] != "dead"
    }

    /// [`LabSession::run_cell`] with a deadline for the cell to finish. On
    /// timeout the error shows the cell's start and whatever it printed.
    pub async fn run_cell_within(self, code: &str, deadline: Duration) -> Result<CellRun> {
        let kernel_id = match self.kernel_id.clone() {
            Some(id) => id,
            None => self.start_kernel().await?,
        };

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(
            parse_certs(&self.trust_pem).map_err(|e| lab_err("websocket TLS", e))?,
        );
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| lab_err("websocket TLS", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(self.public_name.clone())
            .map_err(|e| lab_err("websocket TLS", e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, self.stream)
            .await
            .map_err(|e| lab_err("websocket TLS", e))?;

        let url = format!(
            "wss://{}/user/{}/api/kernels/{kernel_id}/channels",
            self.base_url.trim_start_matches("https://"),
            self.user
        );
        let mut request = url
            .into_client_request()
            .map_err(|e| lab_err("websocket", e))?;
        let mut auth = tokio_tungstenite::tungstenite::http::HeaderValue::from_str(&format!(
            "token {}",
            self.token.expose()
        ))
        .map_err(|e| lab_err("websocket", e))?;
        auth.set_sensitive(true);
        request.headers_mut().insert("Authorization", auth);
        let (mut ws, upgrade) = tokio_tungstenite::client_async(request, tls)
            .await
            .map_err(|e| lab_err("websocket upgrade", e))?;
        if upgrade.status().as_u16() != 101 {
            return Err(lab_err(
                "websocket upgrade",
                format!("HTTP {}", upgrade.status()),
            ));
        }

        let msg_id = hex::encode(rand::random::<[u8; 16]>());
        let execute = json!({
            "header": {
                "msg_id": msg_id,
                "username": self.user,
                "session": hex::encode(rand::random::<[u8; 16]>()),
                "msg_type": "execute_request",
                "version": "5.3",
                "date": "",
            },
            "parent_header": {},
            "metadata": {},
            "content": {
                "code": code,
                "silent": false,
                "store_history": true,
                "user_expressions": {},
                "allow_stdin": false,
                "stop_on_error": true,
            },
            "channel": "shell",
            "buffers": [],
        });
        ws.send(Message::Text(execute.to_string()))
            .await
            .map_err(|e| lab_err("execute_request", e))?;

        let mut stdout = String::new();
        let mut reply_status = None;
        let mut idle = false;
        let collect = async {
            while let Some(message) = ws.next().await {
                let Message::Text(text) = message.map_err(|e| lab_err("kernel channels", e))?
                else {
                    continue;
                };
                let msg: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| lab_err("kernel message", e))?;
                if msg["parent_header"]["msg_id"] != msg_id.as_str() {
                    continue;
                }
                match msg["header"]["msg_type"].as_str() {
                    Some("stream") => {
                        stdout.push_str(msg["content"]["text"].as_str().unwrap_or(""))
                    }
                    Some("error") => stdout.push_str(&msg["content"]["evalue"].to_string()),
                    Some("execute_reply") => {
                        reply_status = msg["content"]["status"].as_str().map(str::to_string)
                    }
                    Some("status") if msg["content"]["execution_state"] == "idle" => idle = true,
                    _ => {}
                }
                if idle && reply_status.is_some() {
                    return Ok(());
                }
            }
            Err(lab_err(
                "kernel channels",
                "the websocket closed before the cell finished",
            ))
        };
        let finished = tokio::time::timeout(deadline, collect).await;
        if finished.is_err() {
            let start: String = code.trim().chars().take(160).collect();
            let partial: String = stdout
                .chars()
                .rev()
                .take(1200)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(lab_err(
                "kernel channels",
                format!(
                    "the cell did not finish within {}s\n  cell: {start}…\n  output so far: {}",
                    deadline.as_secs(),
                    if partial.is_empty() {
                        "(none)"
                    } else {
                        &partial
                    }
                ),
            ));
        }
        finished.map_err(|_| lab_err("kernel channels", "timeout"))??;
        let _ = ws.close(None).await;
        Ok(CellRun {
            kernel_id,
            stdout,
            status: reply_status.unwrap_or_default(),
            token: self.token,
        })
    }
}
