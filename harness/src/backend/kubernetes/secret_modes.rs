//! The secrets check on Kubernetes: who may read each private key and the
//! hub's secrets inside the pod that holds them.
//!
//! On the other backends the rule is mode 0600. A Secret volume's files
//! belong to root (group: the pod's `fsGroup`, when it has one), so a
//! component running as its own user reads them through the group or the
//! other bits. The rule here is therefore: nobody but the component's own
//! user and group; no bit for other users, and group bits only for a
//! group the component runs in. The files are read from this machine
//! through the pod's `/proc/<pid>/root` (kind's nodes are containers
//! here), as root, with `find -L` so a Secret volume's `..data` links are
//! followed once.

use std::path::Path;

use serde::Serialize;

/// Which files of a directory are secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// `*.key`: the certificates beside them are public.
    PrivateKeys,
    /// Every file: each key of the chart's `hub` Secret is one.
    Everything,
}

/// A directory of one pod whose secrets are checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretDir {
    pub path: String,
    pub kind: Kind,
}

/// One pod's secrets, found by selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodSecrets {
    /// What the report calls the pod, and the known-defects list its
    /// endpoint.
    pub what: String,
    pub selector: String,
    /// What the component's own process has on its command line: its
    /// root is the container's filesystem, its ids the component's.
    pub process: String,
    pub dirs: Vec<SecretDir>,
}

/// The hub's internal store (extracted by hubtrust's init container) and
/// the chart's `hub` Secret (the cookie secret, the proxy's token, every
/// service's token); CHP's keys (`proxy.https.type: secret`); the first
/// lab's key (KubeSpawner's `jupyterhub-internal-certs` Secret).
pub fn planned(user: &str) -> Vec<PodSecrets> {
    let dir = |path: &str, kind| SecretDir {
        path: path.into(),
        kind,
    };
    vec![
        PodSecrets {
            what: "the hub".into(),
            selector: "component=hub".into(),
            process: "jupyterhub".into(),
            dirs: vec![
                dir(super::chart::INTERNAL_SSL_DIR, Kind::PrivateKeys),
                dir("/usr/local/etc/jupyterhub/secret", Kind::Everything),
            ],
        },
        PodSecrets {
            what: "the proxy".into(),
            selector: "component=proxy".into(),
            process: "configurable-http-proxy".into(),
            dirs: vec![dir(super::chart::CHP_TLS_DIR, Kind::PrivateKeys)],
        },
        PodSecrets {
            what: format!("lab of {user}"),
            selector: format!("component=singleuser-server,hub.jupyter.org/username={user}"),
            process: "jupyterhub-singleuser".into(),
            dirs: vec![dir("/etc/jupyterhub/ssl", Kind::PrivateKeys)],
        },
    ]
}

/// `find`'s arguments listing `dir`'s secret files under `root` (a pod's
/// `/proc/<pid>/root`), one `MODE UID GID PATH` a line. Links are
/// followed (a Secret volume's files are links into `..data`), and the
/// `..`-named directories they point into are not listed again.
pub fn find_args(root: &Path, dir: &SecretDir) -> Vec<String> {
    let mut args = vec![
        "-L".to_string(),
        root.join(dir.path.trim_start_matches('/'))
            .display()
            .to_string(),
        "-name".into(),
        "..*".into(),
        "-prune".into(),
        "-o".into(),
        "-type".into(),
        "f".into(),
    ];
    if dir.kind == Kind::PrivateKeys {
        args.extend(["-name".into(), "*.key".into()]);
    }
    args.extend(["-printf".into(), "%m %U %G %p\\n".into()]);
    args
}

