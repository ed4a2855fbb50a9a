//! Certificates generated fresh every run with rcgen: the org CA hierarchy, a
//! foreign CA nobody trusts, and the bad-certificate zoo.
//!
//! Nothing here is checked into the repository, so nothing here can expire
//! between runs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use serde::Serialize;
use time::{Duration, OffsetDateTime};

use crate::error::{HarnessError, Result};

fn pki_err(context: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Pki(format!("{context}: {e}"))
}

/// What a leaf certificate may be used for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Usage {
    Server,
    Client,
    ServerAndClient,
}

impl Usage {
    fn purposes(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }
}

/// When a certificate is valid, relative to now.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from a few minutes ago, so a peer whose clock lags slightly
    /// still accepts it, for `days` days.
    pub fn fresh(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(days),
        }
    }

    /// Valid from this very second, as JupyterHub's certipy mints: a peer
    /// whose clock lags rejects it until its clock catches up.
    pub fn from_this_second(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now,
            not_after: now + Duration::days(days),
        }
    }

    pub fn expired() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::days(30),
            not_after: now - Duration::days(1),
        }
    }

    pub fn not_yet_valid() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now + Duration::days(1),
            not_after: now + Duration::days(30),
        }
    }
}

/// A certificate with its private key: a server or client identity.
///
/// `chain_pem` holds the leaf first, then any intermediates a peer needs.
#[derive(Clone)]
pub struct Identity {
    pub name: String,
    pub chain_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is deliberately left out.
        f.debug_struct("Identity")
            .field("name", &self.name)
            .finish()
    }
}

impl Identity {
    pub fn new(name: impl Into<String>, chain_pem: String, key_pem: String) -> Self {
        Self {
            name: name.into(),
            chain_pem,
            key_pem,
        }
    }

    /// Loads an identity written by another tool (JupyterHub's certipy, say).
    pub fn load(name: &str, cert: &Path, key: &Path) -> Result<Self> {
        let read = |p: &Path| {
            fs::read_to_string(p).map_err(|e| HarnessError::io(format!("read {}", p.display()), e))
        };
        Ok(Self::new(name, read(cert)?, read(key)?))
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `<name>.crt` (0644) and `<name>.key` (0600) into `dir`.
    pub fn write_to(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        let cert = dir.join(format!("{}.crt", self.name));
        let key = dir.join(format!("{}.key", self.name));
        write_with_mode(&cert, self.chain_pem.as_bytes(), 0o644)?;
        write_with_mode(&key, self.key_pem.as_bytes(), 0o600)?;
        Ok((cert, key))
    }
}

/// Refuses a private key that anyone but its owner can read; `what` names
/// where it was given.
pub fn check_key_mode(what: &str, key: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(key)
        .map_err(|e| format!("{what}: cannot read {}: {e}", key.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{what}: {} has mode {mode:04o}; a private key must be readable by its owner only (fix: chmod 600 {})",
            key.display(),
            key.display()
        ));
    }
    Ok(())
}

/// Checks the deployment's own public certificate before anything starts:
/// both halves given, the key 0600, the key matching the leaf, the chain in
/// order (each certificate issued by the next). Messages name the file.
pub fn check_supplied_public(
    public_cert: Option<&Path>,
    public_key: Option<&Path>,
    public_ca: Option<&Path>,
    hpc: bool,
) -> std::result::Result<(), String> {
    use openssl::x509::{X509VerifyResult, X509};
    let (cert, key) = match (public_cert, public_key) {
        (None, None) if public_ca.is_none() => return Ok(()),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err("[pki] public_cert and public_key go together, and public_ca needs them (fix: give both, or neither)".into())
        }
    };
    if hpc {
        return Err("[pki] public_cert: on an HPC site the proxy's certificate is the site's, covering every login node (fix: drop [pki] public_* from this stack)".into());
    }
    let read = |path: &Path| {
        fs::read(path).map_err(|e| format!("[pki]: cannot read {}: {e}", path.display()))
    };
    check_key_mode("[pki] public_key", key)?;
    let chain = X509::stack_from_pem(&read(cert)?)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            format!(
                "[pki] public_cert: {} holds no PEM certificate",
                cert.display()
            )
        })?;
    let private = openssl::pkey::PKey::private_key_from_pem(&read(key)?).map_err(|_| {
        format!(
            "[pki] public_key: {} holds no PEM private key",
            key.display()
        )
    })?;
    let subject = |c: &X509| {
        c.subject_name()
            .entries()
            .filter_map(|e| e.data().to_string().ok())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (i, pair) in chain.windows(2).enumerate() {
        if pair[1].issued(&pair[0]) != X509VerifyResult::OK {
            return Err(format!(
                "[pki] public_cert: {}: certificate {} ({}) did not issue certificate {} ({}): the chain is out of order (fix: the leaf first, then each issuer in turn)",
                cert.display(),
                i + 2,
                subject(&pair[1]),
                i + 1,
                subject(&pair[0])
            ));
        }
    }
    let leaf_key = chain[0]
        .public_key()
        .map_err(|e| format!("[pki] public_cert: {}: {e}", cert.display()))?;
    if !leaf_key.public_eq(&private) {
        return Err(format!(
            "[pki]: the key in {} does not match the certificate in {} (fix: the key the leaf was issued for)",
            key.display(),
            cert.display()
        ));
    }
    if let Some(ca) = public_ca {
        X509::stack_from_pem(&read(ca)?)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("[pki] public_ca: {} holds no PEM certificate", ca.display()))?;
    }
    Ok(())
}

