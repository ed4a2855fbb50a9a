//! The capture loop: an AF_PACKET socket in a host's namespace, frames of
//! one interface appended to a pcap file as they arrive.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, LinkAddr, MsgFlags,
    SockFlag, SockProtocol, SockType,
};

const SNAPLEN: usize = 262_144;
/// Socket receive buffer asked for: room for bursts of 64 KiB GSO frames.
const RECEIVE_BUFFER: usize = 64 << 20;
/// How long a stopped capture keeps draining while it still has fewer
/// frames than the interface says crossed it.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long the link must stay silent, once the counters are met, before
/// a stopped capture ends (see the loop below).
const QUIET: Duration = Duration::from_millis(50);

/// Still capturing: no stop target has been set.
pub const RUNNING: u64 = u64::MAX;

/// What a capture thread wrote, and what its socket could not keep.
#[derive(Debug, Clone, Copy, Default)]
pub struct Captured {
    /// Frames of the interface written to the pcap.
    pub frames: u64,
    /// Frames the kernel dropped because the socket's queue was full (of
    /// any interface of the namespace: the socket sees them all). Any drop
    /// makes the evidence inconclusive: the interface counters alone can
    /// be met by frames that arrived after the stop, hiding a loss.
    pub socket_drops: u32,
}

/// Runs on a dedicated thread until `stop_at` holds a frame count and
/// `wake` is readable, then drains the queue until it has written at least
/// that many frames (or the drain limit passes).
pub fn capture(
    netns: File,
    interface: &str,
    pcap: &Path,
    stop_at: &AtomicU64,
    wake: OwnedFd,
    ready: tokio::sync::oneshot::Sender<std::io::Result<()>>,
) -> std::io::Result<Captured> {
    let opened = (|| -> std::io::Result<_> {
        setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
        let index = nix::net::if_::if_nametoindex(interface)? as usize;
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::EthAll,
        )?;
        // SO_RCVBUFFORCE needs CAP_NET_ADMIN over the initial namespace,
        // which a rootless run lacks; then take what net.core.rmem_max allows.
        if setsockopt(&fd, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &RECEIVE_BUFFER);
        }
        // Each frame then carries the socket's drop count so far.
        setsockopt(&fd, sockopt::RxqOvfl, &1)?;
        let mut out = BufWriter::with_capacity(1 << 20, File::create(pcap)?);
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
    let mut socket_drops = 0u32;
    let mut buf = vec![0u8; SNAPLEN];
    let mut control = nix::cmsg_space!(u32);
    // Interface counters can run ahead of packet delivery (the receive side
    // taps frames in softirq context), so a stopped capture drains until it
    // holds as many frames as the counters say crossed, not just until the
    // queue is first empty.
    //
    // Meeting the counters is not enough on its own: the counters are read
    // when the stop is asked for, but traffic may go on (connections
    // closing), and a frame counted then can still sit in another CPU's
    // receive backlog while a later one of the same flow, sent on this
    // CPU, is already captured. Stopping at the count would then leave a
    // hole in that flow (seen once as "73 bytes missing from a flow" on
    // the enterprise capture). So once the counters are met, the capture
    // also waits until the link has been silent for QUIET.
    let mut stop_seen: Option<std::time::Instant> = None;
    let mut last_frame = std::time::Instant::now();
    loop {
        // Everything queued, until the socket would block.
        loop {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let received = recvmsg::<LinkAddr>(
                fd.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_TRUNC,
            );
            let (len, ifindex) = match received {
                Ok(message) => {
                    for cmsg in message.cmsgs().into_iter().flatten() {
                        if let ControlMessageOwned::RxqOvfl(dropped) = cmsg {
                            socket_drops = socket_drops.max(dropped);
                        }
                    }
                    (message.bytes, message.address.map(|a| a.ifindex()))
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            };
            if ifindex == Some(index) {
                write_record(&mut out, &buf[..len.min(SNAPLEN)], len)?;
                frames += 1;
                last_frame = std::time::Instant::now();
            }
        }
        let target = stop_at.load(Ordering::SeqCst);
        let wait = if target == RUNNING {
            // Sleep until a frame arrives or the stop request wakes us.
            PollTimeout::NONE
        } else {
            let since = *stop_seen.get_or_insert_with(std::time::Instant::now);
            let left = DRAIN_LIMIT.saturating_sub(since.elapsed());
            let silent = last_frame.elapsed();
            if left.is_zero() || frames >= target && silent >= QUIET {
                break;
            }
            // Frames still due, or the link not yet silent: wait, within
            // the drain limit.
            let wait = match frames >= target {
                true => left.min(QUIET - silent),
                false => left,
            };
            PollTimeout::try_from(wait.as_millis().max(1) as i32).unwrap_or(PollTimeout::ZERO)
        };
        let mut fds = [
            PollFd::new(fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        let watched = if target == RUNNING { 2 } else { 1 };
        match poll(&mut fds[..watched], wait) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        // The capture was dropped unfinished (its stack went away): the
        // wake pipe's writer is gone, so no stop request can ever come.
        if watched == 2
            && fds[1]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLHUP))
        {
            break;
        }
    }
    out.flush()?;
    Ok(Captured {
        frames,
        socket_drops,
    })
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
