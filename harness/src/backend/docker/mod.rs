//! The docker backend: each host of a topology is a container, each link a
//! user-defined network (internal, so it routes nowhere else), every object
//! labelled with the run it belongs to. Talks to the daemon through bollard,
//! at `DOCKER_HOST` or the default socket.
//!
//! Probes and readiness checks open their connections from inside a host by
//! entering the container's network namespace, exactly as on the local
//! backend; that needs the daemon on this machine and root.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkConnectRequest, NetworkCreateRequest,
    NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use nix::sys::signal::Signal;

use crate::error::{HarnessError, Result};
use crate::process::LaunchSpec;

pub mod images;
mod network;
pub use network::{DockerBackend, DockerRun};

/// The label every container, network and volume of a run carries.
pub const RUN_LABEL: &str = "hubtrust.run";
/// The label naming what a container runs (hub, proxy, lab, …).
const COMPONENT_LABEL: &str = "hubtrust.component";
/// The label naming the user a lab container serves.
const USER_LABEL: &str = "hubtrust.user";

/// A connection to the daemon, scoped to one run.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    pub run: String,
    /// Leave the run's objects for inspection when its stack fails to
    /// come up (`--keep`); the caller then tells the reaper to stand down.
    pub keep_if_start_fails: bool,
    /// How many copies out of a container came back cut short and were
    /// fetched again: shared by every clone of this engine.
    copies_refetched: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

/// How long a copy out of a container is fetched again while the daemon
/// keeps sending it cut short.
const COPY_OUT_RETRIES_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// Whether a tar stream ends as a whole archive does: in two zero blocks.
fn archive_is_whole(tar: &[u8]) -> bool {
    tar.len() >= 1024
        && tar.len().is_multiple_of(512)
        && tar[tar.len() - 1024..].iter().all(|b| *b == 0)
}

