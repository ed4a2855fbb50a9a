//! The certificate inventory: every certificate on disk in a stack, ours and
//! the ones JupyterHub generates, with the facts operators audit.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use x509_parser::prelude::*;

use crate::error::{HarnessError, Result};

#[derive(Debug, Clone, Serialize)]
pub struct CertificateRecord {
    /// Which tree it came from (`internal-ssl`, `hubtrust-pki`, …).
    pub source: String,
    /// Path relative to that tree.
    pub path: String,
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub key_type: String,
    pub key_bits: usize,
    pub eku: Vec<String>,
    pub is_ca: bool,
    /// How many certificates the file holds (trust bundles hold several).
    pub certificates_in_file: usize,
    pub file_mode: String,
    /// Mode of the matching private key file, when there is one.
    pub key_file_mode: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    pub certificates: Vec<CertificateRecord>,
}

impl Inventory {
    /// Scans each `(source label, directory)` for `*.crt` and `*.pem` files.
    pub fn scan(trees: &[(&str, &Path)]) -> Result<Self> {
        let mut certificates = Vec::new();
        for (label, root) in trees {
            let mut files = Vec::new();
            collect_files(root, &mut files)?;
            files.sort();
            for file in files {
                if let Some(record) = describe_file(label, root, &file)? {
                    certificates.push(record);
                }
            }
        }
        Ok(Self { certificates })
    }

    /// Whether `internal-ssl/<ca>/<ca>.crt` is there and is a CA.
    pub fn lists_internal_ca(&self, ca: &str) -> bool {
        self.certificates
            .iter()
            .any(|c| c.source == "internal-ssl" && c.path == format!("{ca}/{ca}.crt") && c.is_ca)
    }

    /// Each internal leaf that is not RSA of at least `bits` bits with
    /// both serverAuth and clientAuth, described; Err when there is no
    /// internal leaf at all (nothing was shown).
    pub fn weak_internal_leaves(&self, bits: usize) -> std::result::Result<Vec<String>, String> {
        let leaves: Vec<_> = self
            .certificates
            .iter()
            .filter(|c| c.source == "internal-ssl" && !c.is_ca && c.certificates_in_file == 1)
            .collect();
        if leaves.is_empty() {
            return Err("no internal leaf certificate was found".into());
        }
        Ok(leaves
            .iter()
            .filter(|c| {
                c.key_type != "RSA"
                    || c.key_bits < bits
                    || !c.eku.iter().any(|e| e == "serverAuth")
                    || !c.eku.iter().any(|e| e == "clientAuth")
            })
            .map(|c| format!("{}: {} {} EKU {:?}", c.path, c.key_type, c.key_bits, c.eku))
            .collect())
    }

    /// Key files whose mode lets anyone but the owner read them.
    pub fn exposed_keys(&self) -> Vec<(String, String)> {
        self.certificates
            .iter()
            .filter_map(|c| {
                let mode = c.key_file_mode.as_ref()?;
                (mode != "0600" && mode != "0400")
                    .then(|| (format!("{}/{}", c.source, c.path), mode.clone()))
            })
            .collect()
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        fs::read_dir(dir).map_err(|e| HarnessError::io(format!("list {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("crt" | "pem")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

pub fn file_mode(path: &Path) -> Option<String> {
    fs::metadata(path)
        .ok()
        .map(|m| format!("{:04o}", m.permissions().mode() & 0o7777))
}

pub fn describe_file(label: &str, root: &Path, file: &Path) -> Result<Option<CertificateRecord>> {
    let text =
        fs::read(file).map_err(|e| HarnessError::io(format!("read {}", file.display()), e))?;
    let ders: Vec<_> = rustls_pemfile::certs(&mut text.as_slice())
        .filter_map(|c| c.ok())
        .collect();
    let Some(first) = ders.first() else {
        return Ok(None);
    };
    let Ok((_, cert)) = parse_x509_certificate(first) else {
        return Ok(None);
    };
    let (key_type, key_bits) = key_description(&cert);
    let key_file = file.with_extension("key");
    Ok(Some(CertificateRecord {
        source: label.into(),
        path: file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans: subject_alt_names(&cert),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
        key_type,
        key_bits,
        eku: extended_key_usage(&cert),
        is_ca: cert.is_ca(),
        certificates_in_file: ders.len(),
        file_mode: file_mode(file).unwrap_or_default(),
        key_file_mode: key_file.exists().then(|| file_mode(&key_file)).flatten(),
    }))
}

pub fn subject_alt_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => format!(
                    "IP:{}",
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())
                ),
                16 => format!(
                    "IP:{}",
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default())
                ),
                _ => "IP:?".into(),
            },
            other => format!("{other}"),
        })
        .collect()
}

fn extended_key_usage(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(eku)) = cert.extended_key_usage() else {
        return Vec::new();
    };
    let eku = eku.value;
    let mut out = Vec::new();
    if eku.server_auth {
        out.push("serverAuth".into());
    }
    if eku.client_auth {
        out.push("clientAuth".into());
    }
    if eku.any {
        out.push("any".into());
    }
    out.extend(eku.other.iter().map(|o| o.to_id_string()));
    out
}

fn key_description(cert: &X509Certificate<'_>) -> (String, usize) {
    match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => ("RSA".into(), rsa.key_size()),
        Ok(x509_parser::public_key::PublicKey::EC(ec)) => ("EC".into(), ec.key_size()),
        Ok(other) => (format!("{other:?}").chars().take(16).collect(), 0),
        Err(_) => ("unknown".into(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, Usage, Validity};

    #[test]
    fn inventory_shape_is_stable() {
        let held = tempfile::tempdir().unwrap();
        let dir = held.path().join("inventory");
        let ca = CertificateAuthority::root("inventory CA").unwrap();
        ca.issue(
            "server",
            &["hub.example", "10.0.0.1"],
            Usage::Server,
            Validity::fresh(1),
        )
        .unwrap()
        .write_to(&dir)
        .unwrap();
        crate::pki::write_with_mode(&dir.join("ca.crt"), ca.cert_pem().as_bytes(), 0o644).unwrap();
        let inventory = Inventory::scan(&[("hubtrust-pki", &dir)]).unwrap();
        insta::assert_json_snapshot!(inventory, {
            ".certificates[].not_before" => "[not-before]",
            ".certificates[].not_after" => "[not-after]",
        });
        assert!(inventory.exposed_keys().is_empty());
    }
}
