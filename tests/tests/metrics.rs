//! `--metrics` (issue 12, part 1): a real Prometheus (Debian's) scrapes dnstrace in
//! the lab node's netns while failure scenarios run, and PromQL over Prometheus's
//! HTTP API returns the series dnstrace's own JSON lookups say it must.
//!
//! Needs root (run it with `cargo xtask test`).

use std::{
    collections::BTreeMap,
    process::Stdio,
    time::{Duration, Instant},
};

use dnstrace_tests::{
    Node, NodeOptions, Scenario, Signal, Tracer, dnstrace_bin, skip_without_root,
};
use serde_json::Value;

/// dnstrace's metrics and Prometheus, both on the node netns's loopback.
const METRICS: &str = "127.0.0.1:9968";
const PROMETHEUS: &str = "127.0.0.1:9090";
const LOOKUP_TIMEOUT: &str = "2s";

/// Prometheus running in `ns`, scraping dnstrace every second.
struct Prometheus<'a> {
    node: &'a Node,
}

impl<'a> Prometheus<'a> {
    fn start(node: &'a Node) -> Prometheus<'a> {
        let config = node
            .lab
            .write_file(
                "prometheus.yml",
                &format!(
                    "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
                     scrape_configs:\n  - job_name: dnstrace\n    static_configs:\n      - targets: ['{METRICS}']\n"
                ),
            )
            .unwrap();
        let data = node.lab.dir().join("prometheus-data");
        let mut cmd = node.lab.cmd(&node.node_ns, "prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdin(Stdio::null());
        node.lab
            .spawn_logged("prometheus", cmd)
            .expect("start prometheus");
        let p = Prometheus { node };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.get("/-/ready").is_none_or(|s| !s.contains("Ready")) {
            assert!(Instant::now() < deadline, "prometheus not ready in 30 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// `curl -sf URL EXTRA…` in the node netns: the body, if it answered 2xx.
    fn curl(&self, path: &str, extra: &[&str]) -> Option<String> {
        let url = format!("http://{PROMETHEUS}{path}");
        let mut argv = vec!["curl", "-sf", "--max-time", "5", &url];
        argv.extend_from_slice(extra);
        let out = self.node.lab.exec(&self.node.node_ns, &argv).ok()?;
        out.success().then_some(out.stdout)
    }

    fn get(&self, path: &str) -> Option<String> {
        self.curl(path, &[])
    }

    /// An instant PromQL query: each series' labels and value.
    fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let query = format!("query={promql}");
        let body = self
            .curl("/api/v1/query", &["--data-urlencode", &query])
            .unwrap_or_else(|| panic!("Prometheus did not answer {promql}"));
        let v: Value = serde_json::from_str(&body).expect("Prometheus's JSON");
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// `sum by (LABEL) (EXPR)` as a map.
    fn by(&self, label: &str, expr: &str) -> BTreeMap<String, f64> {
        self.query(&format!("sum by ({label}) ({expr})"))
            .into_iter()
            .map(|(l, v)| (l.get(label).cloned().unwrap_or_default(), v))
            .collect()
    }
}

/// Lookups by verdict in dnstrace's JSON so far.
fn json_verdicts(tracer: &Tracer) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for l in tracer.lookups() {
        *m.entry(l["verdict"].as_str().unwrap().to_owned())
            .or_insert(0.0) += 1.0;
    }
    m
}

/// Runs `scenario` under dnstrace `--metrics` and Prometheus; returns once Prometheus's
/// lookup counts per verdict equal those of dnstrace's JSON (both only grow; with the
/// lab quiet they meet), or fails with both.
fn scenario_scraped(
    scenario: Scenario,
    tag: &str,
    check: impl FnOnce(&Prometheus, &BTreeMap<String, f64>, &Node),
) {
    if skip_without_root() {
        return;
    }
    if dnstrace_bin().is_none() {
        eprintln!("SKIP: DNSTRACE_BIN is not set (run with cargo xtask test)");
        return;
    }
    let options = NodeOptions {
        own_names: true,
        ..scenario.node_options()
    };
    let node = scenario
        .build_with(tag, options)
        .expect("build the scenario");
    node.lab
        .exec(&node.node_ns, &["ip", "link", "set", "lo", "up"])
        .expect("lo up");
    let tracer = Tracer::start_lookups(
        &node.lab,
        &node.node_ns,
        "trace",
        &["--auto", "--timeout", LOOKUP_TIMEOUT, "--metrics", METRICS],
    )
    .expect("start dnstrace");
    assert!(
        tracer
            .stderr()
            .contains(&format!("metrics on http://{METRICS}/metrics")),
        "{}",
        tracer.stderr()
    );
    let prom = Prometheus::start(&node);
    let seen = scenario.run_client(&node).expect("run the client");
    for e in scenario.expect(&node) {
        let _ = tracer.wait_lookups(|l| e.is_for(l), 1, Duration::from_secs(20));
    }
    // Both only grow: poll until they meet.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (json, scraped) = loop {
        let json = json_verdicts(&tracer);
        let scraped = prom.by("verdict", "dnstrace_lookups_total");
        if json == scraped && !json.is_empty() {
            break (json, scraped);
        }
        if Instant::now() > deadline {
            panic!(
                "Prometheus's lookups by verdict {scraped:?} never met dnstrace's JSON {json:?}; client saw {:?}",
                seen.iter().map(|s| s.summary()).collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("{scenario}: lookups by verdict, PromQL = JSON: {scraped:?}");
    assert!(
        json.get(scenario.verdict()).copied().unwrap_or(0.0) >= 1.0,
        "no {} lookup: {json:?}",
        scenario.verdict()
    );
    // The tracer's own series.
    let attached = prom.by("hook", "dnstrace_attached");
    assert_eq!(attached.get("socket_hop"), Some(&1.0), "{attached:?}");
    assert!(
        attached.get("interfaces").copied().unwrap_or(0.0) >= 2.0,
        "{attached:?}"
    );
    let lost = prom.by("stage", "dnstrace_events_lost_total");
    for stage in ["kernel_ring", "kernel_copy", "evicted"] {
        assert!(lost.contains_key(stage), "no {stage} series: {lost:?}");
    }
    let packets = prom.query("dnstrace_dns_packets_total");
    assert!(
        packets.first().is_some_and(|(_, v)| *v > 0.0),
        "{packets:?}"
    );
    // No qname and no client port in any label, anywhere.
    let series = prom.query("{job=\"dnstrace\"}");
    for (labels, _) in &series {
        for (k, v) in labels {
            assert!(
                !v.contains("example.test") && !v.contains(&node.www_name),
                "{k}={v} names a query"
            );
            assert_ne!(k, "client", "{labels:?}");
        }
    }
    check(&prom, &json, &node);
    let _ = prom.query("up");
    tracer.stop(Signal::Int).expect("stop dnstrace");
}

#[test]
fn upstream_rejects_edns_in_promql() {
    scenario_scraped(Scenario::UpstreamRejectsEdns, "medn", |prom, json, node| {
        // The old router's FORMERR, per upstream, and unbound's retry without OPT answered.
        let rcodes = prom.by("rcode", "dnstrace_upstream_responses_total");
        assert!(
            rcodes.get("FORMERR").copied().unwrap_or(0.0) >= 1.0,
            "{rcodes:?}"
        );
        let to = prom.by("to", "dnstrace_upstream_responses_total{rcode=\"FORMERR\"}");
        assert!(
            to.keys()
                .any(|t| t.starts_with(&node.resolver().to_string())),
            "FORMERR from {to:?}"
        );
        // Every answered lookup is in the latency histogram, and a p99 can be computed.
        let answered: f64 = prom
            .query("sum(dnstrace_lookup_duration_seconds_count)")
            .first()
            .map_or(0.0, |(_, v)| *v);
        let rcode_lookups: f64 = prom
            .query("sum(dnstrace_lookups_total{rcode!=\"none\"})")
            .first()
            .map_or(0.0, |(_, v)| *v);
        assert_eq!(answered, rcode_lookups, "{json:?}");
        let p99 = prom.query(
            "histogram_quantile(0.99, sum by (le) (dnstrace_lookup_duration_seconds_bucket))",
        );
        let p99 = p99.first().map_or(f64::NAN, |(_, v)| *v);
        assert!(p99 > 0.0 && p99 < 2.0, "p99 {p99}");
        eprintln!(
            "PromQL histogram_quantile(0.99, …dnstrace_lookup_duration_seconds_bucket) = {p99} s"
        );
    });
}

#[test]
fn dropped_and_unanswered_in_promql() {
    scenario_scraped(Scenario::Dropped, "mdrp", |prom, json, node| {
        let drops = prom.query("dnstrace_kernel_drops_total");
        assert!(drops.first().is_some_and(|(_, v)| *v >= 1.0), "{drops:?}");
        // A query to an address nothing answers from: unanswered, by its last hop.
        let _ = node.query(
            &node.pod_ns,
            "10.244.0.99",
            &node.www_name,
            "A",
            &["+tries=1", "+time=1"],
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let un = prom.by("last_hop", "dnstrace_unanswered_total");
            if un.values().sum::<f64>() >= 1.0 {
                // A place, not one series per netns.
                assert!(un.keys().all(|k| !k.contains("netns")), "{un:?}");
                eprintln!("unanswered by last hop: {un:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no unanswered series: {un:?} ({json:?})"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    });
}