/// Moves every entry of `from` into `to`, replacing files by rename (which
/// is atomic) and making directories that are missing, with `from`'s modes.
fn move_into_place(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            let mode = entry.metadata()?.permissions().mode();
            std::fs::create_dir_all(&target)?;
            move_into_place(&entry.path(), &target)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
        } else {
            std::fs::rename(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn docker_error(what: impl Into<String>, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Docker {
        what: what.into(),
        message: e.to_string(),
    }
}

/// Docker answers 409 when a name is taken.
fn is_conflict(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerEngine {
    /// Connects to `DOCKER_HOST`, else the default socket, and checks that a
    /// daemon answers.
    pub async fn connect(run: &str) -> Result<Self> {
        let at =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let no_daemon = |e: &dyn std::fmt::Display| {
            HarnessError::MissingPrerequisite {
            what: "a docker daemon".into(),
            why: format!("nothing answers at {at}: {e}"),
            fix: "start one (`dockerd &`, or `systemctl start docker`), or point DOCKER_HOST at yours".into(),
        }
        };
        let docker = Docker::connect_with_defaults().map_err(|e| no_daemon(&e))?;
        let docker = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            docker.negotiate_version(),
        )
        .await
        .map_err(|_| no_daemon(&"no answer within 10 s"))?
        .map_err(|e| no_daemon(&e))?;
        docker.ping().await.map_err(|e| no_daemon(&e))?;
        Ok(Self {
            docker,
            run: run.into(),
            keep_if_start_fails: false,
            copies_refetched: Default::default(),
        })
    }

    /// How many copies out of a container came back cut short and were
    /// fetched again, over this engine's life.
    pub fn copies_refetched(&self) -> u32 {
        self.copies_refetched
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn labels(&self, host: Option<&str>) -> HashMap<String, String> {
        let mut labels = HashMap::from([(RUN_LABEL.to_string(), self.run.clone())]);
        if let Some(host) = host {
            labels.insert("hubtrust.host".into(), host.into());
        }
        labels
    }

    /// The object name of `what` in this run.
    pub fn name(&self, what: &str) -> String {
        format!("hubtrust-{}-{what}", self.run)
    }

    /// The id of `image` in the daemon; fails with the fix when it is not
    /// there.
    pub async fn require_image(&self, image: &str) -> Result<String> {
        match self.docker.inspect_image(image).await {
            Ok(inspected) => Ok(inspected.id.unwrap_or_default()),
            Err(e) if is_not_found(&e) => Err(HarnessError::MissingPrerequisite {
                what: format!("docker image {image}"),
                why: "the daemon does not have it".into(),
                fix: "run `hubtrust images build` (offline), or `docker pull` it, or name another image in the stack file's [docker] section".into(),
            }),
            Err(e) => Err(docker_error(format!("inspect image {image}"), e)),
        }
    }

    /// The id of `image`, pulled first when the daemon lacks it and it is
    /// named by digest: content its name pins, so fetching it is safe where
    /// fetching a tag (which can move) would not be. Anything else missing
    /// fails as [`Self::require_image`] does.
    pub async fn require_or_pull(&self, image: &str, progress: &dyn Fn(&str)) -> Result<String> {
        match self.require_image(image).await {
            Err(HarnessError::MissingPrerequisite { .. })
                if image
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| crate::images::registry::is_digest(d)) =>
            {
                progress(&format!("pulling {image} (pinned by digest)"));
                let options = bollard::query_parameters::CreateImageOptionsBuilder::default()
                    .from_image(image)
                    .build();
                let mut answers = self.docker.create_image(Some(options), None, None);
                while let Some(answer) = answers.next().await {
                    answer.map_err(|e| HarnessError::Docker {
                        what: format!("pull {image}"),
                        message: format!("{e} (fix: the daemon must reach the image's registry; `hubtrust images pin` names the digests a run pulls)"),
                    })?;
                }
                self.require_image(image).await
            }
            other => other,
        }
    }

    /// A network for one link. Every one is `internal`: it reaches nothing
    /// beyond its members and this machine (the bridge's address, where
    /// the operator is), since docker neither forwards nor masquerades out
    /// of internal networks. A container has no route the topology does
    /// not draw.
    pub async fn create_network(&self, link: &str) -> Result<CreatedNetwork> {
        let name = self.name(link);
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            internal: Some(true),
            labels: Some(self.labels(None)),
            ..Default::default()
        };
        let clash = || {
            HarnessError::Docker {
            what: format!("create network {name}"),
            message: "a network of that name already exists (fix: `hubtrust down <run>` removes a kept run's objects, or `docker network rm` it)".into(),
        }
        };
        // Docker itself lets two networks share a name (and then cannot
        // tell them apart), so the name is checked first.
        let same_name = HashMap::from([("name".to_string(), vec![name.clone()])]);
        let existing = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&same_name)
                    .build(),
            ))
            .await
            .map_err(|e| docker_error("list networks", e))?;
        if existing
            .iter()
            .any(|n| n.name.as_deref() == Some(name.as_str()))
        {
            return Err(clash());
        }
        let id = match self.docker.create_network(request).await {
            Ok(created) => created.id,
            Err(e) if is_conflict(&e) => return Err(clash()),
            Err(e) => return Err(docker_error(format!("create network {name}"), e)),
        };
        let gateway = self.gateway_of(&id).await?;
        Ok(CreatedNetwork {
            gateway,
            // Docker names a user-defined network's bridge after its id.
            bridge: format!("br-{}", id.get(..12).unwrap_or(&id)),
        })
    }

    /// This machine's address on network `id_or_name` (its gateway), if
    /// docker gave it one.
    pub async fn gateway_of(&self, id_or_name: &str) -> Result<Option<Ipv4Addr>> {
        let inspected = self
            .docker
            .inspect_network(
                id_or_name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .map_err(|e| docker_error(format!("inspect network {id_or_name}"), e))?;
        Ok(inspected
            .ipam
            .and_then(|ipam| ipam.config)
            .into_iter()
            .flatten()
            .find_map(|c| c.gateway?.parse().ok()))
    }

    /// Creates and starts the container for `host` on its first network.
    /// It holds the host's network namespace; components run in containers
    /// of their own that join it ([`DockerEngine::create_component`]).
    pub async fn create_host(
        &self,
        host: &str,
        image: &str,
        first_network: &str,
        volumes: &[SharedVolume],
        binds: &[std::path::PathBuf],
    ) -> Result<String> {
        let name = self.name(host);
        let networking = NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                self.name(first_network),
                EndpointSettings::default(),
            )])),
        };
        self.create_sleeper(
            &name,
            image,
            Some(host),
            self.name(first_network),
            Some(networking),
            self.labels(Some(host)),
            volumes,
            &Binds {
                read_only: binds,
                daemon_socket: None,
            },
        )
        .await?;
        Ok(name)
    }

    /// Creates and starts a component's own container in `host`'s network
    /// namespace, with the host's volumes mounted at the same paths: the
    /// component sees the host's addresses and files, but runs from its
    /// own image.
    pub async fn create_component(
        &self,
        host: &str,
        role: &str,
        image: &str,
        volumes: &[SharedVolume],
        daemon_socket: Option<&Path>,
    ) -> Result<String> {
        let name = self.name(&format!("{host}-{role}"));
        let mut labels = self.labels(Some(host));
        labels.insert(COMPONENT_LABEL.into(), role.into());
        self.create_sleeper(
            &name,
            image,
            None,
            format!("container:{}", self.name(host)),
            None,
            labels,
            volumes,
            &Binds {
                read_only: &[],
                daemon_socket,
            },
        )
        .await?;
        Ok(name)
    }

    /// A started container that only sleeps; what runs in it is exec'd.
    #[allow(clippy::too_many_arguments)]
    async fn create_sleeper(
        &self,
        name: &str,
        image: &str,
        hostname: Option<&str>,
        network_mode: String,
        networking_config: Option<NetworkingConfig>,
        labels: HashMap<String, String>,
        volumes: &[SharedVolume],
        binds: &Binds<'_>,
    ) -> Result<()> {
        let mut mounts = self.mounts(volumes);
        let bind = |path: &Path, read_only: bool| {
            let path = path.display().to_string();
            bollard::models::Mount {
                source: Some(path.clone()),
                target: Some(path),
                typ: Some(bollard::models::MountType::BIND),
                read_only: Some(read_only),
                ..Default::default()
            }
        };
        mounts.extend(binds.daemon_socket.map(|socket| bind(socket, false)));
        mounts.extend(binds.read_only.iter().map(|path| bind(path, true)));
        let body = ContainerCreateBody {
            image: Some(image.into()),
            hostname: hostname.map(Into::into),
            // The image's own entrypoint is replaced, as a pod's `command`
            // replaces it: upstream's proxy image, say, would otherwise
            // start a proxy of its own beside the one hubtrust execs.
            entrypoint: Some(vec!["sleep".into(), "infinity".into()]),
            // Components run as root, as they do in the local backend's
            // namespace, whatever user a vendor's image defaults to.
            user: Some("0".into()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                // docker-init reaps the orphans components leave behind.
                init: Some(true),
                network_mode: Some(network_mode),
                mounts: Some(mounts),
                ..Default::default()
            }),
            networking_config,
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => {
                return Err(HarnessError::Docker {
                    what: format!("create container {name}"),
                    message: "a container of that name already exists (fix: `hubtrust down <run>`, or `docker rm -f` it)".into(),
                })
            }
            Err(e) => return Err(docker_error(format!("create container {name} from {image}"), e)),
        }
        self.docker
            .start_container(name, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| HarnessError::Docker {
                what: format!("start container {name} from {image}"),
                message: format!(
                    "{e} (fix: the image must carry `sleep`, which hubtrust runs as each container's entrypoint; check the image named in the stack file's [docker] section)"
                ),
            })
    }

    fn mounts(&self, volumes: &[SharedVolume]) -> Vec<bollard::models::Mount> {
        volumes
            .iter()
            .map(|v| bollard::models::Mount {
                source: Some(self.name(&v.name)),
                target: Some(v.path.display().to_string()),
                typ: Some(bollard::models::MountType::VOLUME),
                ..Default::default()
            })
            .collect()
    }

    /// A volume of this run, labelled like everything else.
    pub async fn create_volume(&self, name: &str) -> Result<()> {
        let request = bollard::models::VolumeCreateRequest {
            name: Some(self.name(name)),
            labels: Some(self.labels(None)),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map(|_| ())
            .map_err(|e| docker_error(format!("create volume {}", self.name(name)), e))
    }

    /// Runs an init container to its end: `argv` in a fresh container of
    /// `image` with `volumes` mounted, no network, `inputs` (files here)
    /// copied in first. Returns its exit code, stdout and stderr.
    pub async fn run_init_container(
        &self,
        name: &str,
        image: &str,
        argv: &[String],
        inputs: &[(std::path::PathBuf, std::path::PathBuf)],
        volumes: &[SharedVolume],
    ) -> Result<(i64, String, String)> {
        let container = self.name(name);
        let body = ContainerCreateBody {
            image: Some(image.into()),
            // An init container's `command`, replacing the image's
            // entrypoint as Kubernetes does.
            entrypoint: Some(argv.to_vec()),
            labels: Some(self.labels(None)),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                mounts: Some(self.mounts(volumes)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&container)
            .build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| docker_error(format!("create init container {container}"), e))?;
        for (source, target) in inputs {
            self.copy_file_in(&container, source, target).await?;
        }
        self.docker
            .start_container(
                &container,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| docker_error(format!("start init container {container}"), e))?;
        let mut waits = self.docker.wait_container(
            &container,
            None::<bollard::query_parameters::WaitContainerOptions>,
        );
        let code = match waits.next().await {
            Some(Ok(answer)) => answer.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(docker_error(format!("wait for {container}"), e)),
            None => -1,
        };
        let options = bollard::query_parameters::LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .build();
        let mut logs = self.docker.logs(&container, Some(options));
        let (mut stdout, mut stderr) = (String::new(), String::new());
        while let Some(Ok(chunk)) = logs.next().await {
            match chunk {
                bollard::container::LogOutput::StdErr { message } => {
                    stderr.push_str(&String::from_utf8_lossy(&message))
                }
                other => stdout.push_str(&String::from_utf8_lossy(&other.into_bytes())),
            }
        }
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = self
            .docker
            .remove_container(&container, Some(options))
            .await;
        Ok((code, stdout, stderr))
    }

    /// Copies one file here into a (possibly not yet started) container.
    pub async fn copy_file_in(&self, container: &str, source: &Path, target: &Path) -> Result<()> {
        let mut archive = tar::Builder::new(Vec::new());
        let relative = target.strip_prefix("/").unwrap_or(target);
        archive
            .append_path_with_name(source, relative)
            .map_err(|e| HarnessError::io(format!("pack {}", source.display()), e))?;
        let tar = archive
            .into_inner()
            .map_err(|e| HarnessError::io(format!("pack {}", source.display()), e))?;
        let options = UploadToContainerOptionsBuilder::default().path("/").build();
        self.docker
            .upload_to_container(container, Some(options), bollard::body_full(tar.into()))
            .await
            .map_err(|e| docker_error(format!("copy {} into {container}", source.display()), e))
    }

    /// Attaches a running container to another link's network.
    pub async fn attach(&self, container: &str, link: &str) -> Result<()> {
        let request = NetworkConnectRequest {
            container: container.into(),
            endpoint_config: Some(EndpointSettings::default()),
        };
        self.docker
            .connect_network(&self.name(link), request)
            .await
            .map_err(|e| docker_error(format!("attach {container} to {}", self.name(link)), e))
    }

    /// The container's main pid on this machine and its address per link.
    pub async fn inspect_host(&self, container: &str) -> Result<(u32, HashMap<String, Ipv4Addr>)> {
        let inspected = self
            .docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|e| docker_error(format!("inspect container {container}"), e))?;
        let state = inspected.state.unwrap_or_default();
        let pid = state
            .pid
            .filter(|pid| *pid > 0 && state.running == Some(true))
            .ok_or_else(|| HarnessError::Docker {
                what: format!("start container {container}"),
                message: format!(
                    "it is not running ({}) (fix: the image must carry `sleep`, which hubtrust runs as each container's entrypoint; `docker logs {container}` while the run is kept shows why it ended)",
                    state.error.filter(|e| !e.is_empty()).unwrap_or_else(|| format!("exit code {}", state.exit_code.unwrap_or(-1)))
                ),
            })?;
        let prefix = format!("hubtrust-{}-", self.run);
        let addresses = inspected
            .network_settings
            .and_then(|s| s.networks)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(network, endpoint)| {
                let link = network.strip_prefix(&prefix)?.to_string();
                Some((link, endpoint.ip_address?.parse().ok()?))
            })
            .collect();
        Ok((pid as u32, addresses))
    }

    /// The daemon's account of a container that has stopped running, once
    /// it reports it stopped (bounded: `None` if it still says running).
    async fn why_it_stopped(&self, container: &str) -> Option<HarnessError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Err(e) = self.inspect_host(container).await {
                return Some(e);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            // Bounded poll interval until the daemon records the exit.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Copies `dir` of this machine into the container at the same path,
    /// owners and modes as they are here (a 0600 key stays 0600).
    pub async fn copy_in(&self, container: &str, dir: &Path) -> Result<()> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let name = dir.file_name().map(Path::new).unwrap_or(Path::new("."));
        let mut archive = tar::Builder::new(Vec::new());
        archive.follow_symlinks(false);
        archive
            .append_dir_all(name, dir)
            .map_err(|e| HarnessError::io(format!("pack {}", dir.display()), e))?;
        let tar = archive
            .into_inner()
            .map_err(|e| HarnessError::io(format!("pack {}", dir.display()), e))?;
        self.mkdir(container, parent).await?;
        let options = UploadToContainerOptionsBuilder::default()
            .path(&parent.display().to_string())
            .build();
        self.docker
            .upload_to_container(container, Some(options), bollard::body_full(tar.into()))
            .await
            .map_err(|e| docker_error(format!("copy {} into {container}", dir.display()), e))
    }

    /// Copies `dir` of the container back to the same path here, replacing
    /// files of the same names, modes as they are in the container.
    pub async fn copy_out(&self, container: &str, dir: &Path) -> Result<()> {
        // The daemon ends a download early, without an error, when a file
        // changes size while it reads it (shown in `copy_out_refetches_an_
        // archive_cut_short` against a real daemon): the stream stops after
        // that file, and the tar crate, reading to the end, would leave the
        // files after it silently missing here. A whole archive ends in two
        // zero blocks; anything else is fetched again, for a bounded time.
        let deadline = std::time::Instant::now() + COPY_OUT_RETRIES_FOR;
        let tar = loop {
            let tar = self.download(container, dir).await?;
            if archive_is_whole(&tar) {
                break tar;
            }
            self.copies_refetched
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if std::time::Instant::now() > deadline {
                return Err(HarnessError::Docker {
                    what: format!("copy {} out of {container}", dir.display()),
                    message: format!(
                        "for {} s every archive the daemon sent was cut short (the last: {} bytes, no end-of-archive blocks): something in the container rewrites a file there without pause",
                        COPY_OUT_RETRIES_FOR.as_secs(),
                        tar.len()
                    ),
                });
            }
            eprintln!(
                "hubtrust: docker: the copy of {} out of {container} was cut short after {} bytes (a file changed size while the daemon read it); fetching it again",
                dir.display(),
                tar.len()
            );
        };
        let parent = dir.parent().unwrap_or(Path::new("/"));
        // Unpacked beside the target, then each file renamed into place:
        // an unpack over existing files removes each before writing it
        // anew, and a reader of the run's files (a certificate, a token)
        // must never find one missing in between.
        let staging = parent.join(format!(
            ".hubtrust-copy-out-{}",
            hex::encode(rand::random::<[u8; 6]>())
        ));
        let mut archive = tar::Archive::new(tar.as_slice());
        archive.set_preserve_permissions(true);
        let moved = archive
            .unpack(&staging)
            .and_then(|()| move_into_place(&staging, parent))
            .map_err(|e| HarnessError::io(format!("unpack {} from {container}", dir.display()), e));
        let _ = std::fs::remove_dir_all(&staging);
        moved
    }

    async fn download(&self, container: &str, dir: &Path) -> Result<Vec<u8>> {
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(&dir.display().to_string())
            .build();
        let mut stream = self
            .docker
            .download_from_container(container, Some(options));
        let mut tar = Vec::new();
        while let Some(chunk) = stream.next().await {
            tar.extend_from_slice(&chunk.map_err(|e| {
                docker_error(format!("copy {} out of {container}", dir.display()), e)
            })?);
        }
        Ok(tar)
    }

    async fn mkdir(&self, container: &str, dir: &Path) -> Result<()> {
        let (code, output) = self
            .run_to_end(
                container,
                &["mkdir", "-p", &dir.display().to_string()],
                None,
            )
            .await?;
        if code != 0 {
            return Err(HarnessError::Docker {
                what: format!("create {} in {container}", dir.display()),
                message: output,
            });
        }
        Ok(())
    }

    /// Runs a short command in the container; its exit code and output.
    pub async fn run_to_end(
        &self,
        container: &str,
        argv: &[&str],
        cwd: Option<&Path>,
    ) -> Result<(i64, String)> {
        let exec = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(argv.iter().map(|a| a.to_string()).collect()),
                    working_dir: cwd.map(|d| d.display().to_string()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| docker_error(format!("exec {argv:?} in {container}"), e))?;
        let mut text = String::new();
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| docker_error(format!("exec {argv:?} in {container}"), e))?
        {
            while let Some(Ok(chunk)) = output.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        }
        let code = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| docker_error(format!("exec {argv:?} in {container}"), e))?
            .exit_code
            .unwrap_or(-1);
        Ok((code, text))
    }

    /// Starts `spec` in the container, its output streamed into its log.
    pub async fn exec(&self, container: &str, spec: &LaunchSpec) -> Result<ExecProcess> {
        let spawn_error = |e: &dyn std::fmt::Display| HarnessError::Spawn {
            component: spec.name.clone(),
            message: format!("exec in container {container}: {e}"),
        };
        let mut log = std::fs::File::create(&spec.log)
            .map_err(|e| HarnessError::io(format!("create log {}", spec.log.display()), e))?;
        let exec = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(
                        std::iter::once(&spec.program)
                            .chain(&spec.args)
                            .cloned()
                            .collect(),
                    ),
                    env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    working_dir: Some(spec.cwd.display().to_string()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| spawn_error(&e))?;
        let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| spawn_error(&e))?
        else {
            return Err(spawn_error(&"the exec started detached"));
        };
        let pid = self.exec_pid(&exec.id).await.map_err(|e| spawn_error(&e))?;
        let exit = Arc::new(Mutex::new(None));
        let (docker, exec_id, recorded) = (self.docker.clone(), exec.id.clone(), exit.clone());
        tokio::spawn(async move {
            use std::io::Write;
            while let Some(Ok(chunk)) = output.next().await {
                let _ = log.write_all(&chunk.into_bytes());
            }
            // An exec that could not even start (no such program) ends at
            // once with code 126/127 and says why on its output.
            let code = match docker.inspect_exec(&exec_id).await {
                Ok(inspected) => inspected
                    .exit_code
                    .map_or("exited".to_string(), |c| format!("exit status: {c}")),
                Err(e) => format!("unknown ({e})"),
            };
            if let Ok(mut exit) = recorded.lock() {
                *exit = Some(code);
            }
        });
        Ok(ExecProcess { pid, exit })
    }
}

