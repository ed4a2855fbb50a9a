//! What a flow is, from its first bytes each way.

use serde::Serialize;

use super::flows::TcpFlow;
use super::pcap::Capture;

/// How much of each stream classification reads: hellos and certificate
/// chains fit with room to spare.
const PREFIX: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FlowClass {
    Tls {
        /// Negotiated version ("TLS 1.3"), from the ServerHello.
        version: String,
        sni: Option<String>,
        /// Whether the client sent a certificate; `None` under TLS 1.3,
        /// which encrypts it.
        client_certificate: Option<bool>,
    },
    Ssh {
        banner: String,
    },
    PlaintextHttp {
        method: String,
        path: String,
    },
    Zmtp {
        version: String,
    },
    /// Connection attempts that carried no data either way.
    Empty,
    Unknown {
        first_bytes: String,
    },
}

impl FlowClass {
    pub fn label(&self) -> String {
        match self {
            FlowClass::Tls {
                version,
                client_certificate,
                ..
            } => match client_certificate {
                Some(true) => format!("{version} mTLS"),
                _ => version.clone(),
            },
            FlowClass::Ssh { .. } => "SSH".into(),
            FlowClass::PlaintextHttp { method, path } => format!("plaintext HTTP {method} {path}"),
            FlowClass::Zmtp { version } => format!("plaintext ZMTP {version}"),
            FlowClass::Empty => "no data".into(),
            FlowClass::Unknown { .. } => "unknown".into(),
        }
    }

    /// TLS 1.2 or newer, or SSH.
    pub fn is_protected(&self) -> bool {
        match self {
            FlowClass::Tls { version, .. } => [
                "TLS 1.2",
                "TLS 1.3",
                MID_STREAM_TLS12_OR_NEWER,
                MID_RECORD_TLS12_OR_NEWER,
            ]
            .contains(&version.as_str()),
            FlowClass::Ssh { .. } => true,
            FlowClass::Empty => true,
            _ => false,
        }
    }
}

/// A TLS flow seen from the middle: every record says TLS 1.2 or 1.3.
const MID_STREAM_TLS12_OR_NEWER: &str = "TLS 1.2+ (handshake before the capture)";

/// A TLS flow whose capture began inside a record: past its tail, every
/// record says TLS 1.2 or 1.3.
const MID_RECORD_TLS12_OR_NEWER: &str = "TLS 1.2+ (capture began mid-record)";

/// The largest TLS record body (TLS 1.2's ciphertext bound, 2^14 + 2048).
const MAX_RECORD: usize = (1 << 14) + 2048;

/// TLS records back to back, as [`record_chain`] reads them.
struct RecordChain {
    /// The one record-layer version every record carries.
    version: u16,
    headers: usize,
    /// The last record ends exactly where the stream does.
    ends_whole: bool,
}

/// `stream` read as TLS records back to back, each of a known content type
/// and the same version; the last record may be cut short where the read
/// prefix ends.
fn record_chain(stream: &[u8]) -> Option<RecordChain> {
    let mut version = None;
    let mut headers = 0;
    let mut rest = stream;
    let mut ends_whole = true;
    while !rest.is_empty() {
        let [kind, major, minor, high, low, ..] = *rest else {
            return None;
        };
        let this = u16::from_be_bytes([major, minor]);
        let length = usize::from(u16::from_be_bytes([high, low]));
        if !(0x14..=0x17).contains(&kind) || major != 3 || length > MAX_RECORD {
            return None;
        }
        if *version.get_or_insert(this) != this {
            return None;
        }
        headers += 1;
        ends_whole = rest.len() >= 5 + length;
        rest = rest.get(5 + length..).unwrap_or_default();
    }
    Some(RecordChain {
        version: version?,
        headers,
        ends_whole,
    })
}

/// The record-layer version `stream` carries, if it is TLS records back to
/// back from its first byte.
fn record_layer_version(stream: &[u8]) -> Option<u16> {
    record_chain(stream).map(|chain| chain.version)
}

/// The record-layer version of a stream a capture may have joined inside
/// a record: records from its first byte, else from the first offset,
/// within one record's length, past which the rest is records back to
/// back, at least two of them or one that ends with the stream. Random
/// bytes pass that by chance about once in 2^25 streams, and say TLS 1.2
/// once in 2^33; text never does, its bytes are never 0x14 to 0x17.
fn version_past_a_partial_record(stream: &[u8]) -> Option<u16> {
    record_layer_version(stream).or_else(|| {
        (1..stream.len().min(5 + MAX_RECORD))
            .filter_map(|at| record_chain(&stream[at..]))
            .find(|chain| chain.headers >= 2 || chain.ends_whole)
            .map(|chain| chain.version)
    })
}

