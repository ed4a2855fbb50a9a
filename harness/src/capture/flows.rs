//! TCP reassembly: segments become flows with one byte stream each way, so
//! a canary split across segments is still found.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::pcap::Segment;

pub type Endpoint = (Ipv4Addr, u16);

/// One TCP connection as seen on a link.
#[derive(Debug, Clone)]
pub struct TcpFlow {
    pub client: Endpoint,
    pub server: Endpoint,
    pub to_server: Vec<u8>,
    pub to_client: Vec<u8>,
    /// The capture saw the connection's SYN (so both streams are complete
    /// from their first byte).
    pub saw_handshake: bool,
    /// Bytes missing inside a stream: the capture lost segments.
    pub gaps: usize,
}

#[derive(Default)]
struct Direction {
    base: Option<u32>,
    /// Relative offset → payload, first copy wins (retransmissions repeat it).
    segments: BTreeMap<u32, Vec<u8>>,
}

impl Direction {
    fn add(&mut self, segment: &Segment) {
        if segment.syn {
            // The SYN consumes one sequence number before the first byte.
            self.base = Some(segment.seq.wrapping_add(1));
        }
        if segment.payload.is_empty() {
            return;
        }
        let base = *self.base.get_or_insert(segment.seq);
        let offset = segment.seq.wrapping_sub(base);
        self.segments
            .entry(offset)
            .or_insert_with(|| segment.payload.clone());
    }

    fn stream(&self) -> (Vec<u8>, usize) {
        let mut out: Vec<u8> = Vec::new();
        let mut gaps = 0;
        for (offset, payload) in &self.segments {
            let offset = *offset as usize;
            if offset > out.len() {
                gaps += offset - out.len();
                // Keep positions honest: a gap is not glued shut, so bytes
                // either side of it never form a false match.
                out.resize(offset, 0);
            }
            let overlap = out.len() - offset;
            if overlap < payload.len() {
                out.extend_from_slice(&payload[overlap..]);
            }
        }
        (out, gaps)
    }
}

#[derive(Default)]
struct Connection {
    first: Option<Endpoint>,
    client: Option<Endpoint>,
    directions: BTreeMap<Endpoint, Direction>,
}

/// Groups segments into connections and reassembles each direction.
pub fn reassemble(segments: &[Segment]) -> Vec<TcpFlow> {
    let mut connections: BTreeMap<(Endpoint, Endpoint), Connection> = BTreeMap::new();
    let mut order: Vec<(Endpoint, Endpoint)> = Vec::new();
    for segment in segments {
        let key = if segment.src <= segment.dst {
            (segment.src, segment.dst)
        } else {
            (segment.dst, segment.src)
        };
        let connection = connections.entry(key).or_insert_with(|| {
            order.push(key);
            Connection::default()
        });
        connection.first.get_or_insert(segment.src);
        if segment.syn && !segment.ack {
            connection.client = Some(segment.src);
        }
        connection
            .directions
            .entry(segment.src)
            .or_default()
            .add(segment);
    }
    order
        .into_iter()
        .filter_map(|key| {
            let connection = connections.remove(&key)?;
            let saw_handshake = connection.client.is_some();
            // Without a SYN, guess: the side with the lower port is the server.
            let client =
                connection
                    .client
                    .unwrap_or(if key.0 .1 > key.1 .1 { key.0 } else { key.1 });
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
            Some(TcpFlow {
                client,
                server,
                to_server,
                to_client,
                saw_handshake,
                gaps: gaps_a + gaps_b,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(
        src: Endpoint,
        dst: Endpoint,
        seq: u32,
        syn: bool,
        ack: bool,
        payload: &[u8],
    ) -> Segment {
        Segment {
            src,
            dst,
            seq,
            syn,
            ack,
            fin: false,
            rst: false,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn out_of_order_and_retransmitted_segments_reassemble() {
        let c = (Ipv4Addr::new(10, 77, 1, 1), 40000);
        let s = (Ipv4Addr::new(10, 77, 1, 2), 8000);
        let segments = vec![
            seg(c, s, 100, true, false, b""),
            seg(s, c, 500, true, true, b""),
            seg(c, s, 106, false, true, b"world"),
            seg(c, s, 101, false, true, b"hello"),
            seg(c, s, 101, false, true, b"hello"),
            seg(s, c, 501, false, true, b"ok"),
        ];
        let flows = reassemble(&segments);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].client, c);
        assert_eq!(flows[0].to_server, b"helloworld");
        assert_eq!(flows[0].to_client, b"ok");
        assert_eq!(flows[0].gaps, 0);
        assert!(flows[0].saw_handshake);
    }

    #[test]
    fn a_lost_segment_is_counted_not_glued() {
        let c = (Ipv4Addr::new(10, 77, 1, 1), 40000);
        let s = (Ipv4Addr::new(10, 77, 1, 2), 8000);
        let segments = vec![
            seg(c, s, 100, true, false, b""),
            seg(c, s, 101, false, true, b"ab"),
            seg(c, s, 105, false, true, b"ef"),
        ];
        let flows = reassemble(&segments);
        assert_eq!(flows[0].gaps, 2);
        assert_eq!(flows[0].to_server, b"ab\0\0ef");
    }
}