/// Creates `path` with `mode` from the first byte, so a key is never briefly
/// world-readable.
pub fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| HarnessError::io(format!("create {}", path.display()), e))?;
    file.write_all(bytes)
        .map_err(|e| HarnessError::io(format!("write {}", path.display()), e))
}

/// The five variables tools read their CA bundle from, which the merge
/// step points at the merged bundle.
pub const CA_VARIABLES: [&str; 5] = [
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| HarnessError::io(format!("chmod {}", path.display()), e))
}

/// A certificate authority that can issue leaves and intermediates.
pub struct CertificateAuthority {
    pub name: String,
    cert: Certificate,
    key: KeyPair,
    /// PEM of this CA followed by its own issuers up to (not including) the root.
    chain_pem: String,
}

impl CertificateAuthority {
    /// A self-signed root.
    pub fn root(name: &str) -> Result<Self> {
        let key = KeyPair::generate().map_err(|e| pki_err(name, e))?;
        let params = ca_params(name, &key, Validity::fresh(3650));
        let cert = params.self_signed(&key).map_err(|e| pki_err(name, e))?;
        Ok(Self {
            name: name.into(),
            chain_pem: String::new(),
            cert,
            key,
        })
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Result<Self> {
        let key = KeyPair::generate().map_err(|e| pki_err(name, e))?;
        let params = ca_params(name, &key, Validity::fresh(1825));
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| pki_err(name, e))?;
        let chain_pem = format!("{}{}", cert.pem(), self.chain_pem);
        Ok(Self {
            name: name.into(),
            cert,
            key,
            chain_pem,
        })
    }

    /// Adopts a CA created by another tool, such as the `hub-ca` JupyterHub
    /// writes into `internal-ssl/`, so the zoo can be signed by a CA the
    /// endpoints already trust. Accepts PKCS#8 and PKCS#1 RSA keys.
    pub fn adopt(name: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = load_key_pair(key_pem).map_err(|e| pki_err(name, e))?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem).map_err(|e| pki_err(name, e))?;
        // Re-signing only rebuilds rcgen's view of the issuer (its name and
        // key); leaves it signs verify against the original certificate.
        let cert = params.self_signed(&key).map_err(|e| pki_err(name, e))?;
        Ok(Self {
            name: name.into(),
            cert,
            key,
            chain_pem: String::new(),
        })
    }

    /// The CA's private key and its chain up to (not including) the root,
    /// for a tool that signs on the organisation's behalf: the inspecting
    /// proxy. Written 0600 by whoever writes it.
    pub fn signing_pem(&self) -> String {
        format!("{}{}", self.key.serialize_pem(), self.chain_pem)
    }

    /// This CA's own certificate, as trust anchors take it.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn issue(
        &self,
        name: &str,
        sans: &[&str],
        usage: Usage,
        validity: Validity,
    ) -> Result<Identity> {
        let key = KeyPair::generate().map_err(|e| pki_err(name, e))?;
        let params = leaf_params(name, &key, sans, usage, validity)?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| pki_err(name, e))?;
        Ok(Identity::new(
            name,
            format!("{}{}", cert.pem(), self.chain_pem),
            key.serialize_pem(),
        ))
    }

    /// A certificate *without* CA:true that nevertheless signs a leaf: the
    /// zoo's "signed by a non-CA" entry needs the issuer too.
    fn issue_non_ca_signer(&self, name: &str) -> Result<(Certificate, KeyPair)> {
        let key = KeyPair::generate().map_err(|e| pki_err(name, e))?;
        let params = leaf_params(name, &key, &[], Usage::ServerAndClient, Validity::fresh(30))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| pki_err(name, e))?;
        Ok((cert, key))
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hubtrust test PKI");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_params(name: &str, key: &KeyPair, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(key_identifier(key));
    // A self-signed root's names itself; RFC 5280 allows it there and
    // requires it everywhere else.
    params.use_authority_key_identifier_extension = true;
    params.distinguished_name = distinguished_name(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params
}

