//! Every certificate hubtrust mints passes strict RFC 5280 verifiers:
//! pyca/cryptography's (the components' own `cryptography`, as sslyze's
//! strict check), OpenSSL's `-x509_strict`, and rustls (webpki).

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use hubtrust_harness::pki::{CertificateAuthority, Identity, Usage, Validity};

struct Minted {
    root: CertificateAuthority,
    intermediate: CertificateAuthority,
    server: Identity,
    client: Identity,
    direct: Identity,
}

fn mint() -> Minted {
    let root = CertificateAuthority::root("strict root").unwrap();
    let intermediate = root.intermediate("strict intermediate").unwrap();
    let server = intermediate
        .issue(
            "server",
            &["hub.hubtrust.test", "127.0.0.1"],
            Usage::Server,
            Validity::fresh(30),
        )
        .unwrap();
    let client = intermediate
        .issue("client", &["alice"], Usage::Client, Validity::fresh(30))
        .unwrap();
    let direct = root
        .issue(
            "direct",
            &["hub.hubtrust.test"],
            Usage::ServerAndClient,
            Validity::fresh(30),
        )
        .unwrap();
    Minted {
        root,
        intermediate,
        server,
        client,
        direct,
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

/// The PEM's first certificate only (an identity's chain has the leaf first).
fn first_cert(pem: &str) -> String {
    let end = "-----END CERTIFICATE-----";
    let at = pem.find(end).unwrap() + end.len();
    format!("{}\n", &pem[..at])
}

const PYCA_VERIFY: &str = r#"
import sys, datetime
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, DNSName
root, inter, server, client, direct = (open(p, "rb").read() for p in sys.argv[1:6])
store = Store([x509.load_pem_x509_certificate(root)])
inters = [x509.load_pem_x509_certificate(inter)]
builder = PolicyBuilder().store(store).time(datetime.datetime.now(datetime.timezone.utc))
builder.build_server_verifier(DNSName("hub.hubtrust.test")).verify(
    x509.load_pem_x509_certificate(server), inters)
builder.build_client_verifier().verify(x509.load_pem_x509_certificate(client), inters)
builder.build_server_verifier(DNSName("hub.hubtrust.test")).verify(
    x509.load_pem_x509_certificate(direct), [])
print("strict: ok")
"#;

#[test]
fn minted_chains_pass_pyca_cryptographys_strict_verifier() {
    let components = hubtrust_harness::provision::ensure(&mut std::io::stderr()).unwrap();
    let python = components.venv.join("bin").join("python");
    let dir = tempdir("pyca");
    let m = mint();
    let out = Command::new(&python)
        .arg("-c")
        .arg(PYCA_VERIFY)
        .arg(write(&dir, "root.pem", &m.root.cert_pem()))
        .arg(write(&dir, "inter.pem", &m.intermediate.cert_pem()))
        .arg(write(&dir, "server.pem", &first_cert(&m.server.chain_pem)))
        .arg(write(&dir, "client.pem", &first_cert(&m.client.chain_pem)))
        .arg(write(&dir, "direct.pem", &first_cert(&m.direct.chain_pem)))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("strict: ok"),
        "pyca/cryptography's verifier refused a minted chain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn minted_chains_pass_openssl_x509_strict() {
    let dir = tempdir("openssl");
    let m = mint();
    let root = write(&dir, "root.pem", &m.root.cert_pem());
    let inter = write(&dir, "inter.pem", &m.intermediate.cert_pem());
    for (name, leaf, purpose, untrusted) in [
        ("server", &m.server, "sslserver", Some(&inter)),
        ("client", &m.client, "sslclient", Some(&inter)),
        ("direct", &m.direct, "sslserver", None),
    ] {
        let leaf = write(&dir, &format!("{name}.pem"), &first_cert(&leaf.chain_pem));
        let mut command = Command::new("openssl");
        command.args([
            "verify",
            "-x509_strict",
            "-purpose",
            purpose,
            "-CAfile",
            &root,
        ]);
        if let Some(untrusted) = untrusted {
            command.args(["-untrusted", untrusted]);
        }
        let out = command.arg(&leaf).output().unwrap();
        assert!(
            out.status.success(),
            "openssl -x509_strict refused {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_minted_certificate_names_both_key_identifiers_and_they_chain() {
    use x509_parser::prelude::*;
    let m = mint();
    let der = |pem: &str| {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        block.contents
    };
    let ids = |der: &[u8]| {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        let mut ski = None;
        let mut aki = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(id.0.to_vec()),
                ParsedExtension::AuthorityKeyIdentifier(id) => {
                    aki = id.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => {}
            }
        }
        (
            ski.expect("a subject key identifier"),
            aki.expect("an authority key identifier"),
        )
    };
    let (root_ski, root_aki) = ids(&der(&m.root.cert_pem()));
    let (inter_ski, inter_aki) = ids(&der(&m.intermediate.cert_pem()));
    let (_, server_aki) = ids(&der(&m.server.chain_pem));
    let (_, direct_aki) = ids(&der(&m.direct.chain_pem));
    assert_eq!(root_aki, root_ski, "a self-signed root names itself");
    assert_eq!(inter_aki, root_ski);
    assert_eq!(server_aki, inter_ski);
    assert_eq!(direct_aki, root_ski);
}

/// A scratch directory, removed when the test ends, however it ends.
struct Scratch(std::path::PathBuf);

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("hubtrust-strict-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}
