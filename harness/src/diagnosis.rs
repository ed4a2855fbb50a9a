//! Why a component did not come up, in an operator's words. When a
//! readiness check times out, hubtrust probes the endpoint it waited on
//! and reads the component's own last log lines for known causes, so a
//! broken deployment is named ("plaintext HTTP where TLS was expected")
//! rather than reported as a timeout.

use std::net::SocketAddr;

use crate::backend::HostNetwork;

/// A known cause in a component's log: what it means, and the line.
pub fn cause_in_log(lines: &[String]) -> Option<String> {
    const CAUSES: [(&str, &str); 6] = [
        (
            "CERTIFICATE_VERIFY_FAILED",
            "a client in it could not verify a server's certificate (a CA bundle that lacks the issuer, or a certificate for another name)",
        ),
        (
            "WRONG_VERSION_NUMBER",
            "a TLS client in it met a server that does not speak TLS (TLS turned off on one side)",
        ),
        (
            "certificate has expired",
            "a certificate it was shown has expired",
        ),
        (
            "certificate is not yet valid",
            "a certificate it was shown is not yet valid",
        ),
        (
            "tlsv13 alert certificate required",
            "a server demanded a client certificate it did not present",
        ),
        (
            "sslv3 alert bad certificate",
            "a peer rejected the certificate it presented",
        ),
    ];
    for line in lines.iter().rev() {
        for (needle, meaning) in CAUSES {
            if line.contains(needle) {
                return Some(format!("{meaning}; its log says: `{}`", line.trim()));
            }
        }
    }
    None
}

/// What an HTTPS client's last error says about the server, if it names a
/// deployment defect.
pub fn cause_in_client_error(url: &str, error: &str) -> Option<String> {
    let found = |what: &str| Some(format!("{url} {what} (the client said: {error})"));
    if error.contains("InvalidContentType") || error.contains("corrupt message") {
        return found("answered plaintext where TLS was expected");
    }
    // rustls words these as Debug names or, with context, as sentences.
    let lower = error.to_ascii_lowercase();
    if error.contains("Expired") || lower.contains("certificate expired") {
        return found("served a certificate that has expired");
    }
    if error.contains("NotValidYet") || lower.contains("certificate not valid yet") {
        return found("served a certificate that is not yet valid");
    }
    if error.contains("NotValidForName") || lower.contains("certificate not valid for name") {
        return found("served a certificate for another name");
    }
    if error.contains("UnknownIssuer") || lower.contains("unknown issuer") {
        return found("served a certificate from a CA its clients do not trust");
    }
    if error.contains("CertificateRequired") || error.contains("BadCertificate") {
        return found("rejected the client certificate");
    }
    if error.starts_with("HTTP 424") {
        return Some(format!(
            "the hub answers {url} with HTTP 424: the server behind it failed to start"
        ));
    }
    None
}

/// Whether a cause is about the certificate a server served.
pub fn is_certificate_cause(cause: &str) -> bool {
    cause.contains("served a certificate")
}

/// The dates and names of the certificate `url`'s server presents, read
/// from the operator's side as the readiness check's client saw it.
/// `names` resolves host names the way that client does.
pub async fn describe_served_certificate<N: HostNetwork>(
    network: &N,
    url: &str,
    names: &[(String, SocketAddr)],
) -> Option<String> {
    let authority = url.strip_prefix("https://")?.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let addr = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => names
            .iter()
            .find(|(name, _)| name == host)
            .map(|(_, addr)| SocketAddr::new(addr.ip(), port))?,
    };
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        network.connect_from("operator", addr),
    )
    .await
    .ok()?
    .ok()?;
    let leaf = crate::probe::peer_leaf(stream, host).await?;
    crate::probe::describe_validity_and_names(&leaf)
}