/// RFC 5280's method 1 (SHA-1 of the public key bits) for key
/// identifiers: tools that sign with a hubtrust CA (mitmproxy) compute
/// their leaves' authority key identifier that way, and chain building
/// matches it against the CA's subject key identifier.
fn key_identifier(key: &KeyPair) -> Vec<u8> {
    <sha1::Sha1 as sha1::Digest>::digest(key.public_key_raw()).to_vec()
}

fn leaf_params(
    name: &str,
    key: &KeyPair,
    sans: &[&str],
    usage: Usage,
    validity: Validity,
) -> Result<CertificateParams> {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).map_err(|e| pki_err(name, e))?;
    // Strict RFC 5280 verifiers (sslyze, pyca/cryptography) want both key
    // identifiers on a leaf. rcgen writes the subject's only on CAs and on
    // an explicit `cA: FALSE`, which strict DER parsers refuse (see below),
    // so the leaf's goes in as a plain extension.
    let id = key_identifier(key);
    params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        &[2, 5, 29, 14],
        der_tlv(0x04, &id),
    )];
    params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(id);
    params.use_authority_key_identifier_extension = true;
    params.distinguished_name = distinguished_name(name);
    // No basicConstraints at all: rcgen's explicit `cA: FALSE` encodes a
    // DEFAULT value, which strict DER parsers (python cryptography, hence
    // mitmproxy) refuse to read.
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usage.purposes();
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    Ok(params)
}

/// Loads a PEM private key. certipy writes RSA keys as PKCS#1, which rcgen
/// only takes wrapped in PKCS#8, so those are wrapped here.
fn load_key_pair(key_pem: &str) -> std::result::Result<KeyPair, String> {
    let item = rustls_pemfile::read_one_from_slice(key_pem.as_bytes())
        .map_err(|e| format!("{e:?}"))?
        .ok_or("no PEM block in key file")?
        .0;
    match item {
        rustls_pemfile::Item::Pkcs8Key(der) => {
            KeyPair::try_from(der.secret_pkcs8_der()).map_err(|e| e.to_string())
        }
        rustls_pemfile::Item::Pkcs1Key(der) => {
            let pkcs8 = wrap_rsa_pkcs1_in_pkcs8(der.secret_pkcs1_der());
            let der = rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8);
            KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
                .map_err(|e| e.to_string())
        }
        rustls_pemfile::Item::Sec1Key(_) => {
            Err("SEC1 EC keys are not supported; convert to PKCS#8".into())
        }
        _ => Err("the PEM block is not a private key".into()),
    }
}

/// PrivateKeyInfo ::= SEQUENCE { version 0, AlgorithmIdentifier rsaEncryption, OCTET STRING pkcs1 }
fn wrap_rsa_pkcs1_in_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    const VERSION: [u8; 3] = [0x02, 0x01, 0x00];
    const RSA_ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let octets = der_tlv(0x04, pkcs1);
    let body = [&VERSION[..], &RSA_ALGORITHM[..], &octets[..]].concat();
    der_tlv(0x30, &body)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// Each way a certificate can be wrong. Every entry is signed by a CA the
/// endpoint otherwise trusts, so the defect alone decides the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum ZooDefect {
    Expired,
    NotYetValid,
    WrongSan,
    SelfSigned,
    ServerAuthOnlyEku,
    SignedByNonCa,
}

impl ZooDefect {
    pub const ALL: [ZooDefect; 6] = [
        ZooDefect::Expired,
        ZooDefect::NotYetValid,
        ZooDefect::WrongSan,
        ZooDefect::SelfSigned,
        ZooDefect::ServerAuthOnlyEku,
        ZooDefect::SignedByNonCa,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ZooDefect::Expired => "zoo-expired",
            ZooDefect::NotYetValid => "zoo-not-yet-valid",
            ZooDefect::WrongSan => "zoo-wrong-san",
            ZooDefect::SelfSigned => "zoo-self-signed",
            ZooDefect::ServerAuthOnlyEku => "zoo-server-auth-only",
            ZooDefect::SignedByNonCa => "zoo-signed-by-non-ca",
        }
    }
}

/// The bad-certificate zoo, issued by one trusted CA.
pub struct Zoo {
    pub entries: Vec<(ZooDefect, Identity)>,
}

