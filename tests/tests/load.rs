//! Healthy traffic under load: every lookup is `ok`, with the latency its
//! client measured, and nothing else is reported (issue 9, "Healthy traffic
//! under load"; defects 4 and 5).
//!
//! The lab node's real path (pod → node-local-dns 169.254.25.10 (dnsmasq) →
//! ClusterIP DNAT → CoreDNS role (unbound) → MASQUERADE → upstream BIND),
//! loaded by clients that reuse sockets and DNS ids and ask the same few
//! questions again and again: the `dnsload` client, which records every
//! query, and dnsperf with several sockets. The tracer is the real
//! `dnstrace watch --auto` in the node netns. node-local-dns is restarted
//! for load as a real one runs (`load::quiet_nodelocal`: no query log, more
//! forward slots), still without a cache, so every query walks every hop.
//!
//! These tests run the debug build of dnstrace that `cargo xtask test` makes,
//! on a machine shared with other work, so they load less than the full run
//! of the issue (100,000 lookups at 10,000 qps): `cargo xtask bench --only
//! load` runs that one with the release build. `DNSTRACE_LOAD_COUNT` and
//! `DNSTRACE_LOAD_QPS` override the size of `dnsload_all_ok` by hand,
//! `DNSTRACE_LOAD_DNSPERF_QPS` and `DNSTRACE_LOAD_DNSPERF_SECS` that of
//! `dnsperf_all_ok`, and `DNSTRACE_LOAD_KEEP=1` keeps dnstrace's output and
//! the client's records in /tmp/load-trace-*.jsonl.
//!
//! Latency tolerance: dnsload takes its send time just before send(2), and
//! the answer's receive time from the kernel (SO_TIMESTAMPNS: stamped as the
//! packet enters the pod's netns from its veth). dnstrace's latency runs from
//! the socket hop's sighting of the query (cgroup_skb egress, inside that
//! send(2)) to the socket hop's sighting of the answer (cgroup_skb ingress,
//! as it is queued on the socket). The two differ by the syscall's entry and
//! the pod's receive path: µs, plus a preemption of that path when both
//! cores are busy. So |dnstrace − client| ≤ 0.3 ms + 10 % of the client's
//! figure; a merged lookup (issue 9 measured 225 ms instead of under 1 ms) is
//! far outside it. The latency the client's thread saw (after recv(2)
//! returned) also includes its wake-up, up to milliseconds on a busy
//! machine: its difference is printed, not asserted.

