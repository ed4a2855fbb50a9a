//! Per-scenario artifacts: component logs (tokens masked), rendered configs
//! and public certificates. Never private keys or the hub database.

use std::path::{Path, PathBuf};

use hubtrust_harness::secret::{mask_all, Secret};
use hubtrust_harness::Stack;

/// Copies the stack's evidence into `dest` and returns `dest`.
pub fn keep(stack: &Stack, dest: &Path) -> std::io::Result<PathBuf> {
    stack.gather_lab_logs();
    keep_from(&stack.run_dir, &stack.secrets(), dest)
}

/// The same, from a run directory whose stack never came up: logs are
/// masked with every secret this process generated.
pub fn keep_unstarted(run_dir: &Path, dest: &Path) -> std::io::Result<PathBuf> {
    let generated = Secret::all_generated();
    keep_from(run_dir, &generated.iter().collect::<Vec<_>>(), dest)
}

fn keep_from(run_dir: &Path, secrets: &[&Secret], dest: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dest)?;
    copy_tree(run_dir, run_dir, dest, &|path, bytes| {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "log" => Some(mask_all(&String::from_utf8_lossy(bytes), secrets).into_bytes()),
            // A .pem may bundle a key with its certificates (mitmproxy's CA
            // file does): such files never leave the run directory.
            "crt" | "pem" if holds_a_private_key(bytes) => None,
            "crt" | "pem" | "pcap" => Some(bytes.to_vec()),
            "py" if name == "jupyterhub_config.py" => Some(bytes.to_vec()),
            _ => None,
        }
    })?;
    Ok(dest.to_path_buf())
}

fn holds_a_private_key(bytes: &[u8]) -> bool {
    bytes
        .windows(b"PRIVATE KEY-----".len())
        .any(|w| w == b"PRIVATE KEY-----")
}

type Filter<'a> = &'a dyn Fn(&Path, &[u8]) -> Option<Vec<u8>>;

fn copy_tree(root: &Path, dir: &Path, dest: &Path, filter: Filter<'_>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            copy_tree(root, &path, dest, filter)?;
        } else if file_type.is_file() {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            if let Some(kept) = filter(&path, &bytes) {
                let target = dest.join(path.strip_prefix(root).unwrap_or(&path));
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(target, kept)?;
            }
        }
    }
    Ok(())
}

/// A file-system-friendly name for a scenario.
pub fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}
