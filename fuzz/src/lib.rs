//! Fuzz targets for dnstrace. Each target in `fuzz_targets/` is one line that calls a
//! function here, so that the bodies are plain, testable Rust. `cargo xtask fuzz` builds and
//! runs them, seeds them from the shared capture corpus and replays `regressions/`.
//!
//! | target      | input                                      | what it drives                      |
//! |-------------|--------------------------------------------|-------------------------------------|
//! | `decode`    | [`ops`] frames, tunneled payloads, ticks   | L2–L4 decode of every link type, VXLAN/Geneve decapsulation, IP defragmentation, the packet outputs, the header-only decode of a known message against the full one (differential) |
//! | `dns`       | one DNS message                            | `decode::dns`, and the fast path against hickory (differential) |
//! | `tcp`       | [`ops`] frames, synthetic segments, ticks  | DNS-over-TCP stream reassembly      |
//! | `replay`    | a pcap or pcapng file                      | `dnstrace replay` end to end (reader, pipeline, JSON and pcapng outputs) |
//! | `correlate` | [`ops`] frames, synthetic packets, ticks   | the correlator and the lookup outputs |
//! | `records`   | ring buffer records, each length-prefixed  | the record reader: compact records rebuilt from earlier payloads, orphans counted |
//!
//! A panic anywhere is a crash, except inside hickory-proto, whose panics dnstrace catches
//! on purpose (`decode::dns` runs it guarded): those are noted once each on stderr.

pub mod ops;

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Mutex, Once, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use dnstrace::correlate::{self, Correlator, Coverage, Event, Lookup};
use dnstrace::decode::frag::{Defrag, Outcome};
use dnstrace::decode::tcp::{Limits, Segment, StreamKey, Streams};
use dnstrace::decode::{self, Detail, Issue, IssueKind, LinkType, Meta, Packet, Point, Proto, dns};
use dnstrace::sink::{JsonSink, Names, TextSink, lookup_json, lookup_text, upstreams_json};

use ops::{Op, Ops};

/// The host's netns cookie in every target.
const HOST_NETNS: u64 = 4026531840;
/// Where the clock of a sequence starts (ns); frames are 1 µs apart unless a tick says more.
const START_NS: u64 = 1_000_000_000;

/// Once per process: lets hickory-proto's panics unwind to dnstrace's guard instead of
/// aborting, as libFuzzer's panic hook would.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let abort = std::panic::take_hook();
        let noted: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
        std::panic::set_hook(Box::new(move |info| {
            let at = info.location().map(|l| l.to_string()).unwrap_or_default();
            if at.contains("hickory-proto") || at.contains("hickory_proto") {
                if noted.lock().is_ok_and(|mut n| n.insert(at.clone())) {
                    eprintln!("note: hickory-proto panicked at {at} (caught by decode::dns)");
                }
                return;
            }
            abort(info);
        }));
    });
}

pub fn link_type(index: u8) -> LinkType {
    match index % ops::LINKS {
        ops::LINK_ETHERNET => LinkType::Ethernet,
        ops::LINK_RAW_IP => LinkType::RawIp,
        ops::LINK_SLL => LinkType::LinuxSll,
        ops::LINK_SLL2 => LinkType::LinuxSll2,
        ops::LINK_NULL => LinkType::Null,
        _ => LinkType::Loop,
    }
}

/// The time of a sequence.
struct Clock(u64);

impl Clock {
    fn new() -> Self {
        Self(START_NS)
    }

    /// The time of the next frame.
    fn frame(&mut self) -> u64 {
        self.0 += 1_000;
        self.0
    }

    fn tick(&mut self, ms: u16) -> u64 {
        self.0 += u64::from(ms) * 1_000_000;
        self.0
    }
}

fn meta(ts_ns: u64, cap_len: usize, cut: u16, point: Point) -> Meta {
    let cap_len = cap_len as u32;
    Meta {
        ts_ns,
        ifindex: 1,
        netns: HOST_NETNS,
        point,
        wire_len: cap_len + u32::from(cut),
        cap_len,
        pid: 0,
        comm: None,
    }
}

/// The packet outputs (text and JSON lines), written nowhere.
struct Outputs {
    names: Names,
    /// The same with every lookup in full (`--hops all`).
    full: Names,
    text: TextSink<io::Sink>,
    json: JsonSink<io::Sink>,
}

