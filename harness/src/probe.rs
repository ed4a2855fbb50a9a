//! The TLS probe: connect with a chosen trust store and an optional client
//! identity, and record what happened in stable terms.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::pki::Identity;
use crate::secret::Secret;

/// The stable verdict codes of a probe. Reports and expectations use these
/// strings, so they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Accepted,
    UnknownIssuer,
    NameMismatch,
    Expired,
    NotYetValid,
    BadEku,
    IssuerNotCa,
    ClientCertRequired,
    ClientCertRejected,
    PeerAlert,
    PeerClosed,
    ConnectFailed,
    Timeout,
    Other,
}

impl Verdict {
    pub fn code(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::UnknownIssuer => "unknown-issuer",
            Verdict::NameMismatch => "name-mismatch",
            Verdict::Expired => "expired",
            Verdict::NotYetValid => "not-yet-valid",
            Verdict::BadEku => "bad-eku",
            Verdict::IssuerNotCa => "issuer-not-ca",
            Verdict::ClientCertRequired => "client-cert-required",
            Verdict::ClientCertRejected => "client-cert-rejected",
            Verdict::PeerAlert => "peer-alert",
            Verdict::PeerClosed => "peer-closed",
            Verdict::ConnectFailed => "connect-failed",
            Verdict::Timeout => "timeout",
            Verdict::Other => "other",
        }
    }

    /// Whether the verdict proves the server refused the client's identity
    /// (as opposed to the client refusing the server, or no answer at all).
    pub fn is_client_rejection(self) -> bool {
        matches!(
            self,
            Verdict::ClientCertRequired | Verdict::ClientCertRejected
        )
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// A certificate the peer presented.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerCertificate {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
}

/// A plain HTTP/1.1 request sent over the probed connection once the
/// handshake is done. Only what the checks need.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: &'static str,
    pub path: String,
    pub token: Option<Secret>,
}

impl HttpRequest {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: "GET",
            path: path.into(),
            token: None,
        }
    }

    pub fn with_token(mut self, token: Secret) -> Self {
        self.token = Some(token);
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// What a probe saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeOutcome {
    pub verdict: Verdict,
    pub detail: String,
    pub protocol: Option<String>,
    pub cipher: Option<String>,
    pub peer_chain: Vec<PeerCertificate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpResponse>,
}

impl ProbeOutcome {
    pub fn failed(verdict: Verdict, detail: impl Into<String>) -> Self {
        Self {
            verdict,
            detail: detail.into(),
            protocol: None,
            cipher: None,
            peer_chain: Vec::new(),
            http: None,
        }
    }
}

/// How to probe: which name to verify, which CAs to trust, who to be.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub server_name: String,
    /// PEM bundle of trust anchors.
    pub trust_pem: String,
    pub client: Option<Identity>,
    pub request: HttpRequest,
    pub timeout: Duration,
}

/// Runs the handshake and one HTTP request on an already connected stream.
pub async fn probe(stream: TcpStream, spec: &ProbeSpec) -> ProbeOutcome {
    match tokio::time::timeout(spec.timeout, probe_inner(stream, spec)).await {
        Ok(outcome) => outcome,
        Err(_) => ProbeOutcome::failed(
            Verdict::Timeout,
            format!("no verdict within {}s", spec.timeout.as_secs()),
        ),
    }
}

