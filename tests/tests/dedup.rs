//! Compact records: a UDP DNS payload that the kernel copied moments ago is sent
//! again as the sighting's own headers only, and dnstrace rebuilds the packet.
//!
//! Each test runs two real `dnstrace watch --pcap` side by side on the same hooks of
//! a lab, one with compact records and one copying every sighting in full
//! (`--no-dedup`), and asserts that their pcapng files hold the same packets, byte
//! for byte. Needs root and DNSTRACE_BIN (run with `cargo xtask test`).
use std::{path::Path, time::Duration};

use dnstrace_tests::{
    ECHO_PY, Lab, Signal, Trace, Tracer, VethEnd, dnstrace_bin, skip_without_root,
};

/// A port no other lab uses, so that both tracers see only this test's packets.
const PORT: &str = "10053";

const PYTHON: &str = "/usr/bin/python3";

fn ready() -> bool {
    !skip_without_root() && dnstrace_bin().is_some()
}

/// Relays every query on LISTEN:PORT to UPSTREAM:PORT from a socket of its own, with
/// the EDNS UDP size changed (same ID, same length, other bytes), and the answer back.
const MIDDLEBOX: &str = r#"
import socket, sys
port = int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], port))
up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
up.settimeout(2)
print("ready", flush=True)
while True:
    d, a = s.recvfrom(4096)
    q = bytearray(d)
    # The OPT record ends the query: its class is the UDP size, 1232 -> 1400.
    assert q[-8:-6] == b"\x04\xd0", q
    q[-8:-6] = b"\x05\x78"
    up.sendto(bytes(q), (sys.argv[2], port))
    r, _ = up.recvfrom(4096)
    s.sendto(r, a)
"#;

/// Sends queries to SERVER:PORT (IPv4 or IPv6) and waits for each answer. For every ID,
/// a second query of the same ID and length follows, one letter of its name changed.
const CLIENT: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
def query(qid, name):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00\x00\x01\x00\x01"
    q += b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    return q
n = 0
for i in range(int(sys.argv[3])):
    qid = 0x4000 + i
    for name in ("www%d.dedup.test" % i, "wwx%d.dedup.test" % i):
        s.sendto(query(qid, name), (sys.argv[1], int(sys.argv[2])))
        r, _ = s.recvfrom(4096)
        assert r[:2] == struct.pack(">H", qid) and r[2] & 0x80, r
        n += 1
print("answered", n)
"#;

fn veth(lab: &Lab, a: (&str, &str, &str), b: (&str, &str, &str)) {
    lab.add_veth(
        &VethEnd {
            ns: a.0,
            name: a.1,
            addrs: &[a.2],
        },
        &VethEnd {
            ns: b.0,
            name: b.1,
            addrs: &[b.2],
        },
    )
    .expect("veth");
}

/// The packets of an Enhanced Packet Block each, in file order (little-endian pcapng,
/// as dnstrace writes it): (original length, captured bytes).
fn pcapng_packets(file: &Path) -> Vec<(u32, Vec<u8>)> {
    let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= data.len() {
        let (kind, len) = (u32_at(at), u32_at(at + 4) as usize);
        assert!(len >= 12 && at + len <= data.len(), "bad block at {at}");
        if kind == 6 {
            let cap = u32_at(at + 20) as usize;
            let orig = u32_at(at + 24);
            out.push((orig, data[at + 28..at + 28 + cap].to_vec()));
        }
        at += len;
    }
    out
}

/// Two tracers in `ns` on the same hooks: (with compact records, copying everything).
fn start_pair<'a>(lab: &'a Lab, ns: &str) -> (Tracer<'a>, Tracer<'a>) {
    let pcap = |name: &str| lab.dir().join(name).to_str().unwrap().to_owned();
    let (a, b) = (pcap("dedup.pcapng"), pcap("full.pcapng"));
    let common = ["--auto", "--no-drops", "--port", PORT];
    let mut args_a = common.to_vec();
    args_a.extend(["--pcap", a.as_str()]);
    let mut args_b = common.to_vec();
    args_b.extend(["--pcap", b.as_str(), "--no-dedup"]);
    let dedup = Tracer::start_lookups(lab, ns, "dedup", &args_a).expect("start dnstrace");
    let full = Tracer::start_lookups(lab, ns, "full", &args_b).expect("start dnstrace");
    (dedup, full)
}

