//! Wire evidence: packets on every inter-host link become a flow census.
//!
//! Capture is an AF_PACKET socket per link, written to pcap by hubtrust
//! itself. tcpdump was the first choice, but it insists on dropping
//! privileges (setgroups) and that is refused inside the unprivileged user
//! namespace the local backend runs in. Completeness is checked against the
//! interface's own packet counters: fewer packets captured than crossed the
//! interface makes the evidence inconclusive, never green.

pub mod classify;
pub mod flows;
pub mod packet;
pub mod pcap;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::{Host, Link};
use crate::error::{HarnessError, Result};
pub use classify::FlowClass;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A running capture of one link: an AF_PACKET socket on the link's
/// interface, read by a dedicated thread that writes a pcap file.
pub struct LinkCapture {
    pub link: Link,
    pub pcap: PathBuf,
    net_dev: String,
    interface: String,
    counters_before: (u64, u64),
    stop_at: Arc<AtomicU64>,
    /// Written once to wake the capture thread for its final drain.
    wake: std::os::fd::OwnedFd,
    thread: std::thread::JoinHandle<std::io::Result<packet::Captured>>,
}

/// A network namespace to capture in: what to call it, a handle to enter
/// it, and its `/proc/…/net/dev` (the interface counters the capture is
/// checked against).
pub struct Namespace<'a> {
    pub name: &'a str,
    pub netns: std::fs::File,
    pub net_dev: String,
}

/// What one link's capture saw, and whether it can be trusted.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LinkEvidence {
    pub link: String,
    pub pcap: PathBuf,
    pub packets_captured: Option<u64>,
    /// Packets the interface's own counters say crossed it meanwhile.
    pub packets_on_interface: Option<u64>,
    /// Why the evidence cannot be trusted, if it cannot.
    pub inconclusive: Option<String>,
}

/// One flow of the census.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    pub link: String,
    pub client_host: String,
    pub client_port: u16,
    pub server_host: String,
    pub server_port: u16,
    pub bytes_to_server: usize,
    pub bytes_to_client: usize,
    /// The capture saw the connection open (its SYN).
    pub saw_handshake: bool,
    pub class: FlowClass,
    pub label: String,
    /// The link's capture; the streams are byte ranges of it, read back
    /// only when searched.
    #[serde(skip)]
    capture: pcap::Capture,
    #[serde(skip)]
    to_server: flows::Stream,
    #[serde(skip)]
    to_client: flows::Stream,
}

impl Flow {
    pub fn describe(&self) -> String {
        format!(
            "{}:{} → {}:{} on {} ({})",
            self.client_host,
            self.client_port,
            self.server_host,
            self.server_port,
            self.link,
            self.label
        )
    }

    /// Up to `limit` bytes of what the client sent first: a proxy's
    /// CONNECT request, read back from the capture.
    pub fn request_head(&self, limit: usize) -> std::io::Result<Vec<u8>> {
        self.to_server.prefix(&self.capture, limit)
    }

    /// Which of `needles` occur in either direction.
    fn search(&self, needles: &[&[u8]]) -> std::io::Result<Vec<bool>> {
        let mut searcher = flows::Searcher::new(needles);
        self.to_server.search(&self.capture, &mut searcher)?;
        self.to_client.search(&self.capture, &mut searcher)?;
        Ok(searcher.found)
    }
}

/// A plaintext canary found on the wire.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryHit {
    pub canary: String,
    pub flow: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WireCensus {
    pub links: Vec<LinkEvidence>,
    pub flows: Vec<Flow>,
}

impl LinkCapture {
    /// Starts capturing `interface` inside `host` and returns once the
    /// socket is open, so nothing sent afterwards can be missed unseen.
    pub async fn start(host: &Host, link: &Link, interface: &str, dir: &Path) -> Result<Self> {
        let netns = host
            .netns()
            .map_err(|e| HarnessError::io("open the host's namespace", e))?;
        Self::start_in(
            Namespace {
                name: &host.name,
                netns,
                net_dev: host.net_dev_path(),
            },
            link,
            interface,
            dir,
        )
        .await
    }

