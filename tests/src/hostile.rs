//! Crafted packets that once crashed dnstrace, built byte by byte for the live and the
//! replay tests, and a minimal pcap writer to put them in a file.

use std::fs;
use std::net::Ipv6Addr;
use std::path::Path;

use anyhow::{Context, Result};

/// A DNS query for `a.test. A IN`, ID 0x1234.
pub fn dns_query() -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend(b"\x01a\x04test\x00");
    q.extend([0, 1, 0, 1]);
    q
}

/// The sizes of the leading hop-by-hop header to try, in 8-byte units beyond the first
/// (8 to 2,048 bytes): from inside the snap length to well past it.
pub fn ext_chain_sizes() -> impl Iterator<Item = u8> {
    (0..=255).step_by(3).chain([255])
}

/// Issue 8's IPv6 packet: hop-by-hop options (`hbh_units`×8+8 bytes, all Pad1) → fragment
/// header (offset 0, more fragments) → hop-by-hop → UDP from 40000 to port 53 with a
/// query. A second hop-by-hop header is not allowed there, so parsers stop inside the chain.
pub fn ipv6_ext_chain(hbh_units: u8, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let query = dns_query();
    let mut chain = vec![44, hbh_units];
    chain.resize(8 * (usize::from(hbh_units) + 1), 0);
    chain.extend([0, 0, 0, 1, 0x53, 0x53, 0, 1]);
    chain.extend([17, 0, 1, 4, 0, 0, 0, 0]);
    let udp_len = u16::try_from(8 + query.len()).expect("small");
    chain.extend([0x9c, 0x40, 0, 53]);
    chain.extend(udp_len.to_be_bytes());
    chain.extend([0, 0]);
    chain.extend(query);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend(u16::try_from(chain.len()).expect("fits").to_be_bytes());
    ip.extend([0, 64]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    ip.extend(chain);
    ip
}

/// `ip` in an Ethernet frame from `src` to `dst` (ethertype IPv6).
pub fn ethernet_ipv6(dst: [u8; 6], src: [u8; 6], ip: &[u8]) -> Vec<u8> {
    let mut frame = dst.to_vec();
    frame.extend(src);
    frame.extend([0x86, 0xdd]);
    frame.extend(ip);
    frame
}

/// Link types of [`write_pcap`].
pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;

/// Writes a classic pcap file of `frames`, each cut to `snaplen` bytes as a capture would.
pub fn write_pcap(path: &Path, linktype: u32, snaplen: u32, frames: &[Vec<u8>]) -> Result<()> {
    let mut out = Vec::new();
    out.extend(0xa1b2_c3d4_u32.to_le_bytes());
    out.extend(2_u16.to_le_bytes());
    out.extend(4_u16.to_le_bytes());
    out.extend([0; 8]);
    out.extend(snaplen.to_le_bytes());
    out.extend(linktype.to_le_bytes());
    for (i, frame) in frames.iter().enumerate() {
        let wire = u32::try_from(frame.len()).context("frame too long")?;
        let kept = wire.min(snaplen);
        out.extend(1_u32.to_le_bytes());
        out.extend(u32::try_from(i).context("too many frames")?.to_le_bytes());
        out.extend(kept.to_le_bytes());
        out.extend(wire.to_le_bytes());
        out.extend(&frame[..kept as usize]);
    }
    fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