/// Stops both and checks: the same packets in both files, byte for byte; compact
/// records were sent by the one and not the other; nothing lost. Returns the
/// packets, and both summaries.
fn stop_and_compare(lab: &Lab, dedup: Tracer, full: Tracer) -> (Vec<Vec<u8>>, Trace, Trace) {
    // Both drain their ring every 10 ms.
    std::thread::sleep(Duration::from_millis(500));
    let dedup = dedup.stop(Signal::Int).expect("stop dnstrace");
    let full = full.stop(Signal::Int).expect("stop dnstrace");
    eprintln!("with compact records:\n{}", dedup.stderr);
    eprintln!("without:\n{}", full.stderr);
    let (kd, kf) = (&dedup.summary["kernel"], &full.summary["kernel"]);
    let n = |v: &serde_json::Value| v.as_u64().expect("a counter");
    assert!(n(&kd["compact"]) > 0, "no compact record was sent: {kd}");
    assert_eq!(
        n(&kf["compact"]),
        0,
        "--no-dedup sent compact records: {kf}"
    );
    for k in [kd, kf] {
        assert_eq!(n(&k["orphaned"]), 0, "{k}");
        assert_eq!(n(&k["ring_full"]) + n(&k["copy_failed"]), 0, "{k}");
    }
    let mut a = pcapng_packets(&lab.dir().join("dedup.pcapng"));
    let mut b = pcapng_packets(&lab.dir().join("full.pcapng"));
    assert_eq!(n(&kd["emitted"]), a.len() as u64, "{kd}");
    assert!(!a.is_empty());
    for (orig, bytes) in &a {
        assert_eq!(*orig as usize, bytes.len(), "a packet cut short");
    }
    a.sort();
    b.sort();
    assert_eq!(a.len(), b.len(), "a different number of packets");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "a packet differs");
    }
    // The same lookups from both: a compact record's message, taken from the decode of
    // the record that carried its payload, stitches as its own decode would.
    let reused = n(&dedup.summary["decode_reused"]);
    assert!(
        reused > 0,
        "no message was decoded once for several sightings"
    );
    assert_eq!(n(&full.summary["decode_reused"]), 0);
    let lookups = |t: &Trace| {
        let mut v: Vec<String> = t
            .lookups
            .iter()
            .map(|l| {
                format!(
                    "{} {} {} {} {} {}",
                    l["qname"], l["qtype"], l["client"], l["server"], l["verdict"], l["rcode"]
                )
            })
            .collect();
        v.sort();
        v
    };
    assert!(!dedup.lookups.is_empty());
    assert_eq!(lookups(&dedup), lookups(&full), "the lookups differ");
    eprintln!(
        "{reused} of {} DNS messages taken from an earlier sighting's decode",
        a.len()
    );
    (a.into_iter().map(|(_, p)| p).collect(), dedup, full)
}

/// Where the IP header of a packet starts: at 14 after an Ethernet header (type 0x0800
/// or 0x86dd at 12), else at 0 (this test's addresses, 10.247.x.x and fd00:247:x::x, never
/// put those bytes at 12).
fn ip_start(packet: &[u8]) -> usize {
    if matches!(packet[12..14], [0x08, 0x00] | [0x86, 0xdd]) {
        14
    } else {
        0
    }
}

/// The UDP payload of an IPv4 packet, or of an IPv6 one without extension headers.
fn dns_payload(packet: &[u8]) -> &[u8] {
    let ip = ip_start(packet);
    let l3 = match packet[ip] >> 4 {
        4 => usize::from(packet[ip] & 0x0f) * 4,
        6 => 40,
        v => panic!("IP version {v}: {packet:02x?}"),
    };
    &packet[ip + l3 + 8..]
}

