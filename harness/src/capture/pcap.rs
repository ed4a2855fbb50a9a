//! Reading classic pcap files (as tcpdump writes them) down to TCP segments.
//!
//! Only headers are read while parsing. Payloads stay in the file, named by
//! their byte range, and are read back in pieces when a stream is
//! classified or searched: a census of a gigabyte capture neither copies it
//! nor holds it in memory.

use std::fs::File;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A capture's bytes, read by offset.
#[derive(Clone)]
pub struct Capture(Source);

#[derive(Clone)]
enum Source {
    File { file: Arc<File>, len: u64 },
    Memory(Arc<Vec<u8>>),
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<capture of {} bytes>", self.len())
    }
}

impl From<Vec<u8>> for Capture {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Source::Memory(Arc::new(bytes)))
    }
}

impl Capture {
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self(Source::File {
            file: Arc::new(file),
            len,
        }))
    }

    pub fn len(&self) -> u64 {
        match &self.0 {
            Source::File { len, .. } => *len,
            Source::Memory(bytes) => bytes.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads `range` into `buf` (resized to fit) and returns it.
    pub fn read<'b>(&self, range: Range<u64>, buf: &'b mut Vec<u8>) -> std::io::Result<&'b [u8]> {
        let len = usize::try_from(range.end.saturating_sub(range.start))
            .map_err(std::io::Error::other)?;
        buf.resize(len, 0);
        match &self.0 {
            Source::File { file, .. } => file.read_exact_at(buf, range.start)?,
            Source::Memory(bytes) => {
                let start = usize::try_from(range.start).map_err(std::io::Error::other)?;
                let slice = bytes
                    .get(start..start + len)
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                buf.copy_from_slice(slice);
            }
        }
        Ok(buf)
    }
}

/// One TCP segment off the wire; its payload is a byte range of the
/// capture.
#[derive(Debug, Clone)]
pub struct Segment {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub seq: u32,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: Range<u64>,
}

impl Segment {
    pub fn payload_len(&self) -> u64 {
        self.payload.end - self.payload.start
    }
}

/// Everything read from one pcap file.
#[derive(Debug, Default)]
pub struct PcapContents {
    pub segments: Vec<Segment>,
    /// Frames that were not IPv4/TCP (ARP, IPv6 neighbour discovery, …).
    pub other_frames: usize,
    /// Frames cut short by the snap length: their payload is incomplete.
    pub truncated_frames: usize,
    /// The file ended inside a record (the capture was still writing).
    pub truncated_file: bool,
}

const ETHERNET: u32 = 1;
/// A record header plus the most Ethernet, IPv4 and TCP headers can take.
const RECORD_HEAD: u64 = 16 + 14 + 60 + 60;

fn u16_be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses a capture. Errors only on a file that is not pcap, or that
/// cannot be read.
pub fn parse(capture: &Capture) -> Result<PcapContents, String> {
    let mut buf = Vec::with_capacity(RECORD_HEAD as usize);
    let len = capture.len();
    if len < 24 {
        return Err("shorter than a pcap header".into());
    }
    let header = capture.read(0..24, &mut buf).map_err(|e| e.to_string())?;
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let little = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => return Err(format!("not a pcap file (magic {magic:#010x})")),
    };
    let read_u32 = |b: &[u8], at: usize| -> Option<u32> {
        let raw: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(raw)
        } else {
            u32::from_be_bytes(raw)
        })
    };
    let linktype = read_u32(header, 20).ok_or("bad header")?;
    if linktype != ETHERNET {
        return Err(format!("link type {linktype} is not Ethernet"));
    }
    let mut out = PcapContents::default();
    let mut at = 24u64;
    while at < len {
        let head = capture
            .read(at..(at + RECORD_HEAD).min(len), &mut buf)
            .map_err(|e| e.to_string())?;
        let (Some(incl), Some(orig)) = (read_u32(head, 8), read_u32(head, 12)) else {
            out.truncated_file = true;
            break;
        };
        let start = at + 16;
        let end = start + u64::from(incl);
        if end > len {
            out.truncated_file = true;
            break;
        }
        if incl < orig {
            out.truncated_frames += 1;
        }
        let frame_head = &head[16..head.len().min(16 + incl as usize)];
        match tcp_segment(frame_head, incl as usize, start) {
            Some(segment) => out.segments.push(segment),
            None => out.other_frames += 1,
        }
        at = end;
    }
    Ok(out)
}

/// Reads a segment from the start of a frame (`head`) that is `frame_len`
/// bytes long and starts at `offset` in the capture.
fn tcp_segment(head: &[u8], frame_len: usize, offset: u64) -> Option<Segment> {
    if u16_be(head, 12)? != 0x0800 {
        return None;
    }
    let ip = head.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip.first()? >> 4 != 4 || ip.get(9)? != &6 {
        return None;
    }
    // The IP total length excludes Ethernet padding of short frames.
    let total = usize::from(u16_be(ip, 2)?).min(frame_len.checked_sub(14)?);
    let src = Ipv4Addr::from(u32_be(ip, 12)?);
    let dst = Ipv4Addr::from(u32_be(ip, 16)?);
    let tcp = ip.get(ihl..)?;
    let data_offset = usize::from(tcp.get(12)? >> 4) * 4;
    let flags = *tcp.get(13)?;
    let payload_start = 14 + ihl + data_offset;
    let payload_end = 14 + total;
    if payload_start > payload_end {
        return None;
    }
    Some(Segment {
        src: (src, u16_be(tcp, 0)?),
        dst: (dst, u16_be(tcp, 2)?),
        seq: u32_be(tcp, 4)?,
        syn: flags & 0x02 != 0,
        ack: flags & 0x10 != 0,
        fin: flags & 0x01 != 0,
        rst: flags & 0x04 != 0,
        payload: offset + payload_start as u64..offset + payload_end as u64,
    })
}

/// Writes a pcap file: used by tests to build captures with known contents.
pub fn write(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(0xa1b2_c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend([0u8; 8]);
    out.extend(262_144u32.to_le_bytes());
    out.extend(ETHERNET.to_le_bytes());
    for frame in frames {
        out.extend([0u8; 8]);
        out.extend((frame.len() as u32).to_le_bytes());
        out.extend((frame.len() as u32).to_le_bytes());
        out.extend(frame);
    }
    out
}

/// An Ethernet/IPv4/TCP frame, for tests.
pub fn tcp_frame(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    seq: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend(0x0800u16.to_be_bytes());
    let total = (20 + 20 + payload.len()) as u16;
    f.extend([0x45, 0]);
    f.extend(total.to_be_bytes());
    f.extend([0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend(src.0.octets());
    f.extend(dst.0.octets());
    f.extend(src.1.to_be_bytes());
    f.extend(dst.1.to_be_bytes());
    f.extend(seq.to_be_bytes());
    f.extend(0u32.to_be_bytes());
    f.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend(payload);
    f
}