/// Run by `sh` inside a component's own container, as the component's
/// own user, where the pods are not on this machine: `PROC NAME [DIR
/// PATTERN]...`. Prints the `Uid:`, `Gid:` and `Groups:` lines of the
/// process whose program (its first or second argument, so not tini's
/// `--` nor this shell) is NAME, a `--` line, then `MODE UID GID PATH`
/// for each file of each DIR matching PATTERN, links followed and the
/// `..`-named directories not entered. Only POSIX sh, `find -L` and `stat
/// -L -c`, which GNU and busybox share: the chart's hub and lab images are
/// Debian's, its proxy's Alpine's.
pub const IN_CONTAINER_SCRIPT: &str = r#"# hubtrust: the component's user and groups, and its secret files
proc=$1 name=$2
shift 2
pid=
for entry in "$proc"/[0-9]*; do
    if tr '\0' '\n' < "$entry/cmdline" 2>/dev/null | head -n 2 | sed 's|.*/||' | grep -qxF -- "$name"; then
        pid=${entry##*/}
        break
    fi
done
[ -n "$pid" ] || { echo "no process in this container runs $name" >&2; exit 3; }
grep -E '^(Uid|Gid|Groups):' "$proc/$pid/status" || exit 3
echo --
while [ $# -ge 2 ]; do
    [ -d "$1" ] || { echo "$1 is not a directory in this container" >&2; exit 4; }
    files=$(find -L "$1" -name '..*' -prune -o -type f -name "$2" -print) || exit 4
    if [ -n "$files" ]; then
        printf '%s\n' "$files" | while IFS= read -r file; do
            stat -L -c '%a %u %g %n' "$file" || exit 4
        done || exit 4
    fi
    shift 2
done
"#;

/// [`IN_CONTAINER_SCRIPT`]'s arguments after the script, for `pod`.
pub fn in_container_args(proc_root: &str, pod: &PodSecrets) -> Vec<String> {
    let mut args = vec![proc_root.to_string(), pod.process.clone()];
    for dir in &pod.dirs {
        let pattern = match dir.kind {
            Kind::PrivateKeys => "*.key",
            Kind::Everything => "*",
        };
        args.extend([dir.path.clone(), pattern.to_string()]);
    }
    args
}

/// What [`IN_CONTAINER_SCRIPT`] printed: the component's ids and files.
pub fn parse_in_container(output: &str) -> Option<(ProcessIds, Vec<FileMode>)> {
    let (status, files) = output.split_once("\n--\n")?;
    Some((parse_status(status)?, parse_find(files, Path::new(""))))
}

/// One secret file as `find` listed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileMode {
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `find`'s lines, paths made relative to `root` again.
pub fn parse_find(output: &str, root: &Path) -> Vec<FileMode> {
    let root = root.display().to_string();
    output
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ' ');
            let mode = u32::from_str_radix(parts.next()?, 8).ok()?;
            let uid = parts.next()?.parse().ok()?;
            let gid = parts.next()?.parse().ok()?;
            let path = parts.next()?;
            Some(FileMode {
                path: path.strip_prefix(&root).unwrap_or(path).to_string(),
                mode,
                uid,
                gid,
            })
        })
        .collect()
}

/// A process's user and every group it runs in, from its
/// `/proc/<pid>/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIds {
    pub uid: u32,
    pub groups: Vec<u32>,
}

pub fn parse_status(status: &str) -> Option<ProcessIds> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|n| n.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
    };
    let uid = *field("Uid:")?.get(1)?;
    let mut groups = vec![*field("Gid:")?.get(1)?];
    groups.extend(field("Groups:").unwrap_or_default());
    groups.sort_unstable();
    groups.dedup();
    Some(ProcessIds { uid, groups })
}

/// Why `file` is readable beyond its component's user and group, if it is.
pub fn judge(file: &FileMode, component: &ProcessIds) -> Option<String> {
    let mode = file.mode & 0o777;
    if mode & 0o007 != 0 {
        return Some(format!(
            "{} is mode {mode:04o} (owner {}, group {}): every user in the pod may read it, not only the component (uid {})",
            file.path, file.uid, file.gid, component.uid
        ));
    }
    if mode & 0o070 != 0 && !component.groups.contains(&file.gid) {
        return Some(format!(
            "{} is mode {mode:04o} with group {}, which the component (uid {}, groups {:?}) does not run in",
            file.path, file.gid, component.uid, component.groups
        ));
    }
    None
}

