//! `dnstrace replay` of every capture in the shared corpus (outside the repo; its README
//! says what each file exercises). Needs no privileges, only the binary named by
//! DNSTRACE_BIN (`cargo xtask test` sets it) and the corpus: `$DNSTRACE_CORPUS`, else the
//! first `shared/corpus` beside the workspace or a folder above it (../shared/corpus from a
//! checkout, ../../shared/corpus from a worktree). Without the corpus every test says
//! loudly that it skipped, and fails instead when DNSTRACE_REQUIRE_CORPUS is set.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use dnstrace_tests::Trace;
use serde_json::Value;

/// Names the corpus folder.
const CORPUS_ENV: &str = "DNSTRACE_CORPUS";

/// Where the corpus is, or every place looked at.
fn corpus_dir() -> Result<PathBuf, Vec<PathBuf>> {
    if let Some(dir) = std::env::var_os(CORPUS_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if dir.is_dir() {
            Ok(dir)
        } else {
            Err(vec![dir])
        };
    }
    // The workspace is the tests crate's parent.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let looked: Vec<PathBuf> = workspace
        .ancestors()
        .skip(1)
        .map(|d| d.join("shared/corpus"))
        .collect();
    looked.iter().find(|d| d.is_dir()).cloned().ok_or(looked)
}

/// Set (and not "0" or "false"): a missing corpus fails the tests instead of skipping them.
fn corpus_required() -> Option<&'static str> {
    let set =
        |var: &str| std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    ["DNSTRACE_REQUIRE_CORPUS"].into_iter().find(|v| set(v))
}

/// Says loudly that `what` is missing, or panics when the corpus is required.
fn missing(what: &str) {
    let msg = format!(
        "corpus: {what}; set {CORPUS_ENV}=DIR to the shared corpus (DNSTRACE_REQUIRE_CORPUS=1 \
         turns this skip into a failure)"
    );
    if let Some(var) = corpus_required() {
        panic!("{msg} [{var} is set]");
    }
    // Straight to stderr, past the test harness's capture; each message once per run.
    static TOLD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut told = TOLD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !told.contains(&msg) {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** corpus tests SKIPPED, NOTHING CHECKED: {msg} ***\n"
        );
        told.push(msg);
    }
}

/// What `dnstrace replay --output json --packets FILE` printed.
struct Replay(Trace);

impl std::ops::Deref for Replay {
    type Target = Trace;
    fn deref(&self) -> &Trace {
        &self.0
    }
}

impl Replay {
    fn replay(&self) -> &Value {
        &self.summary["replay"]
    }

    fn count(&self, verdict: &str) -> u64 {
        self.verdicts().get(verdict).copied().unwrap_or(0)
    }

    fn qnames(&self) -> Vec<String> {
        self.lookups
            .iter()
            .map(|l| l["qname"].as_str().unwrap().to_owned())
            .collect()
    }

    fn tcp(&self, key: &str) -> u64 {
        self.summary["tcp"][key].as_u64().unwrap()
    }

    fn n(&self, key: &str) -> u64 {
        self.replay()[key].as_u64().unwrap()
    }
}

fn setup() -> Option<(PathBuf, PathBuf)> {
    let bin = dnstrace_tests::dnstrace_bin()?;
    match corpus_dir() {
        Ok(dir) => Some((bin, dir)),
        Err(looked) => {
            let looked: Vec<String> = looked.iter().map(|d| d.display().to_string()).collect();
            missing(&format!("not found (looked in {})", looked.join(", ")));
            None
        }
    }
}

fn run(file: &Path) -> Replay {
    let trace = dnstrace_tests::replay(file, &["--packets"])
        .unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
    assert!(!trace.stderr.contains("panicked"), "{}", trace.stderr);
    Replay(trace)
}

fn replay(name: &str) -> Option<Replay> {
    let (_, dir) = setup()?;
    let path = dir.join(name);
    if !path.is_file() {
        missing(&format!("{} is absent", path.display()));
        return None;
    }
    Some(run(&path))
}

