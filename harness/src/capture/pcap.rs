//! Reading classic pcap files (as tcpdump writes them) down to TCP segments.

use std::net::Ipv4Addr;

/// One TCP segment off the wire.
#[derive(Debug, Clone)]
pub struct Segment {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub seq: u32,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: Vec<u8>,
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

fn u16_be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses a pcap file's bytes. Errors only on a file that is not pcap.
pub fn parse(bytes: &[u8]) -> Result<PcapContents, String> {
    let header = bytes.get(..24).ok_or("shorter than a pcap header")?;
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
    let mut at = 24;
    while at < bytes.len() {
        let (Some(incl), Some(orig)) = (read_u32(bytes, at + 8), read_u32(bytes, at + 12)) else {
            out.truncated_file = true;
            break;
        };
        let start = at + 16;
        let Some(frame) = bytes.get(start..start + incl as usize) else {
            out.truncated_file = true;
            break;
        };
        if incl < orig {
            out.truncated_frames += 1;
        }
        match tcp_segment(frame) {
            Some(segment) => out.segments.push(segment),
            None => out.other_frames += 1,
        }
        at = start + incl as usize;
    }
    Ok(out)
}

fn tcp_segment(frame: &[u8]) -> Option<Segment> {
    if u16_be(frame, 12)? != 0x0800 {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip.first()? >> 4 != 4 || ip.get(9)? != &6 {
        return None;
    }
    // The IP total length excludes Ethernet padding of short frames.
    let total = usize::from(u16_be(ip, 2)?).min(ip.len());
    let src = Ipv4Addr::from(u32_be(ip, 12)?);
    let dst = Ipv4Addr::from(u32_be(ip, 16)?);
    let tcp = ip.get(ihl..total)?;
    let data_offset = usize::from(tcp.get(12)? >> 4) * 4;
    let flags = *tcp.get(13)?;
    Some(Segment {
        src: (src, u16_be(tcp, 0)?),
        dst: (dst, u16_be(tcp, 2)?),
        seq: u32_be(tcp, 4)?,
        syn: flags & 0x02 != 0,
        ack: flags & 0x10 != 0,
        fin: flags & 0x01 != 0,
        rst: flags & 0x04 != 0,
        payload: tcp.get(data_offset..)?.to_vec(),
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