impl Zoo {
    /// `sans` are the names the endpoints are reached by; every entry carries
    /// them except the wrong-SAN one, which names somewhere else entirely.
    pub fn issue(signer: &CertificateAuthority, sans: &[&str]) -> Result<Self> {
        let mut entries = Vec::new();
        for defect in ZooDefect::ALL {
            let name = defect.label();
            let identity = match defect {
                ZooDefect::Expired => {
                    signer.issue(name, sans, Usage::ServerAndClient, Validity::expired())?
                }
                ZooDefect::NotYetValid => signer.issue(
                    name,
                    sans,
                    Usage::ServerAndClient,
                    Validity::not_yet_valid(),
                )?,
                ZooDefect::WrongSan => signer.issue(
                    name,
                    &["elsewhere.invalid"],
                    Usage::ServerAndClient,
                    Validity::fresh(30),
                )?,
                ZooDefect::SelfSigned => {
                    let key = KeyPair::generate().map_err(|e| pki_err(name, e))?;
                    let cert = leaf_params(
                        name,
                        &key,
                        sans,
                        Usage::ServerAndClient,
                        Validity::fresh(30),
                    )?
                    .self_signed(&key)
                    .map_err(|e| pki_err(name, e))?;
                    Identity::new(name, cert.pem(), key.serialize_pem())
                }
                ZooDefect::ServerAuthOnlyEku => {
                    signer.issue(name, sans, Usage::Server, Validity::fresh(30))?
                }
                ZooDefect::SignedByNonCa => {
                    let (non_ca, non_ca_key) = signer.issue_non_ca_signer("zoo-non-ca-signer")?;
                    let key = KeyPair::generate().map_err(|e| pki_err(name, e))?;
                    let cert = leaf_params(
                        name,
                        &key,
                        sans,
                        Usage::ServerAndClient,
                        Validity::fresh(30),
                    )?
                    .signed_by(&key, &non_ca, &non_ca_key)
                    .map_err(|e| pki_err(name, e))?;
                    // The non-CA signer travels with the leaf, as a
                    // misconfigured server would send it.
                    Identity::new(
                        name,
                        format!("{}{}", cert.pem(), non_ca.pem()),
                        key.serialize_pem(),
                    )
                }
            };
            entries.push((defect, identity));
        }
        Ok(Self { entries })
    }

    pub fn get(&self, defect: ZooDefect) -> &Identity {
        // Every defect is issued by `Zoo::issue`; ALL is exhaustive.
        &self
            .entries
            .iter()
            .find(|(d, _)| *d == defect)
            .expect("the zoo holds every defect")
            .1
    }
}

/// The organisation's PKI: a root, an issuing intermediate, and a foreign CA
/// that nobody in the stack trusts.
/// Where the distribution keeps its CA bundle: the store tools (OpenSSL,
/// curl, git's gnutls, python's ssl) use by default. Every host of a stack
/// gets its own, holding the run's public root.
pub const SYSTEM_STORE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where a run keeps the system store its hosts get.
pub fn system_store_file(run_dir: &Path) -> PathBuf {
    run_dir.join("pki").join("system-store.crt")
}

pub struct OrgPki {
    pub root: CertificateAuthority,
    pub issuing: CertificateAuthority,
    pub foreign: CertificateAuthority,
    /// The run's stand-in for the roots a distribution ships: the only
    /// certificate in every host's system store.
    pub public: CertificateAuthority,
}

impl OrgPki {
    pub fn generate() -> Result<Self> {
        let root = CertificateAuthority::root("hubtrust org root CA")?;
        let issuing = root.intermediate("hubtrust org issuing CA")?;
        let foreign = CertificateAuthority::root("hubtrust foreign CA")?;
        let public = CertificateAuthority::root("hubtrust public root")?;
        Ok(Self {
            root,
            issuing,
            foreign,
            public,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs1_wrapping_frames_the_der_correctly() {
        // The real certipy key path runs against the live stack; here the
        // DER framing: version (3) + algorithm (15) + octet string (4 + 300).
        let wrapped = wrap_rsa_pkcs1_in_pkcs8(&[0u8; 300]);
        assert_eq!(wrapped[0], 0x30);
        assert_eq!(&wrapped[1..4], &[0x82, 0x01, 0x42]);
        assert_eq!(wrapped.len(), 4 + 322);
    }

    #[test]
    fn keys_are_written_0600_and_certs_0644() {
        use std::os::unix::fs::PermissionsExt;
        let held = tempfile::tempdir().unwrap();
        let dir = held.path().join("keys");
        let ca = CertificateAuthority::root("test CA").unwrap();
        let id = ca
            .issue("leaf", &["localhost"], Usage::Server, Validity::fresh(1))
            .unwrap();
        let (crt, key) = id.write_to(&dir).unwrap();
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&crt).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn debug_of_an_identity_hides_its_key() {
        let ca = CertificateAuthority::root("test CA").unwrap();
        let id = ca
            .issue("leaf", &["localhost"], Usage::Server, Validity::fresh(1))
            .unwrap();
        assert!(!format!("{id:?}").contains("PRIVATE KEY"));
    }
}