/// Probes a TLS endpoint that never completed a handshake: plaintext where
/// TLS was expected, or the handshake's own error.
pub async fn probe_tls_endpoint<N: HostNetwork>(
    network: &N,
    host: &str,
    addr: SocketAddr,
) -> Result<Option<String>, String> {
    let connect = || async {
        tokio::time::timeout(
            std::time::Duration::from_secs(3),
            network.connect_from(host, addr),
        )
        .await
        .map_err(|_| format!("connecting to {addr} from {host} timed out"))?
        .map_err(|e| format!("connecting to {addr} from {host}: {e}"))
    };
    let stream = connect().await?;
    let Some(error) = crate::probe::handshake_error(stream, &addr.ip().to_string()).await else {
        return Ok(None);
    };
    if error.contains("InvalidContentType") || error.contains("corrupt message") {
        if let Some(status) = crate::probe::plaintext_http_status(connect().await?).await {
            return Ok(Some(format!(
                "{addr} (from host `{host}`) answered plaintext HTTP (`{status}`) where TLS was expected"
            )));
        }
        return Ok(Some(format!(
            "{addr} (from host `{host}`) does not speak TLS (the handshake said: {error})"
        )));
    }
    Ok(cause_in_client_error(&addr.to_string(), &error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_cause_in_a_log_is_named_with_its_line() {
        let lines = vec![
            "[I] starting".to_string(),
            "ssl.SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate".to_string(),
        ];
        let cause = cause_in_log(&lines).unwrap();
        assert!(cause.contains("could not verify a server's certificate"));
        assert!(cause.contains("unable to get local issuer certificate"));
        assert!(cause_in_log(&["all fine".into()]).is_none());
    }

    #[test]
    fn client_errors_are_named_in_operators_words() {
        let plaintext = cause_in_client_error(
            "https://hub:8000/",
            "error sending request: received corrupt message of type InvalidContentType",
        );
        assert!(plaintext
            .unwrap()
            .contains("plaintext where TLS was expected"));
        let expired = cause_in_client_error("u", "invalid peer certificate: Expired");
        assert!(expired.unwrap().contains("expired"));
        assert!(cause_in_client_error("u", "connection refused").is_none());
    }

    struct Loopback;

    impl HostNetwork for Loopback {
        async fn connect_from(
            &self,
            _host: &str,
            addr: SocketAddr,
        ) -> std::io::Result<tokio::net::TcpStream> {
            tokio::net::TcpStream::connect(addr).await
        }
    }

    /// Serves a leaf from a fresh root on loopback; returns the root's PEM
    /// and the address.
    async fn serve_leaf(sans: &[&str], validity: crate::pki::Validity) -> (String, SocketAddr) {
        use crate::pki::{CertificateAuthority, Usage};
        let ca = CertificateAuthority::root("test root").unwrap();
        let leaf = ca.issue("leaf", sans, Usage::Server, validity).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
            crate::probe::server_tls_config(&leaf).unwrap(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(stream).await;
                });
            }
        });
        (ca.cert_pem(), addr)
    }

    #[tokio::test]
    async fn a_refused_certificate_is_diagnosed_with_its_dates_and_names() {
        use crate::pki::Validity;
        for (sans, validity, said, named) in [
            (
                ["hub.hubtrust.test"],
                Validity::expired(),
                "served a certificate that has expired",
                "DNS:hub.hubtrust.test",
            ),
            (
                ["elsewhere.invalid"],
                Validity::fresh(1),
                "served a certificate for another name",
                "DNS:elsewhere.invalid",
            ),
        ] {
            let (root, addr) = serve_leaf(&sans, validity).await;
            let url = format!("https://hub.hubtrust.test:{}/hub/health", addr.port());
            // The error the readiness check's own client gets.
            let client = reqwest::Client::builder()
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
                .resolve("hub.hubtrust.test", addr)
                .build()
                .unwrap();
            let error = client.get(&url).send().await.unwrap_err();
            let error = crate::ready::error_chain(&error);
            let cause = cause_in_client_error(&url, &error).expect(&error);
            assert!(is_certificate_cause(&cause), "{cause}");
            assert!(cause.contains(said), "{cause}");
            let names = [("hub.hubtrust.test".to_string(), addr)];
            let described = describe_served_certificate(&Loopback, &url, &names)
                .await
                .unwrap();
            assert!(described.starts_with("it is valid from "), "{described}");
            assert!(described.contains(" until "), "{described}");
            assert!(described.contains(named), "{described}");
        }
    }
}