impl DockerEngine {
    /// The exec's pid as this machine sees it. Docker reports 0 until the
    /// process runs, and 0 must never reach kill(2) (it means "my whole
    /// process group"), so this waits, bounded, for a real one.
    async fn exec_pid(
        &self,
        exec_id: &str,
    ) -> std::result::Result<Option<u32>, bollard::errors::Error> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let inspected = self.docker.inspect_exec(exec_id).await?;
            let pid = inspected
                .pid
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 1);
            if pid.is_some() || inspected.running == Some(false) && inspected.exit_code.is_some() {
                return Ok(pid);
            }
            if tokio::time::Instant::now() > deadline {
                return Ok(None);
            }
            // Bounded poll interval until the exec's process exists.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The daemon's unix socket on this machine: `DOCKER_HOST`'s when it
/// names one, else the default.
pub fn daemon_socket() -> std::path::PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|at| at.strip_prefix("unix://").map(std::path::PathBuf::from))
        .unwrap_or_else(|| "/var/run/docker.sock".into())
}

/// The daemon's unix socket, which the hub's spawner needs (it makes each
/// lab's container, as DockerSpawner does), or an error saying how to give
/// it one when the daemon listens only on TCP.
pub fn require_daemon_socket() -> Result<std::path::PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let socket = daemon_socket();
    match std::fs::metadata(&socket) {
        Ok(m) if m.file_type().is_socket() => Ok(socket),
        _ => Err(HarnessError::Docker {
            what: "find the daemon's unix socket for the hub's spawner".into(),
            message: format!(
                "{} is not a socket; the hub's spawner makes each lab's container through the daemon's unix socket, even when hubtrust talks to it over TCP (fix: let dockerd listen on a unix socket too, e.g. `-H unix:///var/run/docker.sock -H tcp://127.0.0.1:2375`, or set DOCKER_HOST=unix://<its socket>)",
                socket.display()
            ),
        }),
    }
}