impl Outputs {
    fn new() -> Self {
        Self {
            names: Names::new(HOST_NETNS, [(1, "eth0".to_owned())]),
            full: Names::new(HOST_NETNS, [(1, "eth0".to_owned())])
                .with_hops(dnstrace::cli::Hops::All),
            text: TextSink::new(io::sink()),
            json: JsonSink::new(io::sink()),
        }
    }

    fn packet(&mut self, p: &Packet, drop: Option<&str>) {
        self.text
            .packet(p, drop, &self.names)
            .expect("writing nowhere");
        self.json
            .packet(p, drop, &self.names)
            .expect("writing nowhere");
    }

    fn lookups(&mut self, lookups: &[Lookup], seen: &mut HashSet<u64>) {
        for l in lookups {
            assert!(seen.insert(l.id), "lookup {} finished twice", l.id);
            for names in [&self.names, &self.full] {
                lookup_text(l, names);
                lookup_json(l, names);
            }
        }
    }
}

/// What must hold for every decoded packet.
fn check_packet(p: &Packet) {
    if p.proto != Some(Proto::Tcp) {
        assert_eq!(p.tcp_flags, None, "TCP flags on a non-TCP packet");
    }
    assert_eq!(
        p.src.is_some(),
        p.dst.is_some(),
        "one address without the other"
    );
    if let Some(issue) = &p.issue {
        let _ = issue.to_string();
    }
}

/// What must hold for a frame given the message its own full decode found: the
/// header-only path (`decode::decode_known`, what a compact record's sighting takes)
/// either gives exactly the full decode or hands the frame back for one.
fn check_known(p: &Packet, link: LinkType, bytes: &[u8]) {
    let (Some(m), None, Some(Proto::Udp), None) = (&p.dns, &p.issue, p.proto, &p.tunnel) else {
        return;
    };
    if let Ok(known) = decode::decode_known(p.meta.clone(), link, bytes, m) {
        assert_eq!(
            &known, p,
            "the header-only decode differs from the full decode"
        );
    }
}

/// Target `decode`: every frame through `decode::decode`, `decode::tcp_segment`, IP
/// defragmentation (whose datagrams are decoded too) and the packet outputs.
pub fn decode_frames(input: &[u8]) {
    let mut clock = Clock::new();
    let mut defrag = Defrag::new();
    let mut out = Outputs::new();
    for op in Ops::new(input) {
        match op {
            Op::Frame { link, cut, bytes } => {
                let (ts, link) = (clock.frame(), link_type(link));
                let p = decode::decode(meta(ts, bytes.len(), cut, Point::TcIngress), link, bytes);
                check_packet(&p);
                check_known(&p, link, bytes);
                out.packet(&p, None);
                let _ = decode::tcp_segment(link, bytes);
                if let Outcome::Datagram(d) = defrag.push(link, bytes, ts) {
                    let p =
                        decode::decode(meta(ts, d.len(), 0, Point::TcIngress), LinkType::RawIp, &d);
                    check_packet(&p);
                    check_known(&p, LinkType::RawIp, &d);
                    out.packet(&p, None);
                }
            }
            Op::Tick { ms } => {
                defrag.expire(clock.tick(ms));
            }
            Op::Custom(record) => {
                let frame = tunneled(record);
                let p = decode::decode(
                    meta(clock.frame(), frame.len(), 0, Point::TcEgress),
                    LinkType::Ethernet,
                    &frame,
                );
                check_packet(&p);
                out.packet(&p, None);
                let _ = decode::tcp_segment(LinkType::Ethernet, &frame);
            }
        }
    }
    defrag.finish();
}