/// Every file: no panic, every frame accounted for, every DNS packet either decoded or
/// counted as malformed/partial with a reason.
#[test]
fn every_file_replays_and_accounts_for_every_frame() {
    let Some((_, dir)) = setup() else { return };
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    names.sort();
    assert!(names.len() >= 61, "only {} captures", names.len());
    for path in &names {
        let r = run(path);
        let s = r.replay();
        let name = path.file_name().unwrap().to_string_lossy();
        assert_eq!(s["error"], Value::Null, "{name}: {s}");
        let skipped: u64 = ["not_dns", "later_fragments"]
            .iter()
            .map(|k| r.n(k))
            .sum::<u64>()
            + s["skipped_link"]
                .as_object()
                .unwrap()
                .values()
                .chain(s["unparsed"].as_object().unwrap().values())
                .map(|v| v.as_u64().unwrap())
                .sum::<u64>();
        // IP fragments are held for reassembly; each rebuilt datagram is then one frame.
        let ip = &s["ip"];
        let ip_n = |k: &str| ip[k].as_u64().unwrap();
        assert_eq!(
            r.n("dns_frames") + skipped + ip_n("fragments"),
            r.n("frames") + ip_n("reassembled"),
            "{name}: frames not accounted for: {s}"
        );
        assert_eq!(
            ip_n("fragments"),
            ip_n("fragments_used") + ip_n("fragments_incomplete") + ip_n("fragments_bad"),
            "{name}: {ip}"
        );
        // One packet record per DNS frame, more when a TCP segment carried several messages.
        assert!(r.packets.len() as u64 >= r.n("dns_frames"), "{name}");
        let issues = &r.summary["issues"];
        let with_issue = r.packets.iter().filter(|p| !p["issue"].is_null()).count() as u64;
        assert_eq!(
            with_issue,
            issues["malformed"].as_u64().unwrap() + issues["partial"].as_u64().unwrap(),
            "{name}"
        );
        for p in &r.packets {
            let issue = &p["issue"];
            if issue.is_null() {
                // Decoded: a DNS message, or a TCP segment without one (SYN, ACK, FIN).
                assert!(
                    !p["id"].is_null() || p["proto"] == "tcp",
                    "{name}: neither decoded nor an issue: {p}"
                );
            } else {
                assert!(
                    issue.as_str().is_some_and(|i| i.contains(": ")),
                    "{name}: issue without a reason: {p}"
                );
            }
        }
        // Blame needs coverage: an unanswered query had its client's whole timeout (5 s)
        // in the file (whose end is at or after its last DNS packet).
        let end = r.packets.iter().filter_map(|p| p["ts_ns"].as_u64()).max();
        for l in r.lookups.iter().filter(|l| l["verdict"] == "unanswered") {
            let asked = l["hops"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h["qr"] == false && h["src"] == l["client"])
                .filter_map(|h| h["ts_ns"].as_u64())
                .max()
                .unwrap();
            assert!(
                end.unwrap() >= asked + 5_000_000_000,
                "{name}: unanswered with less than 5 s of capture after the query: {l}"
            );
        }
        // No lookup is made of mDNS or LLMNR ports.
        for l in &r.lookups {
            let server = l["server"].as_str().unwrap();
            assert!(
                !server.ends_with(":5353") && !server.ends_with(":5355"),
                "{name}: {l}"
            );
        }
        eprintln!("{name}: {} lookups {:?}", r.lookups.len(), r.verdicts());
    }
}

#[test]
fn mdns_and_llmnr_are_not_lookups() {
    if let Some(r) = replay("zeek-mdns.pcap") {
        assert_eq!((r.lookups.len(), r.n("dns_frames")), (0, 0));
        assert_eq!(r.n("not_dns"), 24);
    }
    if let Some(r) = replay("suricata-llmnr-udp.pcap") {
        assert_eq!((r.lookups.len(), r.n("not_dns")), (0, 2));
    }
    // The SLL capture also holds mDNS on IPv4 and IPv6: only the 5 unicast chains count.
    if let Some(r) = replay("pcapplusplus-sll.pcap") {
        assert_eq!(r.n("dns_frames"), 20);
        assert_eq!(r.verdicts(), BTreeMap::from([("ok".to_owned(), 5)]));
    }
}

