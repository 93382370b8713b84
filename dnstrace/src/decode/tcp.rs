//! DNS over TCP stream reassembly: each direction of a connection is a byte stream of
//! 2-byte length-prefixed messages, cut into segments anywhere. A segment may hold several
//! messages, or part of one. Retransmitted bytes are skipped; after a gap (a segment
//! missing from the capture) framing is recovered at the next segment that starts with a
//! whole, parseable message.
use std::collections::HashMap;
use std::net::SocketAddr;

use super::{LinkType, Packet, Point, dns, set_message, tcp_segment};

/// One direction of a connection at one capture point: the same segment seen at several
/// points (pod veth, socket hop, uplink) is reassembled at each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub point: Point,
    pub ifindex: u32,
    pub netns: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// Streams followed at once; past this the least recently used is forgotten.
const MAX_STREAMS: usize = 4096;

#[derive(Default)]
struct Stream {
    /// Sequence number of the next byte expected; None until one segment was seen.
    next: Option<u32>,
    buf: Vec<u8>,
    /// After a gap: the buffer does not start at a message boundary for sure.
    resync: bool,
    used: u64,
}

/// Counts of what reassembly did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpStats {
    /// Messages handed on whole.
    pub messages: u64,
    /// Segments that held more than one message.
    pub multi_message_segments: u64,
    /// Messages completed from bytes of more than one segment.
    pub joined_messages: u64,
    /// Segments (or parts) seen again and skipped.
    pub retransmitted: u64,
    /// Gaps in a stream (segments missing from the capture).
    pub gaps: u64,
    /// Bytes thrown away while looking for a message boundary after a gap.
    pub resync_dropped_bytes: u64,
}

/// Reassembles every TCP stream of a capture.
#[derive(Default)]
pub struct Streams {
    streams: HashMap<StreamKey, Stream>,
    clock: u64,
    pub stats: TcpStats,
}

impl Streams {
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns one decoded TCP segment into the packets to correlate: one per whole message it
    /// completes (each a copy of the segment with that message), or the segment itself with
    /// no message when it completes none (a SYN, an ACK, part of a message).
    pub fn packets(&mut self, packet: Packet, link: LinkType, bytes: &[u8]) -> Vec<Packet> {
        let (Some(src), Some(dst), Some(flags)) = (packet.src, packet.dst, packet.tcp_flags) else {
            return vec![packet];
        };
        // Cut by the snaplen: the bytes are not all there, keep the decoder's verdict.
        if packet.meta.cap_len < packet.meta.wire_len {
            return vec![packet];
        }
        let Some((seq, payload)) = tcp_segment(link, bytes) else {
            return vec![packet];
        };
        let key = StreamKey {
            point: packet.meta.point,
            ifindex: packet.meta.ifindex,
            netns: packet.meta.netns,
            src,
            dst,
        };
        let messages = self.push(key, seq, payload, flags.syn, flags.fin || flags.rst);
        if messages.is_empty() {
            let mut p = packet;
            p.dns = None;
            if p.issue
                .as_ref()
                .is_some_and(|i| i.kind == super::IssueKind::TcpPartial)
            {
                // Part of a message: held for reassembly, not a problem.
                p.issue = None;
            }
            return vec![p];
        }
        messages
            .iter()
            .map(|m| {
                let mut p = packet.clone();
                set_message(&mut p, m);
                p
            })
            .collect()
    }

    /// Adds one segment's payload; returns the whole messages it completes.
    pub fn push(
        &mut self,
        key: StreamKey,
        seq: u32,
        payload: &[u8],
        syn: bool,
        end: bool,
    ) -> Vec<Vec<u8>> {
        self.clock += 1;
        if syn {
            self.streams.insert(
                key,
                Stream {
                    next: Some(seq.wrapping_add(1)),
                    used: self.clock,
                    ..Stream::default()
                },
            );
            return Vec::new();
        }
        if payload.is_empty() {
            if end {
                self.streams.remove(&key);
            }
            return Vec::new();
        }
        if !self.streams.contains_key(&key) && self.streams.len() >= MAX_STREAMS {
            self.forget_oldest();
        }
        let s = self.streams.entry(key).or_default();
        s.used = self.clock;
        let mut data = payload;
        if let Some(next) = s.next {
            let ahead = seq.wrapping_sub(next) as i32;
            if ahead < 0 {
                let seen = ahead.unsigned_abs() as usize;
                self.stats.retransmitted += 1;
                if seen >= data.len() {
                    return Vec::new();
                }
                data = &data[seen..];
            } else if ahead > 0 {
                self.stats.gaps += 1;
                self.stats.resync_dropped_bytes += s.buf.len() as u64;
                s.buf.clear();
                s.resync = true;
            }
        }
        s.next = Some(seq.wrapping_add(payload.len() as u32));
        let carried = !s.buf.is_empty();
        s.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut at = 0;
        while let [hi, lo, ..] = s.buf[at..] {
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if s.buf.len() - at - 2 < len {
                break;
            }
            let message = &s.buf[at + 2..at + 2 + len];
            if s.resync {
                if dns::parse(message).is_err() {
                    // Not a boundary: give up this segment, try again at the next one.
                    self.stats.resync_dropped_bytes += (s.buf.len() - at) as u64;
                    at = s.buf.len();
                    break;
                }
                s.resync = false;
            }
            out.push(message.to_vec());
            at += 2 + len;
        }
        s.buf.drain(..at);
        if s.resync && !s.buf.is_empty() && out.is_empty() {
            // A partial message after a gap cannot be trusted to start at a boundary.
            self.stats.resync_dropped_bytes += s.buf.len() as u64;
            s.buf.clear();
        }
        if out.len() > 1 {
            self.stats.multi_message_segments += 1;
        }
        if carried && !out.is_empty() {
            self.stats.joined_messages += 1;
        }
        self.stats.messages += out.len() as u64;
        if end {
            self.streams.remove(&key);
        }
        out
    }