use std::{
    fs,
    io::Write as _,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use dnstrace_tests::{
    Node, Signal, Tracer, dnstrace_bin,
    load::{ClientRun, Comparison, LabFilter, compare, quiet_nodelocal, spread},
    skip_without_root,
};

/// The tracer's `--timeout`: forwarders' queries it failed to attach end this
/// long after they were sent, with their own verdict, before it is stopped.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Lookups from dnsload, and its rate (see the module doc for why not 100k at 10k/s).
const COUNT: u64 = 20_000;
const QPS: u64 = 2_000;
const SOCKETS: usize = 8;
const IDS: u16 = 32;
/// dnsperf: sockets (`-c`), rate (`-Q`) and length (`-l`).
const DNSPERF_CLIENTS: usize = 4;
const DNSPERF_QPS: u64 = 2_000;
const DNSPERF_SECS: u64 = 5;
/// A 64 MiB ring (default 8): while the debug build catches up with a
/// burst, events wait in the ring instead of being lost.
const RING: &str = "67108864";
/// The default 64MiB `--memory-budget` has no room for that ring: 160MiB leaves room
/// for about 53,000 open lookups besides.
const BUDGET: &str = "160MiB";
/// Where the wrong lookups of the last run of each test are saved, for reading.
const WRONG_DNSLOAD: &str = "/tmp/load-wrong.jsonl";
const WRONG_DNSPERF: &str = "/tmp/load-wrong-dnsperf.jsonl";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The node, its tracer (lookups only) and the filter for this lab's lookups.
fn setup(tag: &str) -> Option<(Node, LabFilter)> {
    if skip_without_root() {
        return None;
    }
    dnstrace_bin()?;
    let node = Node::new(tag).expect("build the node");
    quiet_nodelocal(&node).expect("node-local-dns for load");
    let filter = LabFilter {
        iface_prefix: node.lab.prefix().to_owned(),
        cookies: Vec::new(),
        client_ip: node.pod_ip.to_string(),
        client_iface: node.pod_veth.clone(),
    };
    Some((node, filter))
}

/// Waits until the tracer's output stops growing for `LOOKUP_TIMEOUT` + 1 s
/// (it has caught up, and any lookup it left open has timed out), at most
/// `limit`, then stops it.
fn drain_and_stop(node: &Node, tracer: Tracer<'_>, limit: Duration) {
    let quiet = LOOKUP_TIMEOUT + Duration::from_secs(1);
    let started = Instant::now();
    let mut last = (0, Instant::now());
    while started.elapsed() < limit {
        let len = fs::metadata(&tracer.out).map_or(0, |m| m.len());
        if len != last.0 {
            last = (len, Instant::now());
        } else if last.1.elapsed() >= quiet {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let status = node
        .lab
        .stop(&tracer.proc, Signal::Int, Duration::from_secs(30))
        .expect("stop dnstrace");
    assert!(status.success(), "dnstrace: {status}: {}", tracer.stderr());
}

/// With `DNSTRACE_LOAD_KEEP` set, copies dnstrace's whole output to
/// /tmp/load-trace-<what>.jsonl for reading after the lab is gone.
fn keep(trace: &std::path::Path, what: &str) {
    if std::env::var_os("DNSTRACE_LOAD_KEEP").is_some() {
        let to = format!("/tmp/load-trace-{what}.jsonl");
        fs::copy(trace, &to).expect("copy the trace");
        eprintln!("dnstrace's output kept in {to}");
    }
}

fn save_wrong(cmp: &Comparison, file: &str) {
    let mut f = fs::File::create(file).expect("create the wrong-lookups file");
    for l in cmp.sample(2000) {
        writeln!(f, "{l}").expect("write");
    }
    eprintln!(
        "{} wrong lookups (a sample of up to 2000, every kind, saved to {file})",
        cmp.wrong.len()
    );
}

/// What every run must show: `want` client lookups, all `ok`, nothing else
/// from the lab, no merges, no orphans of its own.
fn assert_clean(cmp: &Comparison, want: u64) {
    let mut problems = Vec::new();
    if cmp.unknown() > 0 {
        problems.push(format!(
            "{} unknown (events lost in the kernel: {})",
            cmp.unknown(),
            cmp.lost_events
        ));
    }
    if cmp.false_alarms() > 0 {
        problems.push(format!("{} false alarms", cmp.false_alarms()));
    }
    if cmp.ok() != want {
        problems.push(format!("{} ok lookups instead of {want}", cmp.ok()));
    }
    if !cmp.other_roots.is_empty() {
        problems.push(format!(
            "root lookups that are not the client's: {:?}",
            cmp.other_roots
        ));
    }
    if cmp.merged > 0 {
        problems.push(format!("{} lookups merged as retries", cmp.merged));
    }
    if cmp.other_sockets > 0 {
        problems.push(format!(
            "{} lookups hold a query from another of the client's sockets",
            cmp.other_sockets
        ));
    }
    if cmp.unmatched_queries > 0 || cmp.unmatched_lookups > 0 {
        problems.push(format!(
            "{} client queries without their own lookup, {} lookups matching no query",
            cmp.unmatched_queries, cmp.unmatched_lookups
        ));
    }
    if cmp.latency_mismatches > 0 {
        problems.push(format!(
            "{} latencies disagree with the client's",
            cmp.latency_mismatches
        ));
    }
    assert!(
        problems.is_empty(),
        "{}\n{}",
        problems.join("; "),
        cmp.report()
    );
}

/// dnstrace on the node, writing lookups only (every packet at this load would be
/// hundreds of MB of JSON).
fn start_tracer(node: &Node) -> Tracer<'_> {
    Tracer::start_lookups(
        &node.lab,
        &node.node_ns,
        "trace",
        &[
            "--auto",
            "--timeout",
            &format!("{}s", LOOKUP_TIMEOUT.as_secs()),
            "--upstream-every",
            "0",
            "--ring-size",
            RING,
            "--memory-budget",
            BUDGET,
        ],
    )
    .expect("start dnstrace")
}

/// dnsload from the pod: COUNT lookups at QPS from SOCKETS sockets with IDS
/// ids each, three questions in turn; every one `ok`, with the client's latency.
#[test]
fn dnsload_all_ok() {
    let Some((node, mut filter)) = setup("load") else {
        return;
    };
    let count = env_or("DNSTRACE_LOAD_COUNT", COUNT);
    let qps = env_or("DNSTRACE_LOAD_QPS", QPS);
    let tracer = start_tracer(&node);
    let out = node.lab.dir().join("dnsload.jsonl");
    let t = Instant::now();
    let client = node
        .lab
        .cmd(&node.pod_ns, env!("CARGO_BIN_EXE_dnsload"))
        .args([
            "--server",
            &format!("{}:53", node.nodelocal_ip),
            "--qps",
            &qps.to_string(),
            "--count",
            &count.to_string(),
            "--sockets",
            &SOCKETS.to_string(),
            "--ids",
            &IDS.to_string(),
            "--out",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .expect("run dnsload");
    assert!(
        client.status.success(),
        "dnsload: {}",
        String::from_utf8_lossy(&client.stderr)
    );
    eprintln!(
        "dnsload in {:?}: {}",
        t.elapsed(),
        String::from_utf8_lossy(&client.stdout).trim()
    );
    let run = ClientRun::read(&out).expect("read dnsload's records");
    keep(&out, "dnsload-client");
    drain_and_stop(&node, tracer, Duration::from_secs(120));
    if let Some(c) = run.netns_cookie {
        filter.cookies.push(c);
    }
    let trace = node.lab.dir().join("trace.jsonl");
    keep(&trace, "dnsload");
    let cmp = compare(&trace, Some(&run), &filter).expect("read dnstrace's lookups");
    let answered = run.answered() as u64;
    eprintln!(
        "{count} queries at {qps} qps from {SOCKETS} sockets ({IDS} ids each): {answered} answered, \
         client latency {}",
        spread(&run.latencies())
    );
    eprint!("{}", cmp.report());
    save_wrong(&cmp, WRONG_DNSLOAD);
    let noerror = run
        .queries
        .iter()
        .filter(|q| q.rcode.as_deref() == Some("NOERROR"))
        .count() as u64;
    assert_eq!(
        noerror, count,
        "the node itself failed some queries ({answered} answered, {noerror} NOERROR): \
         the path was not healthy, so this run says nothing about false alarms"
    );
    assert_clean(&cmp, count);
}

/// dnsperf with several sockets, the client of the issue: it reuses each
/// socket and asks the same questions again under new ids. Every query it
/// completed is one `ok` lookup, and dnstrace's latencies agree with
/// dnsperf's own average.
#[test]
fn dnsperf_all_ok() {
    let Some((node, filter)) = setup("ldpf") else {
        return;
    };
    let tracer = start_tracer(&node);
    let qps = env_or("DNSTRACE_LOAD_DNSPERF_QPS", DNSPERF_QPS);
    let secs = env_or("DNSTRACE_LOAD_DNSPERF_SECS", DNSPERF_SECS);
    let data = node
        .lab
        .write_file(
            "queries.txt",
            &format!(
                "{w} A\n{w} AAAA\nns1.{z} A\n",
                w = node.www_name,
                z = node.zone
            ),
        )
        .expect("write dnsperf's queries");
    let out = node
        .lab
        .exec(
            &node.pod_ns,
            &[
                "dnsperf",
                "-s",
                &node.nodelocal_ip.to_string(),
                "-d",
                &data.display().to_string(),
                "-c",
                &DNSPERF_CLIENTS.to_string(),
                "-Q",
                &qps.to_string(),
                "-l",
                &secs.to_string(),
                "-t",
                "2",
            ],
        )
        .expect("run dnsperf");
    assert!(out.success(), "dnsperf: {}{}", out.stdout, out.stderr);
    let field = |name: &str| -> f64 {
        out.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name:?} in dnsperf's output:\n{}", out.stdout))
    };
    let sent = field("Queries sent:") as u64;
    let completed = field("Queries completed:") as u64;
    let avg_ms = field("Average Latency (s):") * 1e3;
    eprintln!(
        "dnsperf -c {DNSPERF_CLIENTS} -Q {qps} -l {secs}: {sent} sent, {completed} completed, average {avg_ms:.3} ms"
    );
    drain_and_stop(&node, tracer, Duration::from_secs(60));
    let trace = node.lab.dir().join("trace.jsonl");
    keep(&trace, "dnsperf");
    let cmp = compare(&trace, None, &filter).expect("read dnstrace's lookups");
    eprint!("{}", cmp.report());
    let traced_avg = if cmp.latencies_ms.is_empty() {
        f64::NAN
    } else {
        cmp.latencies_ms.iter().sum::<f64>() / cmp.latencies_ms.len() as f64
    };
    eprintln!(
        "dnstrace's latencies of the client lookups: {} (average {traced_avg:.3} ms vs dnsperf's {avg_ms:.3} ms)",
        spread(&cmp.latencies_ms)
    );
    save_wrong(&cmp, WRONG_DNSPERF);
    assert_eq!(completed, sent, "dnsperf lost queries");
    assert_clean(&cmp, completed);
    assert!(
        (traced_avg - avg_ms).abs() <= 0.5 + 0.1 * avg_ms,
        "average latency: dnstrace {traced_avg:.3} ms, dnsperf {avg_ms:.3} ms"
    );
}