/// DNS between two hosts inside VXLAN (UDP 4789, whose outer UDP is not DNS): the inner
/// queries and replies are the lookups, each hop with the tunnel it crossed.
#[test]
fn dns_inside_vxlan_is_decapsulated() {
    let Some(r) = replay("suricata-vxlan.pcap") else {
        return;
    };
    assert_eq!(r.n("dns_frames"), 16);
    assert_eq!(r.verdicts(), BTreeMap::from([("ok".to_owned(), 8)]));
    for l in &r.lookups {
        assert_eq!(l["server"], "172.31.0.2:53", "{l}");
        let hops = l["hops"].as_array().unwrap();
        assert_eq!(hops.len(), 2, "{l}");
        for h in hops {
            let t = &h["tunnel"];
            assert_eq!(
                (&t["kind"], &t["vni"]),
                (&"vxlan".into(), &5569041.into()),
                "{h}"
            );
            assert!(t["dst"].as_str().unwrap().ends_with(":4789"), "{h}");
            assert!(h["src"].as_str().unwrap().starts_with("172.31.0."), "{h}");
        }
    }
    assert!(r.packets.iter().all(|p| p["tunnel"]["kind"] == "vxlan"));
}

#[test]
fn dns_quoted_in_an_icmp_error_is_not_a_response() {
    let Some(r) = replay("suricata-flow-drop-iponly-02.pcap") else {
        return;
    };
    // 3 tries of one query and 3 SERVFAIL answers are one lookup; the ICMP error quoting a
    // 4th SERVFAIL is skipped as not DNS.
    assert_eq!(r.n("not_dns"), 1);
    assert_eq!(r.n("dns_frames"), 6);
    assert_eq!(r.lookups.len(), 1);
    assert_eq!(r.lookups[0]["rcode"], "SERVFAIL");
    assert_eq!(r.lookups[0]["verdict"], "server_error");
    // The first SERVFAIL ends the lookup; the 2 later ones are orphans. The quoted one
    // would have made 3.
    assert_eq!(r.summary["lookups"]["orphan_responses"], 2);
}

#[test]
fn several_messages_in_one_tcp_segment() {
    if let Some(r) = replay("suricata-dns-tcp-multirequest-buffer.pcap") {
        // 20 queries in one segment, 20 NXDOMAIN answers: 20 answered lookups.
        assert_eq!(r.tcp("multi_message_segments"), 1);
        assert_eq!(r.tcp("messages"), 40);
        assert_eq!(r.lookups.len(), 20);
        assert!(r.lookups.iter().all(|l| l["rcode"] == "NXDOMAIN"));
    }
    if let Some(r) = replay("dnscap-dnsotcp-many1pkt.pcap") {
        // Three copies of one query in a segment, then an answer whose ID matches none.
        assert_eq!(r.tcp("messages"), 4);
        assert_eq!(r.tcp("multi_message_segments"), 1);
        let queries = r.packets.iter().filter(|p| p["qr"] == false).count();
        assert_eq!(queries, 3);
        assert_eq!(r.summary["lookups"]["orphan_responses"], 1);
    }
}