    fn forget_oldest(&mut self) {
        if let Some(key) = self
            .streams
            .iter()
            .min_by_key(|(_, s)| s.used)
            .map(|(k, _)| *k)
        {
            self.streams.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::dns::fixtures;
    use super::*;

    fn key() -> StreamKey {
        StreamKey {
            point: Point::TcEgress,
            ifindex: 2,
            netns: 1,
            src: "192.0.2.10:40000".parse().unwrap(),
            dst: "198.51.100.53:53".parse().unwrap(),
        }
    }

    fn framed(m: &[u8]) -> Vec<u8> {
        let mut v = (m.len() as u16).to_be_bytes().to_vec();
        v.extend(m);
        v
    }

    #[test]
    fn several_messages_in_one_segment() {
        let mut s = Streams::new();
        assert!(s.push(key(), 100, &[], true, false).is_empty());
        let mut seg = framed(&fixtures::query());
        seg.extend(framed(&fixtures::response_a()));
        seg.extend(framed(&fixtures::nxdomain()));
        let out = s.push(key(), 101, &seg, false, false);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], fixtures::query());
        assert_eq!(out[2], fixtures::nxdomain());
        assert_eq!(s.stats.multi_message_segments, 1);
    }

    #[test]
    fn one_message_split_over_three_segments_and_a_retransmission() {
        let mut s = Streams::new();
        let whole = framed(&fixtures::response_a());
        let (a, rest) = whole.split_at(1);
        let (b, c) = rest.split_at(10);
        assert!(s.push(key(), 1, a, false, false).is_empty());
        assert!(s.push(key(), 2, b, false, false).is_empty());
        // The second segment again: skipped.
        assert!(s.push(key(), 2, b, false, false).is_empty());
        let out = s.push(key(), 12, c, false, false);
        assert_eq!(out, [fixtures::response_a()]);
        assert_eq!((s.stats.retransmitted, s.stats.joined_messages), (1, 1));
    }

    #[test]
    fn a_gap_drops_the_partial_message_and_resyncs_on_a_boundary() {
        let mut s = Streams::new();
        let first = framed(&fixtures::query());
        assert_eq!(s.push(key(), 1, &first[..5], false, false).len(), 0);
        // The rest of the first message is missing; the next segment starts mid-message.
        let second = framed(&fixtures::response_a());
        let gap_at = 1 + first.len() as u32 + 7;
        assert!(s.push(key(), gap_at, &second[9..], false, false).is_empty());
        // The one after starts a message: framing is back.
        let next = gap_at + (second.len() - 9) as u32;
        let out = s.push(key(), next, &framed(&fixtures::nxdomain()), false, false);
        assert_eq!(out, [fixtures::nxdomain()]);
        assert_eq!(s.stats.gaps, 1);
    }

    #[test]
    fn directions_and_connections_are_separate() {
        let mut s = Streams::new();
        let ab = key();
        let ba = StreamKey {
            src: ab.dst,
            dst: ab.src,
            ..ab
        };
        // The same segment seen at another capture point is that point's stream.
        let elsewhere = StreamKey {
            point: Point::SocketOut,
            ..ab
        };
        let q = framed(&fixtures::query());
        let r = framed(&fixtures::response_a());
        assert!(s.push(ab, 1, &q[..4], false, false).is_empty());
        assert!(s.push(elsewhere, 1, &q[..4], false, false).is_empty());
        assert_eq!(s.push(ba, 7, &r, false, false).len(), 1);
        assert_eq!(s.push(ab, 5, &q[4..], false, true).len(), 1);
        assert_eq!(s.push(elsewhere, 5, &q[4..], false, false).len(), 1);
        assert_eq!(s.stats.retransmitted, 0);
        assert!(!s.streams.contains_key(&ab));
    }
}
