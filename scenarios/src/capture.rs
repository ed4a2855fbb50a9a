//! `hubtrust capture`, which hubtrust starts itself (as root, through
//! `sudo -n` when it is not): one interface of another process's network
//! namespace, a pod's on kind, captured until its stdin closes. It prints
//! `capturing` once its socket is open, so nothing sent after that line
//! can be missed unseen, and writes `evidence.json` (what was captured
//! against the interface's own counters) beside the pcap.

use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use hubtrust_harness::backend::Link;
use hubtrust_harness::capture::{LinkCapture, Namespace};

/// The file the evidence is written to, in `--out`.
pub const EVIDENCE_FILE: &str = "evidence.json";
/// What `hubtrust capture` prints once it captures.
pub const CAPTURING: &str = "capturing";

#[derive(clap::Args, Debug, Clone)]
pub struct CaptureArgs {
    /// Capture in this process's network namespace (needs root).
    #[arg(long, value_name = "PID")]
    pub netns_of: u32,
    #[arg(long, default_value = "eth0")]
    pub interface: String,
    /// What the evidence calls the capture; also the pcap's name.
    #[arg(long)]
    pub name: String,
    /// Where the pcap and evidence.json go.
    #[arg(long)]
    pub out: PathBuf,
}

/// Exit 0 with the evidence written (conclusive or not), 2 when nothing
/// could be captured.
pub fn capture_command(args: &CaptureArgs) -> ExitCode {
    match capture(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn capture(args: &CaptureArgs) -> anyhow::Result<()> {
    let pid = args.netns_of;
    let path = format!("/proc/{pid}/ns/net");
    let netns = std::fs::File::open(&path).with_context(|| {
        format!("--netns-of {pid}: cannot open {path} (fix: the pid of a running process, as root)")
    })?;
    let link = Link {
        name: args.name.clone(),
        interfaces: (args.interface.clone(), args.interface.clone()),
        a: (args.name.clone(), Ipv4Addr::UNSPECIFIED),
        b: (args.name.clone(), Ipv4Addr::UNSPECIFIED),
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let running = LinkCapture::start_in(
            Namespace {
                name: &args.name,
                netns,
                net_dev: format!("/proc/{pid}/net/dev"),
            },
            &link,
            &args.interface,
            &args.out,
        )
        .await?;
        println!("{CAPTURING}");
        std::io::stdout().flush()?;
        // Until the caller closes our stdin: whatever it reads, or an
        // error, ends the wait the same way.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            std::io::stdin().read_to_end(&mut sink)
        })
        .await;
        let evidence = running.finish().await;
        let file = args.out.join(EVIDENCE_FILE);
        std::fs::write(&file, serde_json::to_vec_pretty(&evidence)?)
            .with_context(|| format!("write {}", file.display()))?;
        Ok(())
    })
}
