//! One DNS decode per message, not per sighting.
//!
//! The kernel copies a UDP DNS payload into the ring once and sends the sightings that
//! follow on the same CPU as compact records naming it (see `capture::dedup`). The
//! payload of a compact record is then, byte for byte, that of the full record it
//! names, so its DNS message is the one already decoded for that record: only the
//! sighting's own headers (addresses, ports) are read again.
//!
//! [`Reused`] keeps, per kernel slot, the name and decoded message of the slot's latest
//! full record, exactly as the capture's mirror keeps its payload: a slot holds one
//! message, replaced by the next full record of that slot, and a compact record is
//! served only when the name it carries is the one held. A message that did not decode
//! cleanly is not kept: its sightings are decoded in full, so every issue is counted.
use std::sync::Arc;

use crate::{
    capture::{Message, MessageName},
    decode::{self, LinkType, Meta, Packet, dns},
};

/// The decoded messages of the kernel's kept payloads, indexed by slot. One consumer
/// decodes at one [`decode::Detail`], so a message held was decoded as a new one would be.
#[derive(Default)]
pub struct Reused {
    slots: Vec<Option<(MessageName, Arc<dns::Message>)>>,
    /// DNS messages served from an earlier sighting's decode.
    pub served: u64,
}

impl Reused {
    /// Decodes a frame, reading only its own headers when its payload's message is held.
    pub fn decode(
        &mut self,
        meta: Meta,
        link: LinkType,
        data: &[u8],
        message: Message,
        detail: decode::Detail,
    ) -> Packet {
        let meta = match message {
            Message::Named(name) => match self.held(name) {
                Some(known) => match decode::decode_known(meta, link, data, known) {
                    Ok(p) => {
                        self.served += 1;
                        return p;
                    }
                    Err(meta) => meta,
                },
                None => meta,
            },
            _ => meta,
        };
        let p = decode::decode_with(meta, link, data, detail);
        if let Message::Kept(name) = message {
            self.keep(name, &p);
        }
        p
    }

    fn held(&self, name: MessageName) -> Option<&Arc<dns::Message>> {
        match self.slots.get(usize::from(name.slot))? {
            Some((held, known)) if *held == name => Some(known),
            _ => None,
        }
    }

    /// A full record the kernel kept as `name`: its slot now holds this message, or
    /// nothing when it did not decode cleanly (its sightings are then decoded each).
    fn keep(&mut self, name: MessageName, p: &Packet) {
        let i = usize::from(name.slot);
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = match (&p.dns, &p.issue, p.proto, &p.tunnel) {
            (Some(m), None, Some(decode::Proto::Udp), None) => Some((name, m.clone())),
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Detail, Point};

    fn meta(len: usize) -> Meta {
        Meta {
            ts_ns: 1,
            ifindex: 2,
            netns: 3,
            point: Point::TcIngress,
            wire_len: len as u32,
            cap_len: len as u32,
            pid: 0,
            comm: None,
        }
    }

    /// An Ethernet/IPv4/UDP frame from `src` to 10.0.0.53:53 carrying `dns`.
    fn frame(src: [u8; 4], sport: u16, dns: &[u8]) -> Vec<u8> {
        let udp_len = 8 + dns.len();
        let total = 20 + udp_len;
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0x40, 0]);
        f.extend_from_slice(&[64, 17, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[10, 0, 0, 53]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&53u16.to_be_bytes());
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(dns);
        f
    }

    /// A query for `name` (one plain question, type A, class IN).
    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    fn decode(r: &mut Reused, f: &[u8], message: Message) -> Packet {
        r.decode(
            meta(f.len()),
            LinkType::Ethernet,
            f,
            message,
            Detail::Stitch,
        )
    }

    fn n(slot: u16, seq: u32) -> MessageName {
        MessageName { slot, seq }
    }

    #[test]
    fn a_compact_record_gets_the_message_of_the_record_it_names() {
        let mut r = Reused::default();
        let q = query(0x1234, "www.example.test.");
        let first = frame([10, 1, 0, 2], 40000, &q);
        // The same payload after SNAT: other address and port.
        let again = frame([10, 9, 0, 1], 61000, &q);
        let kept = decode(&mut r, &first, Message::Kept(n(5, 77)));
        assert_eq!(r.served, 0);
        let named = decode(&mut r, &again, Message::Named(n(5, 77)));
        assert_eq!(r.served, 1);
        // Exactly what a full decode of the sighting gives.
        let full = decode::decode_with(
            meta(again.len()),
            LinkType::Ethernet,
            &again,
            Detail::Stitch,
        );
        assert_eq!(named, full);
        assert_eq!(named.dns, kept.dns);
        assert_ne!(named.src, kept.src);
    }

    #[test]
    fn only_the_slot_s_latest_name_is_served() {
        let mut r = Reused::default();
        let a = frame([10, 1, 0, 2], 40000, &query(1, "a.test."));
        let b = frame([10, 1, 0, 2], 40001, &query(2, "b.test."));
        decode(&mut r, &a, Message::Kept(n(3, 1)));
        // The slot's next full record replaces it.
        decode(&mut r, &b, Message::Kept(n(3, 2)));
        let p = decode(&mut r, &a, Message::Named(n(3, 1)));
        assert_eq!(r.served, 0, "a name no longer held is decoded in full");
        assert_eq!(p.dns.unwrap().id, 1);
        let p = decode(&mut r, &b, Message::Named(n(3, 2)));
        assert_eq!(r.served, 1);
        assert_eq!(p.dns.unwrap().id, 2);
        // Another slot, and a slot never filled, hold nothing.
        decode(&mut r, &b, Message::Named(n(4, 2)));
        decode(&mut r, &b, Message::Named(n(u16::MAX, 2)));
        assert_eq!(r.served, 1);
    }

    #[test]
    fn a_message_with_an_issue_is_not_kept() {
        let mut r = Reused::default();
        // A question that runs past the end of the message.
        let mut bad = query(7, "broken.test.");
        bad.truncate(bad.len() - 3);
        let f = frame([10, 1, 0, 2], 40000, &bad);
        let first = decode(&mut r, &f, Message::Kept(n(1, 9)));
        assert!(first.issue.is_some());
        let again = decode(&mut r, &f, Message::Named(n(1, 9)));
        assert_eq!(r.served, 0);
        assert_eq!(again.issue, first.issue, "each sighting counts its issue");
        // A slot whose latest full record did not decode holds nothing, not its last
        // good message.
        let good = frame([10, 1, 0, 2], 40000, &query(8, "good.test."));
        decode(&mut r, &good, Message::Kept(n(1, 10)));
        decode(&mut r, &f, Message::Kept(n(1, 11)));
        decode(&mut r, &good, Message::Named(n(1, 10)));
        assert_eq!(r.served, 0);
    }

    #[test]
    fn a_frame_the_fast_path_does_not_read_is_decoded_in_full() {
        let mut r = Reused::default();
        let q = query(0x4321, "v6.example.test.");
        let first = frame([10, 1, 0, 2], 40000, &q);
        decode(&mut r, &first, Message::Kept(n(2, 5)));
        // Cut short by the snaplen: the rest of the packet is not there to compare.
        let mut m = meta(first.len());
        m.wire_len += 10;
        let p = r.decode(
            m.clone(),
            LinkType::Ethernet,
            &first,
            Message::Named(n(2, 5)),
            Detail::Stitch,
        );
        assert_eq!(r.served, 0);
        assert_eq!(
            p,
            decode::decode_with(m, LinkType::Ethernet, &first, Detail::Stitch)
        );
    }
}
