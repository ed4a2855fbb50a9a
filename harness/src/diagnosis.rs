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
    if error.contains("Expired") {
        return found("served a certificate that has expired");
    }
    if error.contains("NotValidYet") {
        return found("served a certificate that is not yet valid");
    }
    if error.contains("NotValidForName") {
        return found("served a certificate for another name");
    }
    if error.contains("UnknownIssuer") {
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
}