#[test]
fn a_message_split_over_segments_is_joined() {
    if let Some(r) = replay("dnscap-dnsotcp-manyopkts.pcap") {
        assert!(r.tcp("joined_messages") >= 1, "{}", r.replay());
        assert_eq!(r.tcp("messages"), 3);
        // Queries only, and the file ends 12 ms after them: no one to blame.
        assert_eq!(r.verdicts(), BTreeMap::from([("unknown".to_owned(), 1)]));
    }
    if let Some(r) = replay("dnscap-dnso1tcp.pcap") {
        // The prefix and the message travel in separate segments: 41 whole pairs.
        assert_eq!(r.tcp("messages"), 82);
        assert_eq!(r.tcp("joined_messages"), 41);
        assert_eq!(r.count("ok"), 41);
        assert_eq!(r.summary["issues"]["partial"], 0);
    }
    if let Some(r) = replay("dnscap-dnso1tcp-midmiss.pcap") {
        // A segment is missing: the gap is counted and framing recovers after it.
        assert!(r.tcp("gaps") >= 1);
        assert!(r.count("ok") >= 1, "{:?}", r.verdicts());
        assert_eq!(r.summary["issues"]["malformed"], 0);
    }
    if let Some(r) = replay("pcapplusplus-dns_over_tcp.pcapng") {
        // The 1135-byte answer spans segments; its AAAA query gets NXDOMAIN.
        let l = r.lookups.iter().find(|l| l["qtype"] == "AAAA").unwrap();
        assert_eq!(
            (&l["rcode"], &l["verdict"]),
            (&"NXDOMAIN".into(), &"ok".into())
        );
    }
    if let Some(r) = replay("tcpdump-dns_tcp.pcap") {
        assert_eq!(r.tcp("messages"), 2);
        assert_eq!(r.verdicts(), BTreeMap::from([("ok".to_owned(), 1)]));
    }
}

/// A classic pcap without the records numbered `gone` (1-based, as tshark counts).
fn without_frames(pcap: &[u8], gone: std::ops::RangeInclusive<usize>) -> Vec<u8> {
    assert_eq!(
        pcap[..4],
        0xa1b2_c3d4u32.to_le_bytes(),
        "a little-endian pcap"
    );
    let mut out = pcap[..24].to_vec();
    let (mut at, mut n) = (24, 0);
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        n += 1;
        if !gone.contains(&n) {
            out.extend_from_slice(&pcap[at..at + 16 + len]);
        }
        at += 16 + len;
    }
    out
}