async fn probe_inner(stream: TcpStream, spec: &ProbeSpec) -> ProbeOutcome {
    let recorder = match ChainRecorder::new(&spec.trust_pem) {
        Ok(r) => Arc::new(r),
        Err(e) => return ProbeOutcome::failed(Verdict::Other, e),
    };
    let config = match client_config(recorder.clone(), spec.client.as_ref()) {
        Ok(c) => c,
        Err(e) => return ProbeOutcome::failed(Verdict::Other, e),
    };
    let server_name = match ServerName::try_from(spec.server_name.clone()) {
        Ok(n) => n,
        Err(e) => return ProbeOutcome::failed(Verdict::Other, format!("bad server name: {e}")),
    };
    let sent_client_cert = spec.client.is_some();
    let connector = TlsConnector::from(Arc::new(config));
    let mut tls = match connector.connect(server_name, stream).await {
        Ok(tls) => tls,
        Err(e) => {
            let (verdict, detail) = classify_io_error(&e, sent_client_cert);
            return with_chain(ProbeOutcome::failed(verdict, detail), &recorder);
        }
    };
    let (_, conn) = tls.get_ref();
    let protocol = conn.protocol_version().map(|v| format!("{v:?}"));
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()));

    // With TLS 1.3 a server judges the client certificate only after the
    // client considers the handshake done, so acceptance is proven by an
    // application-level answer, not by the handshake alone.
    let request = render_request(&spec.server_name, &spec.request);
    let mut raw = Vec::new();
    let exchange = async {
        tls.write_all(request.as_bytes()).await?;
        tls.flush().await?;
        tls.read_to_end(&mut raw).await
    }
    .await;
    let mut outcome = match exchange {
        Err(e) if raw.is_empty() => {
            let (verdict, detail) = classify_io_error(&e, sent_client_cert);
            ProbeOutcome::failed(verdict, detail)
        }
        _ if raw.is_empty() => ProbeOutcome::failed(
            Verdict::PeerClosed,
            "the server closed the connection without answering or alerting",
        ),
        _ => {
            let http = parse_response(&raw);
            ProbeOutcome {
                verdict: Verdict::Accepted,
                detail: match &http {
                    Some(r) => format!("HTTP {}", r.status),
                    None => "answered (not HTTP)".into(),
                },
                protocol: None,
                cipher: None,
                peer_chain: Vec::new(),
                http,
            }
        }
    };
    outcome.protocol = protocol;
    outcome.cipher = cipher;
    with_chain(outcome, &recorder)
}

fn with_chain(mut outcome: ProbeOutcome, recorder: &ChainRecorder) -> ProbeOutcome {
    outcome.peer_chain = recorder.chain();
    outcome
}

fn render_request(host: &str, request: &HttpRequest) -> String {
    let auth = request
        .token
        .as_ref()
        .map(|t| format!("Authorization: token {}\r\n", t.expose()))
        .unwrap_or_default();
    format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: hubtrust-probe\r\n{auth}Connection: close\r\n\r\n",
        request.method, request.path
    )
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some(HttpResponse { status, body })
}

/// Decodes a chunked HTTP/1.1 body (sizes in hex, each chunk CRLF-ended).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size_line, after)) = rest.split_once("\r\n") {
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

fn classify_io_error(e: &std::io::Error, sent_client_cert: bool) -> (Verdict, String) {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => classify_tls_error(tls, sent_client_cert),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => (
            Verdict::PeerClosed,
            "the server closed the connection without an alert".into(),
        ),
        None if e.kind() == std::io::ErrorKind::ConnectionReset => (
            Verdict::PeerClosed,
            "the server reset the connection".into(),
        ),
        None => (Verdict::Other, e.to_string()),
    }
}

/// Maps rustls errors to stable verdicts.
pub fn classify_tls_error(e: &rustls::Error, sent_client_cert: bool) -> (Verdict, String) {
    let detail = e.to_string();
    let verdict = match e {
        rustls::Error::InvalidCertificate(cert_error) => match cert_error {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Verdict::UnknownIssuer
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Verdict::NameMismatch
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => Verdict::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Verdict::NotYetValid
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                Verdict::BadEku
            }
            // webpki reports a leaf that signed another certificate this way.
            CertificateError::Other(other)
                if format!("{other:?}").contains("EndEntityUsedAsCa") =>
            {
                Verdict::IssuerNotCa
            }
            _ => Verdict::Other,
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => Verdict::ClientCertRequired,
            // TLS 1.2 servers answer a missing certificate with a generic alert.
            AlertDescription::HandshakeFailure if !sent_client_cert => Verdict::ClientCertRequired,
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::DecryptError
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure
                if sent_client_cert =>
            {
                Verdict::ClientCertRejected
            }
            _ => Verdict::PeerAlert,
        },
        _ => Verdict::Other,
    };
    (verdict, detail)
}

fn client_config(
    verifier: Arc<ChainRecorder>,
    identity: Option<&Identity>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => {
            let (chain, key) = parse_identity(id)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())
        }
    }
}

/// Parses an identity's PEM into rustls types.
pub fn parse_identity(
    id: &Identity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = parse_certs(&id.chain_pem)?;
    let key = rustls_pemfile::private_key(&mut id.key_pem().as_bytes())
        .map_err(|e| format!("identity {}: {e}", id.name))?
        .ok_or_else(|| format!("identity {}: no private key", id.name))?;
    Ok((chain, key))
}