/// What each lab's container is made of, beyond its host's namespaces and
/// volumes.
#[derive(Debug, Clone, Default)]
pub struct LabContainer {
    pub image: String,
    /// `(target in the lab, source readable by the hub)`, copied in before
    /// the lab starts.
    pub files: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    /// `(source on this machine, target in the lab)`, bound read-only.
    pub binds: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    /// Capabilities the lab's container gets beyond docker's defaults.
    pub cap_add: Vec<String>,
    /// Where the lab listens and the hub reaches it: loopback when the lab
    /// shares the hub's host, else the lab host's address towards the hub.
    pub ip: Option<std::net::Ipv4Addr>,
    /// The names its internal-ssl certificate carries beyond localhost,
    /// when not JupyterHub's default (the hub's `trusted_alt_names`).
    pub alt_names: Vec<String>,
}

/// The hub's config lines that make its spawner put each lab in a
/// container of its own, as `lab` says, joined to `lab_host`'s namespaces
/// and volumes, labelled with the run.
pub fn lab_spawner_config(
    engine: &DockerEngine,
    lab_host: &str,
    lab: &LabContainer,
    volumes: &[SharedVolume],
    home_template: &str,
    spawner_dir: &Path,
) -> Vec<String> {
    let json = |value: serde_json::Value| value.to_string();
    let labels = serde_json::json!({
        RUN_LABEL: engine.run,
        "hubtrust.host": lab_host,
        COMPONENT_LABEL: "lab",
    });
    let volumes: Vec<_> = volumes
        .iter()
        .filter(|v| v.host == lab_host)
        .map(|v| serde_json::json!({"name": engine.name(&v.name), "path": v.path}))
        .collect();
    let files = by_target(lab.files.iter().map(|(t, s)| (t, s)));
    let binds = by_target(lab.binds.iter().map(|(s, t)| (t, s)));
    let mut lines = vec![
        format!(
            "import sys; sys.path.insert(0, {})",
            json(spawner_dir.display().to_string().into())
        ),
        "c.JupyterHub.spawner_class = \"hubtrust_pod_spawner.PodSpawner\"".into(),
        format!(
            "c.PodSpawner.socket_path = {}",
            json(daemon_socket().display().to_string().into())
        ),
        format!("c.PodSpawner.image = {}", json(lab.image.clone().into())),
        format!("c.PodSpawner.pod = {}", json(engine.name(lab_host).into())),
        format!(
            "c.PodSpawner.name_prefix = {}",
            json(engine.name(&format!("{lab_host}-lab-")).into())
        ),
        format!("c.PodSpawner.labels = {}", json(labels)),
        format!("c.PodSpawner.user_label = {}", json(USER_LABEL.into())),
        format!("c.PodSpawner.volumes = {}", json(volumes.into())),
        format!("c.PodSpawner.files = {}", json(files.into())),
        format!("c.PodSpawner.binds = {}", json(binds.into())),
        format!(
            "c.PodSpawner.cap_add = {}",
            json(lab.cap_add.clone().into())
        ),
        format!(
            "c.PodSpawner.home_dir_template = {}",
            json(home_template.into())
        ),
    ];
    if let Some(ip) = lab.ip {
        lines.push(format!("c.PodSpawner.ip = {}", json(ip.to_string().into())));
    }
    if !lab.alt_names.is_empty() {
        lines.push(format!(
            "c.PodSpawner.ssl_alt_names = {}",
            json(lab.alt_names.clone().into())
        ));
    }
    lines
}

