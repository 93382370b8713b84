//! Pure decode stage: captured bytes → [`Packet`]. Never fails; problems become an [`Issue`].

pub mod dns;
pub mod frag;
pub mod ipv6;
pub mod tcp;
pub mod text;
pub mod tunnel;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use etherparse::err::{Layer, LenError, packet::SliceError};
use etherparse::{
    EtherType, LaxIpPayloadSlice, LaxNetSlice, LaxSlicedPacket, TcpSlice, TransportSlice, UdpSlice,
    ip_number,
};
use tunnel::{Found, Tunnel, TunnelKind};

/// Where a packet was captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Point {
    #[serde(rename = "ingress")]
    TcIngress,
    #[serde(rename = "egress")]
    TcEgress,
    #[serde(rename = "socket-in")]
    SocketIn,
    #[serde(rename = "socket-out")]
    SocketOut,
    /// The kernel freed the packet as a drop (skb:kfree_skb with a drop reason).
    #[serde(rename = "drop")]
    Drop,
}

impl Point {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TcIngress => "ingress",
            Self::TcEgress => "egress",
            Self::SocketIn => "socket-in",
            Self::SocketOut => "socket-out",
            Self::Drop => "drop",
        }
    }

    /// The point [`Point::as_str`] names.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::TcIngress,
            Self::TcEgress,
            Self::SocketIn,
            Self::SocketOut,
            Self::Drop,
        ]
        .into_iter()
        .find(|p| p.as_str() == name)
    }
}

/// How the captured bytes start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkType {
    Ethernet,
    RawIp,
    LinuxSll,
    LinuxSll2,
    /// BSD loopback: a 4-byte address family in the capturing host's byte order.
    Null,
    /// OpenBSD loopback: a 4-byte address family, big-endian.
    Loop,
}

/// Capture metadata, filled by the capture stage (or by replay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub netns: u64,
    pub point: Point,
    pub wire_len: u32,
    pub cap_len: u32,
    pub pid: u32,
    pub comm: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Udp,
    Tcp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Packet {
    pub meta: Meta,
    /// None when L3/L4 could not be parsed.
    pub proto: Option<Proto>,
    pub src: Option<SocketAddr>,
    pub dst: Option<SocketAddr>,
    /// For TCP segments.
    pub tcp_flags: Option<TcpFlags>,
    /// None when there is no DNS payload (e.g. a bare SYN) or it ended before the header.
    /// Shared: the sightings of one message (compact records) hold the one decode, and a
    /// packet moves through the pipeline without its message.
    pub dns: Option<Arc<dns::Message>>,
    /// Some when something was malformed, truncated or hostile.
    pub issue: Option<Issue>,
    /// Set when the packet crossed this point inside an overlay tunnel: `src`, `dst` and
    /// the rest are then the inner packet's, and the captured bytes hold both.
    pub tunnel: Option<Box<Tunnel>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

impl TcpFlags {
    /// tcpdump's notation and order: "S", "S.", "P.", "F.", "R"; "none" when no flag is set.
    pub fn short(&self) -> String {
        let text: String = [
            (self.fin, 'F'),
            (self.syn, 'S'),
            (self.rst, 'R'),
            (self.psh, 'P'),
            (self.ack, '.'),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, c)| *c)
        .collect();
        if text.is_empty() {
            "none".to_owned()
        } else {
            text
        }
    }
}

/// A per-packet problem: data to show, never an error that stops the program.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Issue {
    pub kind: IssueKind,
    pub detail: String,
}

impl Issue {
    fn new(kind: IssueKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    BadL2,
    BadL3,
    BadL4,
    /// Cut by the snaplen or a short buffer.
    Truncated,
    /// Fewer than 12 DNS bytes.
    ShortHeader,
    /// The DNS message could not be parsed.
    Malformed,
    /// The TCP segment holds only part of a length-prefixed message.
    TcpPartial,
    /// Bytes of the TCP stream before this segment were missing from the capture, or
    /// skipped to find the next message boundary.
    TcpGap,
    /// A VXLAN or Geneve header that announces more than the datagram holds.
    BadTunnel,
}

impl IssueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadL2 => "bad_l2",
            Self::BadL3 => "bad_l3",
            Self::BadL4 => "bad_l4",
            Self::Truncated => "truncated",
            Self::ShortHeader => "short_header",
            Self::Malformed => "malformed",
            Self::TcpPartial => "tcp_partial",
            Self::TcpGap => "tcp_gap",
            Self::BadTunnel => "bad_tunnel",
        }
    }
}

/// How much of a DNS message [`decode_with`] keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Detail {
    /// Everything a packet line shows: the answers too.
    #[default]
    Full,
    /// What stitching needs: header, question and OPT. The answers are read as far as
    /// needed to tell a well-formed message from a broken one (so the issue is the same),
    /// but not kept: `answers` stays empty.
    Stitch,
}

/// Decodes captured bytes. Never panics, never fails: problems end up in `issue`.
pub fn decode(meta: Meta, link: LinkType, bytes: &[u8]) -> Packet {
    decode_with(meta, link, bytes, Detail::Full)
}

/// [`decode`], keeping only as much of the DNS message as `detail` asks for.
pub fn decode_with(meta: Meta, link: LinkType, bytes: &[u8], detail: Detail) -> Packet {
    decode_inner(meta, link, bytes, detail, true)
}

/// `fast`: try [`udp4_fast`] first (tests turn it off to compare).
fn decode_inner(meta: Meta, link: LinkType, bytes: &[u8], detail: Detail, fast: bool) -> Packet {
    let mut packet = Packet {
        proto: None,
        src: None,
        dst: None,
        tcp_flags: None,
        dns: None,
        issue: None,
        tunnel: None,
        meta,
    };
    let snapped = packet.meta.cap_len < packet.meta.wire_len;
    if fast && !snapped && udp4_fast(&mut packet, link, bytes, detail) {
        return packet;
    }
    if let Err(issue) = decode_into(&mut packet, link, bytes, snapped, false, detail) {
        packet.issue = Some(issue);
    }
    packet
}

/// [`decode_with`] for a frame whose UDP payload is, byte for byte, that of an earlier
/// frame whose DNS message decoded cleanly as `known` (the kernel said so: a compact
/// record): only the frame's own headers are read, and the message is `known`'s.
/// Gives `meta` back when the frame is not plain IPv4 or IPv6 UDP ([`udp4_slice`],
/// [`udp6_slice`]), for the caller to decode it in full.
pub fn decode_known(
    meta: Meta,
    link: LinkType,
    bytes: &[u8],
    known: &Arc<dns::Message>,
) -> Result<Packet, Meta> {
    if meta.cap_len < meta.wire_len {
        return Err(meta);
    }
    let Some((src, dst, payload)) = udp4_slice(link, bytes).or_else(|| udp6_slice(link, bytes))
    else {
        return Err(meta);
    };
    if payload.len() < dns::HEADER_LEN {
        return Err(meta);
    }
    Ok(Packet {
        meta,
        proto: Some(Proto::Udp),
        src: Some(src),
        dst: Some(dst),
        tcp_flags: None,
        dns: Some(known.clone()),
        issue: None,
        tunnel: None,
    })
}

/// The most common frame, read without etherparse: Ethernet II (or raw IP) carrying IPv4
/// without options, not a fragment, and UDP whose length is exactly the IP payload's, to
/// a port that is not a tunnel's. Anything else returns false and takes the full slice,
/// which gives the same [`Packet`] for these (a test compares the two on the corpus).
fn udp4_fast(packet: &mut Packet, link: LinkType, bytes: &[u8], detail: Detail) -> bool {
    let Some((src, dst, payload)) = udp4_slice(link, bytes) else {
        return false;
    };
    packet.proto = Some(Proto::Udp);
    packet.src = Some(src);
    packet.dst = Some(dst);
    if let Err(issue) = decode_message(packet, payload, None, detail) {
        packet.issue = Some(issue);
    }
    true
}