/// A TLS server configuration presenting `identity`, no client certificates.
pub fn server_tls_config(identity: &Identity) -> crate::Result<rustls::ServerConfig> {
    let (chain, key) = parse_identity(identity)
        .map_err(|e| crate::HarnessError::Pki(format!("the {}'s identity: {e}", identity.name)))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| crate::HarnessError::Pki(format!("the {}'s TLS config: {e}", identity.name)))
}

pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM certificate: {e}"))
}

/// Why a TLS handshake failed, whoever the server claims to be; `None`
/// when it completed. Readiness only: identity is judged by [`probe`].
pub async fn handshake_error(stream: TcpStream, server_name: &str) -> Option<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b,
        Err(e) => return Some(e.to_string()),
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let name = match ServerName::try_from(server_name.to_string()) {
        Ok(n) => n,
        Err(e) => return Some(e.to_string()),
    };
    TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .err()
        .map(|e| e.to_string())
}

/// The leaf certificate a TLS server presents (DER), whatever it is: read
/// with a verifier that accepts anything, so a certificate that its
/// clients refuse can still be described.
pub async fn peer_leaf(stream: TcpStream, server_name: &str) -> Option<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).ok()?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .ok()?;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?.to_vec();
    Some(leaf)
}

/// A certificate's dates and names, as a diagnosis quotes them.
pub fn describe_validity_and_names(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    let date = |t: &x509_parser::time::ASN1Time| {
        t.to_datetime()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    let sans = crate::inventory::subject_alt_names(&cert);
    Some(format!(
        "it is valid from {} until {}, for {}",
        date(&validity.not_before),
        date(&validity.not_after),
        if sans.is_empty() {
            "no subject alternative name".to_string()
        } else {
            sans.join(", ")
        }
    ))
}

/// The status line a server sends to a plaintext HTTP request, if it
/// speaks plaintext HTTP at all.
pub async fn plaintext_http_status(mut stream: TcpStream) -> Option<String> {
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: hubtrust\r\n\r\n")
        .await
        .ok()?;
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    let line = text.lines().next()?.trim().to_string();
    line.starts_with("HTTP/").then_some(line)
}

/// Whether a TLS handshake completes, whoever the server claims to be.
/// Readiness only: identity is judged by [`probe`].
pub async fn handshake_completes(stream: TcpStream, server_name: &str) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(builder) = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let Ok(name) = ServerName::try_from(server_name.to_string()) else {
        return false;
    };
    TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .is_ok()
}

/// Accepts any server certificate (signatures still checked): readiness only.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The standard webpki verification, plus a record of the chain the server
/// presented, so a report shows the chain even when verification fails.
#[derive(Debug)]
struct ChainRecorder {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Vec<PeerCertificate>>,
}