/// `{path in the lab: path outside}`, as the pod spawner takes files and
/// binds.
fn by_target<'a>(
    pairs: impl Iterator<Item = (&'a std::path::PathBuf, &'a std::path::PathBuf)>,
) -> serde_json::Map<String, serde_json::Value> {
    pairs
        .map(|(target, source)| {
            (
                target.display().to_string(),
                source.display().to_string().into(),
            )
        })
        .collect()
}

/// A volume a host's containers share, mounted at the same path in each:
/// what an init container leaves for the container it prepares.
#[derive(Debug, Clone)]
pub struct SharedVolume {
    pub name: String,
    pub host: String,
    pub path: std::path::PathBuf,
}

/// A link's network as this machine sees it.
pub struct CreatedNetwork {
    /// This machine's address on it: the operator's, on its links.
    pub gateway: Option<Ipv4Addr>,
    /// Its bridge interface here, where every frame of the link passes.
    pub bridge: String,
}

/// Files of this machine a container sees at the same paths.
struct Binds<'a> {
    /// Bound read-only (hubtrust's own executable, which serves the HPC
    /// tunnel broker on the hub's host).
    read_only: &'a [std::path::PathBuf],
    /// The daemon's socket, for the hub's spawner.
    daemon_socket: Option<&'a Path>,
}