const HTTP_METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

pub fn classify(flow: &TcpFlow, capture: &Capture) -> std::io::Result<FlowClass> {
    let c = flow.to_server.prefix(capture, PREFIX)?;
    let s = flow.to_client.prefix(capture, PREFIX)?;
    Ok(match flow.saw_handshake {
        true => classify_streams(&c, &s),
        false => classify_joined_midway(&c, &s),
    })
}

/// A connection older than the capture: as [`classify_streams`], and when
/// that knows nothing, each direction that carried bytes read past a
/// partial first record. A connection the capture saw open is never read
/// that way: a plaintext preamble before TLS would pass for a partial
/// record.
fn classify_joined_midway(c: &[u8], s: &[u8]) -> FlowClass {
    let class = classify_streams(c, s);
    if !matches!(class, FlowClass::Unknown { .. }) {
        return class;
    }
    match one_record_version(c, s, version_past_a_partial_record) {
        Some(version) => FlowClass::Tls {
            version: format!("{version} (capture began mid-record)"),
            sni: None,
            client_certificate: None,
        },
        None => class,
    }
}

/// The one record-layer version every stream that carried bytes says, as
/// `read` finds it, named; None when a stream is not records or they
/// disagree.
fn one_record_version(c: &[u8], s: &[u8], read: fn(&[u8]) -> Option<u16>) -> Option<&'static str> {
    let versions = [c, s]
        .into_iter()
        .filter(|stream| !stream.is_empty())
        .map(read)
        .collect::<Option<std::collections::BTreeSet<_>>>()?;
    match versions.into_iter().collect::<Vec<_>>()[..] {
        [0x0303] => Some("TLS 1.2+"),
        [0x0301] => Some("TLS 1.0"),
        [0x0302] => Some("TLS 1.1"),
        _ => None,
    }
}

