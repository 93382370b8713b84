//! IP fragment reassembly (IPv4 and IPv6) for replay: a DNS answer too big for one
//! datagram arrives as fragments, and only the first carries the UDP ports. Fragments are
//! collected per (source, destination, identification, protocol); a complete set becomes
//! one unfragmented raw IP packet for [`super::decode`]. Sets are bounded in number and in
//! time; the fragments of sets that never complete are counted.
use std::collections::HashMap;
use std::net::IpAddr;

use etherparse::defrag::IpDefragBuf;
use etherparse::{IpFragOffset, IpNumber, LaxNetSlice};

use super::{LinkType, ipv6, slice_link};

/// Sets followed at once; past this the oldest is given up.
const MAX_SETS: usize = 4096;
/// A set not completed within this (capture time) is given up.
const MAX_AGE_NS: u64 = 30_000_000_000;

type Key = (IpAddr, IpAddr, u32, u8);

struct Set {
    buf: IpDefragBuf,
    first_ns: u64,
    frames: u64,
}

/// What became of one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not an IP fragment: decode it as it is.
    Whole,
    /// A fragment, kept until its set is complete.
    Held,
    /// The fragment completed its set: this raw IP packet (link type RawIp) is the datagram.
    Datagram(Vec<u8>),
    /// A fragment that contradicts its set (overlap beyond the end, bad offsets): the set
    /// is dropped and counted, and the frame skipped.
    Bad,
}

/// Counts of what reassembly did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FragStats {
    /// Frames that were IP fragments.
    pub fragments: u64,
    /// Datagrams rebuilt from them.
    pub reassembled: u64,
    /// Fragment frames that went into a rebuilt datagram.
    pub fragments_used: u64,
    /// Fragment frames of sets that never completed (lost fragments, end of file).
    pub fragments_incomplete: u64,
    /// Fragment frames dropped because they contradicted their set.
    pub fragments_bad: u64,
}

#[derive(Default)]
pub struct Defrag {
    sets: HashMap<Key, Set>,
    pub stats: FragStats,
}

impl Defrag {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one frame captured at `ts_ns`.
    pub fn push(&mut self, link: LinkType, bytes: &[u8], ts_ns: u64) -> Outcome {
        let Ok(sliced) = slice_link(link, bytes, false) else {
            return Outcome::Whole;
        };
        let (key, offset, more, payload, src, dst) = match &sliced.net {
            Some(LaxNetSlice::Ipv4(ip)) => {
                let h = ip.header();
                if !h.is_fragmenting_payload() || ip.payload().incomplete {
                    return Outcome::Whole;
                }
                let (src, dst) = (
                    IpAddr::from(h.source_addr()),
                    IpAddr::from(h.destination_addr()),
                );
                let proto = ip.payload().ip_number;
                (
                    (src, dst, u32::from(h.identification()), proto.0),
                    h.fragments_offset(),
                    h.more_fragments(),
                    ip.payload().payload,
                    src,
                    dst,
                )
            }
            Some(LaxNetSlice::Ipv6(ip)) => {
                let Some(frag) = ipv6::fragment(ip).filter(ipv6::Fragment::fragments) else {
                    return Outcome::Whole;
                };
                // The offset has 13 bits, so this always holds.
                let Ok(offset) = IpFragOffset::try_new(frag.offset) else {
                    return Outcome::Whole;
                };
                // A chain etherparse stopped inside has no payload to reassemble.
                if ip.payload().incomplete || sliced.stop_err.is_some() {
                    return Outcome::Whole;
                }
                let h = ip.header();
                let (src, dst) = (
                    IpAddr::from(h.source_addr()),
                    IpAddr::from(h.destination_addr()),
                );
                let proto = ip.payload().ip_number;
                (
                    (src, dst, frag.id, proto.0),
                    offset,
                    frag.more,
                    ip.payload().payload,
                    src,
                    dst,
                )
            }
            _ => return Outcome::Whole,
        };
        self.stats.fragments += 1;
        if !self.sets.contains_key(&key) && self.sets.len() >= MAX_SETS {
            self.give_up_oldest();
        }
        let set = self.sets.entry(key).or_insert_with(|| Set {
            buf: IpDefragBuf::new(IpNumber(key.3), Vec::new(), Vec::new()),
            first_ns: ts_ns,
            frames: 0,
        });
        set.frames += 1;
        if set.buf.add(offset, more, payload).is_err() {
            let frames = set.frames;
            self.sets.remove(&key);
            self.stats.fragments_bad += frames;
            return Outcome::Bad;
        }
        if !set.buf.is_complete() {
            return Outcome::Held;
        }
        let Some(set) = self.sets.remove(&key) else {
            return Outcome::Held;
        };
        self.stats.reassembled += 1;
        self.stats.fragments_used += set.frames;
        let (data, _) = set.buf.take_bufs();
        Outcome::Datagram(raw_packet(src, dst, IpNumber(key.3), &data))
    }

