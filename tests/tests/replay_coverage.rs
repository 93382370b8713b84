//! `dnstrace replay` blames nothing that the file does not show (issue 9, defect 6): a
//! lookup without a reply is `unanswered` only when the file covers its whole timeout and
//! every byte the server sent on its TCP stream; otherwise it is `unknown`, with the reason.
//! The captures are made here, byte by byte. Needs no privileges, only the binary named by
//! DNSTRACE_BIN (`cargo xtask test` sets it).
use std::path::Path;

use dnstrace_tests::Trace;
use dnstrace_tests::scratch::{
    TCP_ACK, TCP_FIN, TCP_PSH_ACK, TCP_SYN, dns_message, ipv4_tcp, ipv4_udp, pcap_raw_ip_at,
};
use serde_json::Value;

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const SERVER: [u8; 4] = [10, 0, 0, 2];
/// Seconds, in µs.
const S: u64 = 1_000_000;

fn query(id: u16, name: &[u8]) -> Vec<u8> {
    dns_message(id, 0x0100, &[name, b"test"], 1, &[], 0)
}

fn answer(id: u16, name: &[u8]) -> Vec<u8> {
    let rr = [0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 203, 0, 113, 7];
    dns_message(id, 0x8180, &[name, b"test"], 1, &rr, 1)
}

fn framed(m: &[u8]) -> Vec<u8> {
    let mut v = (m.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(m);
    v
}

fn replay(dir: &Path, name: &str, packets: &[(u64, Vec<u8>)]) -> Option<Trace> {
    dnstrace_tests::dnstrace_bin()?;
    let path = dir.join(name);
    std::fs::write(&path, pcap_raw_ip_at(packets)).unwrap();
    let trace = dnstrace_tests::replay(&path, &["--packets"]).unwrap();
    assert!(!trace.stderr.contains("panicked"), "{}", trace.stderr);
    Some(trace)
}

fn lookup<'a>(t: &'a Trace, qname: &str) -> &'a Value {
    t.lookups
        .iter()
        .find(|l| l["qname"] == qname)
        .unwrap_or_else(|| panic!("no lookup for {qname}: {:?}", t.lookups))
}