/// Classifies from each direction's first bytes.
pub fn classify_streams(c: &[u8], s: &[u8]) -> FlowClass {
    if c.is_empty() && s.is_empty() {
        return FlowClass::Empty;
    }
    if c.len() >= 3 && c[0] == 0x16 && c[1] == 0x03 {
        return tls(c, s);
    }
    // TLS records, but the handshake happened before the capture started (a
    // pooled connection, or one the server streams on while the client says
    // nothing, as a watch of the Kubernetes API). The record layer still
    // names the version: 3.3 on every record of TLS 1.2 and of TLS 1.3
    // (RFC 5246 6.2.1, RFC 8446 5.1), 3.1 or 3.2 under older ones. Only
    // streams that parse as records end to end, each way, all saying 3.3,
    // count as protected.
    let starts_with_a_record = |stream: &[u8]| {
        stream.len() >= 3 && (0x14..=0x17).contains(&stream[0]) && stream[1] == 0x03
    };
    if starts_with_a_record(c) || (c.is_empty() && starts_with_a_record(s)) {
        let version = match one_record_version(c, s, record_layer_version) {
            Some(version) => format!("{version} (handshake before the capture)"),
            None => "TLS (handshake before the capture; malformed records)".into(),
        };
        return FlowClass::Tls {
            version,
            sni: None,
            client_certificate: None,
        };
    }
    for stream in [c, s] {
        if stream.starts_with(b"SSH-") {
            let banner = stream.split(|b| *b == b'\n').next().unwrap_or(stream);
            return FlowClass::Ssh {
                banner: String::from_utf8_lossy(banner).trim().to_string(),
            };
        }
    }
    if let Some(line) = c.split(|b| *b == b'\n').next() {
        let text = String::from_utf8_lossy(line);
        let mut parts = text.split_whitespace();
        if let (Some(method), Some(path), Some(proto)) = (parts.next(), parts.next(), parts.next())
        {
            if HTTP_METHODS.contains(&method) && proto.starts_with("HTTP/") {
                return FlowClass::PlaintextHttp {
                    method: method.into(),
                    path: path.into(),
                };
            }
        }
    }
    // ZMTP 3 greeting: signature 0xFF, 8 bytes padding, 0x7F, version. The
    // server's greeting names the version the peer will speak, so it is
    // preferred; but libzmq sends its signature before its version, and a
    // peer that hangs up in between leaves only the client's version on the
    // wire.
    let is_zmtp = |stream: &[u8]| stream.len() >= 10 && stream[0] == 0xff && stream[9] == 0x7f;
    if is_zmtp(s) || is_zmtp(c) {
        let greetings = [s, c].into_iter().filter(|stream| is_zmtp(stream));
        let complete = greetings
            .clone()
            .find_map(|g| Some(format!("{}.{}", g.get(10)?, g.get(11)?)));
        let major_only = greetings
            .clone()
            .find_map(|g| Some(format!("{}.x", g.get(10)?)));
        let version = complete.or(major_only).unwrap_or_else(|| "?".into());
        return FlowClass::Zmtp { version };
    }
    FlowClass::Unknown {
        first_bytes: c
            .iter()
            .chain(s)
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

/// Handshake messages in a stream of TLS records (plaintext part only).
fn handshake_messages(stream: &[u8]) -> Vec<(u8, &[u8])> {
    let mut messages = Vec::new();
    let mut at = 0;
    while at + 5 <= stream.len() {
        let content_type = stream[at];
        let len = usize::from(u16::from_be_bytes([stream[at + 3], stream[at + 4]]));
        let Some(body) = stream.get(at + 5..at + 5 + len) else {
            break;
        };
        if content_type == 0x16 {
            // Assumes one message per record or several whole ones, which
            // is what OpenSSL, node and rustls send for hellos.
            let mut m = 0;
            while m + 4 <= body.len() {
                let kind = body[m];
                let mlen = (usize::from(body[m + 1]) << 16)
                    | (usize::from(body[m + 2]) << 8)
                    | usize::from(body[m + 3]);
                let Some(msg) = body.get(m + 4..m + 4 + mlen) else {
                    break;
                };
                messages.push((kind, msg));
                m += 4 + mlen;
            }
        } else if content_type == 0x17 {
            // Application data: everything after is encrypted.
            break;
        }
        at += 5 + len;
    }
    messages
}

/// Walks hello extensions: returns (type, data) pairs.
fn extensions(data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= data.len() {
        let kind = u16::from_be_bytes([data[at], data[at + 1]]);
        let len = usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]]));
        let Some(body) = data.get(at + 4..at + 4 + len) else {
            break;
        };
        out.push((kind, body));
        at += 4 + len;
    }
    out
}

fn client_hello_sni(hello: &[u8]) -> Option<String> {
    // version(2) random(32) session_id cipher_suites compression extensions
    let mut at = 34;
    at += 1 + usize::from(*hello.get(at)?);
    at += 2 + usize::from(u16::from_be_bytes([*hello.get(at)?, *hello.get(at + 1)?]));
    at += 1 + usize::from(*hello.get(at)?);
    let ext_len = usize::from(u16::from_be_bytes([*hello.get(at)?, *hello.get(at + 1)?]));
    let exts = hello.get(at + 2..at + 2 + ext_len)?;
    let (_, sni) = extensions(exts).into_iter().find(|(k, _)| *k == 0)?;
    // server_name_list(2) type(1) len(2) name
    let len = usize::from(u16::from_be_bytes([*sni.get(3)?, *sni.get(4)?]));
    Some(String::from_utf8_lossy(sni.get(5..5 + len)?).into_owned())
}

fn server_hello_version(hello: &[u8]) -> Option<u16> {
    let legacy = u16::from_be_bytes([*hello.first()?, *hello.get(1)?]);
    let mut at = 34;
    at += 1 + usize::from(*hello.get(at)?);
    at += 2 + 1; // cipher suite, compression
    let Some(len_bytes) = hello.get(at..at + 2) else {
        return Some(legacy);
    };
    let ext_len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    let exts = hello.get(at + 2..at + 2 + ext_len).unwrap_or(&[]);
    // supported_versions (43) carries the real version under TLS 1.3.
    match extensions(exts).into_iter().find(|(k, _)| *k == 43) {
        Some((_, v)) if v.len() >= 2 => Some(u16::from_be_bytes([v[0], v[1]])),
        _ => Some(legacy),
    }
}

