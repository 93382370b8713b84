//! Overlay tunnels: VXLAN (RFC 7348) and Geneve (RFC 8926) carrying Ethernet over UDP.
//!
//! Pod-to-pod traffic between nodes crosses the uplink inside one of them; the frame
//! inside is decoded as any other, and the tunnel (kind, VNI, outer addresses) rides on
//! the packet. One level only, as in the kernel programs: a tunnel inside a tunnel is
//! left as UDP.
use std::fmt;
use std::net::SocketAddr;

pub use dnstrace_common::tunnel::{GENEVE_PORT, VXLAN_LINUX_PORT, VXLAN_PORT};

/// VXLAN's and Geneve's own header, before options.
const HEADER_LEN: usize = 8;
/// VXLAN flags: the VNI is valid.
const VXLAN_I: u8 = 0x08;
/// Geneve's protocol type for an Ethernet frame (Transparent Ethernet Bridging).
const ETH_BRIDGING: u16 = 0x6558;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    Vxlan,
    Geneve,
}

impl TunnelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vxlan => "vxlan",
            Self::Geneve => "geneve",
        }
    }

    /// The tunnel a UDP destination port carries, if any.
    pub fn of_port(dport: u16) -> Option<Self> {
        match dport {
            VXLAN_PORT | VXLAN_LINUX_PORT => Some(Self::Vxlan),
            GENEVE_PORT => Some(Self::Geneve),
            _ => None,
        }
    }
}

/// The tunnel a packet was seen in: the inner packet's addresses are the packet's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Tunnel {
    pub kind: TunnelKind,
    /// The virtual network (24 bits).
    pub vni: u32,
    /// Outer UDP source and destination.
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl fmt::Display for Tunnel {
    /// "vxlan vni 42 10.0.0.1:40000→10.0.0.2:4789".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} vni {} {}→{}",
            self.kind.as_str(),
            self.vni,
            self.src,
            self.dst
        )
    }
}

/// What a UDP payload to a tunnel port holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    /// Not a tunnel after all (a VXLAN header without its I flag, a Geneve version or
    /// protocol that is not Ethernet): the datagram is plain UDP.
    No,
    /// The VNI and the inner Ethernet frame.
    Frame { vni: u32, frame: &'a [u8] },
    /// A tunnel header cut short: what is missing.
    Cut(String),
}

/// Looks inside a UDP `payload` sent to `kind`'s port.
pub fn inner(kind: TunnelKind, payload: &[u8]) -> Found<'_> {
    let Some((h, rest)) = payload.split_first_chunk::<HEADER_LEN>() else {
        // Too short to tell; a first byte that already says "no tunnel" settles it.
        let not_vxlan =
            kind == TunnelKind::Vxlan && payload.first().is_some_and(|b| b & VXLAN_I == 0);
        let not_geneve = kind == TunnelKind::Geneve && payload.first().is_some_and(|b| b >> 6 != 0);
        if payload.is_empty() || not_vxlan || not_geneve {
            return Found::No;
        }
        return Found::Cut(format!(
            "{} header: needs {HEADER_LEN} bytes, only {}",
            kind.as_str(),
            payload.len()
        ));
    };
    let vni = u32::from_be_bytes([0, h[4], h[5], h[6]]);
    match kind {
        TunnelKind::Vxlan => {
            if h[0] & VXLAN_I == 0 {
                return Found::No;
            }
            Found::Frame { vni, frame: rest }
        }
        TunnelKind::Geneve => {
            if h[0] >> 6 != 0 || u16::from_be_bytes([h[2], h[3]]) != ETH_BRIDGING {
                return Found::No;
            }
            let options = usize::from(h[0] & 0x3f) * 4;
            match rest.get(options..) {
                Some(frame) => Found::Frame { vni, frame },
                None => Found::Cut(format!(
                    "geneve options: {options} bytes announced, only {}",
                    rest.len()
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_header() {
        let mut p = vec![0x08, 0, 0, 0, 0x00, 0x00, 0x2a, 0];
        p.extend([1, 2, 3]);
        assert_eq!(
            inner(TunnelKind::Vxlan, &p),
            Found::Frame {
                vni: 42,
                frame: &[1, 2, 3]
            }
        );
        // Without the I flag it is not VXLAN.
        p[0] = 0;
        assert_eq!(inner(TunnelKind::Vxlan, &p), Found::No);
    }

    #[test]
    fn geneve_header_with_options() {
        // 2 words of options, protocol Ethernet, VNI 0x123456.
        let mut p = vec![0x02, 0, 0x65, 0x58, 0x12, 0x34, 0x56, 0];
        p.extend([0xaa; 8]);
        p.extend([9, 9]);
        assert_eq!(
            inner(TunnelKind::Geneve, &p),
            Found::Frame {
                vni: 0x12_3456,
                frame: &[9, 9]
            }
        );
        // Options longer than the datagram.
        p[0] = 0x3f;
        assert_eq!(
            inner(TunnelKind::Geneve, &p),
            Found::Cut("geneve options: 252 bytes announced, only 10".into())
        );
        // IPv4 inside, or version 1: not an Ethernet tunnel.
        p[0] = 0;
        p[2..4].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(inner(TunnelKind::Geneve, &p), Found::No);
        p[0] = 0x40;
        p[2..4].copy_from_slice(&[0x65, 0x58]);
        assert_eq!(inner(TunnelKind::Geneve, &p), Found::No);
    }

    #[test]
    fn short_headers() {
        assert_eq!(inner(TunnelKind::Vxlan, &[]), Found::No);
        assert_eq!(inner(TunnelKind::Vxlan, &[0x00, 1]), Found::No);
        assert_eq!(
            inner(TunnelKind::Vxlan, &[0x08, 0, 0]),
            Found::Cut("vxlan header: needs 8 bytes, only 3".into())
        );
        assert_eq!(
            inner(TunnelKind::Geneve, &[0x00]),
            Found::Cut("geneve header: needs 8 bytes, only 1".into())
        );
        assert_eq!(inner(TunnelKind::Geneve, &[0xc0]), Found::No);
    }

    #[test]
    fn ports() {
        assert_eq!(TunnelKind::of_port(4789), Some(TunnelKind::Vxlan));
        assert_eq!(TunnelKind::of_port(8472), Some(TunnelKind::Vxlan));
        assert_eq!(TunnelKind::of_port(6081), Some(TunnelKind::Geneve));
        assert_eq!(TunnelKind::of_port(53), None);
    }
}