    /// Starts capturing `interface` of a network namespace hubtrust did
    /// not make (a pod's, entered through one of its processes).
    pub async fn start_in(
        namespace: Namespace<'_>,
        link: &Link,
        interface: &str,
        dir: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        let pcap = dir.join(format!("{}.pcap", link.name));
        let Namespace {
            name,
            netns,
            net_dev,
        } = namespace;
        let stop_at = Arc::new(AtomicU64::new(packet::RUNNING));
        let (wake_rx, wake) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| HarnessError::io("create the capture's wake pipe", e.into()))?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let thread = {
            let stop_at = stop_at.clone();
            let pcap = pcap.clone();
            let interface = interface.to_string();
            std::thread::spawn(move || {
                packet::capture(netns, &interface, &pcap, &stop_at, wake_rx, ready_tx)
            })
        };
        let ready: std::io::Result<()> = ready_rx
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the capture thread died")));
        ready.map_err(|e| HarnessError::Network {
            host: name.to_string(),
            message: format!("cannot capture {interface}: {e}"),
        })?;
        let counters_before = interface_counters(&net_dev, interface)?;
        Ok(Self {
            link: link.clone(),
            pcap,
            net_dev,
            interface: interface.to_string(),
            counters_before,
            stop_at,
            wake,
            thread,
        })
    }

    /// Stops the capture and checks it against the interface's counters:
    /// fewer packets captured than crossed the interface is inconclusive.
    pub async fn finish(self) -> LinkEvidence {
        let after = interface_counters(&self.net_dev, &self.interface);
        let on_interface = after.as_ref().ok().map(|(rx, tx)| {
            rx.saturating_sub(self.counters_before.0) + tx.saturating_sub(self.counters_before.1)
        });
        // Unreadable counters stop at once; the evidence is then
        // inconclusive anyway.
        self.stop_at
            .store(on_interface.unwrap_or(0), Ordering::SeqCst);
        // If the wake byte cannot be written the thread still stops: at the
        // next frame, or when the link goes down with the stack.
        let _ = nix::unistd::write(&self.wake, &[1]);
        let captured = tokio::task::spawn_blocking(move || self.thread.join())
            .await
            .ok()
            .and_then(|joined| joined.ok())
            .and_then(|r| r.ok());
        let socket_drops = captured.map_or(0, |c| c.socket_drops);
        let captured = captured.map(|c| c.frames);
        let inconclusive = match (captured, on_interface) {
            _ if socket_drops > 0 => Some(format!(
                "the capture's socket dropped {socket_drops} frames it could not queue (the machine was too busy for the capture to keep up)"
            )),
            (Some(c), Some(expected)) if c >= expected => None,
            (Some(c), Some(expected)) => Some(format!(
                "captured {c} packets but {expected} crossed the interface"
            )),
            (None, _) => Some("the capture thread failed".into()),
            (_, None) => Some("the interface's packet counters could not be read".into()),
        };
        LinkEvidence {
            link: self.link.name.clone(),
            pcap: self.pcap,
            packets_captured: captured,
            packets_on_interface: on_interface,
            inconclusive,
        }
    }
}

/// (rx packets, tx packets) of an interface, from its namespace's
/// `/proc/…/net/dev`: read in place, nothing spawned.
fn interface_counters(net_dev: &str, interface: &str) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(net_dev)
        .map_err(|e| HarnessError::io(format!("read {net_dev}"), e))?;
    parse_net_dev(&text, interface).ok_or_else(|| HarnessError::Network {
        host: interface.into(),
        message: format!("no packet counters for {interface} in {net_dev}"),
    })
}

fn parse_net_dev(text: &str, interface: &str) -> Option<(u64, u64)> {
    let line = text.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        (name.trim() == interface).then_some(rest)
    })?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    // Receive: bytes packets …(8 fields); transmit: bytes packets …
    Some((*fields.get(1)?, *fields.get(9)?))
}