/// The addresses and UDP payload of a frame [`udp4_fast`] reads; None for any other.
fn udp4_slice(link: LinkType, bytes: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let ip = match link {
        LinkType::Ethernet if bytes.get(12..14) == Some(&[0x08, 0x00]) => &bytes[14..],
        LinkType::RawIp => bytes,
        _ => return None,
    };
    let h = ip.get(..20)?;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    // Version 4 and 20 header bytes; no flag but DF, fragment offset 0; UDP.
    if h[0] != 0x45 || h[6] & 0xbf != 0 || h[7] != 0 || h[9] != 17 {
        return None;
    }
    let (sport, dport, payload) = udp_ports(ip.get(20..total)?)?;
    let addr = |at: usize| IpAddr::from([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    Some((
        SocketAddr::new(addr(12), sport),
        SocketAddr::new(addr(16), dport),
        payload,
    ))
}

/// [`udp4_slice`] for IPv6: Ethernet II (or raw IP) carrying IPv6 whose next header is
/// UDP (no extension header), whose length is exactly the IP payload's.
fn udp6_slice(link: LinkType, bytes: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let ip = match link {
        LinkType::Ethernet if bytes.get(12..14) == Some(&[0x86, 0xdd]) => &bytes[14..],
        LinkType::RawIp => bytes,
        _ => return None,
    };
    let h = ip.get(..40)?;
    if h[0] >> 4 != 6 || h[6] != 17 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let (sport, dport, payload) = udp_ports(ip.get(40..40 + len)?)?;
    let addr = |at: usize| {
        let octets: [u8; 16] = h[at..at + 16].try_into().expect("16 bytes");
        IpAddr::from(octets)
    };
    Some((
        SocketAddr::new(addr(8), sport),
        SocketAddr::new(addr(24), dport),
        payload,
    ))
}

/// The ports and payload of a UDP datagram whose length is exactly `udp`'s, to a port
/// that is not a tunnel's.
fn udp_ports(udp: &[u8]) -> Option<(u16, u16, &[u8])> {
    let u = udp.get(..8)?;
    let be16 = |i: usize| u16::from_be_bytes([u[i], u[i + 1]]);
    let (sport, dport) = (be16(0), be16(2));
    if usize::from(be16(4)) != udp.len() || TunnelKind::of_port(dport).is_some() {
        return None;
    }
    Some((sport, dport, &udp[8..]))
}

/// `tunneled`: `bytes` is the frame inside a tunnel, whose own tunnels are left as UDP.
fn decode_into(
    packet: &mut Packet,
    link: LinkType,
    bytes: &[u8],
    snapped: bool,
    tunneled: bool,
    detail: Detail,
) -> Result<(), Issue> {
    let sliced = slice_link(link, bytes, snapped)?;
    let Some(net) = &sliced.net else {
        return Err(match &sliced.stop_err {
            Some((err, layer)) => slice_issue(err, *layer, snapped),
            None => not_ip(&sliced),
        });
    };
    let (src_ip, dst_ip, payload) = match net {
        LaxNetSlice::Ipv4(ip) => {
            let h = ip.header();
            (
                IpAddr::from(h.source_addr()),
                IpAddr::from(h.destination_addr()),
                ip.payload(),
            )
        }
        LaxNetSlice::Ipv6(ip) => {
            let h = ip.header();
            (
                IpAddr::from(h.source_addr()),
                IpAddr::from(h.destination_addr()),
                ip.payload(),
            )
        }
        LaxNetSlice::Arp(_) => return Err(Issue::new(IssueKind::BadL3, "ARP, not IP")),
    };

    let mut cut = snapped.then(|| {
        let meta = &packet.meta;
        format!("captured {} of {} bytes", meta.cap_len, meta.wire_len)
    });
    if payload.incomplete && cut.is_none() {
        cut = Some("IP length exceeds the captured bytes".to_owned());
    }
    if payload.fragmented {
        if is_later_fragment(net) {
            return Err(Issue::new(IssueKind::BadL4, "non-first fragment"));
        }
        cut = Some("first IP fragment, the rest of the datagram is in later fragments".to_owned());
    }

    let transport = match &sliced.transport {
        Some(transport) => transport.clone(),
        // etherparse stops before L4 for fragments and on L3/L4 errors; try L4 ourselves
        // so a first fragment or a cut header still yields what it can.
        None => match slice_transport(payload) {
            Some(transport) => transport,
            None => {
                let ports = raw_ports(payload).or_else(|| match net {
                    // A chain etherparse refused: look behind it as the kernel programs do.
                    LaxNetSlice::Ipv6(_) => {
                        ipv6::ports_behind(payload.ip_number.0, payload.payload)
                    }
                    _ => None,
                });
                if let Some((sport, dport)) = ports {
                    packet.src = Some(SocketAddr::new(src_ip, sport));
                    packet.dst = Some(SocketAddr::new(dst_ip, dport));
                }
                return Err(match &sliced.stop_err {
                    Some((err, layer)) => slice_issue(err, *layer, snapped),
                    None if ports.is_some() => l4_too_short(payload, cut.is_some()),
                    None => Issue::new(
                        IssueKind::BadL4,
                        format!("IP protocol {} is not UDP or TCP", protocol_name(payload)),
                    ),
                });
            }
        },
    };

    match transport {
        TransportSlice::Udp(udp) => {
            let src = SocketAddr::new(src_ip, udp.source_port());
            let dst = SocketAddr::new(dst_ip, udp.destination_port());
            if let Some(kind) = TunnelKind::of_port(dst.port()).filter(|_| !tunneled) {
                match tunnel::inner(kind, udp.payload()) {
                    Found::No => {}
                    Found::Frame { vni, frame } => {
                        packet.tunnel = Some(Box::new(Tunnel {
                            kind,
                            vni,
                            src,
                            dst,
                        }));
                        return decode_into(
                            packet,
                            LinkType::Ethernet,
                            frame,
                            snapped,
                            true,
                            detail,
                        );
                    }
                    Found::Cut(detail) => {
                        let kind = match cut {
                            Some(_) => IssueKind::Truncated,
                            None => IssueKind::BadTunnel,
                        };
                        return Err(Issue::new(kind, format!("{detail} ({src} → {dst})")));
                    }
                }
            }
            packet.proto = Some(Proto::Udp);
            packet.src = Some(src);
            packet.dst = Some(dst);
            if usize::from(udp.length()) > udp.slice().len() && cut.is_none() {
                cut = Some("UDP length exceeds the captured bytes".to_owned());
            }
            decode_message(packet, udp.payload(), cut.as_deref(), detail)
        }
        TransportSlice::Tcp(tcp) => {
            packet.proto = Some(Proto::Tcp);
            packet.src = Some(SocketAddr::new(src_ip, tcp.source_port()));
            packet.dst = Some(SocketAddr::new(dst_ip, tcp.destination_port()));
            packet.tcp_flags = Some(TcpFlags {
                syn: tcp.syn(),
                ack: tcp.ack(),
                fin: tcp.fin(),
                rst: tcp.rst(),
                psh: tcp.psh(),
            });
            decode_tcp(packet, tcp.payload(), cut.as_deref(), detail)
        }
        _ => Err(Issue::new(
            IssueKind::BadL4,
            format!("IP protocol {} is not UDP or TCP", protocol_name(payload)),
        )),
    }
}

/// The sequence number and payload of a TCP segment, for stream reassembly; None when the
/// frame is not a TCP segment that parses.
pub fn tcp_segment(link: LinkType, bytes: &[u8]) -> Option<(u32, &[u8])> {
    let sliced = slice_link(link, bytes, false).ok()?;
    match sliced.transport? {
        TransportSlice::Tcp(tcp) => Some((tcp.sequence_number(), tcp.payload())),
        // A segment inside a tunnel, as `decode` finds it.
        TransportSlice::Udp(udp) => {
            let kind = TunnelKind::of_port(udp.destination_port())?;
            let Found::Frame { frame, .. } = tunnel::inner(kind, udp.payload()) else {
                return None;
            };
            match slice_link(LinkType::Ethernet, frame, false)
                .ok()?
                .transport?
            {
                TransportSlice::Tcp(tcp) => Some((tcp.sequence_number(), tcp.payload())),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Sets `packet`'s DNS message (and issue) from one whole, unframed DNS message.
pub fn set_message(packet: &mut Packet, message: &[u8]) {
    packet.dns = None;
    packet.issue = decode_message(packet, message, None, Detail::Full).err();
}

fn decode_message(
    packet: &mut Packet,
    payload: &[u8],
    cut: Option<&str>,
    detail: Detail,
) -> Result<(), Issue> {
    match dns::parse_with(payload, detail) {
        Ok(message) => {
            packet.dns = Some(Arc::new(message));
            Ok(())
        }
        Err((partial, err)) => {
            packet.dns = partial.map(Arc::new);
            Err(dns_issue(&err, cut))
        }
    }
}

/// DNS over TCP: a 2-byte length prefix, then the message. Only the first message is decoded.
fn decode_tcp(
    packet: &mut Packet,
    payload: &[u8],
    cut: Option<&str>,
    detail: Detail,
) -> Result<(), Issue> {
    let (prefix, body) = match payload {
        [] => return Ok(()),
        [hi, lo, body @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), body),
        [_] => {
            return Err(partial_issue(
                cut,
                "1 byte, the length prefix needs 2".to_owned(),
            ));
        }
    };
    if body.len() >= prefix {
        return decode_message(packet, &body[..prefix], cut, detail);
    }
    // Some clients write the prefix and the message separately, so a segment may hold a
    // whole message without its prefix; the 2 bytes read as a prefix were then its ID.
    if let Ok(message) = dns::parse_with(payload, detail) {
        packet.dns = Some(Arc::new(message));
        return Ok(());
    }
    match dns::parse_with(body, detail) {
        Ok(message) => packet.dns = Some(Arc::new(message)),
        Err((partial, _)) => packet.dns = partial.map(Arc::new),
    }
    let announced = format!("{} of {prefix} announced bytes", body.len());
    Err(partial_issue(cut, announced))
}

fn partial_issue(cut: Option<&str>, detail: String) -> Issue {
    match cut {
        Some(cut) => Issue::new(IssueKind::Truncated, format!("{cut}: {detail}")),
        None => Issue::new(IssueKind::TcpPartial, detail),
    }
}

fn dns_issue(err: &dns::DnsError, cut: Option<&str>) -> Issue {
    match (cut, err) {
        (Some(cut), _) => Issue::new(IssueKind::Truncated, format!("{cut}: {err}")),
        (None, dns::DnsError::ShortHeader { .. }) => {
            Issue::new(IssueKind::ShortHeader, err.to_string())
        }
        (None, dns::DnsError::Malformed { .. }) => {
            Issue::new(IssueKind::Malformed, err.to_string())
        }
    }
}

fn slice_link(link: LinkType, bytes: &[u8], snapped: bool) -> Result<LaxSlicedPacket<'_>, Issue> {
    match link {
        LinkType::Ethernet => LaxSlicedPacket::from_ethernet(bytes)
            .map_err(|err| len_issue(&err, IssueKind::BadL2, snapped)),
        LinkType::RawIp => from_ip(bytes, snapped),
        // SLL: 16 bytes, protocol at 14. SLL2: 20 bytes, protocol at 0.
        LinkType::LinuxSll => from_cooked(bytes, 16, 14, snapped),
        LinkType::LinuxSll2 => from_cooked(bytes, 20, 0, snapped),
        LinkType::Null | LinkType::Loop => {
            let Some((family, rest)) = bytes.split_first_chunk::<4>() else {
                return Err(short_l2(bytes.len(), 4, snapped));
            };
            let family = if link == LinkType::Loop {
                u32::from_be_bytes(*family)
            } else {
                // Written in the capturing host's byte order, which may not be ours.
                let native = u32::from_ne_bytes(*family);
                if is_ip_family(native) {
                    native
                } else {
                    native.swap_bytes()
                }
            };
            if !is_ip_family(family) {
                return Err(Issue::new(
                    IssueKind::BadL2,
                    format!("address family {family} is not IP"),
                ));
            }
            from_ip(rest, snapped)
        }
    }
}

/// AF_INET, and AF_INET6 as numbered by Linux, NetBSD/OpenBSD, FreeBSD and macOS.
fn is_ip_family(family: u32) -> bool {
    matches!(family, 2 | 10 | 24 | 28 | 30)
}

fn from_cooked(
    bytes: &[u8],
    header_len: usize,
    proto_at: usize,
    snapped: bool,
) -> Result<LaxSlicedPacket<'_>, Issue> {
    if bytes.len() < header_len {
        return Err(short_l2(bytes.len(), header_len, snapped));
    }
    let ether_type = EtherType(u16::from_be_bytes([bytes[proto_at], bytes[proto_at + 1]]));
    Ok(LaxSlicedPacket::from_ether_type(
        ether_type,
        &bytes[header_len..],
    ))
}

fn from_ip(bytes: &[u8], snapped: bool) -> Result<LaxSlicedPacket<'_>, Issue> {
    use etherparse::err::ip::LaxHeaderSliceError;
    LaxSlicedPacket::from_ip(bytes).map_err(|err| match err {
        LaxHeaderSliceError::Len(err) => len_issue(&err, IssueKind::BadL3, snapped),
        LaxHeaderSliceError::Content(err) => Issue::new(IssueKind::BadL3, err.to_string()),
    })
}

fn short_l2(len: usize, needed: usize, snapped: bool) -> Issue {
    let kind = if snapped {
        IssueKind::Truncated
    } else {
        IssueKind::BadL2
    };
    Issue::new(
        kind,
        format!("link header: needs {needed} bytes, only {len}"),
    )
}

fn len_issue(err: &LenError, kind: IssueKind, snapped: bool) -> Issue {
    let kind = if snapped { IssueKind::Truncated } else { kind };
    Issue::new(
        kind,
        format!(
            "{}: needs {} bytes, only {}",
            err.layer, err.required_len, err.len
        ),
    )
}

fn slice_issue(err: &SliceError, layer: Layer, snapped: bool) -> Issue {
    let kind = layer_kind(layer);
    match err {
        SliceError::Len(err) => len_issue(err, kind, snapped),
        other => Issue::new(kind, other.to_string()),
    }
}

fn layer_kind(layer: Layer) -> IssueKind {
    use Layer::*;
    match layer {
        LinuxSllHeader | Ethernet2Header | EtherPayload | VlanHeader | MacsecHeader
        | MacsecPacket => IssueKind::BadL2,
        UdpHeader | UdpPayload | TcpHeader | Icmpv4 | Icmpv4Timestamp | Icmpv4TimestampReply
        | Icmpv6 | Igmp => IssueKind::BadL4,
        _ => IssueKind::BadL3,
    }
}

fn not_ip(sliced: &LaxSlicedPacket<'_>) -> Issue {
    let detail = match sliced.ether_payload() {
        Some(payload) => format!("ethertype {:#06x} is not IP", payload.ether_type.0),
        None => "no IP header".to_owned(),
    };
    Issue::new(IssueKind::BadL3, detail)
}

fn is_later_fragment(net: &LaxNetSlice<'_>) -> bool {
    match net {
        LaxNetSlice::Ipv4(ip) => ip.header().fragments_offset().value() != 0,
        LaxNetSlice::Ipv6(ip) => ipv6::fragment(ip).is_some_and(|frag| frag.offset != 0),
        LaxNetSlice::Arp(_) => false,
    }
}

fn slice_transport<'a>(payload: &LaxIpPayloadSlice<'a>) -> Option<TransportSlice<'a>> {
    match payload.ip_number {
        ip_number::UDP => UdpSlice::from_slice_lax(payload.payload)
            .ok()
            .map(TransportSlice::Udp),
        ip_number::TCP => TcpSlice::from_slice(payload.payload)
            .ok()
            .map(TransportSlice::Tcp),
        _ => None,
    }
}

