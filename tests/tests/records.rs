//! Records fit for a pipeline: every JSON record carries an RFC 3339 wall-clock `time`,
//! the `node` and the `schema`; lookup hops carry their own `time`, consistent with
//! their `ts_ns`. Live in a lab (root), and in replay of a corpus file, whose times must
//! be the file's own.
use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use dnstrace_tests::{Node, Signal, Tracer, dnstrace_bin, skip_without_root};
use serde_json::Value;

const SCHEMA: &str = "dnstrace/1";

/// A record's `time`, checked for the exact shape (`YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`), as
/// nanoseconds since the Unix epoch.
fn time_ns(v: &Value) -> i128 {
    let s = v["time"].as_str().unwrap_or_else(|| panic!("no time: {v}"));
    let b = s.as_bytes();
    assert!(
        b.len() == 30
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'.'
            && b[29] == b'Z'
            && b[20..29].iter().all(u8::is_ascii_digit),
        "not RFC 3339 UTC with nanoseconds: {s}"
    );
    s.parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .as_nanosecond()
}

/// Every record of a run: its type, stamp and the clocks of its hops.
fn check_stamps(records: &[Value], node: &str) {
    for r in records {
        assert!(r["type"].is_string(), "{r}");
        assert_eq!(r["node"], node, "{r}");
        assert_eq!(r["schema"], SCHEMA, "{r}");
        time_ns(r);
    }
    for p in records.iter().filter(|r| r["type"] == "packet") {
        // A packet's ts_ns is epoch time already: the same instant.
        assert_eq!(time_ns(p), i128::from(p["ts_ns"].as_u64().unwrap()), "{p}");
    }
    for l in records.iter().filter(|r| r["type"] == "lookup") {
        check_hops(l, l);
    }
}

/// The lookup's `time` is its start; each hop's `time` moves exactly as its `ts_ns` does,
/// in order, and the same holds for the forwarded queries under it.
fn check_hops(top: &Value, l: &Value) {
    let start_ts = i128::from(l["start_ts_ns"].as_u64().unwrap());
    let start_time = time_ns(top) - i128::from(top["start_ts_ns"].as_u64().unwrap()) + start_ts;
    let hops = l["hops"].as_array().unwrap();
    let mut last = i128::MIN;
    for h in hops {
        let t = time_ns(h);
        let ts = i128::from(h["ts_ns"].as_u64().unwrap());
        assert_eq!(t - start_time, ts - start_ts, "hop {h} of {l}");
        assert!(t >= last, "hops out of order: {l}");
        last = t;
    }
    for c in l["children"].as_array().unwrap() {
        check_hops(top, c);
    }
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

fn types(records: &[Value]) -> Vec<&str> {
    let mut t: Vec<&str> = records.iter().filter_map(|r| r["type"].as_str()).collect();
    t.sort_unstable();
    t.dedup();
    t
}

#[test]
fn live_records_carry_wall_time_node_and_schema() {
    if skip_without_root() || dnstrace_bin().is_none() {
        return;
    }
    let node = Node::new("rec").expect("node");
    let tracer = Tracer::start(
        &node.lab,
        &node.node_ns,
        "rec",
        &["-i", &node.pod_veth, "--node", "dt-node-7"],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let out = tracer.out.clone();
    let before = now_ns();
    for extra in [&[][..], &["+tcp"][..]] {
        let answers = node
            .query_short(&node.pod_ns, node.cluster_ip, &node.www_name, "A", extra)
            .expect("query");
        assert_eq!(answers, vec![node.www_a.to_string()]);
    }
    let after = now_ns();
    let qname = format!("{}.", node.www_name);
    tracer
        .wait_lookups(|l| l["qname"] == qname, 2, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let trace = tracer.stop(Signal::Int).unwrap_or_else(|e| panic!("{e:#}"));
    let records: Vec<Value> = fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        types(&records),
        ["lookup", "packet", "summary", "upstreams"],
        "every record type of the run"
    );
    check_stamps(&records, "dt-node-7");
    let ours: Vec<&Value> = trace
        .lookups
        .iter()
        .filter(|l| l["qname"] == qname)
        .collect();
    assert_eq!(ours.len(), 2, "{:#?}", trace.lookups);
    for l in ours {
        // Its first sighting came between the test's clock readings (1 s of slack for
        // the offset measured at start).
        let t = time_ns(l);
        let slack = 1_000_000_000;
        assert!(
            t > before - slack && t < after + slack,
            "lookup time {} is not within [{before}, {after}] ± 1 s: {l}",
            l["time"]
        );
        assert_eq!(time_ns(l), time_ns(&l["hops"][0]), "{l}");
        assert!(l["hops"].as_array().unwrap().len() >= 2, "{l}");
    }
    // The summary is written at the end of the run.
    let summary = time_ns(&trace.summary);
    assert!(
        summary >= after && summary < now_ns() + 1,
        "{}",
        trace.summary
    );
}

/// The first packet record's timestamp in a classic pcap file (micro- or nanoseconds, either
/// byte order), as nanoseconds since the Unix epoch.
fn first_pcap_ts(path: &Path) -> Option<u64> {
    let b = fs::read(path).ok()?;
    let magic = b.get(..4)?;
    let (le, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => return None,
    };
    let word = |at: usize| {
        let w: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(u64::from(if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }))
    };
    let (secs, frac) = (word(24)?, word(28)?);
    Some(secs * 1_000_000_000 + if nanos { frac } else { frac * 1000 })
}

/// The shared corpus, as tests/tests/corpus.rs finds it.
fn corpus() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DNSTRACE_CORPUS").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir)).filter(|d| d.is_dir());
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .skip(1)
        .map(|d| d.join("shared/corpus"))
        .find(|d| d.is_dir())
}

#[test]
fn replay_times_are_the_files_own() {
    if dnstrace_bin().is_none() {
        return;
    }
    let Some(path) = corpus()
        .map(|d| d.join("dnscap-dns.pcap"))
        .filter(|p| p.is_file())
    else {
        eprintln!(
            "\n*** records: replay test SKIPPED, NOTHING CHECKED: no shared/corpus/dnscap-dns.pcap \
             (set DNSTRACE_CORPUS=DIR) ***\n"
        );
        return;
    };
    let first = first_pcap_ts(&path).expect("a classic pcap file");
    let trace = dnstrace_tests::replay(&path, &["--packets", "--node", "capture-host"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut records = trace.packets.clone();
    records.extend(trace.lookups.iter().cloned());
    records.push(trace.summary.clone());
    check_stamps(&records, "capture-host");
    assert_eq!(trace.lookups.len(), 41);
    // The first packet's time is the file's first timestamp, written out.
    let p = &trace.packets[0];
    assert_eq!(p["ts_ns"], first, "{p}");
    let want = jiff::Timestamp::from_nanosecond(i128::from(first)).unwrap();
    assert_eq!(p["time"], format!("{want:.9}"), "{p}");
    // Lookups and hops are on the file's clock too (its capture is years old), and the
    // summary is stamped with the file's end, not with the time of the replay.
    let last = records
        .iter()
        .filter(|r| r["type"] != "summary")
        .map(time_ns)
        .max()
        .unwrap();
    for l in &trace.lookups {
        let t = time_ns(l);
        assert!(t >= i128::from(first) && t <= last, "{l}");
    }
    let end = time_ns(&trace.summary);
    assert!(
        end >= last && end < now_ns() - 86_400 * 1_000_000_000,
        "{}",
        trace.summary
    );

    // Without --node, the records name this host.
    let trace = dnstrace_tests::replay(&path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(trace.summary["node"], host.trim(), "{}", trace.summary);
}