impl WireCensus {
    /// Reads each link's pcap and builds the census. `hosts` names the
    /// addresses of the topology.
    pub fn build(evidence: Vec<LinkEvidence>, hosts: &BTreeMap<Ipv4Addr, String>) -> Self {
        let mut links = Vec::new();
        let mut flows = Vec::new();
        for mut link in evidence {
            let parsed = pcap::Capture::open(&link.pcap)
                .map_err(|e| e.to_string())
                .and_then(|capture| Ok((pcap::parse(&capture)?, capture)));
            match parsed {
                Ok((contents, capture)) => {
                    if contents.truncated_frames > 0 && link.inconclusive.is_none() {
                        link.inconclusive = Some(format!(
                            "{} frames were cut short by the snap length",
                            contents.truncated_frames
                        ));
                    }
                    for flow in flows::reassemble(&contents.segments) {
                        if flow.gaps > 0 && flow.saw_handshake && link.inconclusive.is_none() {
                            link.inconclusive = Some(format!(
                                "{} bytes missing from a flow to {}:{}",
                                flow.gaps, flow.server.0, flow.server.1
                            ));
                        }
                        let name = |ip: &Ipv4Addr| {
                            hosts.get(ip).cloned().unwrap_or_else(|| ip.to_string())
                        };
                        let class = match classify::classify(&flow, &capture) {
                            Ok(class) => class,
                            Err(e) => {
                                link.inconclusive =
                                    Some(format!("cannot read {}: {e}", link.pcap.display()));
                                continue;
                            }
                        };
                        flows.push(Flow {
                            link: link.link.clone(),
                            client_host: name(&flow.client.0),
                            client_port: flow.client.1,
                            server_host: name(&flow.server.0),
                            server_port: flow.server.1,
                            bytes_to_server: flow.to_server.len(),
                            bytes_to_client: flow.to_client.len(),
                            saw_handshake: flow.saw_handshake,
                            label: class.label(),
                            class,
                            capture: capture.clone(),
                            to_server: flow.to_server,
                            to_client: flow.to_client,
                        });
                    }
                }
                Err(e) => {
                    link.inconclusive = Some(format!("cannot read {}: {e}", link.pcap.display()))
                }
            }
            links.push(link);
        }
        Self { links, flows }
    }

    /// Links whose evidence cannot be trusted.
    pub fn inconclusive(&self) -> Vec<String> {
        self.links
            .iter()
            .filter_map(|l| {
                l.inconclusive
                    .as_ref()
                    .map(|why| format!("{}: {why}", l.link))
            })
            .collect()
    }

    /// Flows that cross hosts unprotected, minus the topology's declared
    /// exceptions (`(server port, reason)`).
    pub fn unprotected(&self, exceptions: &[(u16, String)]) -> Vec<&Flow> {
        self.flows
            .iter()
            .filter(|f| {
                !f.class.is_protected()
                    && !exceptions.iter().any(|(port, _)| *port == f.server_port)
            })
            .collect()
    }

    /// Every place a canary appears in plaintext.
    pub fn canary_hits(&self, canaries: &[(&str, &[u8])]) -> Result<Vec<CanaryHit>> {
        let needles: Vec<&[u8]> = canaries.iter().map(|(_, value)| *value).collect();
        let mut hits = Vec::new();
        for flow in &self.flows {
            // A stream that cannot be read back fails the search: a canary
            // could be hiding in it.
            let found = flow.search(&needles).map_err(|e| {
                HarnessError::io(format!("read back the capture of {}", flow.describe()), e)
            })?;
            for ((name, _), found) in canaries.iter().zip(found) {
                if found {
                    hits.push(CanaryHit {
                        canary: name.to_string(),
                        flow: flow.describe(),
                    });
                }
            }
        }
        Ok(hits)
    }

    /// The flow map as Mermaid: hosts and arrows coloured by protection.
    pub fn to_mermaid(&self) -> String {
        let mut edges: BTreeMap<(String, String, String), usize> = BTreeMap::new();
        for f in &self.flows {
            if matches!(f.class, FlowClass::Empty) {
                continue;
            }
            let label = format!("{} :{}", protection(&f.class), f.server_port);
            *edges
                .entry((f.client_host.clone(), f.server_host.clone(), label))
                .or_default() += 1;
        }
        let mut out = String::from("flowchart LR\n");
        for (i, ((from, to, label), count)) in edges.iter().enumerate() {
            out += &format!(
                "  {}[{from}] -->|\"{label} ×{count}\"| {}[{to}]\n",
                node(from),
                node(to)
            );
            out += &format!("  linkStyle {i} stroke:{}\n", colour(label));
        }
        out
    }

    /// The same map as Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph flows {\n  rankdir=LR;\n  node [shape=box];\n");
        for f in self
            .flows
            .iter()
            .filter(|f| !matches!(f.class, FlowClass::Empty))
        {
            let label = format!("{} :{}", protection(&f.class), f.server_port);
            out += &format!(
                "  \"{}\" -> \"{}\" [label=\"{label}\", color=\"{}\"];\n",
                f.client_host,
                f.server_host,
                colour(&label)
            );
        }
        out + "}\n"
    }
}

