//! `--hops problems`, the default (issue 10, part 7): a healthy lookup is one compact
//! record, at most 400 bytes, while a problem keeps every hop. Real tracer, real lab node.
//! `cargo xtask test` runs the other tests with DNSTRACE_HOPS=all; this one says
//! `--hops problems` on its command line, which wins over the environment.
//!
//! Needs root (run it with `cargo xtask test`).

use std::time::Duration;

use dnstrace_tests::{Node, Signal, Tracer, dnstrace_bin, skip_without_root};
use serde_json::Value;

const QUERIES: usize = 20;

#[test]
fn healthy_lookups_are_compact_and_problems_keep_their_hops() {
    if skip_without_root() {
        return;
    }
    if dnstrace_bin().is_none() {
        eprintln!("SKIP: DNSTRACE_BIN is not set (run with cargo xtask test)");
        return;
    }
    let node = Node::new("cmpt").expect("build the node");
    let tracer = Tracer::start_lookups(
        &node.lab,
        &node.node_ns,
        "trace",
        &["--auto", "--timeout", "2s", "--hops", "problems"],
    )
    .expect("start dnstrace");
    for _ in 0..QUERIES {
        node.query_short(&node.pod_ns, node.nodelocal(), &node.www_name, "A", &[])
            .expect("the node answers");
    }
    // One problem: a name nothing serves, asked of an address nothing listens on.
    let _ = node.query(
        &node.pod_ns,
        "10.244.0.99",
        &node.www_name,
        "A",
        &["+tries=1", "+time=1"],
    );
    let www = dnstrace_tests::fqdn(&node.www_name);
    let _ = tracer.wait_lookups(
        |l| l["qname"] == www.as_str(),
        QUERIES + 1,
        Duration::from_secs(15),
    );
    let out = tracer.out.clone();
    tracer.stop(Signal::Int).expect("stop dnstrace");
    let text = std::fs::read_to_string(&out).unwrap();
    let (mut healthy, mut problems) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["type"] != "lookup" || v["qname"] != www.as_str() {
            continue;
        }
        if v["verdict"] == "ok" {
            healthy.push((line.len(), v));
        } else {
            problems.push(v);
        }
    }
    assert!(
        healthy.len() >= QUERIES,
        "{} healthy lookups: {text}",
        healthy.len()
    );
    let sizes: Vec<usize> = healthy.iter().map(|(n, _)| *n).collect();
    let max = sizes.iter().max().copied().unwrap_or(0);
    let mean = sizes.iter().sum::<usize>() / sizes.len();
    eprintln!(
        "bytes per healthy lookup (--hops problems): mean {mean}, max {max}, over {} lookups",
        sizes.len()
    );
    for (n, v) in &healthy {
        assert!(*n <= 400, "{n} bytes: {v}");
        assert!(v.get("hops").is_none(), "{v}");
        assert!(v["hop_count"].as_u64().unwrap() >= 2, "{v}");
        assert!(v["path"].as_str().unwrap().contains(&node.pod_veth), "{v}");
        assert_eq!(v["rcode"], "NOERROR");
    }
    // The same lookups with every hop, for the record.
    let full = Tracer::start_lookups(
        &node.lab,
        &node.node_ns,
        "full",
        &["--auto", "--timeout", "2s", "--hops", "all"],
    )
    .expect("start dnstrace");
    for _ in 0..5 {
        node.query_short(&node.pod_ns, node.nodelocal(), &node.www_name, "A", &[])
            .expect("the node answers");
    }
    let _ = full.wait_lookups(|l| l["qname"] == www.as_str(), 5, Duration::from_secs(15));
    let out = full.out.clone();
    full.stop(Signal::Int).expect("stop dnstrace");
    let sizes: Vec<usize> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter(|l| l.contains(r#""type":"lookup""#) && l.contains(r#""verdict":"ok""#))
        .map(str::len)
        .collect();
    assert!(!sizes.is_empty());
    let full_mean = sizes.iter().sum::<usize>() / sizes.len();
    eprintln!("bytes per healthy lookup (--hops all): mean {full_mean}");
    assert!(full_mean > 2 * mean, "{full_mean} vs {mean}");
    // The query to 10.244.0.99 went nowhere: a problem, with its hops.
    let p = problems
        .iter()
        .find(|v| v["server"] == "10.244.0.99:53")
        .unwrap_or_else(|| panic!("no lookup for 10.244.0.99: {problems:?}"));
    assert!(!p["hops"].as_array().unwrap().is_empty(), "{p}");
}
