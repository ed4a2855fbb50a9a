//! TCP reassembly: segments become flows with one byte stream each way, so
//! a canary split across segments is still found. Streams are lists of
//! byte ranges of the capture, read back only to classify or search.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Range;

use memchr::memmem::Finder;

use super::pcap::{Capture, Segment};

pub type Endpoint = (Ipv4Addr, u16);

/// One TCP connection as seen on a link.
#[derive(Debug, Clone)]
pub struct TcpFlow {
    pub client: Endpoint,
    pub server: Endpoint,
    pub to_server: Stream,
    pub to_client: Stream,
    /// The capture saw the connection's SYN (so both streams are complete
    /// from their first byte).
    pub saw_handshake: bool,
    /// Bytes missing inside a stream: the capture lost segments.
    pub gaps: usize,
}

/// One direction of a connection: its payload pieces in stream order,
/// overlaps trimmed. A piece that follows lost bytes is marked, so nothing
/// is ever matched across a gap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stream {
    pub pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub range: Range<u64>,
    pub after_gap: bool,
}

impl Stream {
    /// Bytes present (gaps excluded).
    pub fn len(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| (p.range.end - p.range.start) as usize)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` bytes from the stream's start, stopping at the first
    /// gap: what classification reads.
    pub fn prefix(&self, capture: &Capture, limit: usize) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for (i, piece) in self.pieces.iter().enumerate() {
            if (i > 0 && piece.after_gap) || out.len() >= limit {
                break;
            }
            let take = ((piece.range.end - piece.range.start) as usize).min(limit - out.len());
            let range = piece.range.start..piece.range.start + take as u64;
            out.extend_from_slice(capture.read(range, &mut buf)?);
        }
        Ok(out)
    }

    /// Feeds the whole stream, piece by piece, to `searcher`.
    pub fn search(&self, capture: &Capture, searcher: &mut Searcher<'_>) -> std::io::Result<()> {
        searcher.start_stream();
        let mut buf = Vec::new();
        for piece in &self.pieces {
            searcher.feed(
                capture.read(piece.range.clone(), &mut buf)?,
                piece.after_gap,
            );
        }
        Ok(())
    }
}

/// Looks for several needles in a stream fed in pieces, without joining
/// them: each piece on its own, then each boundary through the last
/// `longest needle - 1` bytes before it.
pub struct Searcher<'n> {
    finders: Vec<Finder<'n>>,
    keep: usize,
    carry: Vec<u8>,
    /// Per needle: seen in any stream fed since [`Searcher::new`].
    pub found: Vec<bool>,
}

impl<'n> Searcher<'n> {
    pub fn new(needles: &[&'n [u8]]) -> Self {
        Self {
            finders: needles.iter().map(|n| Finder::new(*n)).collect(),
            keep: needles.iter().map(|n| n.len()).max().unwrap_or(1).max(1) - 1,
            carry: Vec::new(),
            found: vec![false; needles.len()],
        }
    }

    /// A new stream begins: nothing carries over from the previous one.
    pub fn start_stream(&mut self) {
        self.carry.clear();
    }

    pub fn feed(&mut self, bytes: &[u8], after_gap: bool) {
        if after_gap {
            self.carry.clear();
        }
        let tail = self.carry.len();
        if tail > 0 {
            self.carry
                .extend_from_slice(&bytes[..bytes.len().min(self.keep)]);
        }
        for (finder, found) in self.finders.iter().zip(self.found.iter_mut()) {
            // An empty needle names nothing, so it is never found.
            if *found || finder.needle().is_empty() {
                continue;
            }
            *found =
                finder.find(bytes).is_some() || (tail > 0 && finder.find(&self.carry).is_some());
        }
        self.carry.truncate(tail);
        if bytes.len() >= self.keep {
            self.carry.clear();
            self.carry
                .extend_from_slice(&bytes[bytes.len() - self.keep..]);
        } else {
            self.carry.extend_from_slice(bytes);
            let excess = self.carry.len().saturating_sub(self.keep);
            self.carry.drain(..excess);
        }
    }
}

#[derive(Default)]
struct Direction {
    base: Option<u32>,
    /// Relative offset → payload, first copy wins (retransmissions repeat it).
    segments: BTreeMap<u32, Range<u64>>,
}

impl Direction {
    fn add(&mut self, segment: &Segment) {
        if segment.syn {
            // The SYN consumes one sequence number before the first byte.
            self.base = Some(segment.seq.wrapping_add(1));
        }
        if segment.payload_len() == 0 {
            return;
        }
        let base = *self.base.get_or_insert(segment.seq);
        let offset = segment.seq.wrapping_sub(base);
        // A sequence number before the stream's start (a retransmission of
        // pre-capture data, a keepalive probe) wraps around to a huge
        // offset; it carries nothing new.
        if offset > u32::MAX / 2 {
            return;
        }
        self.segments
            .entry(offset)
            .or_insert_with(|| segment.payload.clone());
    }

    fn stream(&self) -> (Stream, usize) {
        let mut pieces = Vec::with_capacity(self.segments.len());
        let mut position = 0u64;
        let mut gaps = 0;
        for (offset, payload) in &self.segments {
            let offset = u64::from(*offset);
            let after_gap = offset > position;
            if after_gap {
                gaps += (offset - position) as usize;
                position = offset;
            }
            let overlap = position - offset;
            let len = payload.end - payload.start;
            if overlap < len {
                pieces.push(Piece {
                    range: payload.start + overlap..payload.end,
                    after_gap,
                });
                position = offset + len;
            }
        }
        (Stream { pieces }, gaps)
    }
}

struct Connection {
    key: (Endpoint, Endpoint),
    client: Option<Endpoint>,
    /// The client's initial sequence number, from its SYN.
    isn: Option<u32>,
    directions: BTreeMap<Endpoint, Direction>,
}

/// Groups segments into connections and reassembles each direction.
///
/// A 4-tuple can carry more than one connection in a capture: once the
/// server closed first (its side keeps TIME_WAIT), the client's kernel may
/// pick the same source port for the same server again. A SYN with
/// another initial sequence number therefore starts a new connection;
/// merging the two would overlay the second stream on the first (a tunnel's
/// CONNECT lost under an earlier one's, or bytes counted missing).
pub fn reassemble(segments: &[Segment]) -> Vec<TcpFlow> {
    let mut connections: Vec<Connection> = Vec::new();
    let mut current: BTreeMap<(Endpoint, Endpoint), usize> = BTreeMap::new();
    for segment in segments {
        let key = if segment.src <= segment.dst {
            (segment.src, segment.dst)
        } else {
            (segment.dst, segment.src)
        };
        let opens = segment.syn && !segment.ack;
        let index = match current.get(&key) {
            Some(&i) if !(opens && connections[i].isn.is_some_and(|isn| isn != segment.seq)) => i,
            _ => {
                connections.push(Connection {
                    key,
                    client: None,
                    isn: None,
                    directions: BTreeMap::new(),
                });
                current.insert(key, connections.len() - 1);
                connections.len() - 1
            }
        };
        let connection = &mut connections[index];
        if opens {
            connection.client = Some(segment.src);
            connection.isn = Some(segment.seq);
        }
        connection
            .directions
            .entry(segment.src)
            .or_default()
            .add(segment);
    }
    // Endpoints seen accepting a connection (SYN to them) are listeners.
    let listeners: std::collections::BTreeSet<Endpoint> = connections
        .iter()
        .filter_map(|c| {
            let client = c.client?;
            Some(if client == c.key.0 { c.key.1 } else { c.key.0 })
        })
        .collect();
    connections
        .into_iter()
        .map(|connection| {
            let key = connection.key;
            let saw_handshake = connection.client.is_some();
            // Without a SYN (a connection older than the capture), guess:
            // the end seen listening elsewhere in the capture is the
            // server, else the end with the lower port.
            let lower_port_serves = if key.0 .1 > key.1 .1 { key.0 } else { key.1 };
            let client = connection.client.unwrap_or(
                match (listeners.contains(&key.0), listeners.contains(&key.1)) {
                    (true, false) => key.1,
                    (false, true) => key.0,
                    _ => lower_port_serves,
                },
            );
            let server = if client == key.0 { key.1 } else { key.0 };
            let (to_server, gaps_a) = connection
                .directions
                .get(&client)
                .map(Direction::stream)
                .unwrap_or_default();
            let (to_client, gaps_b) = connection
                .directions
                .get(&server)
                .map(Direction::stream)
                .unwrap_or_default();
            TcpFlow {
                client,
                server,
                to_server,
                to_client,
                saw_handshake,
                gaps: gaps_a + gaps_b,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds segments whose payloads live in one in-memory capture.
    #[derive(Default)]
    struct Wire {
        bytes: Vec<u8>,
        segments: Vec<Segment>,
    }

    impl Wire {
        fn seg(&mut self, src: Endpoint, dst: Endpoint, seq: u32, syn: bool, ack: bool, p: &[u8]) {
            let start = self.bytes.len() as u64;
            self.bytes.extend_from_slice(p);
            self.segments.push(Segment {
                src,
                dst,
                seq,
                syn,
                ack,
                fin: false,
                rst: false,
                payload: start..self.bytes.len() as u64,
            });
        }

        fn done(self) -> (Vec<TcpFlow>, Capture) {
            (reassemble(&self.segments), Capture::from(self.bytes))
        }
    }

    const C: Endpoint = (Ipv4Addr::new(10, 77, 1, 1), 40000);
    const S: Endpoint = (Ipv4Addr::new(10, 77, 1, 2), 8000);

    #[test]
    fn a_connection_older_than_the_capture_is_served_by_the_end_seen_listening() {
        // A lab on a high port, called from a lower ephemeral port over a
        // pooled connection, and once afresh.
        let lab: Endpoint = (Ipv4Addr::new(10, 77, 1, 2), 58741);
        let pooled: Endpoint = (Ipv4Addr::new(10, 77, 1, 1), 41000);
        let fresh: Endpoint = (Ipv4Addr::new(10, 77, 1, 1), 42000);
        let mut wire = Wire::default();
        wire.seg(lab, pooled, 900, false, true, b"\x17\x03\x03");
        wire.seg(pooled, lab, 300, false, true, b"\x17\x03\x03");
        wire.seg(fresh, lab, 100, true, false, b"");
        let (flows, _) = wire.done();
        let old = flows.iter().find(|f| !f.saw_handshake).unwrap();
        assert_eq!((old.client, old.server), (pooled, lab));
        // Nobody seen listening: the lower port serves.
        let mut wire = Wire::default();
        wire.seg(S, C, 900, false, true, b"x");
        let (flows, _) = wire.done();
        assert_eq!((flows[0].client, flows[0].server), (C, S));
    }

    #[test]
    fn a_source_port_used_again_for_the_same_server_is_a_second_connection() {
        // As a capture of the enterprise lab showed: the server closed
        // first, and 2.4 s later the client's kernel picked the same port
        // for the same server. A retransmitted SYN is still the first.
        let mut wire = Wire::default();
        wire.seg(C, S, 1000, true, false, b"");
        wire.seg(C, S, 1000, true, false, b"");
        wire.seg(S, C, 5000, true, true, b"");
        wire.seg(C, S, 1001, false, true, b"CONNECT a:1 HTTP/1.1\r\n\r\n");
        wire.seg(S, C, 5001, false, true, b"HTTP/1.1 200 OK\r\n\r\n");
        wire.seg(C, S, 777_000, true, false, b"");
        wire.seg(S, C, 9000, true, true, b"");
        wire.seg(C, S, 777_001, false, true, b"CONNECT b:2 HTTP/1.1\r\n\r\n");
        wire.seg(S, C, 9001, false, true, b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        let (flows, capture) = wire.done();
        assert_eq!(flows.len(), 2);
        let heads: Vec<Vec<u8>> = flows
            .iter()
            .map(|f| f.to_server.prefix(&capture, 64).unwrap())
            .collect();
        assert_eq!(heads[0], b"CONNECT a:1 HTTP/1.1\r\n\r\n");
        assert_eq!(heads[1], b"CONNECT b:2 HTTP/1.1\r\n\r\n");
        for flow in &flows {
            assert_eq!((flow.client, flow.server, flow.gaps), (C, S, 0));
            assert!(flow.saw_handshake);
        }
    }

    #[test]
    fn out_of_order_and_retransmitted_segments_reassemble() {
        let mut wire = Wire::default();
        wire.seg(C, S, 100, true, false, b"");
        wire.seg(S, C, 500, true, true, b"");
        wire.seg(C, S, 106, false, true, b"world");
        wire.seg(C, S, 101, false, true, b"hello");
        wire.seg(C, S, 101, false, true, b"hello");
        wire.seg(S, C, 501, false, true, b"ok");
        let (flows, capture) = wire.done();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].client, C);
        assert_eq!(
            flows[0].to_server.prefix(&capture, 100).unwrap(),
            b"helloworld"
        );
        assert_eq!(flows[0].to_client.prefix(&capture, 100).unwrap(), b"ok");
        assert_eq!(flows[0].to_server.len(), 10);
        assert_eq!(flows[0].gaps, 0);
        assert!(flows[0].saw_handshake);
    }

    #[test]
    fn a_lost_segment_is_counted_not_glued() {
        let mut wire = Wire::default();
        wire.seg(C, S, 100, true, false, b"");
        wire.seg(C, S, 101, false, true, b"ab");
        wire.seg(C, S, 105, false, true, b"ef");
        let (flows, capture) = wire.done();
        assert_eq!(flows[0].gaps, 2);
        let pieces = &flows[0].to_server.pieces;
        assert!(pieces.len() == 2 && !pieces[0].after_gap && pieces[1].after_gap);
        // Classification stops at the gap; a search never spans it.
        assert_eq!(flows[0].to_server.prefix(&capture, 100).unwrap(), b"ab");
        let mut searcher = Searcher::new(&[b"bef", b"ef"]);
        flows[0].to_server.search(&capture, &mut searcher).unwrap();
        assert_eq!(searcher.found, [false, true]);
    }

    #[test]
    fn needles_split_across_many_small_pieces_are_found() {
        let parts: [&[u8]; 5] = [b"xxHUB", b"T", b"R", b"UST-canary", b"yy"];
        let joined: Vec<u8> = parts.concat();
        let needles: [&[u8]; 7] = [
            b"HUBTRUST-canary",
            b"Tr",
            b"TRUST",
            b"xxH",
            b"ryy",
            b"",
            b"zz",
        ];
        let mut searcher = Searcher::new(&needles);
        searcher.start_stream();
        for part in parts {
            searcher.feed(part, false);
        }
        for (needle, found) in needles.iter().zip(&searcher.found) {
            let expected = !needle.is_empty() && memchr::memmem::find(&joined, needle).is_some();
            assert_eq!(*found, expected, "{:?}", String::from_utf8_lossy(needle));
        }
    }

    #[test]
    fn nothing_carries_over_between_streams() {
        let mut searcher = Searcher::new(&[b"abcd"]);
        searcher.start_stream();
        searcher.feed(b"xxab", false);
        searcher.start_stream();
        searcher.feed(b"cdxx", false);
        assert_eq!(searcher.found, [false]);
    }
}