fn node(host: &str) -> String {
    host.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn protection(class: &FlowClass) -> &'static str {
    match class {
        FlowClass::Tls {
            client_certificate: Some(true),
            ..
        } => "mTLS",
        FlowClass::Tls { .. } => "TLS",
        FlowClass::Ssh { .. } => "SSH",
        FlowClass::PlaintextHttp { .. } | FlowClass::Zmtp { .. } => "PLAINTEXT",
        FlowClass::Empty | FlowClass::Unknown { .. } => "unknown",
    }
}

fn colour(label: &str) -> &'static str {
    match label.split_whitespace().next().unwrap_or("") {
        "mTLS" => "darkgreen",
        "TLS" => "green",
        "SSH" => "blue",
        "PLAINTEXT" => "red",
        _ => "orange",
    }
}

/// Renders DOT to SVG with Graphviz, when it is installed.
pub fn render_svg(dot: &str, svg: &Path) -> Option<PathBuf> {
    use std::io::Write;
    let mut child = std::process::Command::new("dot")
        .args(["-Tsvg", "-o"])
        .arg(svg)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(dot.as_bytes()).ok()?;
    child.wait().ok()?.success().then(|| svg.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_counters_come_from_proc_net_dev() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  ht1a: 1234  17    0    0    0     0          0         0     5678  23    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(text, "ht1a"), Some((17, 23)));
        assert_eq!(parse_net_dev(text, "ht9z"), None);
    }

    fn census_of(frames: Vec<Vec<u8>>) -> WireCensus {
        let dir = std::env::temp_dir().join(format!(
            "hubtrust-census-{}-{}",
            std::process::id(),
            frames.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pcap_path = dir.join("l.pcap");
        std::fs::write(&pcap_path, pcap::write(&frames)).unwrap();
        let evidence = LinkEvidence {
            link: "operator--hub".into(),
            pcap: pcap_path,
            packets_captured: Some(frames.len() as u64),
            packets_on_interface: Some(frames.len() as u64),
            inconclusive: None,
        };
        let hosts = BTreeMap::from([
            (Ipv4Addr::new(10, 77, 1, 1), "operator".to_string()),
            (Ipv4Addr::new(10, 77, 1, 2), "hub".to_string()),
        ]);
        let census = WireCensus::build(vec![evidence], &hosts);
        std::fs::remove_dir_all(&dir).unwrap();
        census
    }

    #[test]
    fn a_canary_split_across_segments_is_found_in_the_stream() {
        let c = (Ipv4Addr::new(10, 77, 1, 1), 40000);
        let s = (Ipv4Addr::new(10, 77, 1, 2), 8080);
        let census = census_of(vec![
            pcap::tcp_frame(c, s, 1000, 0x02, b""),
            pcap::tcp_frame(s, c, 5000, 0x12, b""),
            pcap::tcp_frame(c, s, 1001, 0x18, b"POST /x HTTP/1.1\r\n\r\nsecret-CAN"),
            pcap::tcp_frame(c, s, 1001 + 30, 0x18, b"ARY-42 tail"),
        ]);
        assert_eq!(census.flows.len(), 1);
        let flow = &census.flows[0];
        assert_eq!(
            (flow.client_host.as_str(), flow.server_host.as_str()),
            ("operator", "hub")
        );
        assert_eq!(flow.label, "plaintext HTTP POST /x");
        let hits = census.canary_hits(&[("token", b"CANARY-42")]).unwrap();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(census.unprotected(&[]).len(), 1);
        assert!(census.unprotected(&[(8080, "declared".into())]).is_empty());
        assert!(census.inconclusive().is_empty());
        assert!(census.to_mermaid().contains("PLAINTEXT :8080"));
    }

    #[test]
    fn unreadable_evidence_is_inconclusive() {
        let evidence = LinkEvidence {
            link: "x".into(),
            pcap: PathBuf::from("/nonexistent.pcap"),
            packets_captured: None,
            packets_on_interface: None,
            inconclusive: None,
        };
        let census = WireCensus::build(vec![evidence], &BTreeMap::new());
        assert_eq!(census.inconclusive().len(), 1);
    }
}