/// dnscap's TCP client writes each length prefix in a segment of its own. A hole in the
/// capture (the 5 frames that dnscap-dnso1tcp-midmiss.pcap lacks, cut here from the whole
/// connection) used to lose every query after it: the prefix alone after the hole was
/// thrown away, then its message could not be framed, and so on for each later query
/// (2 lookups of 41). Framing must resume at the first prefix after the hole.
#[test]
fn a_hole_in_a_tcp_stream_loses_no_query_after_it() {
    let Some((_, dir)) = setup() else { return };
    let whole = dir.join("dnscap-dnso1tcp.pcap");
    let Ok(bytes) = std::fs::read(&whole) else {
        missing(&format!("{} is absent", whole.display()));
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let holed = tmp.path().join("dnso1tcp-hole.pcap");
    std::fs::write(&holed, without_frames(&bytes, 14..=18)).unwrap();
    let r = run(&holed);
    // 41 queries and 41 answers, less the query and the answer in the hole.
    let queries = r.packets.iter().filter(|p| p["qr"] == false).count();
    let answers = r.packets.iter().filter(|p| p["qr"] == true).count();
    assert_eq!((queries, answers), (40, 40), "{:?}", r.verdicts());
    assert_eq!((r.tcp("gaps"), r.tcp("gap_bytes")), (2, 175));
    assert_eq!(r.tcp("resyncs"), 2);
    // The segment after each hole says what was missed.
    let holes: Vec<&str> = r
        .packets
        .iter()
        .filter_map(|p| p["issue"].as_str())
        .collect();
    assert_eq!(holes.len(), 2, "{holes:?}");
    assert!(
        holes.iter().all(|i| i.starts_with("tcp_gap: ")),
        "{holes:?}"
    );
    assert!(r.count("ok") >= 39, "{:?}", r.verdicts());
    // The same hole in dnscap's own capture of it: its last query is framed too.
    if let Some(r) = replay("dnscap-dnso1tcp-midmiss.pcap") {
        let ids: Vec<u64> = r
            .packets
            .iter()
            .filter(|p| p["qr"] == false)
            .map(|p| p["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [0xe7af, 0x8b51, 0x59c6]);
    }
}

#[test]
fn tc_then_tcp_retry_is_one_lookup() {
    let Some(r) = replay("chrissanders-dns_tcp.pcapng") else {
        return;
    };
    assert_eq!(r.lookups.len(), 1);
    let l = &r.lookups[0];
    assert_eq!(
        (&l["qname"], &l["qtype"]),
        (&"ripe.net.".into(), &"ANY".into())
    );
    assert_eq!(l["verdict"], "ok");
    let hops = l["hops"].as_array().unwrap();
    assert!(hops.iter().any(|h| h["proto"] == "udp" && h["tc"] == true));
    assert!(
        hops.iter()
            .any(|h| h["proto"] == "tcp" && h["qr"] == true && h["rcode"] == "NOERROR")
    );
}

#[test]
fn multi_interface_pcapng_keeps_interface_names() {
    if let Some(r) = replay("pcapplusplus-many_interfaces-1.pcapng") {
        let ifaces: Vec<&str> = r.replay()["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(ifaces.len(), 11, "{ifaces:?}");
        assert!(
            ifaces.contains(&"en0") && ifaces.contains(&"lo0"),
            "{ifaces:?}"
        );
        assert_eq!(r.count("ok"), 7);
        // Every hop is named after the interface block it was captured on.
        for l in &r.lookups {
            for h in l["hops"].as_array().unwrap() {
                let iface = h["iface"].as_str().unwrap();
                assert!(ifaces.contains(&iface), "{iface}");
            }
        }
    }
    if let Some(r) = replay("zeek-pcapng-multi-interface.pcapng") {
        let ifaces = r.replay()["interfaces"].as_array().unwrap().clone();
        assert_eq!(ifaces.len(), 2, "{ifaces:?}");
        let hop_ifaces: std::collections::BTreeSet<&str> = r
            .lookups
            .iter()
            .flat_map(|l| l["hops"].as_array().unwrap())
            .map(|h| h["iface"].as_str().unwrap())
            .collect();
        assert_eq!(hop_ifaces.len(), 2, "{hop_ifaces:?}");
        assert_eq!(r.count("ok"), 3);
        // Nanosecond and microsecond interface blocks: latencies stay plausible.
        for l in &r.lookups {
            let ms = l["latency_ms"].as_f64().unwrap();
            assert!(ms > 0.0 && ms < 1000.0, "{l}");
        }
    }
}

#[test]
fn cooked_captures_stitch_the_stub_and_its_upstream() {
    // SLL v1 `-i any` on a host with a local forwarder: app → 127.0.0.1, then the
    // forwarder → 10.0.0.138 with a new ID: one lookup per app query, with a child.
    if let Some(r) = replay("pcapplusplus-sll.pcap") {
        assert_eq!(r.lookups.len(), 5);
        for l in &r.lookups {
            assert_eq!(l["children"].as_array().unwrap().len(), 1, "{l}");
        }
    }
    if let Some(r) = replay("dnscap-sll2.pcap") {
        assert_eq!(r.lookups.len(), 1);
        assert_eq!(r.lookups[0]["rcode"], "NXDOMAIN");
    }
}

#[test]
fn rcodes_and_unanswered_queries() {
    let cases: &[(&str, &str, u64)] = &[
        ("tcpdump-dns_udp.pcap", "ok", 1),
        ("dnscap-dns.pcap", "ok", 41),
        ("dnscap-vlan11.pcap", "ok", 41),
        ("tcpdump-edns-opts.pcap", "ok", 21),
        ("suricata-dns-udp-double-request-response.pcap", "ok", 2),
        ("chrissanders-stranded_clientside.pcapng", "server_error", 1),
        ("arkime-dns-flags0000.pcap", "server_error", 1),
        ("dnscap-edns.pcap", "server_error", 1),
        ("suricata-dns-udp-nxdomain-soa.pcap", "ok", 1),
        ("tcpdump-dns-badvers.pcap", "upstream_rejects_edns", 1),
        // 90 queries never answered, in a file of 3 s: their 5 s had not run out.
        ("dnsjit-pellets.pcap", "unknown", 90),
        ("zeek-dns-svcb.pcap", "ok", 1),
        ("zeek-ech.pcap", "ok", 2),
        ("dnsjit-ip6-tcp-padd.pcap", "ok", 1),
        ("dnsjit-tcp-response-with-trailing-junk.pcap", "ok", 10),
    ];
    for (name, verdict, n) in cases {
        if let Some(r) = replay(name) {
            assert_eq!(r.count(verdict), *n, "{name}: {:?}", r.verdicts());
        }
    }
    // Orphan responses make no lookup.
    if let Some(r) = replay("suricata-dns-reversed-udp-1.pcap") {
        assert_eq!(r.lookups.len(), 0);
        assert_eq!(r.summary["lookups"]["orphan_responses"], 1);
    }
    if let Some(r) = replay("tcpdump-nflog.pcap") {
        // NFLOG: 4 responses with no query.
        assert_eq!((r.n("dns_frames"), r.lookups.len()), (4, 0));
    }
    if let Some(r) = replay("suricata-dns-response-2x.pcap") {
        assert_eq!(r.lookups.len(), 1);
        assert_eq!(r.summary["lookups"]["orphan_responses"], 1);
    }
    if let Some(r) = replay("zeek-dns_notify2.pcap") {
        // The NOTIFY is not a QUERY; the orphan TYPE30 query gets no answer, but the file
        // ends 69 ms later.
        assert_eq!(r.qnames(), ["_ACme-ChALLeNGe.Intmail.CbS.mpg.de."]);
        assert_eq!(r.count("unknown"), 1);
    }
}

#[test]
fn hostile_and_malformed_messages_are_counted_with_a_reason() {
    for (name, kind) in [
        ("tcpdump-dns_fwdptr.pcap", "malformed"),
        ("suricata-dns-forward-pointer.pcap", "malformed"),
        ("pcapplusplus-dns_stack_overflow.pcap", "malformed"),
        ("zeek-dns-invalid-names.pcap", "malformed"),
        ("tcpdump-dns-zlip-1.pcap", "short_header"),
        ("ndpi-badpackets.pcap", "truncated"),
    ] {
        if let Some(r) = replay(name) {
            let by_kind = &r.summary["issues"]["by_kind"];
            assert!(by_kind[kind].as_u64().unwrap_or(0) > 0, "{name}: {by_kind}");
        }
    }
}

#[test]
fn ip_fragments_are_reassembled_or_counted() {
    let ip = |r: &Replay, k: &str| r.replay()["ip"][k].as_u64().unwrap();
    if let Some(r) = replay("dnscap-frags.pcap") {
        // Every message of dnscap-dns.pcap cut into 24-byte IPv4 fragments: 495 frames
        // make 82 datagrams, the 41 pairs of the original.
        assert_eq!((ip(&r, "fragments"), ip(&r, "reassembled")), (495, 82));
        assert_eq!(r.verdicts(), BTreeMap::from([("ok".to_owned(), 41)]));
        assert_eq!(r.summary["issues"]["by_kind"], serde_json::json!({}));
    }
    if let Some(r) = replay("pcapthread-v4_frag_order_udp.pcap") {
        // In order, reversed and shuffled: 5 datagrams whose payload is not DNS.
        assert_eq!((ip(&r, "fragments"), ip(&r, "reassembled")), (80, 5));
        assert_eq!(r.summary["issues"]["by_kind"]["malformed"], 5);
        assert_eq!(r.lookups.len(), 0);
    }
    if let Some(r) = replay("ndpi-dns_fragmented.pcap") {
        // 7 fragmented DNSSEC answers (IPv4 and IPv6), all rebuilt.
        assert_eq!(ip(&r, "reassembled"), 7);
        assert_eq!(r.summary["issues"]["partial"], 0);
        assert_eq!(r.count("server_error"), 1);
        assert_eq!(r.count("ok"), 20);
    }
    if let Some(r) = replay("zeek-ipv6-fragmented-dns.pcap") {
        // The first answer lost its earlier fragments: its last one never completes.
        // The retry's answer arrives in 3 fragments that do.
        assert_eq!(ip(&r, "reassembled"), 1);
        assert_eq!(ip(&r, "fragments_incomplete"), 1);
        assert!(
            r.lookups.iter().all(|l| l["verdict"] == "ok"),
            "{:?}",
            r.verdicts()
        );
    }
    if let Some(r) = replay("ndpi-badpackets.pcap") {
        // First fragments cut by the capture: decoded as far as they go, counted truncated.
        assert_eq!(r.summary["issues"]["by_kind"]["truncated"], 93);
    }
}

/// Damaged files (bytes flipped, cut short) end in a counted error, never a panic.
#[test]
fn damaged_files_never_panic() {
    let Some((bin, dir)) = setup() else { return };
    let tmp = std::env::temp_dir().join(format!("dnstrace-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize
    };
    let names = [
        "zeek-pcapng-multi-interface.pcapng",
        "pcapplusplus-many_interfaces-1.pcapng",
        "dnscap-dnso1tcp.pcap",
        "dnscap-frags.pcap",
        "tcpdump-nflog.pcap",
        "dnscap-sll2.pcap",
        "ndpi-fuzz-2006-06-26-2594.pcap",
    ];
    let mut runs = 0;
    for name in names {
        let Ok(orig) = std::fs::read(dir.join(name)) else {
            continue;
        };
        for i in 0..20 {
            let mut b = orig.clone();
            // Headers and block structure live in the first bytes: hit them often.
            for _ in 0..1 + next() % 8 {
                let span = if next() % 2 == 0 { 256 } else { b.len() };
                let at = next() % span.min(b.len());
                b[at] = next() as u8;
            }
            if i % 4 == 0 {
                b.truncate(next() % b.len());
            }
            let path = tmp.join(format!("{i}-{name}"));
            std::fs::write(&path, &b).unwrap();
            let out = Command::new(&bin)
                .args(["replay", "--output", "json", "--packets"])
                .arg(&path)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !stderr.contains("panicked") && matches!(out.status.code(), Some(0 | 1)),
                "{}: {:?}: {stderr}",
                path.display(),
                out.status
            );
            runs += 1;
        }
    }
    std::fs::remove_dir_all(&tmp).unwrap();
    eprintln!("{runs} damaged files replayed");
}

/// `replay --exit-code` (for CI jobs that check captures): status 3 exactly when a
/// printed lookup's verdict is not ok, counting only what the filters let through.
#[test]
fn exit_code_fails_only_on_printed_problem_lookups() {
    let Some((bin, dir)) = setup() else { return };
    let run = |name: &str, args: &[&str]| {
        let path = dir.join(name);
        if !path.is_file() {
            missing(&format!("{} is absent", path.display()));
            return None;
        }
        let out = std::process::Command::new(&bin)
            .args(["replay", "--output", "json"])
            .args(args)
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let problems = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "lookup" && v["verdict"] != "ok")
            .count();
        Some((
            out.status.code(),
            problems,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    // Four lookups with problems, each printed: status 3, and the count is said.
    let Some((code, problems, stderr)) = run("zeek-dns-edns-ecs.pcap", &["--exit-code"]) else {
        return;
    };
    assert_eq!((code, problems), (Some(3), 4), "{stderr}");
    assert!(
        stderr.contains("4 lookups with a verdict other than ok (--exit-code)"),
        "{stderr}"
    );
    // The same file without the flag, and with a filter that prints only ok lookups.
    let (code, ..) = run("zeek-dns-edns-ecs.pcap", &[]).unwrap();
    assert_eq!(code, Some(0));
    let (code, problems, stderr) = run(
        "zeek-dns-edns-ecs.pcap",
        &["--exit-code", "--verdict", "ok"],
    )
    .unwrap();
    assert_eq!((code, problems), (Some(0), 0), "{stderr}");
    // Every lookup ok: status 0.
    let (code, problems, stderr) = run("dnscap-dns.pcap", &["--exit-code"]).unwrap();
    assert_eq!((code, problems), (Some(0), 0), "{stderr}");
    // A damaged file is still status 1 (an error), not 3.
    let (code, ..) = run("README.md", &["--exit-code"]).unwrap();
    assert_eq!(code, Some(1));
}