/// A custom record of target `decode` as a datagram to an overlay tunnel's port: its first
/// byte picks the port (VXLAN 4789 or 8472, Geneve 6081) and the outer IP version, the rest
/// is the UDP payload (a tunnel header and the frame inside, as the fuzzer makes them).
pub fn tunneled(record: &[u8]) -> Vec<u8> {
    use decode::tunnel::{GENEVE_PORT, VXLAN_LINUX_PORT, VXLAN_PORT};
    let (pick, payload) = record.split_first().unwrap_or((&0, &[]));
    let port = [VXLAN_PORT, VXLAN_LINUX_PORT, GENEVE_PORT][usize::from(pick % 3)];
    let udp_len = (8 + payload.len()) as u16;
    let mut udp = vec![0xc0, 0x00];
    udp.extend(port.to_be_bytes());
    udp.extend(udp_len.to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(payload);
    let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    if pick & 4 == 0 {
        frame.extend([0x08, 0x00, 0x45, 0]);
        frame.extend((20 + udp_len).to_be_bytes());
        frame.extend([0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    } else {
        frame.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
        frame.extend(udp_len.to_be_bytes());
        frame.extend([17, 64]);
        frame.extend(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets());
        frame.extend(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets());
    }
    frame.extend(udp);
    frame
}

/// Target `dns`: `decode::dns::parse`, and the fast path against hickory: whatever the fast
/// path reads, hickory must read the same way.
pub fn dns_message(input: &[u8]) {
    let header_id = input.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match dns::parse(input) {
        Ok(m) => {
            assert_eq!(Some(m.id), header_id);
            assert!(m.answers.len() <= dns::MAX_ANSWERS);
            assert!(
                m.answers
                    .iter()
                    .all(|a| a.data.chars().count() <= dns::MAX_DATA_CHARS)
            );
            serde_json::to_string(&m).expect("a message serializes");
        }
        Err((partial, _)) => {
            assert_eq!(partial.is_some(), input.len() >= dns::HEADER_LEN);
            if let Some(m) = partial {
                assert_eq!(Some(m.id), header_id);
            }
        }
    }
    // Decoding for stitching reads the same message, less its answers, or fails the same way.
    let strip = |m: dns::Message| dns::Message {
        answers: Vec::new(),
        ..m
    };
    let lean = dns::parse_with(input, Detail::Stitch);
    match dns::parse(input) {
        Ok(m) => assert_eq!(lean, Ok(strip(m)), "stitch detail differs"),
        Err((partial, err)) => assert_eq!(lean, Err((partial.map(strip), err))),
    }
    if let Some((Some(fast), full)) = dns::fast_and_full(input) {
        match full {
            Some(Ok(full)) => assert_eq!(fast, full, "the fast path and hickory disagree"),
            Some(Err(e)) => panic!("the fast path reads a message hickory rejects ({e}): {fast:?}"),
            None => panic!("the fast path reads a message hickory panics on: {fast:?}"),
        }
    }
}

/// Stream keys of the synthetic segments.
fn stream_key(index: u8) -> StreamKey {
    let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + index % 2)), 40000);
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 53)), 53);
    let (src, dst) = if index & 2 == 0 {
        (client, server)
    } else {
        (server, client)
    };
    StreamKey {
        point: Point::TcEgress,
        ifindex: 1,
        netns: HOST_NETNS,
        src,
        dst,
    }
}

/// A synthetic TCP segment: the rest of its custom record is its payload.
#[derive(Arbitrary, Debug)]
struct SegmentSpec {
    /// One of 4 directions of 2 connections.
    key: u8,
    /// Sequence number relative to the next one expected on that stream (else `seq`).
    relative: bool,
    delta: i16,
    seq: u32,
    syn: bool,
    fin: bool,
    rst: bool,
}