fn version_name(v: u16) -> String {
    match v {
        0x0300 => "SSL 3.0".into(),
        0x0301 => "TLS 1.0".into(),
        0x0302 => "TLS 1.1".into(),
        0x0303 => "TLS 1.2".into(),
        0x0304 => "TLS 1.3".into(),
        other => format!("TLS {other:#06x}"),
    }
}

fn tls(c: &[u8], s: &[u8]) -> FlowClass {
    let client = handshake_messages(c);
    let server = handshake_messages(s);
    let sni = client
        .iter()
        .find(|(k, _)| *k == 1)
        .and_then(|(_, m)| client_hello_sni(m));
    let version = server
        .iter()
        .find(|(k, _)| *k == 2)
        .and_then(|(_, m)| server_hello_version(m))
        .map(version_name)
        .unwrap_or_else(|| "TLS (no ServerHello seen)".into());
    let client_certificate = if version == "TLS 1.3" {
        None
    } else {
        // Certificate (11): a 3-byte list length of zero means "none".
        Some(
            client
                .iter()
                .any(|(k, m)| *k == 11 && m.len() > 3 && m[..3] != [0, 0, 0]),
        )
    };
    FlowClass::Tls {
        version,
        sni,
        client_certificate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(c: &[u8], s: &[u8]) -> (Vec<u8>, Vec<u8>) {
        (c.to_vec(), s.to_vec())
    }

    fn classify((c, s): &(Vec<u8>, Vec<u8>)) -> FlowClass {
        classify_streams(c, s)
    }

    /// A real rustls handshake, in memory, recording each direction's bytes.
    fn handshake(
        version: &'static rustls::SupportedProtocolVersion,
        client_cert: bool,
    ) -> (Vec<u8>, Vec<u8>) {
        use crate::pki::{CertificateAuthority, Usage, Validity};
        use crate::probe::{parse_certs, parse_identity};
        use std::sync::Arc;
        let ca = CertificateAuthority::root("classify CA").unwrap();
        let server_id = ca
            .issue("srv", &["hub.example"], Usage::Server, Validity::fresh(1))
            .unwrap();
        let client_id = ca
            .issue("cli", &[], Usage::Client, Validity::fresh(1))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(parse_certs(&ca.cert_pem()).unwrap());
        let roots = Arc::new(roots);
        let server_builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap();
        let server_builder = if client_cert {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .build()
            .unwrap();
            server_builder.with_client_cert_verifier(verifier)
        } else {
            server_builder.with_no_client_auth()
        };
        let (chain, key) = parse_identity(&server_id).unwrap();
        let server_config = Arc::new(server_builder.with_single_cert(chain, key).unwrap());
        let client_builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots);
        let client_config = if client_cert {
            let (chain, key) = parse_identity(&client_id).unwrap();
            client_builder.with_client_auth_cert(chain, key).unwrap()
        } else {
            client_builder.with_no_client_auth()
        };
        let name = rustls::pki_types::ServerName::try_from("hub.example").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = rustls::ServerConnection::new(server_config).unwrap();
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            to_server.extend(&buf);
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            to_client.extend(&buf);
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        (to_server, to_client)
    }

    #[test]
    fn tls_version_sni_and_client_certificates_are_read_from_real_handshakes() {
        let tls13 = classify(&handshake(&rustls::version::TLS13, true));
        assert_eq!(
            tls13,
            FlowClass::Tls {
                version: "TLS 1.3".into(),
                sni: Some("hub.example".into()),
                client_certificate: None,
            }
        );
        let tls12_mutual = classify(&handshake(&rustls::version::TLS12, true));
        assert_eq!(tls12_mutual.label(), "TLS 1.2 mTLS");
        let tls12 = classify(&handshake(&rustls::version::TLS12, false));
        assert!(
            matches!(
                tls12,
                FlowClass::Tls {
                    client_certificate: Some(false),
                    ..
                }
            ),
            "{tls12:?}"
        );
        assert!(tls12.is_protected());
    }

    /// TLS records of `version`, as a capture that began after the
    /// handshake sees them.
    fn records(version: [u8; 2], bodies: &[usize]) -> Vec<u8> {
        bodies
            .iter()
            .flat_map(|len| {
                let mut record = vec![0x17, version[0], version[1]];
                record.extend((*len as u16).to_be_bytes());
                record.extend(std::iter::repeat_n(0xa5, *len));
                record
            })
            .collect()
    }

    #[test]
    fn a_pooled_tls_flow_counts_as_protected_only_if_every_record_says_tls_1_2_or_newer() {
        let modern = classify(&flow(
            &records([3, 3], &[300, 17000]),
            &records([3, 3], &[40]),
        ));
        assert_eq!(modern.label(), MID_STREAM_TLS12_OR_NEWER);
        assert!(modern.is_protected());
        // Cut short where the prefix ends: still records.
        let long = records([3, 3], &[18000]);
        assert!(classify(&flow(&long[..1000], b"")).is_protected());
        let old = classify(&flow(&records([3, 1], &[100]), &records([3, 1], &[60])));
        assert_eq!(old.label(), "TLS 1.0 (handshake before the capture)");
        assert!(!old.is_protected());
        // One direction's records disagree, or stop being records.
        assert!(!classify(&flow(&records([3, 3], &[10]), &records([3, 2], &[10]))).is_protected());
        let mut broken = records([3, 3], &[10]);
        broken.extend(b"GET / HTTP/1.1\r\n");
        assert!(!classify(&flow(&broken, b"")).is_protected());
    }

    /// A capture that joined a connection inside a record (a watch the
    /// server streams on, the client silent) reads the records past it;
    /// text, a connection the capture saw open, or records of an older
    /// version after the partial one never pass.
    #[test]
    fn a_capture_that_began_inside_a_record_reads_the_records_after_it() {
        let tail: Vec<u8> = (0..700u32).map(|i| (i * 37 % 251) as u8).collect();
        let joined = |records: Vec<u8>| [tail.clone(), records].concat();
        let watch = classify_joined_midway(b"", &joined(records([3, 3], &[900, 40, 3000])));
        assert_eq!(watch.label(), MID_RECORD_TLS12_OR_NEWER);
        assert!(watch.is_protected());
        // The server's records, the client silent, from a record's start.
        let silent_client = classify_streams(b"", &records([3, 3], &[200, 20]));
        assert_eq!(silent_client.label(), MID_STREAM_TLS12_OR_NEWER);
        // One record after the tail, ending with the capture.
        assert!(classify_joined_midway(&joined(records([3, 3], &[64])), b"").is_protected());
        // Both ways, each joined inside a record.
        assert!(classify_joined_midway(
            &joined(records([3, 3], &[10, 10])),
            &joined(records([3, 3], &[50, 5]))
        )
        .is_protected());
        let old = classify_joined_midway(b"", &joined(records([3, 1], &[100, 100])));
        assert_eq!(old.label(), "TLS 1.0 (capture began mid-record)");
        assert!(!old.is_protected());
        // A tail and nothing after it, text, or one way unreadable: unknown.
        assert!(!classify_joined_midway(b"", &tail).is_protected());
        let text =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"items\": []}".repeat(40);
        assert!(!classify_joined_midway(b"", &text).is_protected());
        assert!(!classify_joined_midway(&tail, &joined(records([3, 3], &[10, 10]))).is_protected());
        // A connection seen opening is never read past a preamble.
        let preamble = [
            b"HELLO plain preamble\n".to_vec(),
            records([3, 3], &[10, 10]),
        ]
        .concat();
        assert!(!classify_streams(&preamble, b"").is_protected());
    }

    #[test]
    fn plaintext_protocols_are_recognised() {
        assert_eq!(
            classify(&flow(b"GET /hub/api HTTP/1.1\r\nHost: x\r\n\r\n", b"")),
            FlowClass::PlaintextHttp {
                method: "GET".into(),
                path: "/hub/api".into()
            }
        );
        assert_eq!(
            classify(&flow(
                b"SSH-2.0-OpenSSH_9.2\r\n",
                b"SSH-2.0-OpenSSH_9.2\r\n"
            ))
            .label(),
            "SSH"
        );
        let greeting = [0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 1];
        assert_eq!(
            classify(&flow(&greeting, &greeting)).label(),
            "plaintext ZMTP 3.1"
        );
        assert!(!classify(&flow(&greeting, &greeting)).is_protected());
        // The server hung up after its signature: the client's version counts.
        assert_eq!(
            classify(&flow(&greeting, &greeting[..10])).label(),
            "plaintext ZMTP 3.1"
        );
        assert!(matches!(
            classify(&flow(b"\x01\x02garbage", b"")),
            FlowClass::Unknown { .. }
        ));
    }
}