impl ChainRecorder {
    fn new(trust_pem: &str) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(parse_certs(trust_pem)?);
        if added == 0 {
            return Err("the trust bundle holds no usable certificate".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            inner,
            seen: Mutex::new(Vec::new()),
        })
    }

    fn chain(&self) -> Vec<PeerCertificate> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl ServerCertVerifier for ChainRecorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = std::iter::once(end_entity)
                .chain(intermediates)
                .filter_map(|der| describe_certificate(der))
                .collect();
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn describe_certificate(der: &CertificateDer<'_>) -> Option<PeerCertificate> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(PeerCertificate {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans: crate::inventory::subject_alt_names(&cert),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, Usage, Validity, Zoo, ZooDefect};
    use rustls::server::WebPkiClientVerifier;
    use tokio::net::TcpListener;

    /// A small rustls HTTPS server written for these tests only.
    async fn serve(identity: Identity, client_ca: Option<String>) -> std::net::SocketAddr {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(parse_certs(&ca).unwrap());
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let (chain, key) = parse_identity(&identity).unwrap();
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 1024];
                        if tls.read(&mut buf).await.is_ok() {
                            let _ = tls
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .await;
                            let _ = tls.shutdown().await;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn run(
        addr: std::net::SocketAddr,
        name: &str,
        trust: &str,
        client: Option<Identity>,
    ) -> ProbeOutcome {
        let stream = TcpStream::connect(addr).await.unwrap();
        let spec = ProbeSpec {
            server_name: name.into(),
            trust_pem: trust.into(),
            client,
            request: HttpRequest::get("/"),
            timeout: Duration::from_secs(10),
        };
        probe(stream, &spec).await
    }

    struct Fixture {
        ca: CertificateAuthority,
        foreign: CertificateAuthority,
        zoo: Zoo,
    }

    fn fixture() -> Fixture {
        let ca = CertificateAuthority::root("probe test CA").unwrap();
        let foreign = CertificateAuthority::root("probe foreign CA").unwrap();
        let zoo = Zoo::issue(&ca, &["localhost"]).unwrap();
        Fixture { ca, foreign, zoo }
    }

    #[tokio::test]
    async fn good_server_is_accepted_with_protocol_cipher_and_chain() {
        let f = fixture();
        let server =
            f.ca.issue("srv", &["localhost"], Usage::Server, Validity::fresh(1))
                .unwrap();
        let addr = serve(server, None).await;
        let out = run(addr, "localhost", &f.ca.cert_pem(), None).await;
        assert_eq!(out.verdict, Verdict::Accepted, "{out:?}");
        assert_eq!(out.http.as_ref().map(|h| h.status), Some(200));
        assert_eq!(out.protocol.as_deref(), Some("TLSv1_3"));
        assert!(out.cipher.is_some());
        assert!(out.peer_chain[0].subject.contains("srv"));
    }

    #[tokio::test]
    async fn server_verification_failures_get_stable_codes() {
        let f = fixture();
        let cases = [
            (
                f.zoo.get(ZooDefect::Expired).clone(),
                "localhost",
                Verdict::Expired,
            ),
            (
                f.zoo.get(ZooDefect::NotYetValid).clone(),
                "localhost",
                Verdict::NotYetValid,
            ),
            (
                f.zoo.get(ZooDefect::WrongSan).clone(),
                "localhost",
                Verdict::NameMismatch,
            ),
            (
                f.zoo.get(ZooDefect::SelfSigned).clone(),
                "localhost",
                Verdict::UnknownIssuer,
            ),
            (
                f.zoo.get(ZooDefect::SignedByNonCa).clone(),
                "localhost",
                Verdict::IssuerNotCa,
            ),
            (
                f.ca.issue(
                    "client-only",
                    &["localhost"],
                    Usage::Client,
                    Validity::fresh(1),
                )
                .unwrap(),
                "localhost",
                Verdict::BadEku,
            ),
            (
                f.foreign
                    .issue("foreign", &["localhost"], Usage::Server, Validity::fresh(1))
                    .unwrap(),
                "localhost",
                Verdict::UnknownIssuer,
            ),
        ];
        for (identity, name, expected) in cases {
            let label = identity.name.clone();
            let addr = serve(identity, None).await;
            let out = run(addr, name, &f.ca.cert_pem(), None).await;
            assert_eq!(out.verdict, expected, "{label}: {out:?}");
            assert!(
                !out.peer_chain.is_empty(),
                "{label}: chain recorded even on failure"
            );
        }
    }

    #[tokio::test]
    async fn client_identity_verdicts_distinguish_missing_from_rejected() {
        let f = fixture();
        let server =
            f.ca.issue("srv", &["localhost"], Usage::Server, Validity::fresh(1))
                .unwrap();
        let addr = serve(server, Some(f.ca.cert_pem())).await;
        let trusted =
            f.ca.issue("cli", &[], Usage::Client, Validity::fresh(1))
                .unwrap();
        let foreign = f
            .foreign
            .issue("cli", &[], Usage::Client, Validity::fresh(1))
            .unwrap();

        let none = run(addr, "localhost", &f.ca.cert_pem(), None).await;
        assert_eq!(none.verdict, Verdict::ClientCertRequired, "{none:?}");
        let good = run(addr, "localhost", &f.ca.cert_pem(), Some(trusted)).await;
        assert_eq!(good.verdict, Verdict::Accepted, "{good:?}");
        let bad = run(addr, "localhost", &f.ca.cert_pem(), Some(foreign)).await;
        assert_eq!(bad.verdict, Verdict::ClientCertRejected, "{bad:?}");
        let expired = run(
            addr,
            "localhost",
            &f.ca.cert_pem(),
            Some(f.zoo.get(ZooDefect::Expired).clone()),
        )
        .await;
        assert_eq!(expired.verdict, Verdict::ClientCertRejected, "{expired:?}");
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "{\"a\":1}");
    }

    #[tokio::test]
    async fn silent_server_times_out_instead_of_passing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let (_sock, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let spec = ProbeSpec {
            server_name: "localhost".into(),
            trust_pem: fixture().ca.cert_pem(),
            client: None,
            request: HttpRequest::get("/"),
            timeout: Duration::from_millis(300),
        };
        assert_eq!(probe(stream, &spec).await.verdict, Verdict::Timeout);
    }
}