/// Target `tcp`: stream reassembly driven by decoded frames (`Streams::packets`, as the
/// pipeline does) and by synthetic segments (`Streams::push`) in any order.
pub fn tcp_streams(input: &[u8]) {
    let mut clock = Clock::new();
    // Small limits, so that eviction by count, by bytes and by age is reached.
    let limits = Limits {
        max_streams: 3,
        max_bytes: 4096,
        idle_ns: 5_000_000_000,
    };
    let mut streams = Streams::with_limits(limits);
    let mut next = [0u32; 4];
    for op in Ops::new(input) {
        match op {
            Op::Frame { link, cut, bytes } => {
                let link = link_type(link);
                let p = decode::decode(
                    meta(clock.frame(), bytes.len(), cut, Point::TcEgress),
                    link,
                    bytes,
                );
                if p.proto == Some(Proto::Tcp) {
                    for m in streams.packets(p, link, bytes) {
                        check_packet(&m);
                    }
                }
            }
            Op::Custom(bytes) => {
                let mut u = Unstructured::new(bytes);
                let Ok(s) = SegmentSpec::arbitrary(&mut u) else {
                    continue;
                };
                let payload = u.take_rest();
                let k = usize::from(s.key % 4);
                let seq = if s.relative {
                    next[k].wrapping_add(s.delta as u32)
                } else {
                    s.seq
                };
                next[k] = seq.wrapping_add(payload.len() as u32 + u32::from(s.syn));
                let segment = Segment {
                    ts_ns: clock.frame(),
                    seq,
                    payload,
                    syn: s.syn,
                    fin: s.fin,
                    rst: s.rst,
                };
                for m in streams.push(stream_key(s.key % 4), segment).messages {
                    assert!(!m.is_empty() && m.len() <= usize::from(u16::MAX));
                    let _ = dns::parse(&m);
                }
            }
            Op::Tick { ms } => streams.expire(clock.tick(ms)),
        }
        assert!(
            streams.len() <= limits.max_streams,
            "{} streams",
            streams.len()
        );
        // Looking for a boundary holds no more than a message does.
        assert!(
            streams.held_bytes() <= limits.max_bytes,
            "{} bytes held",
            streams.held_bytes()
        );
    }
}

/// Target `replay`: `dnstrace replay --output json --packets --pcap OUT FILE` of the input,
/// as the command runs it (stdout and stderr are discarded by libFuzzer's -close_fd_mask).
pub fn replay_file(input: &[u8]) {
    use clap::Parser as _;
    use dnstrace::cli::{Cli, Command};
    use dnstrace::replay::{ReplayConfig, replay};

    static RUN: OnceLock<(tokio::runtime::Runtime, ReplayConfig, PathBuf)> = OnceLock::new();
    let (runtime, cfg, out) = RUN.get_or_init(|| {
        // `cargo xtask fuzz` names a folder that it removes afterwards.
        let base = match std::env::var_os("DNSTRACE_FUZZ_SCRATCH") {
            Some(dir) => PathBuf::from(dir),
            None if std::path::Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let dir = base.join(format!("dnstrace-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        let (file, out) = (dir.join("input.pcap"), dir.join("output.pcapng"));
        let cli = Cli::try_parse_from([
            "dnstrace".as_ref(),
            "replay".as_ref(),
            "--output".as_ref(),
            "json".as_ref(),
            "--packets".as_ref(),
            "--pcap".as_ref(),
            out.as_os_str(),
            file.as_os_str(),
        ])
        .expect("valid replay arguments");
        let Command::Replay(args) = cli.command else {
            unreachable!("parsed a replay command")
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("an async runtime");
        (runtime, ReplayConfig::from(args), out)
    });
    std::fs::write(&cfg.file, input).expect("writing the scratch file");
    let _ = std::fs::remove_file(out);
    // A file that cannot be read is an error to report, not a crash.
    let _ = runtime.block_on(replay(cfg.clone()));
}

/// Addresses of the synthetic packets: two pods, a node-local cache, two upstreams, IPv6.
const ADDRS: [IpAddr; 6] = [
    IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)),
    IpAddr::V4(Ipv4Addr::new(10, 1, 0, 3)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 20, 10)),
    IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 53)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x53)),
];
const PORTS: [u16; 4] = [53, 40000, 40001, 5353];
const IFACES: [&str; 5] = ["eth0", "veth1", "veth2", "lo", "socket"];
const POINTS: [Point; 5] = [
    Point::TcIngress,
    Point::TcEgress,
    Point::SocketIn,
    Point::SocketOut,
    Point::Drop,
];
const NETNS: [u64; 3] = [HOST_NETNS, 4026532001, 4026532002];
const NAMES: [&str; 5] = ["a.test.", "A.Test.", "b.test.", ".", "svc.cluster.local."];
const TYPES: [&str; 4] = ["A", "AAAA", "TXT", "TYPE65"];
const RCODES: [&str; 6] = [
    "NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "FORMERR", "BADVERS",
];
const OPCODES: [&str; 3] = ["QUERY", "NOTIFY", "OPCODE9"];
const DATA: [&str; 4] = ["192.0.2.1", "198.51.100.7", "2001:db8::1", "x.test."];
const ISSUES: [IssueKind; 4] = [
    IssueKind::Truncated,
    IssueKind::Malformed,
    IssueKind::TcpPartial,
    IssueKind::BadL4,
];

