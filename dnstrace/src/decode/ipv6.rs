//! IPv6 extension-header chains, walked with a bounds check on every header.
//!
//! etherparse 0.21's own iterator (`Ipv6ExtensionsSlice::into_iter`) trusts the chain: when
//! lax slicing stopped early (a hop-by-hop header after a fragment header, say), it goes on
//! past the end of the slice with unchecked reads, and one crafted packet killed the
//! tracer. Everything here reads through `get`/`split_at_checked`, so a chain that lies
//! about its lengths ends the walk instead.

use etherparse::{LaxIpv6Slice, ip_number};

/// One extension header: its protocol number and its bytes (next-header byte first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ext<'a> {
    pub kind: u8,
    pub bytes: &'a [u8],
}

/// Walks a chain of extension headers that starts with protocol `next` at `rest`. After the
/// walk, `next` is the protocol behind the last whole header and `rest` its bytes.
#[derive(Clone, Debug)]
pub struct Walk<'a> {
    pub next: u8,
    pub rest: &'a [u8],
}

impl<'a> Walk<'a> {
    pub fn new(next: u8, rest: &'a [u8]) -> Self {
        Self { next, rest }
    }
}

/// The length of an extension header of protocol `kind` whose bytes start `rest`, or None
/// when `kind` is not an extension header or its length byte is missing.
fn ext_len(kind: u8, rest: &[u8]) -> Option<usize> {
    let units = usize::from(*rest.get(1)?);
    match kind {
        // The fragment header is always 8 bytes; its second byte is reserved.
        44 => Some(8),
        // Authentication header: length in 4-byte units, minus 2.
        51 => Some((units + 2) * 4),
        // Hop-by-hop, routing, destination options, mobility, HIP, shim6: 8-byte units, minus 1.
        0 | 43 | 60 | 135 | 139 | 140 => Some((units + 1) * 8),
        _ => None,
    }
}

impl<'a> Iterator for Walk<'a> {
    type Item = Ext<'a>;

    fn next(&mut self) -> Option<Ext<'a>> {
        let len = ext_len(self.next, self.rest)?;
        let (bytes, rest) = self.rest.split_at_checked(len)?;
        let ext = Ext {
            kind: self.next,
            bytes,
        };
        self.next = bytes[0];
        self.rest = rest;
        Some(ext)
    }
}

/// An IPv6 fragment header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Offset in 8-byte units.
    pub offset: u16,
    pub more: bool,
    pub id: u32,
}

impl Fragment {
    fn parse(ext: Ext<'_>) -> Option<Self> {
        if ext.kind != ip_number::IPV6_FRAG.0 {
            return None;
        }
        let [_, _, o0, o1, i0, i1, i2, i3] = *ext.bytes else {
            return None;
        };
        let field = u16::from_be_bytes([o0, o1]);
        Some(Self {
            offset: field >> 3,
            more: field & 1 == 1,
            id: u32::from_be_bytes([i0, i1, i2, i3]),
        })
    }

    /// Whether the payload behind it is only part of a datagram.
    pub fn fragments(&self) -> bool {
        self.offset != 0 || self.more
    }
}

/// The first fragment header among the extension headers etherparse accepted.
pub fn fragment(ip: &LaxIpv6Slice<'_>) -> Option<Fragment> {
    let exts = ip.extensions();
    let first = exts.first_header()?;
    find_fragment(first.0, exts.slice())
}

/// The first fragment header in the chain that starts with protocol `next` at `rest`.
pub fn find_fragment(next: u8, rest: &[u8]) -> Option<Fragment> {
    Walk::new(next, rest).find_map(Fragment::parse)
}

/// The UDP or TCP ports behind an extension chain that etherparse refused to follow (a
/// hop-by-hop header out of place, say), as the kernel programs find them: so such a packet
/// still shows where it went. None when the chain ends in anything else or is cut.
pub fn ports_behind(next: u8, rest: &[u8]) -> Option<(u16, u16)> {
    let mut walk = Walk::new(next, rest);
    walk.by_ref().for_each(drop);
    if !matches!(walk.next, 6 | 17) {
        return None;
    }
    let [s0, s1, d0, d1, ..] = *walk.rest else {
        return None;
    };
    Some((u16::from_be_bytes([s0, s1]), u16::from_be_bytes([d0, d1])))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// The chain of issue 8: hop-by-hop of `hbh_units`×8+8 bytes → fragment (offset 0, more)
    /// → hop-by-hop → UDP to port 53, as the bytes after a 40-byte IPv6 header whose payload
    /// length claims all of it.
    pub fn hostile_chain(hbh_units: u8) -> Vec<u8> {
        // Options all Pad1 (zero bytes).
        let mut chain = vec![44, hbh_units];
        chain.resize(8 * (usize::from(hbh_units) + 1), 0);
        chain.extend([0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]);
        chain.extend([17, 0, 1, 4, 0, 0, 0, 0]);
        chain.extend([0x9c, 0x40, 0, 53, 0, 20, 0, 0]);
        chain.extend([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        chain
    }

    #[test]
    fn walk_stops_at_a_header_that_runs_past_the_bytes() {
        let chain = hostile_chain(250);
        // Every cut of the chain: the walk never reads past it.
        for end in 0..chain.len() {
            let exts: Vec<_> = Walk::new(0, &chain[..end]).collect();
            let first = 8 * 251;
            let expected = match end {
                e if e < first => 0,
                e if e < first + 8 => 1,
                e if e < first + 16 => 2,
                _ => 3,
            };
            assert_eq!(exts.len(), expected, "cut at {end}");
        }
    }

    #[test]
    fn fragment_fields_and_ports_behind_the_chain() {
        let chain = hostile_chain(3);
        let frag = find_fragment(0, &chain).unwrap();
        assert_eq!(
            frag,
            Fragment {
                offset: 0,
                more: true,
                id: 0xdead_beef
            }
        );
        assert!(frag.fragments());
        assert_eq!(ports_behind(0, &chain), Some((40_000, 53)));
        // Cut inside the UDP header's ports: nothing.
        assert_eq!(ports_behind(0, &chain[..chain.len() - 18]), None);
        // A protocol that is no extension header ends the walk at once.
        assert_eq!(Walk::new(17, &chain).count(), 0);
    }
}
