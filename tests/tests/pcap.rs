//! `dnstrace watch --pcap` on a lab node, read back with the real `tshark`/`capinfos`,
//! and `dnstrace replay` of that file and of a `tcpdump -i any` capture of a failure
//! scenario. Needs root and DNSTRACE_BIN (run with `cargo xtask test`).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use dnstrace_tests::{
    Lab, Node, Scenario, Signal, Tracer, dnstrace_bin, fqdn, one_line, skip_without_root,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn setup() -> bool {
    !skip_without_root() && dnstrace_bin().is_some()
}

/// Runs a command in the root netns (tshark and capinfos only read a file).
fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tshark -r FILE -T fields -e F…`: one row per frame, one column per field.
fn tshark_fields(file: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["-n", "-r", file.to_str().unwrap(), "-T", "fields"];
    for f in fields {
        args.extend(["-e", f]);
    }
    output("tshark", &args)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// `dnstrace replay --output json FILE …`: its lookups and summary.
fn replay(file: &Path, extra: &[&str]) -> (Vec<Value>, Value) {
    let trace = dnstrace_tests::replay(file, extra).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("replay {}:\n{}", file.display(), trace.stderr);
    (trace.lookups, trace.summary)
}

/// What makes two runs' lookups the same: who asked what, where, and the verdict.
fn key(l: &Value) -> String {
    format!(
        "{} → {} {} {} rcode={} verdict={} culprit={} children={}",
        l["client"],
        l["server"],
        l["qname"],
        l["qtype"],
        l["rcode"],
        l["verdict"],
        l["culprit"],
        l["children"].as_array().map_or(0, Vec::len)
    )
}

fn keys(lookups: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lookups {
        *m.entry(key(l)).or_default() += 1;
    }
    m
}

#[test]
fn watch_pcap_is_read_by_tshark_and_replays_to_the_same_verdicts() {
    if !setup() {
        return;
    }
    let node = Node::new("pcw").expect("build the node");
    let file = node.lab.dir().join("watch.pcapng");
    let path = file.to_str().unwrap().to_owned();
    let tracer = Tracer::start(
        &node.lab,
        &node.node_ns,
        "trace",
        &["--auto", "--timeout", "2s", "--pcap", &path],
    )
    .expect("start dnstrace");
    let www = &node.www_name;
    // Through node-local-dns, straight to the ClusterIP, NXDOMAIN, over TCP, and a
    // TC=1 answer that dig retries over TCP.
    let pod = &node.pod_ns;
    node.query_short(pod, node.nodelocal_ip, www, "A", &[])
        .unwrap();
    node.query_short(pod, node.cluster_ip, www, "AAAA", &[])
        .unwrap();
    node.query(pod, node.nodelocal_ip, &node.nx_name, "A", &[])
        .unwrap();
    node.query_short(pod, node.cluster_ip, www, "A", &["+tcp"])
        .unwrap();
    node.query(pod, node.cluster_ip, &node.big_name, "TXT", &["+ignore"])
        .unwrap();
    node.query(pod, node.cluster_ip, &node.big_name, "TXT", &[])
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let wanted = [fqdn(www), fqdn(&node.nx_name), fqdn(&node.big_name)];
    while Instant::now() < deadline
        && !wanted.iter().all(|q| {
            tracer
                .lookups()
                .iter()
                .any(|l| l["qname"].as_str() == Some(q.as_str()))
        })
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the TC=1-without-retry lookup reach its deadline.
    std::thread::sleep(Duration::from_secs(3));
    let trace = tracer.stop(Signal::Int).expect("stop dnstrace");
    for l in &trace.lookups {
        eprintln!("live: {}", one_line(l));
    }
    eprintln!("{}", trace.stderr);
    let s = &trace.summary;
    let pcap = &s["pcap"];
    assert!(pcap.is_object(), "no pcap in the summary: {s}");
    let written = pcap["packets"].as_u64().unwrap();
    let received = s["userspace"]["received"].as_u64().unwrap();
    // Every event dnstrace received is in the file, once.
    assert_eq!(written, received, "{pcap}");
    assert_eq!(written, s["decoded"].as_u64().unwrap());
    assert_eq!(pcap["without_verdict"], 0, "{pcap}");

    // capinfos: the interface blocks, one per capture point.
    let info = output("capinfos", &["-I", &path]);
    let n_ifaces: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("Number of interfaces in file:"))
        .map(|n| n.trim().parse().unwrap())
        .expect("capinfos -I gives the interface count");
    assert_eq!(n_ifaces, pcap["interfaces"].as_u64().unwrap(), "{info}");
    let names: BTreeSet<String> = info
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Name = "))
        .map(str::to_owned)
        .collect();
    for want in [
        "socket",
        "drop",
        node.uplink.as_str(),
        node.pod_veth.as_str(),
    ] {
        assert!(names.contains(want), "no interface {want}: {info}");
    }
    assert!(info.contains("Time precision = nanoseconds (9)"), "{info}");
    assert!(info.contains("Number of stat entries = 1"), "{info}");

    // tshark: every packet, with its interface, direction, comment and DNS fields.
    let rows = tshark_fields(
        &file,
        &[
            "frame.interface_name",
            "frame.packet_flags_direction",
            "frame.comment",
            "dns.qry.name",
            "frame.len",
            "frame.cap_len",
        ],
    );
    assert_eq!(rows.len() as u64, written);
    let mut per_iface: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &rows {
        let [iface, dir, comment, qname, len, caplen] = &r[..] else {
            panic!("row {r:?}")
        };
        *per_iface.entry(iface.as_str()).or_default() += 1;
        assert!(comment.contains("point="), "{r:?}");
        assert!(len.parse::<u64>().unwrap() >= caplen.parse::<u64>().unwrap());
        if comment.contains("point=egress") || comment.contains("point=socket-out") {
            assert_eq!(dir, "0x00000002", "{r:?}");
        }
        if comment.contains("point=ingress") || comment.contains("point=socket-in") {
            assert_eq!(dir, "0x00000001", "{r:?}");
        }
        if !qname.is_empty() && !comment.contains("lookup=none") {
            assert!(comment.contains("verdict="), "{r:?}");
        }
    }
    assert!(per_iface.contains_key("socket"), "{per_iface:?}");
    let qnames: BTreeSet<&str> = rows.iter().map(|r| r[3].as_str()).collect();
    for q in [www.as_str(), node.nx_name.as_str(), node.big_name.as_str()] {
        assert!(qnames.contains(q), "Wireshark decoded no {q}: {qnames:?}");
    }
    let ok_comments = rows
        .iter()
        .filter(|r| r[3] == *www && r[2].contains("verdict=ok"))
        .count();
    assert!(ok_comments >= 4, "{rows:?}");

    // Replay of that same file: the same lookups and verdicts as the live run.
    let (lookups, summary) = replay(&file, &[]);
    assert_eq!(summary["replay"]["dnstrace_file"], true);
    assert_eq!(summary["replay"]["frames"].as_u64(), Some(written));
    for l in &lookups {
        eprintln!("replay: {}", one_line(l));
    }
    assert_eq!(keys(&lookups), keys(&trace.lookups));
    let verdicts = |ls: &[Value]| -> BTreeSet<String> {
        ls.iter()
            .map(|l| l["verdict"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(verdicts(&lookups).contains("ok"));
    assert!(
        verdicts(&lookups).contains("truncated_no_tcp"),
        "{lookups:?}"
    );
}

#[test]
fn tcpdump_any_capture_of_a_failure_scenario_replays_to_its_verdict() {
    if !setup() {
        return;
    }
    let scenario = Scenario::UpstreamRejectsEdns;
    let node = scenario.build("pca").expect("build the scenario");
    for (name, link) in [("sll2", "LINUX_SLL2"), ("sll", "LINUX_SLL")] {
        let file = node.lab.dir().join(format!("any-{name}.pcap"));
        let tcpdump = start_tcpdump(&node.lab, &node.node_ns, &file, link, name);
        let seen = scenario.run_client(&node).expect("run the client");
        for s in &seen {
            eprintln!("  $ {}\n    {}", s.command, s.summary());
        }
        // Let tcpdump write the last packets, then stop it.
        std::thread::sleep(Duration::from_millis(500));
        node.lab
            .stop(&tcpdump, Signal::Int, Duration::from_secs(5))
            .expect("stop tcpdump");
        eprintln!(
            "tcpdump: {}",
            std::fs::read_to_string(node.lab.dir().join(format!("tcpdump-{name}.log")))
                .unwrap_or_default()
        );
        let (lookups, summary) = replay(&file, &["--timeout", "3s"]);
        for l in &lookups {
            eprintln!("replay {name}: {}", one_line(l));
        }
        assert!(summary["replay"]["dns_frames"].as_u64().unwrap() > 0);
        for e in scenario.expect(&node) {
            let mine: Vec<&Value> = lookups.iter().filter(|l| e.is_for(l)).collect();
            assert!(!mine.is_empty(), "{name}: no lookup for {}", e.qname);
            assert!(
                mine.iter().any(|l| l["verdict"] == e.verdict),
                "{name}: want {} for {}: {:?}",
                e.verdict,
                e.qname,
                mine.iter().map(|l| one_line(l)).collect::<Vec<_>>()
            );
        }
    }
}

fn start_tcpdump(lab: &Lab, ns: &str, file: &Path, link: &str, name: &str) -> dnstrace_tests::Proc {
    let mut cmd = lab.cmd_setns(ns, "tcpdump").unwrap();
    cmd.args([
        "-i",
        "any",
        "-y",
        link,
        "--immediate-mode",
        "-U",
        "-n",
        "-w",
    ])
    .arg(file)
    .arg("port 53");
    let proc = lab
        .spawn_logged(&format!("tcpdump-{name}"), cmd)
        .expect("start tcpdump");
    // tcpdump says "listening on …" once its socket is bound.
    lab.wait_for_log(&proc, "listening on", Duration::from_secs(10))
        .expect("tcpdump did not start");
    proc
}