/// A process started in a container. Its pid is the one this machine sees,
/// so it can be signalled like any other; removing the container ends it
/// in any case.
#[derive(Debug)]
pub struct ExecProcess {
    pub pid: Option<u32>,
    exit: Arc<Mutex<Option<String>>>,
}

#[async_trait::async_trait]
impl crate::process::StartedElsewhere for ExecProcess {
    fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn exit_status(&self) -> Option<String> {
        self.exit.lock().ok()?.clone()
    }

    async fn stop(self: Box<Self>, grace: Duration) {
        self.signal(Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while self.exit_status().is_none() && tokio::time::Instant::now() < deadline {
            // Bounded poll: the exec's end is only seen through its stream.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
    }

    fn kill(&self) {
        if self.exit_status().is_none() {
            self.signal(Signal::SIGKILL);
        }
    }
}

impl ExecProcess {
    fn signal(&self, signal: Signal) {
        // Never 0 or 1: kill(0) is our own process group, 1 this machine's init.
        if let Some(pid) = self
            .pid
            .filter(|p| *p > 1)
            .and_then(|p| i32::try_from(p).ok())
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }
}

/// What [`remove_run`] removed.
#[derive(Debug, Default, PartialEq)]
pub struct Removed {
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
}

/// Removes every container, network and volume labelled with `run`
/// (containers first: a network in use cannot go). What is already gone
/// is not an error, so two reapers of one run never fight.
pub async fn remove_run(docker: &Docker, run: &str) -> Result<Removed> {
    let filter = || HashMap::from([("label".to_string(), vec![format!("{RUN_LABEL}={run}")])]);
    let mut removed = Removed::default();
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filter())
                .build(),
        ))
        .await
        .map_err(|e| docker_error("list the run's containers", e))?;
    for id in containers.into_iter().filter_map(|c| c.id) {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(&id, Some(options)).await {
            Ok(()) => removed.containers += 1,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(docker_error(format!("remove container {id}"), e)),
        }
    }
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&filter())
                .build(),
        ))
        .await
        .map_err(|e| docker_error("list the run's networks", e))?;
    for id in networks.into_iter().filter_map(|n| n.id) {
        match docker.remove_network(&id).await {
            Ok(()) => removed.networks += 1,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(docker_error(format!("remove network {id}"), e)),
        }
    }
    let volumes = docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::default()
                .filters(&filter())
                .build(),
        ))
        .await
        .map_err(|e| docker_error("list the run's volumes", e))?;
    for volume in volumes.volumes.unwrap_or_default() {
        match docker
            .remove_volume(
                &volume.name,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(()) => removed.volumes += 1,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(docker_error(format!("remove volume {}", volume.name), e)),
        }
    }
    Ok(removed)
}