/// What a synthetic record does to the correlator.
enum Step {
    Event(Box<Event>, u64),
    Loss(u64),
}

fn pick<T: Copy>(u: &mut Unstructured, from: &[T]) -> arbitrary::Result<T> {
    u.choose(from).copied()
}

fn socket_addr(u: &mut Unstructured) -> arbitrary::Result<SocketAddr> {
    Ok(SocketAddr::new(pick(u, &ADDRS)?, pick(u, &PORTS)?))
}

fn message(u: &mut Unstructured) -> arbitrary::Result<dns::Message> {
    let flags = u8::arbitrary(u)?;
    let question = match u.ratio(1u8, 16)? {
        true => None,
        false => Some(dns::Question {
            name: (*pick(u, &NAMES)?).into(),
            qtype: pick(u, &TYPES)?.into(),
            qclass: pick(u, &["IN", "CH"])?.into(),
        }),
    };
    let mut answers = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        answers.push(dns::Answer {
            name: (*pick(u, &NAMES)?).into(),
            rtype: pick(u, &TYPES)?.into(),
            ttl: u.int_in_range(0..=300)?,
            data: pick(u, &DATA)?.to_owned(),
        });
    }
    let edns = match bool::arbitrary(u)? {
        false => None,
        true => Some(dns::Edns {
            udp_size: pick(u, &[512, 1232, 4096])?,
            dnssec_ok: bool::arbitrary(u)?,
            version: u.int_in_range(0..=1)?,
            options: Vec::new(),
        }),
    };
    Ok(dns::Message {
        id: pick(u, &[1, 2, 0x1234])?,
        qr: bool::arbitrary(u)?,
        opcode: pick(u, &OPCODES)?.into(),
        rcode: dns::Rcode::from_name(pick(u, &RCODES)?).unwrap_or_default(),
        flags: dns::Flags {
            aa: flags & 1 != 0,
            tc: flags & 2 != 0,
            rd: flags & 4 != 0,
            ra: flags & 8 != 0,
            ad: flags & 16 != 0,
            cd: flags & 32 != 0,
        },
        qdcount: u16::from(question.is_some()),
        question,
        ancount: answers.len() as u16,
        nscount: 0,
        arcount: u16::from(edns.is_some()),
        answers,
        edns,
    })
}

/// A synthetic event (from small pools, so that queries, replies and hops meet) or a loss.
fn step(u: &mut Unstructured, now: u64) -> arbitrary::Result<Step> {
    if u.ratio(1u8, 32)? {
        return Ok(Step::Loss(u.int_in_range(1..=1000)?));
    }
    // Events may arrive a little out of order (several CPUs share the ring buffer).
    let ts = now.saturating_sub(u.int_in_range(0..=2_000_000)?);
    let point = pick(u, &POINTS)?;
    let proto = if u.ratio(1u8, 4)? {
        Proto::Tcp
    } else {
        Proto::Udp
    };
    let tcp_flags = match proto {
        Proto::Udp => None,
        Proto::Tcp => {
            let f = u8::arbitrary(u)?;
            Some(decode::TcpFlags {
                syn: f & 1 != 0,
                ack: f & 2 != 0,
                fin: f & 4 != 0,
                rst: f & 8 != 0,
                psh: f & 16 != 0,
            })
        }
    };
    let packet = Packet {
        meta: Meta {
            ts_ns: ts,
            ifindex: u.int_in_range(1..=4)?,
            netns: pick(u, &NETNS)?,
            point,
            wire_len: 100,
            cap_len: 100,
            pid: 0,
            comm: None,
        },
        proto: Some(proto),
        src: Some(socket_addr(u)?),
        dst: Some(socket_addr(u)?),
        tcp_flags,
        dns: if u.ratio(1u8, 8)? {
            None
        } else {
            Some(std::sync::Arc::new(message(u)?))
        },
        issue: match u.ratio(1u8, 8)? {
            false => None,
            true => Some(Issue {
                kind: pick(u, &ISSUES)?,
                detail: "synthetic".to_owned(),
            }),
        },
        tunnel: match u.ratio(1u8, 4)? {
            false => None,
            true => Some(Box::new(decode::tunnel::Tunnel {
                kind: pick(
                    u,
                    &[
                        decode::tunnel::TunnelKind::Vxlan,
                        decode::tunnel::TunnelKind::Geneve,
                    ],
                )?,
                vni: u.int_in_range(0..=0xff_ffff)?,
                src: socket_addr(u)?,
                dst: socket_addr(u)?,
            })),
        },
    };
    let iface = match point {
        Point::SocketIn | Point::SocketOut => "socket",
        _ => pick(u, &IFACES)?,
    };
    let drop_reason = (point == Point::Drop)
        .then(|| pick(u, &["NETFILTER_DROP", "NO_SOCKET", "IP_RPFILTER"]))
        .transpose()?
        .map(str::to_owned);
    let event = Event {
        packet,
        iface: iface.into(),
        drop_reason,
    };
    Ok(Step::Event(Box::new(event), ts))
}

