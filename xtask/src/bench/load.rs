//! Healthy traffic under load (issue 9): 100,000 lookups at 10,000 qps from
//! the lab node's pod through node-local-dns → ClusterIP → upstream, once
//! from `dnsload` (reused sockets and ids, per-query records) and once from
//! dnsperf with several sockets; the release dnstrace (`watch --auto`) must
//! call every one `ok`, report nothing else, and agree with the client's
//! latency. The same check at a lower rate is tests/tests/load.rs.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use dnstrace_tests::{
    Node, Signal,
    load::{
        ClientRun, Comparison, LabFilter, NODELOCAL_FORWARD_MAX, TOLERANCE_MS, TOLERANCE_PCT,
        compare, quiet_nodelocal, spread,
    },
};

use super::{Ctx, STOP_GRACE, report::Report, wait_file};
use crate::{bail_if_stopped, cargo, run_visible};

const COUNT: u64 = 100_000;
pub(super) const QPS: u64 = 10_000;
const SOCKETS: usize = 8;
const IDS: u16 = 32;
const DNSPERF_CLIENTS: usize = 4;
/// The tracer's `--timeout`: forwarders' queries it left unattached end with
/// their own verdict this long after they were sent.
const LOOKUP_TIMEOUT_SECS: u64 = 2;
/// A 64 MiB ring: bursts while the tracer catches up are absorbed, not lost.
const RING: &str = "67108864";
/// The default 64MiB `--memory-budget` has no room for that ring.
const BUDGET: &str = "160MiB";

/// One traced run: what the client did and what dnstrace said.
struct Run {
    command: String,
    client: String,
    cmp: Comparison,
    secs: f64,
    /// The queries the client got a NOERROR answer to: each must be one `ok` lookup.
    want: u64,
}

/// What a client run hands back: its command line, a sentence on what it
/// saw, its per-query records (dnsload only) and how many it got a NOERROR
/// answer to.
type ClientOut = (String, String, Option<ClientRun>, u64);

pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dnsload = build_dnsload()?;

    let own = one(ctx, "bld", |node| {
        let out = node.lab.dir().join("dnsload.jsonl");
        let argv = dnsload_args(node, COUNT, &out);
        let res = node
            .lab
            .cmd(&node.pod_ns, &dnsload)
            .args(&argv)
            .stdin(Stdio::null())
            .output()
            .context("running dnsload")?;
        if !res.status.success() {
            bail!("dnsload: {}", String::from_utf8_lossy(&res.stderr));
        }
        let run = ClientRun::read(&out)?;
        let rcodes = run
            .queries
            .iter()
            .filter(|q| q.rcode.as_deref() != Some("NOERROR"))
            .count();
        let summary = format!(
            "{} sent, {} answered ({} not NOERROR); latency (send to kernel receive stamp) {}",
            run.queries.len(),
            run.answered(),
            rcodes,
            spread(&kernel_latencies(&run))
        );
        let noerror = (run.queries.len() - rcodes) as u64;
        Ok((
            format!("dnsload {}", argv.join(" ")),
            summary,
            Some(run),
            noerror,
        ))
    })?;
    bail_if_stopped()?;
    let perf = one(ctx, "blp", |node| {
        let data = node.lab.write_file(
            "queries.txt",
            &format!(
                "{w} A\n{w} AAAA\nns1.{z} A\n",
                w = node.www_name,
                z = node.zone
            ),
        )?;
        let argv = [
            "dnsperf".to_owned(),
            "-s".to_owned(),
            node.nodelocal_ip.to_string(),
            "-d".to_owned(),
            data.display().to_string(),
            "-c".to_owned(),
            DNSPERF_CLIENTS.to_string(),
            "-Q".to_owned(),
            QPS.to_string(),
            "-l".to_owned(),
            (COUNT / QPS).to_string(),
            "-t".to_owned(),
            "2".to_owned(),
        ];
        let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = node.lab.exec(&node.pod_ns, &argv_ref)?;
        if !out.success() {
            bail!("dnsperf: {}{}", out.stdout, out.stderr);
        }
        let field = |name: &str| {
            out.stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("?")
                .to_owned()
        };
        let summary = format!(
            "{} sent, {} completed, average latency {} s",
            field("Queries sent:"),
            field("Queries completed:"),
            field("Average Latency (s):")
        );
        let completed = field("Queries completed:").parse().unwrap_or(0);
        Ok((argv.join(" "), summary, None, completed))
    })?;
    report_results(report, &own, &perf);
    Ok(())
}

/// dnsload's arguments for `count` queries at 10k qps from the node's pod.
pub(super) fn dnsload_args(node: &Node, count: u64, out: &Path) -> Vec<String> {
    vec![
        "--server".to_owned(),
        format!("{}:53", node.nodelocal_ip),
        "--qps".to_owned(),
        QPS.to_string(),
        "--count".to_owned(),
        count.to_string(),
        "--sockets".to_owned(),
        SOCKETS.to_string(),
        "--ids".to_owned(),
        IDS.to_string(),
        "--out".to_owned(),
        out.display().to_string(),
    ]
}