/// A client and an echo server on one veth (addresses `cli_addr` and `srv_addr`, CIDR),
/// both tracers in the client's netns: 20 IDs of two queries each, every query and answer
/// seen at the socket hop, the veth and the socket hop again, rebuilt byte for byte.
/// Returns the packets and the summary of the tracer with compact records.
fn echo_rebuilt(lab: &str, cli_addr: &str, srv_addr: &str) -> (Vec<Vec<u8>>, Trace) {
    let lab = Lab::new(lab).expect("lab");
    let cli = lab.add_netns("cli").expect("netns");
    let srv = lab.add_netns("srv").expect("netns");
    let (c, s) = (format!("{}c", lab.prefix()), format!("{}s", lab.prefix()));
    veth(&lab, (&cli, &c, cli_addr), (&srv, &s, srv_addr));
    let server = srv_addr.split('/').next().unwrap();
    lab.start_python(&srv, "echo", ECHO_PY, &[server, PORT])
        .expect("echo server");
    let (dedup, full) = start_pair(&lab, &cli);
    let script = lab.write_file("client.py", CLIENT).expect("script");
    let out = lab
        .run(
            &cli,
            &[PYTHON, script.to_str().unwrap(), server, PORT, "20"],
        )
        .expect("client");
    assert!(out.contains("answered 40"), "{out}");
    let (packets, dedup, _) = stop_and_compare(&lab, dedup, full);
    // Each query and answer: socket out, the veth, socket in.
    assert_eq!(packets.len(), 40 * 2 * 3, "sightings");
    // A query, the one with the same ID and length, and their answers each at
    // every hop with their own payload.
    for name in [&b"\x04www7\x05dedup"[..], b"\x04wwx7\x05dedup"] {
        let at = |qr: bool| {
            packets
                .iter()
                .filter(|p| {
                    let d = dns_payload(p);
                    d[..2] == [0x40, 7]
                        && (d[2] & 0x80 != 0) == qr
                        && d.windows(name.len()).any(|w| w == name)
                })
                .count()
        };
        assert_eq!(
            (at(false), at(true)),
            (3, 3),
            "{:?}",
            String::from_utf8_lossy(name)
        );
    }
    let compact = dedup.summary["kernel"]["compact"].as_u64().unwrap();
    eprintln!("{compact} of {} sightings were compact", packets.len());
    (packets, dedup)
}

#[test]
fn every_sighting_is_rebuilt_byte_for_byte() {
    if !ready() {
        return;
    }
    echo_rebuilt("ddp", "10.247.1.1/24", "10.247.1.2/24");
}

#[test]
fn every_ipv6_sighting_is_rebuilt_byte_for_byte() {
    if !ready() {
        return;
    }
    let (packets, _) = echo_rebuilt("dd6", "fd00:247:1::1/64", "fd00:247:1::2/64");
    // Only IPv6 on the test's port, so the compact records counted were IPv6 ones (the
    // helper asserts there were some): on the veth (payload at 62) and at the socket hop
    // (at 48).
    for p in &packets {
        assert_eq!(p[ip_start(p)] >> 4, 6, "not IPv6: {p:02x?}");
    }
    for (ethernet, off) in [(true, 62), (false, 48)] {
        let n = packets
            .iter()
            .filter(|p| (ip_start(p) == 14) == ethernet)
            .inspect(|p| assert_eq!(p.len() - dns_payload(p).len(), off))
            .count();
        assert!(n > 0, "no IPv6 packet with its payload at {off}");
    }
}

#[test]
fn a_payload_changed_on_the_way_is_copied_again() {
    if !ready() {
        return;
    }
    let lab = Lab::new("ddm").expect("lab");
    let cli = lab.add_netns("cli").expect("netns");
    let mid = lab.add_netns("mid").expect("netns");
    let srv = lab.add_netns("srv").expect("netns");
    let p = lab.prefix().to_owned();
    veth(
        &lab,
        (&cli, &format!("{p}c"), "10.247.2.1/24"),
        (&mid, &format!("{p}a"), "10.247.2.2/24"),
    );
    veth(
        &lab,
        (&mid, &format!("{p}b"), "10.247.3.1/24"),
        (&srv, &format!("{p}s"), "10.247.3.2/24"),
    );
    lab.start_python(&srv, "echo", ECHO_PY, &["10.247.3.2", PORT])
        .expect("echo server");
    lab.start_python(
        &mid,
        "middlebox",
        MIDDLEBOX,
        &["10.247.2.2", "10.247.3.2", PORT],
    )
    .expect("middlebox");
    let (dedup, full) = start_pair(&lab, &mid);
    let script = lab.write_file("client.py", CLIENT).expect("script");
    let out = lab
        .run(
            &cli,
            &[PYTHON, script.to_str().unwrap(), "10.247.2.2", PORT, "10"],
        )
        .expect("client");
    assert!(out.contains("answered 20"), "{out}");
    let (packets, _, _) = stop_and_compare(&lab, dedup, full);
    // Each query as sent (EDNS size 1232) at the client's socket, the middlebox's veth and
    // socket; as relayed (1400) at its socket, its other veth and the server's socket.
    let queries = |size: &[u8]| {
        packets
            .iter()
            .filter(|p| {
                let d = dns_payload(p);
                d[2] & 0x80 == 0 && &d[d.len() - 8..d.len() - 6] == size
            })
            .count()
    };
    assert_eq!(queries(b"\x04\xd0"), 20 * 3, "queries as sent");
    assert_eq!(queries(b"\x05\x78"), 20 * 3, "queries as relayed");
}