/// One TCP connection: three queries, and the answer to the second is missing from the
/// capture (the server's sequence number jumps past it). The file goes on for 20 s, well
/// past the timeout. The second lookup is `unknown`, naming the hole, with no culprit; the
/// others are answered, and a UDP query that the file shows unanswered for 19 s is still
/// `unanswered` (the hole is only that stream's).
#[test]
fn a_reply_lost_in_a_hole_of_the_servers_tcp_stream_is_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, s) = (40000, 53);
    let (mut cseq, mut sseq) = (1000u32, 5000u32);
    let mut p = Vec::new();
    let mut at = 0;
    let mut next = |step: u64| {
        at += step;
        at
    };
    p.push((
        next(0),
        ipv4_tcp(CLIENT, SERVER, c, s, cseq, 0, TCP_SYN, &[]),
    ));
    cseq += 1;
    p.push((
        next(100),
        ipv4_tcp(SERVER, CLIENT, s, c, sseq, cseq, TCP_SYN | TCP_ACK, &[]),
    ));
    sseq += 1;
    for (id, name) in [(1u16, &b"one"[..]), (2, b"two"), (3, b"three")] {
        let q = framed(&query(id, name));
        p.push((
            next(1000),
            ipv4_tcp(CLIENT, SERVER, c, s, cseq, sseq, TCP_PSH_ACK, &q),
        ));
        cseq += q.len() as u32;
        let a = framed(&answer(id, name));
        // The second answer was sent, but the capture never saw it.
        if id != 2 {
            p.push((
                next(1000),
                ipv4_tcp(SERVER, CLIENT, s, c, sseq, cseq, TCP_PSH_ACK, &a),
            ));
        }
        sseq += a.len() as u32;
    }
    let missed = framed(&answer(2, b"two")).len() as u64;
    // A second connection (no SYN in the file): its only answer is missing too, and the
    // server's FIN after it is the only sign.
    let c2 = 40001;
    let q = framed(&query(4, b"four"));
    p.push((
        next(1000),
        ipv4_tcp(CLIENT, SERVER, c2, s, 7000, 9000, TCP_PSH_ACK, &q),
    ));
    let lost = framed(&answer(4, b"four")).len() as u32;
    let fin = ipv4_tcp(
        SERVER,
        CLIENT,
        s,
        c2,
        9000 + lost,
        7000 + q.len() as u32,
        TCP_FIN | TCP_ACK,
        &[],
    );
    // The server's stream was seen before (an ACK of the query), so its place is known.
    p.push((
        next(500),
        ipv4_tcp(
            SERVER,
            CLIENT,
            s,
            c2,
            9000,
            7000 + q.len() as u32,
            TCP_ACK,
            &[],
        ),
    ));
    p.push((next(1000), fin));
    // Unrelated UDP: a query never answered, then one answered 20 s on (the file's end).
    let udp = |id, name: &[u8]| ipv4_udp(CLIENT, SERVER, 41000, 53, &query(id, name));
    p.push((next(1000), udp(7, b"udp")));
    p.push((20 * S, udp(8, b"late")));
    let reply = ipv4_udp(SERVER, CLIENT, 53, 41000, &answer(8, b"late"));
    p.push((20 * S + 1000, reply));
    let Some(t) = replay(tmp.path(), "hole.pcap", &p) else {
        return;
    };
    let two = lookup(&t, "two.test.");
    assert_eq!(two["verdict"], "unknown", "{two}");
    assert_eq!(two["culprit"], Value::Null, "{two}");
    let why = two["detail"].as_str().unwrap();
    let want =
        format!("the capture missed {missed} bytes of the TCP stream 10.0.0.2:53 → 10.0.0.1:40000");
    assert!(why.contains(&want), "{why}");
    let four = lookup(&t, "four.test.");
    assert_eq!(four["verdict"], "unknown", "{four}");
    let why = four["detail"].as_str().unwrap();
    let want = format!("missed {lost} bytes of the TCP stream 10.0.0.2:53 → 10.0.0.1:40001");
    assert!(why.contains(&want), "{why}");
    for ok in ["one.test.", "three.test.", "late.test."] {
        assert_eq!(lookup(&t, ok)["verdict"], "ok", "{ok}");
    }
    let udp = lookup(&t, "udp.test.");
    assert_eq!(udp["verdict"], "unanswered", "{udp}");
    assert_eq!(udp["culprit"], "10.0.0.2:53", "{udp}");
    assert_eq!(t.summary["tcp"]["gap_bytes"], missed + u64::from(lost));
}

/// A file that ends 3 s after a query: the client's 5 s timeout had not run out, so the
/// missing reply proves nothing (`unknown`, saying how long the capture went on). A query
/// 6 s before the end had its whole timeout in the file: `unanswered`. With --timeout 2s
/// the first one had its whole timeout too.
#[test]
fn a_file_that_ends_before_the_clients_timeout_blames_no_one() {
    let tmp = tempfile::tempdir().unwrap();
    let udp = |port, id, name: &[u8]| ipv4_udp(CLIENT, SERVER, port, 53, &query(id, name));
    let p = vec![
        (0, udp(41000, 1, b"early")),
        (3 * S, udp(41001, 2, b"late")),
        (6 * S - 500, udp(41002, 3, b"last")),
        (
            6 * S,
            ipv4_udp(SERVER, CLIENT, 53, 41002, &answer(3, b"last")),
        ),
    ];
    let Some(t) = replay(tmp.path(), "short.pcap", &p) else {
        return;
    };
    let early = lookup(&t, "early.test.");
    assert_eq!(early["verdict"], "unanswered", "{early}");
    let late = lookup(&t, "late.test.");
    assert_eq!(late["verdict"], "unknown", "{late}");
    assert_eq!(late["culprit"], Value::Null, "{late}");
    let why = late["detail"].as_str().unwrap();
    assert!(
        why.contains("capture stopped 3000 ms after the client's last query, before its timeout"),
        "{why}"
    );
    assert_eq!(lookup(&t, "last.test.")["verdict"], "ok");

    let path = tmp.path().join("short.pcap");
    let t = dnstrace_tests::replay(&path, &["--timeout", "2s"]).unwrap();
    assert_eq!(lookup(&t, "late.test.")["verdict"], "unanswered");
}