/// Target `correlate`: the correlator fed decoded frames (through TCP reassembly, as the
/// pipeline does), synthetic events, losses and clock ticks; then the end of capture.
/// Every lookup finishes once, and none is left open at the end.
pub fn correlate_events(input: &[u8]) {
    let mut c = Correlator::new(correlate::Config {
        // Small, so that eviction at the cap is reached.
        max_lookups: 32,
        uplinks: vec!["eth0".to_owned()],
        host_netns: HOST_NETNS,
        watched: Coverage::full(),
        // Both ways of building an ok lookup: with its hops (TUI, `--hops all`) and with
        // only their count and path (what `watch` does otherwise).
        ok_hops: input.first().is_some_and(|b| b & 1 == 0),
        ..correlate::Config::default()
    });
    let mut clock = Clock::new();
    let mut streams = Streams::new();
    let mut out = Outputs::new();
    let mut seen = HashSet::new();
    for op in Ops::new(input) {
        match op {
            Op::Frame { link, cut, bytes } => {
                let (ts, link) = (clock.frame(), link_type(link));
                let p = decode::decode(meta(ts, bytes.len(), cut, Point::TcIngress), link, bytes);
                let mut packets = match p.proto {
                    Some(Proto::Tcp) => streams.packets(p, link, bytes),
                    _ => vec![p],
                };
                for mut p in packets.drain(..) {
                    // Seen where the server is, as replay guesses for a file without direction.
                    if p.dns.as_ref().is_some_and(|m| m.qr) {
                        p.meta.point = Point::TcEgress;
                    }
                    let event = Event {
                        packet: p,
                        iface: "eth0".into(),
                        drop_reason: None,
                    };
                    let done = c.ingest(event, ts);
                    out.lookups(&done, &mut seen);
                }
            }
            Op::Custom(bytes) => match step(&mut Unstructured::new(bytes), clock.0) {
                Ok(Step::Event(event, ts)) => {
                    out.packet(&event.packet, event.drop_reason.as_deref());
                    let done = c.ingest(*event, ts);
                    out.lookups(&done, &mut seen);
                }
                Ok(Step::Loss(n)) => c.note_loss(n, clock.0),
                Err(_) => {}
            },
            Op::Tick { ms } => {
                let done = c.expire(clock.tick(ms));
                out.lookups(&done, &mut seen);
            }
        }
    }
    let done = c.finish(clock.0);
    out.lookups(&done, &mut seen);
    let stats = c.stats();
    assert_eq!(
        stats.live_lookups, 0,
        "lookups left open after the end: {stats:?}"
    );
    upstreams_json(&c.upstreams(), Names::new(HOST_NETNS, []).stamp(0));
}

/// `records`: ring buffer records as the kernel writes them, each a 2-byte little-endian
/// length and its bytes, read as the drain reads them (a compact record is rebuilt from
/// an earlier record's payload, or counted as orphaned), then decoded.
pub fn ring_records(input: &[u8]) {
    let mut records = Vec::new();
    let mut rest = input;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        records.push(&rest[2..2 + n]);
        rest = &rest[2 + n..];
    }
    let (events, _orphaned) = dnstrace::capture::read_records(records.iter().copied());
    for e in events {
        // An event holds exactly the bytes it says it has.
        assert_eq!(e.data.len(), e.meta.cap_len as usize);
        let _ = decode::decode(e.meta, e.link, &e.data);
    }
}