/// Ports of a UDP or TCP header too short for etherparse: they are its first 4 bytes.
fn raw_ports(payload: &LaxIpPayloadSlice<'_>) -> Option<(u16, u16)> {
    if !matches!(payload.ip_number, ip_number::UDP | ip_number::TCP) {
        return None;
    }
    let [s0, s1, d0, d1, ..] = *payload.payload else {
        return None;
    };
    Some((u16::from_be_bytes([s0, s1]), u16::from_be_bytes([d0, d1])))
}

fn l4_too_short(payload: &LaxIpPayloadSlice<'_>, cut: bool) -> Issue {
    let kind = if cut {
        IssueKind::Truncated
    } else {
        IssueKind::BadL4
    };
    let name = protocol_name(payload);
    Issue::new(
        kind,
        format!(
            "{name} header cut short: only {} bytes",
            payload.payload.len()
        ),
    )
}

fn protocol_name(payload: &LaxIpPayloadSlice<'_>) -> String {
    match payload.ip_number.keyword_str() {
        Some(keyword) => keyword.to_owned(),
        None => payload.ip_number.0.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::dns::fixtures::{self, hex};
    use super::*;

    const CLIENT4: [u8; 4] = [192, 0, 2, 10];
    const SERVER4: [u8; 4] = [198, 51, 100, 53];
    const CLIENT6: &str = "20010db8000000000000000000000010";
    const SERVER6: &str = "20010db8000000000000000000000053";

    fn meta(len: usize) -> Meta {
        let len = u32::try_from(len).unwrap();
        Meta {
            ts_ns: 1,
            ifindex: 2,
            netns: 3,
            point: Point::TcEgress,
            wire_len: len,
            cap_len: len,
            pid: 4,
            comm: Some("dig".into()),
        }
    }

    fn decode_all(link: LinkType, bytes: &[u8]) -> Packet {
        decode(meta(bytes.len()), link, bytes)
    }

    fn be16(v: usize) -> [u8; 2] {
        u16::try_from(v).unwrap().to_be_bytes()
    }

    fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = hex("020000000001 020000000002");
        frame.extend(ether_type.to_be_bytes());
        frame.extend(payload);
        frame
    }

    fn vlan(id: u16, ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut tag = id.to_be_bytes().to_vec();
        tag.extend(ether_type.to_be_bytes());
        tag.extend(payload);
        tag
    }

    /// IPv4 header without options; `frag` is the raw flags + fragment offset field.
    fn ipv4(protocol: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x45, 0];
        ip.extend(be16(20 + payload.len()));
        ip.extend([0x12, 0x34]);
        ip.extend(frag.to_be_bytes());
        ip.extend([64, protocol, 0, 0]);
        ip.extend(CLIENT4);
        ip.extend(SERVER4);
        ip.extend(payload);
        ip
    }

    fn ipv6(next_header: u8, payload: &[u8]) -> Vec<u8> {
        let mut ip = hex("60000000");
        ip.extend(be16(payload.len()));
        ip.extend([next_header, 64]);
        ip.extend(hex(CLIENT6));
        ip.extend(hex(SERVER6));
        ip.extend(payload);
        ip
    }

    fn udp(payload: &[u8]) -> Vec<u8> {
        let mut segment = hex("9c40 0035");
        segment.extend(be16(8 + payload.len()));
        segment.extend([0, 0]);
        segment.extend(payload);
        segment
    }

    /// A TCP segment from port 53 to 40000; `flags` is the raw flags byte.
    fn tcp(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut segment = hex("0035 9c40 00000001 00000002 50");
        segment.extend([flags, 0xff, 0xff, 0, 0, 0, 0]);
        segment.extend(payload);
        segment
    }

    fn length_prefixed(message: &[u8]) -> Vec<u8> {
        let mut framed = be16(message.len()).to_vec();
        framed.extend(message);
        framed
    }

    fn eth_ipv4_udp_query() -> Vec<u8> {
        ethernet(0x0800, &ipv4(17, 0, &udp(&fixtures::query())))
    }

    fn raw_ipv4_tcp_response() -> Vec<u8> {
        ipv4(
            6,
            0x4000,
            &tcp(0x18, &length_prefixed(&fixtures::response_a())),
        )
    }

    fn issue_kind(packet: &Packet) -> Option<IssueKind> {
        packet.issue.as_ref().map(|issue| issue.kind)
    }

    const TCP_SYN: u8 = 0x02;
    const TCP_PSH_ACK: u8 = 0x18;

    #[test]
    fn ethernet_ipv4_udp_query() {
        let bytes = eth_ipv4_udp_query();
        let packet = decode_all(LinkType::Ethernet, &bytes);
        assert_eq!(packet.issue, None);
        assert_eq!(packet.meta, meta(bytes.len()));
        assert_eq!(packet.proto, Some(Proto::Udp));
        assert_eq!(packet.src, Some("192.0.2.10:40000".parse().unwrap()));
        assert_eq!(packet.dst, Some("198.51.100.53:53".parse().unwrap()));
        assert_eq!(packet.tcp_flags, None);
        let dns = packet.dns.unwrap();
        assert_eq!(
            dns.question.as_ref().unwrap().key(),
            "www.example.test. A IN"
        );
        assert_eq!(dns.edns.as_ref().unwrap().udp_size, 1232);
    }

    #[test]
    fn ethernet_vlan_ipv6_hop_by_hop_udp() {
        // Hop-by-hop header: next header UDP, length 0 (8 bytes), a PadN option.
        let mut hop_by_hop = hex("11 00 0104 00000000");
        hop_by_hop.extend(udp(&fixtures::response_a()));
        let frame = ethernet(0x8100, &vlan(11, 0x86dd, &ipv6(0, &hop_by_hop)));
        let packet = decode_all(LinkType::Ethernet, &frame);
        assert_eq!(packet.issue, None);
        assert_eq!(packet.proto, Some(Proto::Udp));
        assert_eq!(packet.src, Some("[2001:db8::10]:40000".parse().unwrap()));
        assert_eq!(packet.dst, Some("[2001:db8::53]:53".parse().unwrap()));
        assert_eq!(packet.dns.unwrap().answers[0].data, "192.0.2.1");
    }

    /// Issue 8's crash: hop-by-hop → fragment (offset 0, more) → hop-by-hop → UDP, whole
    /// and cut at every length the capture could stop at, through decode and defrag.
    #[test]
    fn hostile_ipv6_extension_chain_never_reads_past_the_bytes() {
        for units in [0, 1, 31, 127, 200, 255] {
            let frame = ethernet(0x86dd, &ipv6(0, &ipv6::tests::hostile_chain(units)));
            for end in (14..=frame.len()).rev() {
                let bytes = &frame[..end];
                let mut m = meta(bytes.len());
                m.wire_len = u32::try_from(frame.len()).unwrap();
                let packet = decode(m, LinkType::Ethernet, bytes);
                if end == frame.len() {
                    // Refused (a hop-by-hop header out of place), with the ports behind it.
                    assert_eq!(issue_kind(&packet), Some(IssueKind::BadL3), "{units}");
                    assert_eq!(packet.dst, Some("[2001:db8::53]:53".parse().unwrap()));
                }
                let mut defrag = frag::Defrag::new();
                assert_eq!(
                    defrag.push(LinkType::Ethernet, bytes, 1),
                    frag::Outcome::Whole,
                    "{units} cut at {end}"
                );
            }
        }
    }

    #[test]
    fn raw_ipv4_tcp_with_length_prefix() {
        let packet = decode_all(LinkType::RawIp, &raw_ipv4_tcp_response());
        assert_eq!(packet.issue, None);
        assert_eq!(packet.proto, Some(Proto::Tcp));
        assert_eq!(packet.src, Some("192.0.2.10:53".parse().unwrap()));
        assert_eq!(packet.tcp_flags.unwrap().short(), "P.");
        assert_eq!(packet.dns.unwrap().answers.len(), 1);
    }

    #[test]
    fn tcp_segment_with_two_messages_decodes_the_first() {
        let mut payload = length_prefixed(&fixtures::response_a());
        payload.extend(length_prefixed(&fixtures::nxdomain()));
        let packet = decode_all(LinkType::RawIp, &ipv4(6, 0, &tcp(TCP_PSH_ACK, &payload)));
        assert_eq!(packet.issue, None);
        assert_eq!(packet.dns.unwrap().rcode, "NOERROR");
    }

    #[test]
    fn tcp_segment_with_part_of_a_message() {
        let mut payload = length_prefixed(&fixtures::response_a());
        payload.truncate(30);
        let packet = decode_all(LinkType::RawIp, &ipv4(6, 0, &tcp(TCP_PSH_ACK, &payload)));
        let issue = packet.issue.unwrap();
        assert_eq!(issue.kind, IssueKind::TcpPartial);
        assert_eq!(issue.detail, "28 of 50 announced bytes");
        let dns = packet.dns.unwrap();
        assert_eq!((dns.id, dns.ancount, &dns.question), (0x1234, 1, &None));

        let packet = decode_all(LinkType::RawIp, &ipv4(6, 0, &tcp(TCP_PSH_ACK, &[0])));
        assert_eq!(issue_kind(&packet), Some(IssueKind::TcpPartial));
        assert_eq!(packet.dns, None);
    }

    #[test]
    fn tcp_prefix_and_message_in_separate_segments() {
        let query = fixtures::query();
        let prefix = ipv4(6, 0, &tcp(TCP_PSH_ACK, &be16(query.len())));
        let packet = decode_all(LinkType::RawIp, &prefix);
        assert_eq!(packet.issue.unwrap().detail, "0 of 57 announced bytes");
        assert_eq!(packet.dns, None);

        let packet = decode_all(LinkType::RawIp, &ipv4(6, 0, &tcp(TCP_PSH_ACK, &query)));
        assert_eq!(packet.issue, None);
        assert_eq!(packet.dns.unwrap().id, 0x1234);
    }

    #[test]
    fn tcp_syn_without_payload() {
        let packet = decode_all(LinkType::RawIp, &ipv4(6, 0, &tcp(TCP_SYN, &[])));
        assert_eq!(packet.issue, None);
        assert_eq!(packet.dns, None);
        assert_eq!(packet.proto, Some(Proto::Tcp));
        assert_eq!(packet.tcp_flags.unwrap().short(), "S");
    }

    #[test]
    fn cut_by_snaplen() {
        let full = ethernet(0x0800, &ipv4(17, 0, &udp(&fixtures::nxdomain())));
        let snap = 14 + 20 + 8 + 40;
        let mut meta = meta(full.len());
        meta.cap_len = snap;
        let packet = decode(meta, LinkType::Ethernet, &full[..snap as usize]);
        let issue = packet.issue.unwrap();
        assert_eq!(issue.kind, IssueKind::Truncated);
        assert!(
            issue.detail.starts_with("captured 82 of 126 bytes"),
            "{}",
            issue.detail
        );
        assert_eq!(packet.proto, Some(Proto::Udp));
        assert_eq!(packet.dst, Some("198.51.100.53:53".parse().unwrap()));
        assert_eq!(
            &*packet.dns.unwrap().question.as_ref().unwrap().name,
            "www.example.test."
        );
    }

    #[test]
    fn cut_inside_the_udp_header_still_gives_ports() {
        let full = ethernet(0x0800, &ipv4(17, 0, &udp(&fixtures::query())));
        let snap = 14 + 20 + 6;
        let mut meta = meta(full.len());
        meta.cap_len = snap;
        let packet = decode(meta, LinkType::Ethernet, &full[..snap as usize]);
        assert_eq!(issue_kind(&packet), Some(IssueKind::Truncated));
        assert_eq!(packet.proto, None);
        assert_eq!(packet.src, Some("192.0.2.10:40000".parse().unwrap()));
        assert_eq!(packet.dst, Some("198.51.100.53:53".parse().unwrap()));
    }

    #[test]
    fn short_buffer_without_snaplen_is_still_truncated() {
        // The IP header announces more bytes than the buffer holds.
        let mut bytes = ipv4(17, 0, &udp(&fixtures::nxdomain()));
        bytes.truncate(60);
        let packet = decode_all(LinkType::RawIp, &bytes);
        assert_eq!(issue_kind(&packet), Some(IssueKind::Truncated));
        assert!(packet.dns.is_some());
    }

    #[test]
    fn non_first_fragment() {
        // MF clear, offset 185 × 8 bytes.
        let packet = decode_all(LinkType::RawIp, &ipv4(17, 185, &fixtures::junk(7, 64)));
        assert_eq!(packet.proto, None);
        assert_eq!((packet.src, packet.dns), (None, None));
        assert_eq!(
            packet.issue,
            Some(Issue::new(IssueKind::BadL4, "non-first fragment"))
        );

        // IPv6 fragment header: next UDP, offset 2 (× 8 bytes), MF clear.
        let mut fragment = hex("11 00 0010 0000abcd");
        fragment.extend(fixtures::junk(8, 32));
        let packet = decode_all(LinkType::RawIp, &ipv6(44, &fragment));
        assert_eq!(
            packet.issue,
            Some(Issue::new(IssueKind::BadL4, "non-first fragment"))
        );
    }

    #[test]
    fn first_fragment_yields_ports_and_header() {
        let datagram = udp(&fixtures::nxdomain());
        // MF set, offset 0; only the first 48 bytes of the datagram.
        let packet = decode_all(LinkType::RawIp, &ipv4(17, 0x2000, &datagram[..48]));
        assert_eq!(issue_kind(&packet), Some(IssueKind::Truncated));
        assert_eq!(packet.proto, Some(Proto::Udp));
        assert_eq!(packet.dst, Some("198.51.100.53:53".parse().unwrap()));
        assert_eq!(packet.dns.unwrap().rcode, "NXDOMAIN");
    }

    #[test]
    fn other_link_types() {
        let ip = ipv4(17, 0, &udp(&fixtures::query()));
        let mut null = 2u32.to_ne_bytes().to_vec();
        null.extend(&ip);
        let mut null_swapped = 2u32.swap_bytes().to_ne_bytes().to_vec();
        null_swapped.extend(&ip);
        let mut openbsd_loop = 24u32.to_be_bytes().to_vec();
        openbsd_loop.extend(ipv6(17, &udp(&fixtures::query())));
        let mut sll = hex("0004 0001 0006 020000000001 0000 0800");
        sll.extend(&ip);
        let mut sll2 = hex("0800 0000 00000002 0001 04 06 0200000000010000");
        sll2.extend(&ip);
        for (link, bytes) in [
            (LinkType::Null, null),
            (LinkType::Null, null_swapped),
            (LinkType::Loop, openbsd_loop),
            (LinkType::LinuxSll, sll),
            (LinkType::LinuxSll2, sll2),
        ] {
            let packet = decode_all(link, &bytes);
            assert_eq!(packet.issue, None, "{link:?}");
            assert_eq!(packet.dns.unwrap().id, 0x1234, "{link:?}");
        }
    }

    #[test]
    fn not_dns_carrying_packets() {
        let arp = ethernet(
            0x0806,
            &hex("0001 0800 06 04 0001 020000000001 c0000201 000000000000 c0000202"),
        );
        let packet = decode_all(LinkType::Ethernet, &arp);
        assert_eq!(issue_kind(&packet), Some(IssueKind::BadL3));

        let lldp = ethernet(0x88cc, &[0; 20]);
        assert_eq!(
            decode_all(LinkType::Ethernet, &lldp).issue.unwrap().detail,
            "ethertype 0x88cc is not IP"
        );

        let icmp = ipv4(1, 0, &hex("0800 0000 0001 0001"));
        let packet = decode_all(LinkType::RawIp, &icmp);
        assert_eq!(
            packet.issue.unwrap().detail,
            "IP protocol ICMP is not UDP or TCP"
        );

        let mut null = 7u32.to_ne_bytes().to_vec();
        null.extend(&icmp);
        assert_eq!(
            issue_kind(&decode_all(LinkType::Null, &null)),
            Some(IssueKind::BadL2)
        );
    }

    #[test]
    fn broken_headers() {
        assert_eq!(
            issue_kind(&decode_all(LinkType::Ethernet, &[])),
            Some(IssueKind::BadL2)
        );
        assert_eq!(
            issue_kind(&decode_all(LinkType::LinuxSll2, &[0; 19])),
            Some(IssueKind::BadL2)
        );
        assert_eq!(
            issue_kind(&decode_all(LinkType::RawIp, &[0x45, 0])),
            Some(IssueKind::BadL3)
        );
        assert_eq!(
            issue_kind(&decode_all(LinkType::RawIp, &[0x75; 40])),
            Some(IssueKind::BadL3)
        );

        let empty_udp = ipv4(17, 0, &udp(&[]));
        let packet = decode_all(LinkType::RawIp, &empty_udp);
        assert_eq!(packet.issue.unwrap().kind, IssueKind::ShortHeader);

        let junk = ipv4(17, 0, &udp(&fixtures::junk(3, 200)));
        let packet = decode_all(LinkType::RawIp, &junk);
        assert_eq!(issue_kind(&packet), Some(IssueKind::Malformed));
        assert!(packet.dns.is_some());

        let mut looping = hex("0004 0100 0001 0000 0000 0000 c00c 0001 0001");
        looping = ethernet(0x0800, &ipv4(17, 0, &udp(&looping)));
        assert_eq!(
            issue_kind(&decode_all(LinkType::Ethernet, &looping)),
            Some(IssueKind::Malformed)
        );
    }

    #[test]
    fn tcp_flag_notation() {
        let flags = |syn, ack, fin, rst, psh| {
            TcpFlags {
                syn,
                ack,
                fin,
                rst,
                psh,
            }
            .short()
        };
        assert_eq!(flags(true, true, false, false, false), "S.");
        assert_eq!(flags(false, true, true, false, true), "FP.");
        assert_eq!(flags(false, false, false, true, false), "R");
        assert_eq!(TcpFlags::default().short(), "none");
    }

    #[test]
    fn names_match_serde() {
        for kind in [
            IssueKind::BadL2,
            IssueKind::BadL3,
            IssueKind::BadL4,
            IssueKind::Truncated,
            IssueKind::ShortHeader,
            IssueKind::Malformed,
            IssueKind::TcpPartial,
            IssueKind::TcpGap,
            IssueKind::BadTunnel,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for kind in [TunnelKind::Vxlan, TunnelKind::Geneve] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for point in [
            Point::TcIngress,
            Point::TcEgress,
            Point::SocketIn,
            Point::SocketOut,
        ] {
            assert_eq!(serde_json::to_value(point).unwrap(), point.as_str());
        }
        assert_eq!(serde_json::to_value(Proto::Udp).unwrap(), "udp");
        let issue = Issue::new(IssueKind::TcpPartial, "3 of 9");
        assert_eq!(issue.to_string(), "tcp_partial: 3 of 9");
    }

    const VXLAN_42: [u8; 8] = [0x08, 0, 0, 0, 0, 0, 42, 0];

    /// `frame` in a tunnel datagram (`header` first) from 10.0.0.1:49152 to 10.0.0.2:`dport`,
    /// over IPv4 or IPv6 (fd00::1 → fd00::2), in Ethernet.
    fn tunneled(v6: bool, dport: u16, header: &[u8], frame: &[u8]) -> Vec<u8> {
        let mut udp = hex("c000");
        udp.extend(dport.to_be_bytes());
        udp.extend(be16(8 + header.len() + frame.len()));
        udp.extend([0, 0]);
        udp.extend(header);
        udp.extend(frame);
        if v6 {
            let mut ip = hex("60000000");
            ip.extend(be16(udp.len()));
            ip.extend([17, 64]);
            ip.extend(hex("fd000000000000000000000000000001"));
            ip.extend(hex("fd000000000000000000000000000002"));
            ip.extend(udp);
            return ethernet(0x86dd, &ip);
        }
        let mut ip = vec![0x45, 0];
        ip.extend(be16(20 + udp.len()));
        ip.extend([0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        ip.extend(udp);
        ethernet(0x0800, &ip)
    }

    #[test]
    fn dns_inside_vxlan_has_the_inner_addresses_and_the_tunnel() {
        for port in [4789, 8472] {
            let bytes = tunneled(false, port, &VXLAN_42, &eth_ipv4_udp_query());
            let packet = decode_all(LinkType::Ethernet, &bytes);
            assert_eq!(packet.issue, None);
            assert_eq!(packet.proto, Some(Proto::Udp));
            assert_eq!(packet.src, Some("192.0.2.10:40000".parse().unwrap()));
            assert_eq!(packet.dst, Some("198.51.100.53:53".parse().unwrap()));
            let question = packet.dns.unwrap().question.clone().unwrap();
            assert_eq!(question.key(), "www.example.test. A IN");
            let t = packet.tunnel.unwrap();
            assert_eq!((t.kind, t.vni), (TunnelKind::Vxlan, 42));
            assert_eq!(t.src, "10.0.0.1:49152".parse().unwrap());
            assert_eq!(t.dst, SocketAddr::new([10, 0, 0, 2].into(), port));
            assert_eq!(
                t.to_string(),
                format!("vxlan vni 42 10.0.0.1:49152→10.0.0.2:{port}")
            );
        }
    }

    #[test]
    fn tcp_inside_geneve_over_ipv6_with_options() {
        // One 4-byte option word, protocol Ethernet, VNI 7.
        let header = hex("01006558 00000700 01020304");
        let inner = ethernet(0x0800, &raw_ipv4_tcp_response());
        let bytes = tunneled(true, 6081, &header, &inner);
        let packet = decode_all(LinkType::Ethernet, &bytes);
        assert_eq!(packet.issue, None);
        assert_eq!(packet.proto, Some(Proto::Tcp));
        assert_eq!(packet.src, Some("192.0.2.10:53".parse().unwrap()));
        assert!(packet.tcp_flags.is_some_and(|f| f.psh && f.ack));
        assert_eq!(packet.dns.unwrap().answers[0].data, "192.0.2.1");
        let t = packet.tunnel.unwrap();
        assert_eq!((t.kind, t.vni), (TunnelKind::Geneve, 7));
        assert_eq!(t.dst, "[fd00::2]:6081".parse().unwrap());
        // Stream reassembly finds the same segment.
        let (seq, payload) = tcp_segment(LinkType::Ethernet, &bytes).unwrap();
        assert_eq!(seq, 1);
        assert_eq!(payload, length_prefixed(&fixtures::response_a()));
    }

    #[test]
    fn a_broken_tunnel_is_an_issue_and_not_a_tunnel_is_udp() {
        // Options announced beyond the datagram: no inner packet, counted as bad_tunnel.
        let bytes = tunneled(false, 6081, &hex("3f006558 00000700"), &[0; 12]);
        let packet = decode_all(LinkType::Ethernet, &bytes);
        assert_eq!(issue_kind(&packet), Some(IssueKind::BadTunnel));
        assert_eq!(
            packet.issue.unwrap().detail,
            "geneve options: 252 bytes announced, only 12 (10.0.0.1:49152 → 10.0.0.2:6081)"
        );
        assert_eq!((packet.src, packet.dst, packet.tunnel), (None, None, None));
        // The same cut by the snaplen is truncated.
        let full = tunneled(false, 4789, &VXLAN_42, &eth_ipv4_udp_query());
        let mut meta = meta(full.len());
        meta.cap_len = 14 + 20 + 8 + 3;
        let packet = decode(meta.clone(), LinkType::Ethernet, &full[..45]);
        assert_eq!(issue_kind(&packet), Some(IssueKind::Truncated));
        // Cut inside the inner UDP header: the tunnel and the inner ports are known.
        meta.cap_len = 14 + 20 + 8 + 8 + 14 + 20 + 4;
        let packet = decode(meta, LinkType::Ethernet, &full[..88]);
        assert_eq!(issue_kind(&packet), Some(IssueKind::Truncated));
        assert_eq!(packet.dst, Some("198.51.100.53:53".parse().unwrap()));
        assert_eq!(packet.tunnel.unwrap().vni, 42);
        // No I flag: plain UDP to port 4789, whatever it holds.
        let bytes = tunneled(false, 4789, &[0; 8], &eth_ipv4_udp_query());
        let packet = decode_all(LinkType::Ethernet, &bytes);
        assert_eq!(packet.tunnel, None);
        assert_eq!(packet.dst, Some("10.0.0.2:4789".parse().unwrap()));
        // ARP inside: not DNS, says why.
        let bytes = tunneled(false, 4789, &VXLAN_42, &ethernet(0x0806, &[0; 28]));
        let packet = decode_all(LinkType::Ethernet, &bytes);
        assert_eq!(issue_kind(&packet), Some(IssueKind::BadL3));
        assert!(packet.tunnel.is_some());
    }

    #[test]
    fn a_tunnel_inside_a_tunnel_is_opened_once() {
        let middle = tunneled(false, 4789, &VXLAN_42, &eth_ipv4_udp_query());
        let bytes = tunneled(true, 6081, &hex("00006558 00000900"), &middle);
        let packet = decode_all(LinkType::Ethernet, &bytes);
        assert_eq!(packet.tunnel.unwrap().vni, 9);
        assert_eq!(packet.dst, Some("10.0.0.2:4789".parse().unwrap()));
        assert_eq!(packet.proto, Some(Proto::Udp));
    }

    /// Random bit flips, byte overwrites, cuts and link-type mixups of valid packets.
    #[test]
    fn fuzz_mutations_never_panic() {
        let mut hop_by_hop = hex("11 00 0104 00000000");
        hop_by_hop.extend(udp(&fixtures::nxdomain()));
        let seeds = [
            (LinkType::Ethernet, eth_ipv4_udp_query()),
            (
                LinkType::Ethernet,
                ethernet(0x8100, &vlan(11, 0x86dd, &ipv6(0, &hop_by_hop))),
            ),
            (LinkType::RawIp, raw_ipv4_tcp_response()),
            (
                LinkType::Ethernet,
                tunneled(false, 4789, &VXLAN_42, &eth_ipv4_udp_query()),
            ),
            (
                LinkType::Ethernet,
                tunneled(
                    true,
                    6081,
                    &hex("01006558 00000700 01020304"),
                    &eth_ipv4_udp_query(),
                ),
            ),
        ];
        let links = [
            LinkType::Ethernet,
            LinkType::RawIp,
            LinkType::LinuxSll,
            LinkType::LinuxSll2,
            LinkType::Null,
            LinkType::Loop,
        ];
        let random = fixtures::junk(0x5eed, 5_000 * 8);
        let mut issues = 0;
        for (i, r) in random.chunks(8).enumerate() {
            let (mut link, seed) = seeds[i % seeds.len()].clone();
            let mut bytes = seed.clone();
            let at = |b: u8, c: u8| (usize::from(b) << 8 | usize::from(c)) % seed.len();
            match r[0] % 4 {
                0 => (0..=r[1] % 8)
                    .for_each(|k| bytes[at(r[2], r[3 + k as usize % 5])] ^= 1 << (r[7] % 8)),
                1 => bytes[at(r[1], r[2])] = r[3],
                2 => bytes.truncate(at(r[1], r[2])),
                _ => link = links[usize::from(r[1]) % links.len()],
            }
            let mut meta = meta(seed.len());
            meta.cap_len = u32::try_from(bytes.len()).unwrap();
            let packet = decode(meta, link, &bytes);
            issues += usize::from(packet.issue.is_some());
            if packet.proto != Some(Proto::Tcp) {
                assert_eq!(packet.tcp_flags, None);
            }
        }
        assert!(issues > 1_000, "only {issues} of 5000 mutants had an issue");
    }

    /// Reading the shared capture corpus, outside the repo. Tests skip when it is absent.
    mod corpus {
        use super::*;
        use std::path::{Path, PathBuf};

        const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/corpus");

        struct Frame {
            link: LinkType,
            wire_len: u32,
            data: Vec<u8>,
        }

        fn path(name: &str) -> Option<PathBuf> {
            let path = Path::new(DIR).join(name);
            if path.exists() {
                Some(path)
            } else {
                println!("skipped: {} is absent", path.display());
                None
            }
        }

        fn link_type(code: u32) -> Option<LinkType> {
            Some(match code {
                0 => LinkType::Null,
                1 => LinkType::Ethernet,
                12 | 14 | 101 | 228 | 229 => LinkType::RawIp,
                108 => LinkType::Loop,
                113 => LinkType::LinuxSll,
                276 => LinkType::LinuxSll2,
                _ => return None,
            })
        }

        /// Every frame of every capture, with its file's name and its metadata; None (and
        /// says so) when the corpus is absent.
        fn all_frames() -> Option<Vec<(String, Meta, Frame)>> {
            let Ok(entries) = std::fs::read_dir(DIR) else {
                println!("skipped: {DIR} is absent");
                return None;
            };
            let mut out = Vec::new();
            for entry in entries.filter_map(Result::ok) {
                let name = entry.file_name().into_string().unwrap_or_default();
                if !(name.ends_with(".pcap") || name.ends_with(".pcapng")) {
                    continue;
                }
                for f in read(&entry.path()) {
                    let mut meta = meta(f.data.len());
                    meta.wire_len = f.wire_len;
                    out.push((name.clone(), meta, f));
                }
            }
            Some(out)
        }

        /// The frames of a pcap or pcapng file whose link type `decode` supports.
        fn read(path: &Path) -> Vec<Frame> {
            let bytes = std::fs::read(path).unwrap();
            match bytes[..4] {
                [0x0a, 0x0d, 0x0d, 0x0a] => read_pcapng(&bytes),
                _ => read_pcap(&bytes),
            }
        }

        fn read_pcap(bytes: &[u8]) -> Vec<Frame> {
            let little = matches!(
                bytes[..4],
                [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1]
            );
            let u32_at = |at: usize| {
                let raw = bytes[at..at + 4].try_into().unwrap();
                if little {
                    u32::from_le_bytes(raw)
                } else {
                    u32::from_be_bytes(raw)
                }
            };
            let link = link_type(u32_at(20) & 0xffff);
            let mut frames = Vec::new();
            let mut at = 24;
            while at + 16 <= bytes.len() {
                let (caplen, wire_len) = (u32_at(at + 8) as usize, u32_at(at + 12));
                let data = &bytes[at + 16..(at + 16 + caplen).min(bytes.len())];
                if let Some(link) = link {
                    frames.push(Frame {
                        link,
                        wire_len,
                        data: data.to_vec(),
                    });
                }
                at += 16 + caplen;
            }
            frames
        }

        fn read_pcapng(bytes: &[u8]) -> Vec<Frame> {
            let mut little = true;
            let mut interfaces = Vec::new();
            let mut frames = Vec::new();
            let mut at = 0;
            while at + 12 <= bytes.len() {
                if bytes[at..at + 4] == [0x0a, 0x0d, 0x0d, 0x0a] {
                    little = bytes[at + 8..at + 12] == [0x4d, 0x3c, 0x2b, 0x1a];
                    interfaces.clear();
                }
                let u32_at = |i: usize| {
                    let raw = bytes[i..i + 4].try_into().unwrap();
                    if little {
                        u32::from_le_bytes(raw)
                    } else {
                        u32::from_be_bytes(raw)
                    }
                };
                let (kind, len) = (u32_at(at), u32_at(at + 4) as usize);
                if len < 12 || at + len > bytes.len() {
                    break;
                }
                let body = at + 8;
                match kind {
                    1 => interfaces.push(link_type(u32_at(body) & 0xffff)),
                    6 => {
                        let (caplen, wire_len) = (u32_at(body + 12) as usize, u32_at(body + 16));
                        let link = interfaces.get(u32_at(body) as usize).copied().flatten();
                        if let Some(link) = link {
                            let data = bytes[body + 20..body + 20 + caplen].to_vec();
                            frames.push(Frame {
                                link,
                                wire_len,
                                data,
                            });
                        }
                    }
                    _ => {}
                }
                at += len;
            }
            frames
        }

        fn decode_file(name: &str) -> Option<Vec<Packet>> {
            let frames = read(&path(name)?);
            Some(
                frames
                    .iter()
                    .map(|f| {
                        let mut meta = meta(f.data.len());
                        meta.wire_len = f.wire_len;
                        decode(meta, f.link, &f.data)
                    })
                    .collect(),
            )
        }

        fn dns(packets: &[Packet]) -> Vec<&dns::Message> {
            packets.iter().filter_map(|p| p.dns.as_deref()).collect()
        }

        #[test]
        fn tcpdump_udp_query_and_response() {
            let Some(packets) = decode_file("tcpdump-dns_udp.pcap") else {
                return;
            };
            let [query, response] = &packets[..] else {
                panic!("expected 2 packets")
            };
            assert_eq!((&query.issue, &response.issue), (&None, &None));
            assert_eq!(query.src, Some("192.168.1.11:43966".parse().unwrap()));
            let (q, r) = (query.dns.as_ref().unwrap(), response.dns.as_ref().unwrap());
            assert_eq!((q.id, r.id), (22836, 22836));
            assert_eq!(q.question.as_ref().unwrap().key(), "www.tcpdump.org. A IN");
            let edns = q.edns.as_ref().unwrap();
            assert_eq!(
                (edns.udp_size, edns.options.as_slice()),
                (4096, &["COOKIE".to_owned()][..])
            );
            assert!(r.flags.aa);
            let data: Vec<&str> = r.answers.iter().map(|a| a.data.as_str()).collect();
            assert_eq!(data, ["192.139.46.66", "198.199.88.104"]);
        }

        #[test]
        fn tcp_with_handshake() {
            let Some(packets) = decode_file("tcpdump-dns_tcp.pcap") else {
                return;
            };
            assert!(
                packets
                    .iter()
                    .all(|p| p.issue.is_none() && p.proto == Some(Proto::Tcp))
            );
            assert_eq!(packets[0].tcp_flags.unwrap().short(), "S");
            assert_eq!(packets[1].tcp_flags.unwrap().short(), "S.");
            assert_eq!(dns(&packets).len(), 2);
        }

        #[test]
        fn extended_rcodes() {
            if let Some(packets) = decode_file("tcpdump-dns-badcookie.pcap") {
                assert!(dns(&packets).iter().any(|m| m.rcode == "BADCOOKIE"));
            }
            if let Some(packets) = decode_file("tcpdump-dns-badvers.pcap") {
                assert!(dns(&packets).iter().any(|m| m.rcode == "BADVERS"));
            }
        }

        #[test]
        fn edns_options() {
            if let Some(packets) = decode_file("dnscap-edns.pcap") {
                let messages = dns(&packets);
                let servfail = messages.iter().find(|m| m.rcode == "SERVFAIL").unwrap();
                let options = &servfail.edns.as_ref().unwrap().options;
                assert!(options.iter().any(|o| o.starts_with("EDE ")), "{options:?}");
                assert!(
                    messages
                        .iter()
                        .any(|m| m.edns.iter().any(|e| e.options.contains(&"NSID".into())))
                );
            }
            if let Some(packets) = decode_file("zeek-dns-edns-ecs.pcap") {
                let ecs = dns(&packets)
                    .iter()
                    .flat_map(|m| m.edns.iter().flat_map(|e| e.options.clone()))
                    .filter(|o| o.starts_with("ECS "))
                    .count();
                // tshark finds 10: the 10th is in a datagram only reassembly can rebuild.
                assert_eq!(ecs, 9);
            }
        }

        #[test]
        fn vlan_and_cooked_links() {
            for name in [
                "dnscap-vlan11.pcap",
                "dnscap-sll2.pcap",
                "pcapplusplus-sll.pcap",
            ] {
                let Some(packets) = decode_file(name) else {
                    continue;
                };
                let clean = dns(&packets).len();
                assert!(clean >= 2, "{name}: {clean} DNS messages");
            }
            if let Some(packets) = decode_file("dnscap-sll2.pcap") {
                assert!(dns(&packets).iter().any(|m| m.rcode == "NXDOMAIN"));
            }
        }

        #[test]
        fn tc_then_tcp_retry() {
            let Some(packets) = decode_file("chrissanders-dns_tcp.pcapng") else {
                return;
            };
            let messages = dns(&packets);
            assert!(messages.iter().any(|m| m.flags.tc && m.qr));
            let over_tcp = packets
                .iter()
                .filter(|p| p.proto == Some(Proto::Tcp) && p.dns.is_some())
                .count();
            assert!(over_tcp >= 2);
        }

        #[test]
        fn hostile_names_are_malformed() {
            for name in [
                "tcpdump-dns_fwdptr.pcap",
                "suricata-dns-forward-pointer.pcap",
                "pcapplusplus-dns_stack_overflow.pcap",
            ] {
                let Some(packets) = decode_file(name) else {
                    continue;
                };
                let malformed = packets
                    .iter()
                    .filter(|p| issue_kind(p) == Some(IssueKind::Malformed))
                    .count();
                assert!(malformed > 0, "{name}: nothing malformed");
            }
        }

        #[test]
        fn payload_is_bounded_by_the_udp_length() {
            // The compression-loop bytes sit after a UDP header whose length field says 8.
            let Some(packets) = decode_file("tcpdump-dns-zlip-1.pcap") else {
                return;
            };
            assert_eq!(
                packets[0].issue.as_ref().unwrap().detail,
                "only 0 bytes, a DNS header needs 12"
            );
        }

        #[test]
        fn tcp_prefix_sent_in_its_own_segment() {
            let Some(packets) = decode_file("dnscap-dnso1tcp.pcap") else {
                return;
            };
            let whole = packets
                .iter()
                .filter(|p| p.dns.is_some() && p.issue.is_none())
                .count();
            let prefix_only = packets
                .iter()
                .filter(|p| issue_kind(p) == Some(IssueKind::TcpPartial))
                .count();
            assert_eq!((whole, prefix_only), (82, 41));
        }

        #[test]
        fn fragments() {
            let Some(packets) = decode_file("ndpi-dns_fragmented.pcap") else {
                return;
            };
            let later = packets.iter().filter(|p| {
                p.issue
                    .as_ref()
                    .is_some_and(|i| i.detail == "non-first fragment")
            });
            assert!(later.count() > 0);
        }

        /// Every frame of every capture decodes without a panic; prints issue counts per file.
        #[test]
        fn whole_corpus() {
            let Ok(entries) = std::fs::read_dir(DIR) else {
                println!("skipped: {DIR} is absent");
                return;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".pcap") || n.ends_with(".pcapng"))
                .collect();
            names.sort();
            let mut total = 0;
            for name in &names {
                let packets = decode_file(name).unwrap_or_default();
                total += packets.len();
                let mut counts = std::collections::BTreeMap::new();
                for packet in &packets {
                    let kind = packet.issue.as_ref().map_or("ok", |i| i.kind.as_str());
                    *counts.entry(kind).or_insert(0) += 1;
                }
                println!("{name}: {counts:?}");
            }
            println!("{total} frames in {} files", names.len());
            assert!(total > 1_000);
        }

        /// Decoding for stitching gives what the full decode gives, less the answers:
        /// the same header, question, OPT, addresses and issue for every frame.
        #[test]
        fn stitch_detail_is_full_without_answers() {
            let Some(corpus) = all_frames() else {
                return;
            };
            let (mut frames, mut answered) = (0, 0);
            for (name, meta, f) in &corpus {
                let mut full = decode(meta.clone(), f.link, &f.data);
                let lean = decode_with(meta.clone(), f.link, &f.data, Detail::Stitch);
                if let Some(m) = &mut full.dns
                    && !m.answers.is_empty()
                {
                    answered += 1;
                    Arc::make_mut(m).answers.clear();
                }
                assert_eq!(lean, full, "{name}");
                frames += 1;
            }
            println!("{frames} frames, {answered} with answers");
            assert!(frames > 1_000 && answered > 100);
        }

        /// The hand-written IPv4/UDP path gives what etherparse's slicing gives, frame
        /// for frame, in both details (the corpus has 3553 frames, 762 of them take it).
        #[test]
        fn udp4_fast_path_matches_the_full_slice() {
            let Some(corpus) = all_frames() else {
                return;
            };
            let (mut frames, mut fast) = (0, 0);
            for (name, meta, f) in &corpus {
                for detail in [Detail::Full, Detail::Stitch] {
                    let slow = decode_inner(meta.clone(), f.link, &f.data, detail, false);
                    let quick = decode_inner(meta.clone(), f.link, &f.data, detail, true);
                    assert_eq!(quick, slow, "{name}");
                }
                let mut probe = decode_inner(meta.clone(), f.link, &f.data, Detail::Full, false);
                if meta.cap_len >= meta.wire_len
                    && udp4_fast(&mut probe, f.link, &f.data, Detail::Full)
                {
                    fast += 1;
                }
                frames += 1;
            }
            println!("{frames} frames, {fast} on the fast path");
            assert!(fast > 500, "{fast} of {frames} frames on the fast path");
        }

        /// A frame given the message of its own clean decode, as a compact record is,
        /// decodes to exactly its full decode, or is handed back for one.
        #[test]
        fn a_known_message_gives_the_full_decode() {
            let Some(corpus) = all_frames() else {
                return;
            };
            let (mut clean, mut known, mut v6) = (0, 0, 0);
            for (name, meta, f) in &corpus {
                for detail in [Detail::Full, Detail::Stitch] {
                    let full = decode_with(meta.clone(), f.link, &f.data, detail);
                    let (Some(m), None, Some(Proto::Udp), None) =
                        (&full.dns, &full.issue, full.proto, &full.tunnel)
                    else {
                        continue;
                    };
                    clean += 1;
                    if let Ok(p) = decode_known(meta.clone(), f.link, &f.data, m) {
                        assert_eq!(p, full, "{name}");
                        known += 1;
                        v6 += usize::from(p.src.is_some_and(|a| a.is_ipv6()));
                    }
                }
            }
            println!("{clean} clean UDP decodes, {known} served from the known message, {v6} IPv6");
            assert!(known > 1_000 && v6 > 100, "{known} known, {v6} IPv6");
        }
    }
}