/// The file's name, as the known-defects list matches it.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mode: u32, uid: u32, gid: u32) -> FileMode {
        FileMode {
            path: "/etc/jupyterhub/ssl/ssl.key".into(),
            mode,
            uid,
            gid,
        }
    }

    #[test]
    fn only_the_components_user_and_group_may_read_a_secret() {
        let lab = ProcessIds {
            uid: 1000,
            groups: vec![100],
        };
        assert_eq!(judge(&file(0o600, 1000, 1000), &lab), None);
        // A Secret volume under fsGroup 100: root's, read through the group.
        assert_eq!(judge(&file(0o440, 0, 100), &lab), None);
        // KubeSpawner's defaultMode 511.
        let open = judge(&file(0o777, 0, 100), &lab).expect("a finding");
        assert!(
            open.contains("mode 0777") && open.contains("every user in the pod"),
            "{open}"
        );
        // Kubernetes' default 0644, no fsGroup.
        assert!(judge(&file(0o644, 0, 0), &lab).is_some());
        let wrong_group = judge(&file(0o640, 0, 0), &lab).expect("a finding");
        assert!(
            wrong_group.contains("group 0, which the component"),
            "{wrong_group}"
        );
    }

    #[test]
    fn a_processs_user_and_groups_come_from_its_status() {
        let status = "Name:\tjupyterhub\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t100 1000 \n";
        assert_eq!(
            parse_status(status),
            Some(ProcessIds {
                uid: 1000,
                groups: vec![100, 1000]
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    /// A `/proc` with tini (its command line naming the hub after `--`)
    /// and the hub's Python, and the lab's Secret volume: what a
    /// component's container holds.
    fn container(root: &Path) -> (std::path::PathBuf, PodSecrets) {
        let proc = root.join("proc");
        for (pid, cmdline, uid) in [
            ("1", "tini\0--\0jupyterhub\0", "0"),
            (
                "7",
                "python3\0/usr/local/bin/jupyterhub\0--config\0x.py\0",
                "1000",
            ),
        ] {
            std::fs::create_dir_all(proc.join(pid)).unwrap();
            std::fs::write(proc.join(pid).join("cmdline"), cmdline).unwrap();
            std::fs::write(
                proc.join(pid).join("status"),
                format!("Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t1000\t1000\t1000\t1000\nGroups:\t100 1000 \n"),
            )
            .unwrap();
        }
        let volume = secret_volume(root);
        let pod = PodSecrets {
            what: "the hub".into(),
            selector: "component=hub".into(),
            process: "jupyterhub".into(),
            dirs: vec![SecretDir {
                path: volume.display().to_string(),
                kind: Kind::PrivateKeys,
            }],
        };
        (proc, pod)
    }

    /// `sh -c IN_CONTAINER_SCRIPT` with `path` as its PATH.
    fn in_container(shell: &str, path: &str, args: &[String]) -> std::process::Output {
        std::process::Command::new(shell)
            .arg("-c")
            .arg(IN_CONTAINER_SCRIPT)
            .arg("sh")
            .args(args)
            .env("PATH", path)
            .output()
            .unwrap()
    }

    /// A directory of busybox's applets, as an Alpine image has them.
    fn busybox_path(root: &Path) -> Option<std::path::PathBuf> {
        let busybox = ["/usr/bin/busybox", "/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let bin = root.join("busybox-bin");
        std::fs::create_dir_all(&bin).unwrap();
        for applet in ["sh", "tr", "head", "sed", "grep", "find", "stat"] {
            std::os::unix::fs::symlink(busybox, bin.join(applet)).unwrap();
        }
        Some(bin)
    }

    /// The script the pods run where they are not on this machine finds
    /// the component's own process (not tini), reads its ids, and lists
    /// the keys through the volume's links, with GNU's tools and with
    /// busybox's alike.
    #[test]
    fn inside_a_container_the_components_ids_and_keys_are_read() {
        let held = tempfile::tempdir().unwrap();
        let (proc, pod) = container(held.path());
        let args = in_container_args(&proc.display().to_string(), &pod);
        // (shell, PATH): this machine's, then busybox's.
        let mut shells = vec![("sh".to_string(), "/usr/bin:/bin".to_string())];
        match busybox_path(held.path()) {
            Some(bin) => shells.push((
                bin.join("sh").display().to_string(),
                bin.display().to_string(),
            )),
            None => assert!(
                std::env::var_os("CI").is_none(),
                "busybox is missing: the proxy image's tools go untested"
            ),
        }
        for (shell, path) in shells {
            let out = in_container(&shell, &path, &args);
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{shell}: {said}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let (ids, files) = parse_in_container(&said).expect(&said);
            assert_eq!(
                ids,
                ProcessIds {
                    uid: 1000,
                    groups: vec![100, 1000]
                },
                "{shell}: not the hub's process"
            );
            assert_eq!(files.len(), 1, "{shell}: {files:?}");
            assert!(files[0].path.ends_with("/etc/jupyterhub/ssl/ssl.key"));
            assert_eq!(files[0].mode, 0o777, "{shell}");
        }
    }

    /// Where the component's process or a directory is not found, the
    /// script fails, saying which: a listing of nothing is never clean.
    #[test]
    fn inside_a_container_a_missing_process_or_directory_fails() {
        let held = tempfile::tempdir().unwrap();
        let (proc, mut pod) = container(held.path());
        pod.process = "configurable-http-proxy".into();
        let out = in_container(
            "sh",
            "/usr/bin:/bin",
            &in_container_args(&proc.display().to_string(), &pod),
        );
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stderr)
            .contains("no process in this container runs configurable-http-proxy"));
        pod.process = "jupyterhub".into();
        pod.dirs[0].path = "/nonexistent/ssl".into();
        let out = in_container(
            "sh",
            "/usr/bin:/bin",
            &in_container_args(&proc.display().to_string(), &pod),
        );
        assert_eq!(out.status.code(), Some(4));
        assert!(String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/ssl is not a directory in this container"));
    }

    /// A directory laid out as kubelet lays out a Secret volume (each file
    /// a link into `..data`, itself a link to a timestamped directory),
    /// listed by the real `find` with the arguments a run uses.
    #[test]
    fn a_secret_volume_is_listed_once_through_its_links() {
        let held = tempfile::tempdir().unwrap();
        let root = held.path();
        secret_volume(root);
        let dir = &planned("alice")[2].dirs[0];
        let out = std::process::Command::new("find")
            .args(find_args(root, dir))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = parse_find(&String::from_utf8_lossy(&out.stdout), root);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].path, "/etc/jupyterhub/ssl/ssl.key");
        assert_eq!(listed[0].mode, 0o777);
        assert_eq!(file_name(&listed[0].path), "ssl.key");
    }

    /// `root/etc/jupyterhub/ssl` laid out as kubelet lays out the lab's
    /// Secret volume under KubeSpawner's defaultMode 511.
    fn secret_volume(root: &Path) -> std::path::PathBuf {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let volume = root.join("etc/jupyterhub/ssl");
        let data = volume.join("..2026_12_06_00_00_00.1");
        std::fs::create_dir_all(&data).unwrap();
        for (name, mode) in [("ssl.key", 0o777), ("ssl.crt", 0o777)] {
            std::fs::write(data.join(name), "x").unwrap();
            std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
            symlink(format!("..data/{name}"), volume.join(name)).unwrap();
        }
        symlink("..2026_12_06_00_00_00.1", volume.join("..data")).unwrap();
        volume
    }
}