/// Runs labelled with hubtrust's label that still have objects: what
/// `hubtrust down` can remove.
pub async fn runs_with_objects(docker: &Docker) -> Result<Vec<String>> {
    let filter = HashMap::from([("label".to_string(), vec![RUN_LABEL.to_string()])]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .map_err(|e| docker_error("list hubtrust's containers", e))?;
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&filter)
                .build(),
        ))
        .await
        .map_err(|e| docker_error("list hubtrust's networks", e))?;
    let mut runs: Vec<String> = containers
        .into_iter()
        .filter_map(|c| c.labels?.get(RUN_LABEL).cloned())
        .chain(
            networks
                .into_iter()
                .filter_map(|n| n.labels?.get(RUN_LABEL).cloned()),
        )
        .collect();
    runs.sort();
    runs.dedup();
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::archive_is_whole;

    #[test]
    fn an_archive_cut_between_two_entries_is_not_whole() {
        let mut builder = tar::Builder::new(Vec::new());
        for name in ["hub-ca_trust.crt", "hub-internal/hub-internal.crt"] {
            let mut header = tar::Header::new_gnu();
            header.set_size(3);
            header.set_mode(0o600);
            header.set_cksum();
            builder.append_data(&mut header, name, &b"pem"[..]).unwrap();
        }
        let whole = builder.into_inner().unwrap();
        assert!(archive_is_whole(&whole));
        // The first entry alone, header and padded data, as a stream that
        // stopped before the second entry's header: the tar crate reads it
        // to the end without an error.
        let cut = &whole[..1024];
        assert_eq!(tar::Archive::new(cut).entries().unwrap().count(), 1);
        assert!(!archive_is_whole(cut));
        assert!(!archive_is_whole(&[]));
    }
}