    /// Gives up sets older than their time; returns how many fragment frames that was.
    pub fn expire(&mut self, now_ns: u64) -> u64 {
        let mut given_up = 0;
        self.sets.retain(|_, s| {
            let keep = now_ns.saturating_sub(s.first_ns) <= MAX_AGE_NS;
            if !keep {
                given_up += s.frames;
            }
            keep
        });
        self.stats.fragments_incomplete += given_up;
        given_up
    }

    /// End of input: every set still open is incomplete.
    pub fn finish(&mut self) {
        self.expire(u64::MAX);
    }

    fn give_up_oldest(&mut self) {
        if let Some(key) = self
            .sets
            .iter()
            .min_by_key(|(_, s)| s.first_ns)
            .map(|(k, _)| *k)
            && let Some(s) = self.sets.remove(&key)
        {
            self.stats.fragments_incomplete += s.frames;
        }
    }
}

/// An unfragmented IP packet around a reassembled payload (checksums are not needed by
/// the decoder and left zero). Payloads beyond what the length field holds are cut.
fn raw_packet(src: IpAddr, dst: IpAddr, proto: IpNumber, payload: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let payload = &payload[..payload.len().min(65_535 - 20)];
            let mut p = vec![0x45, 0];
            p.extend(((20 + payload.len()) as u16).to_be_bytes());
            p.extend([0, 0, 0, 0, 64, proto.0, 0, 0]);
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend(payload);
            p
        }
        _ => {
            let to6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            let payload = &payload[..payload.len().min(65_535)];
            let mut p = vec![0x60, 0, 0, 0];
            p.extend((payload.len() as u16).to_be_bytes());
            p.extend([proto.0, 64]);
            p.extend(to6(src));
            p.extend(to6(dst));
            p.extend(payload);
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::dns::fixtures;
    use super::super::{Meta, Point, decode};
    use super::*;

    /// IPv4 fragment of a UDP datagram: `offset` in 8-byte units.
    fn v4_fragment(id: u16, offset: u16, more: bool, data: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0];
        p.extend(((20 + data.len()) as u16).to_be_bytes());
        p.extend(id.to_be_bytes());
        p.extend((offset | if more { 0x2000 } else { 0 }).to_be_bytes());
        p.extend([64, 17, 0, 0, 198, 51, 100, 53, 10, 0, 0, 1]);
        p.extend(data);
        p
    }

    fn udp(payload: &[u8]) -> Vec<u8> {
        let mut u = vec![0, 53, 0x9c, 0x40];
        u.extend(((8 + payload.len()) as u16).to_be_bytes());
        u.extend([0, 0]);
        u.extend(payload);
        u
    }

    #[test]
    fn fragments_in_any_order_make_one_datagram_that_decodes() {
        let datagram = udp(&fixtures::response_a());
        let (a, rest) = datagram.split_at(24);
        let (b, c) = rest.split_at(16);
        let mut d = Defrag::new();
        // Last, first, middle.
        let last = v4_fragment(7, 5, false, c);
        let first = v4_fragment(7, 0, true, a);
        let middle = v4_fragment(7, 3, true, b);
        assert_eq!(d.push(LinkType::RawIp, &last, 1), Outcome::Held);
        assert_eq!(d.push(LinkType::RawIp, &first, 2), Outcome::Held);
        let Outcome::Datagram(p) = d.push(LinkType::RawIp, &middle, 3) else {
            panic!("not complete")
        };
        let len = p.len() as u32;
        let meta = Meta {
            ts_ns: 3,
            ifindex: 1,
            netns: 1,
            point: Point::TcIngress,
            wire_len: len,
            cap_len: len,
            pid: 0,
            comm: None,
        };
        let packet = decode(meta, LinkType::RawIp, &p);
        assert_eq!(packet.issue, None);
        assert_eq!(packet.src, Some("198.51.100.53:53".parse().unwrap()));
        assert_eq!(packet.dns.unwrap().answers.len(), 1);
        assert_eq!((d.stats.reassembled, d.stats.fragments_used), (1, 3));
    }

    #[test]
    fn unfinished_sets_are_counted_when_given_up() {
        let mut d = Defrag::new();
        let first = v4_fragment(9, 0, true, &[0; 16]);
        assert_eq!(d.push(LinkType::RawIp, &first, 0), Outcome::Held);
        assert_eq!(d.expire(1_000), 0);
        assert_eq!(d.expire(MAX_AGE_NS + 1), 1);
        let other = v4_fragment(10, 2, false, &[0; 8]);
        assert_eq!(d.push(LinkType::RawIp, &other, 0), Outcome::Held);
        d.finish();
        assert_eq!(d.stats.fragments_incomplete, 2);
        // A datagram that is not fragmented passes.
        let whole = v4_fragment(11, 0, false, &udp(&[]));
        assert_eq!(d.push(LinkType::RawIp, &whole, 0), Outcome::Whole);
    }
}
