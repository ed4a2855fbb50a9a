//! The capture loop: an AF_PACKET socket in a host's namespace, frames of
//! one interface appended to a pcap file as they arrive.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    recvfrom, setsockopt, socket, sockopt, AddressFamily, LinkAddr, SockFlag, SockProtocol,
    SockType,
};
use nix::sys::time::TimeVal;

const SNAPLEN: usize = 262_144;
const DRAIN_GRACE: Duration = Duration::from_millis(300);

/// Runs on a dedicated thread until `stop` is set, then drains what is
/// already queued. Returns the number of frames written.
pub fn capture(
    netns: File,
    interface: &str,
    pcap: &Path,
    stop: &AtomicBool,
    ready: tokio::sync::oneshot::Sender<std::io::Result<()>>,
) -> std::io::Result<u64> {
    let opened = (|| -> std::io::Result<_> {
        setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
        let index = nix::net::if_::if_nametoindex(interface)? as usize;
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )?;
        // Wake up regularly to notice `stop`; a large buffer rides out bursts.
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 50_000))?;
        let _ = setsockopt(&fd, sockopt::RcvBufForce, &(8 << 20));
        let mut out = BufWriter::new(File::create(pcap)?);
        out.write_all(&pcap_header())?;
        Ok((index, fd, out))
    })();
    let (index, fd, mut out) = match opened {
        Ok(v) => {
            let _ = ready.send(Ok(()));
            v
        }
        Err(e) => {
            let kind = e.kind();
            let message = e.to_string();
            let _ = ready.send(Err(e));
            return Err(std::io::Error::new(kind, message));
        }
    };
    let mut frames = 0u64;
    let mut buf = vec![0u8; SNAPLEN];
    // Interface counters can run ahead of packet delivery (the receive side
    // taps frames in softirq context), so after a stop request the queue is
    // drained for a grace period, not just until it is first empty.
    let mut stop_seen: Option<std::time::Instant> = None;
    loop {
        match recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
            Ok((len, Some(addr))) if addr.ifindex() == index => {
                write_record(&mut out, &buf[..len.min(SNAPLEN)], len)?;
                frames += 1;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
                // Queue empty: only now may a requested stop take effect.
                if stop.load(Ordering::SeqCst) {
                    let since = *stop_seen.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= DRAIN_GRACE {
                        break;
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    out.flush()?;
    Ok(frames)
}

fn pcap_header() -> Vec<u8> {
    let mut h = Vec::with_capacity(24);
    h.extend(0xa1b2_c3d4u32.to_le_bytes());
    h.extend(2u16.to_le_bytes());
    h.extend(4u16.to_le_bytes());
    h.extend([0u8; 8]);
    h.extend((SNAPLEN as u32).to_le_bytes());
    h.extend(1u32.to_le_bytes()); // Ethernet
    h
}

fn write_record(out: &mut impl Write, frame: &[u8], original_len: usize) -> std::io::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    out.write_all(&(now.as_secs() as u32).to_le_bytes())?;
    out.write_all(&now.subsec_micros().to_le_bytes())?;
    out.write_all(&(frame.len() as u32).to_le_bytes())?;
    out.write_all(&(original_len as u32).to_le_bytes())?;
    out.write_all(frame)
}