fn kernel_latencies(run: &ClientRun) -> Vec<f64> {
    let mut v: Vec<f64> = run
        .queries
        .iter()
        .filter_map(|q| q.kernel_latency_ms())
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Builds a node (node-local-dns tuned for load), starts dnstrace on it,
/// runs `client` and compares what dnstrace wrote with what it measured.
fn one(ctx: &Ctx, tag: &str, client: impl FnOnce(&Node) -> Result<ClientOut>) -> Result<Run> {
    let node = Node::new(tag)?;
    quiet_nodelocal(&node)?;
    // Every lookup with its hops: they say which lookups are this lab's.
    let (out, (command, client_summary, run, want), secs) =
        traced(ctx, &node, "trace", &["--hops", "all"], client)?;
    eprintln!("[bench] load: {command}: {client_summary}");
    let mut filter = LabFilter {
        iface_prefix: node.lab.prefix().to_owned(),
        cookies: Vec::new(),
        client_ip: node.pod_ip.to_string(),
        client_iface: node.pod_veth.clone(),
    };
    if let Some(c) = run.as_ref().and_then(|r| r.netns_cookie) {
        filter.cookies.push(c);
    }
    let cmp = compare(&out, run.as_ref(), &filter)?;
    eprint!("{}", cmp.report());
    keep_wrong(&cmp, tag)?;
    Ok(Run {
        command,
        client: client_summary,
        cmp,
        secs,
        want,
    })
}

/// A sample of the wrong lookups (up to 2000, every kind) goes to
/// target/bench/load-wrong-<tag>.jsonl.
fn keep_wrong(cmp: &Comparison, tag: &str) -> Result<PathBuf> {
    let path = crate::target_dir()
        .join("bench")
        .join(format!("load-wrong-{tag}.jsonl"));
    let mut text = String::new();
    for l in cmp.sample(2000) {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn clean(r: &Run) -> bool {
    let c = &r.cmp;
    r.want > 0
        && c.ok() == r.want
        && c.false_alarms() == 0
        && c.unknown() == 0
        && c.other_roots.is_empty()
        && c.merged == 0
        && c.other_sockets == 0
        && c.unmatched_queries == 0
        && c.unmatched_lookups == 0
        && c.latency_mismatches == 0
}

fn report_results(report: &mut Report, own: &Run, perf: &Run) {
    report.row(
        &format!(
            "False alarms under healthy load, dnsload: {COUNT} lookups at {QPS} qps, {SOCKETS} sockets × {IDS} ids, through node-local-dns → ClusterIP → upstream"
        ),
        "each answered query one ok lookup with the client's latency; 0 other verdicts, 0 merged",
        format!(
            "{} ok of {} answered (really failed: {:?}); {} false alarms; {} merged; {} holding another socket's query; {} latencies off; {} events lost",
            own.cmp.ok(),
            own.want,
            own.cmp.real_failures,
            own.cmp.false_alarms(),
            own.cmp.merged,
            own.cmp.other_sockets,
            own.cmp.latency_mismatches,
            own.cmp.lost_events
        ),
        Some(clean(own)),
    );
    report.row(
        &format!(
            "False alarms under healthy load, dnsperf -c {DNSPERF_CLIENTS}: {QPS} qps for {} s",
            COUNT / QPS
        ),
        "every completed query one ok lookup, 0 other verdicts",
        format!(
            "{} ok of {} completed; {} false alarms; {} merged; {} events lost",
            perf.cmp.ok(),
            perf.want,
            perf.cmp.false_alarms(),
            perf.cmp.merged,
            perf.cmp.lost_events
        ),
        Some(clean(perf)),
    );
    let mut body = format!(
        "The lab node (`dnstrace_tests::Node`: pod → node-local-dns 169.254.25.10 (dnsmasq) → \
         ClusterIP 10.96.0.10 DNAT → CoreDNS role (unbound) → MASQUERADE → upstream BIND), with \
         node-local-dns run for load as a real one is (no query log, `--dns-forward-max={NODELOCAL_FORWARD_MAX}`, \
         no cache: every query walks every hop). dnstrace: `dnstrace watch --auto --output json \
         --timeout {LOOKUP_TIMEOUT_SECS}s --upstream-every 0 --ring-size {RING} --memory-budget {BUDGET}` in the node netns, \
         stopped once its output has been quiet for {}s. A lookup is this lab's when one of its hops \
         is on one of the lab's interfaces or in the client's netns; it is the client's when its \
         client address is the pod's. `dnsload` (tests/src/load.rs) reuses {SOCKETS} sockets, each \
         with ids 1–{IDS}, each asking www A, www AAAA and ns1 A in turn, and records every query; \
         each of its queries is matched with its lookup by client port, DNS id and send time, and \
         the latencies must agree within {TOLERANCE_MS} ms + {TOLERANCE_PCT} % (the client's figure runs from \
         send(2) to the kernel's receive timestamp, SO_TIMESTAMPNS).\n\n\
         | | dnsload | dnsperf |\n|---|---|---|\n",
        LOOKUP_TIMEOUT_SECS + 1,
    );
    let row =
        |name: &str, f: &dyn Fn(&Run) -> String| format!("| {name} | {} | {} |\n", f(own), f(perf));
    body.push_str(&row("command", &|r| format!("`{}`", r.command)));
    body.push_str(&row("the client saw", &|r| r.client.clone()));
    body.push_str(&row("client run, s", &|r| format!("{:.1}", r.secs)));
    body.push_str(&row("client lookups by verdict", &|r| {
        format!("{:?}", r.cmp.client_verdicts)
    }));
    body.push_str(&row(
        "other root lookups of the lab (forwarders' queries not attached)",
        &|r| format!("{:?}", r.cmp.other_roots),
    ));
    body.push_str(&row(
        "client queries that really failed, by verdict (the path dropped or refused them)",
        &|r| format!("{:?}", r.cmp.real_failures),
    ));
    body.push_str(&row("false alarms", &|r| r.cmp.false_alarms().to_string()));
    body.push_str(&row("unknown", &|r| r.cmp.unknown().to_string()));
    body.push_str(&row("client lookups merged as retries", &|r| {
        r.cmp.merged.to_string()
    }));
    body.push_str(&row(
        "client lookups holding another socket's query",
        &|r| r.cmp.other_sockets.to_string(),
    ));
    body.push_str(&row("client queries without their own lookup", &|r| {
        r.cmp.unmatched_queries.to_string()
    }));
    body.push_str(&row(
        "latency dnstrace − client, ms (min / median / p99 / max)",
        &|r| spread(&r.cmp.deltas_ms),
    ));
    body.push_str(&row("latencies outside the tolerance", &|r| {
        r.cmp.latency_mismatches.to_string()
    }));
    body.push_str(&row("dnstrace's latency of the client lookups, ms", &|r| {
        spread(&r.cmp.latencies_ms).replace('+', "")
    }));
    body.push_str(&row(
        "events lost in the kernel (ring full) / DNS packets seen",
        &|r| {
            format!(
                "{} ({}) / {}",
                r.cmp.lost_events, r.cmp.ring_full, r.cmp.dns_seen
            )
        },
    ));
    body.push_str(&row(
        "orphan responses (the whole run: the socket hop sees other labs too)",
        &|r| r.cmp.orphan_responses.to_string(),
    ));
    body.push_str(
        "\nA sample of the wrong lookups (up to 2000 of each run, every kind) is in `target/bench/load-wrong-bld.jsonl` \
         and `target/bench/load-wrong-blp.jsonl`.\n",
    );
    report.section("Healthy traffic under load: false alarms", body);
}

/// Starts `dnstrace watch --auto --output json EXTRA…` in the node netns,
/// runs `client`, waits until the output has been quiet for the lookup
/// timeout + 1 s and stops the tracer; returns its output file, what the
/// client returned and how long the client ran.
pub(super) fn traced<T>(
    ctx: &Ctx,
    node: &Node,
    name: &str,
    extra: &[&str],
    client: impl FnOnce(&Node) -> Result<T>,
) -> Result<(PathBuf, T, f64)> {
    let out = node.lab.dir().join(format!("{name}.jsonl"));
    let err = node.lab.dir().join(format!("{name}.err"));
    let ready = node.lab.dir().join(format!("{name}.ready"));
    let timeout = format!("{LOOKUP_TIMEOUT_SECS}s");
    let mut cmd = node.lab.cmd_setns(&node.node_ns, &ctx.bin)?;
    cmd.args([
        "watch",
        "--auto",
        "--output",
        "json",
        "--timeout",
        &timeout,
        "--upstream-every",
        "0",
        "--ring-size",
        RING,
        "--memory-budget",
        BUDGET,
    ])
    .args(extra)
    .arg("--ready-file")
    .arg(&ready)
    .stdin(Stdio::null())
    .stdout(File::create(&out).with_context(|| format!("creating {}", out.display()))?)
    .stderr(File::create(&err).with_context(|| format!("creating {}", err.display()))?);
    let proc = node.lab.spawn(name, cmd)?;
    wait_file(&node.lab, &proc, &ready, &err)?;
    let t = Instant::now();
    let result = client(node)?;
    let secs = t.elapsed().as_secs_f64();
    let quiet = Duration::from_secs(LOOKUP_TIMEOUT_SECS + 1);
    let mut last = (0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        let len = std::fs::metadata(&out).map_or(0, |m| m.len());
        if len != last.0 {
            last = (len, Instant::now());
        } else if last.1.elapsed() >= quiet {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = node.lab.stop(&proc, Signal::Int, STOP_GRACE)?;
    if !status.success() {
        bail!(
            "dnstrace exited with {status}: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
    }
    Ok((out, result, secs))
}

/// Builds the load client (release) and returns its path.
pub(super) fn build_dnsload() -> Result<PathBuf> {
    eprintln!("[bench] building dnsload (release)");
    run_visible(
        "cargo build --release -p dnstrace-tests --bin dnsload",
        cargo().args([
            "build",
            "--release",
            "-p",
            "dnstrace-tests",
            "--bin",
            "dnsload",
        ]),
    )?;
    Ok(crate::target_dir().join("release/dnsload"))
}
