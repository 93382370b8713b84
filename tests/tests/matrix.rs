//! The scenario matrix (issue 9): every failure mode of shared
//! FAILURE-MODES.md on lab nodes built differently ([`NodeOptions`]): other
//! servers in the node-local-dns and CoreDNS roles, no default route, bridged
//! pods with and without br_netfilter, IPv6. Each cell runs the real tracer
//! (`dnstrace watch --auto`) and asserts the verdict, the culprit and the
//! last hop of its lookups.
//!
//! At the end the matrix is printed as a Markdown table to stderr and written
//! to `<target dir>/matrix.md`; the test fails listing every wrong cell. A
//! cell that needs something this machine lacks says SKIP in the table (and
//! on stderr), with the reason.
//!
//! Cells run in parallel (`DNSTRACE_MATRIX_JOBS`, default 3); each node has
//! its own names (`www.<lab prefix>.example.test`), so a cell judges only its
//! own lookups although every tracer sees every netns. `DNSTRACE_MATRIX_ONLY`
//! (comma-separated cell names or substrings) runs a subset.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use dnstrace_tests::{
    ClientLookup, Expect, Family, Layout, Node, NodeOptions, Route, Scenario, Server, Signal,
    Tracer, dnstrace_bin, left_via_uplink_dropped_beyond, one_line, skip_without_root,
};
use serde_json::Value;

/// Lookups end this long after the client's last try without an answer.
const LOOKUP_TIMEOUT: &str = "3s";
const WAIT_LOOKUPS: Duration = Duration::from_secs(25);
const DEFAULT_JOBS: usize = 3;

/// What a cell does on top of its scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Twist {
    None,
    /// Left via the uplink, then dropped by the next router (defect 2).
    DroppedBeyondUplink,
    /// The tracer is told the uplink (`--uplink <p>up0`).
    UplinkGiven,
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    name: &'static str,
    scenario: Scenario,
    twist: Twist,
    options: NodeOptions,
    /// Which defect of issue 9 this cell reproduces, if any.
    defect: Option<u8>,
}

const fn opts(
    nodelocal: Server,
    coredns: Server,
    route: Route,
    layout: Layout,
    family: Family,
) -> NodeOptions {
    NodeOptions {
        nodelocal,
        coredns,
        route,
        layout,
        family,
        own_names: true,
    }
}

/// Every cell, one per line. The forwarder-role servers vary for each failure
/// mode; `noroute` cells have no default route (specific routes only), `mgmt`
/// cells reach the upstreams through a management uplink.
#[rustfmt::skip]
fn cells() -> Vec<Cell> {
    use Family::{V4, V6};
    use Layout::{Bridged, BridgedNoBrNetfilter as NoBrnf, Routed};
    use Route::{Default as Dflt, Management as Mgmt, Specific};
    use Scenario::*;
    use Server::{Bind, Dnsmasq, Knot, Unbound};
    let cell = |name, scenario, options| Cell { name, scenario, twist: Twist::None, options, defect: None };
    let defect = |name, scenario, twist, options, n| Cell { name, scenario, twist, options, defect: Some(n) };
    vec![
        // 1. Upstream rejects EDNS: the CoreDNS role varies (the client asks the ClusterIP).
        cell("edns-unbound", UpstreamRejectsEdns, opts(Dnsmasq, Unbound, Dflt, Routed, V4)),
        cell("edns-bind-noroute", UpstreamRejectsEdns, opts(Dnsmasq, Bind, Specific, Routed, V4)),
        cell("edns-kresd-v6", UpstreamRejectsEdns, opts(Dnsmasq, Knot, Dflt, Bridged, V6)),
        cell("edns-dnsmasq-mgmt", UpstreamRejectsEdns, opts(Unbound, Dnsmasq, Mgmt, Routed, V4)),
        // 2. Random upstream (unbound's random choice; dnsmasq --all-servers).
        cell("dis-unbound", UpstreamDisagreement, opts(Dnsmasq, Unbound, Dflt, Routed, V4)),
        cell("dis-dnsmasq-v6", UpstreamDisagreement, opts(Dnsmasq, Dnsmasq, Dflt, Bridged, V6)),
        defect("dis-unbound-noroute", UpstreamDisagreement, Twist::None, opts(Dnsmasq, Unbound, Specific, Routed, V4), 3),
        defect("dis-dnsmasq-noroute-v6", UpstreamDisagreement, Twist::None, opts(Dnsmasq, Dnsmasq, Specific, Routed, V6), 3),
        cell("dis-unbound-noroute-uplink", UpstreamDisagreement, opts(Dnsmasq, Unbound, Specific, Routed, V4)).with(Twist::UplinkGiven),
        defect("dis-unbound-mgmt", UpstreamDisagreement, Twist::None, opts(Dnsmasq, Unbound, Mgmt, Routed, V4), 3),
        // 3. Loopback nameserver: no server is involved.
        cell("lo", LoopbackNameserver, opts(Dnsmasq, Unbound, Dflt, Routed, V4)),
        cell("lo-v6-noroute", LoopbackNameserver, opts(Knot, Bind, Specific, Bridged, V6)),
        // 4. Forwarding loop: dnsmasq in both roles storms; coalescing forwarders do not.
        cell("loop-dnsmasq-dnsmasq", ForwardingLoop, opts(Dnsmasq, Dnsmasq, Dflt, Routed, V4)),
        defect("loop-dnsmasq-unbound", ForwardingLoop, Twist::None, opts(Dnsmasq, Unbound, Dflt, Routed, V4), 1),
        defect("loop-dnsmasq-bind", ForwardingLoop, Twist::None, opts(Dnsmasq, Bind, Dflt, Routed, V4), 1),
        cell("loop-unbound-dnsmasq-v6-noroute", ForwardingLoop, opts(Unbound, Dnsmasq, Specific, Routed, V6)),
        defect("loop-dnsmasq-kresd-bridged", ForwardingLoop, Twist::None, opts(Dnsmasq, Knot, Dflt, Bridged, V4), 1),
        // 5. Reply from an unexpected source: bridged without br_netfilter.
        cell("rfus-unbound", ReplyFromUnexpectedSource, opts(Dnsmasq, Unbound, Dflt, NoBrnf, V4)),
        cell("rfus-bind-v6-noroute", ReplyFromUnexpectedSource, opts(Dnsmasq, Bind, Specific, NoBrnf, V6)),
        cell("rfus-kresd", ReplyFromUnexpectedSource, opts(Dnsmasq, Knot, Dflt, NoBrnf, V4)),
        cell("rfus-dnsmasq-mgmt", ReplyFromUnexpectedSource, opts(Unbound, Dnsmasq, Mgmt, NoBrnf, V4)),
        // 6. Left via uplink: IPv4 only (an IPv6 node-local address is a ULA,
        // and a query to a ULA that leaves the node may be legitimate); it
        // leaves by the default route, so every cell has one.
        cell("upl-dnsmasq", LeftViaUplink, opts(Dnsmasq, Unbound, Dflt, Routed, V4)),
        cell("upl-kresd-bridged", LeftViaUplink, opts(Knot, Unbound, Dflt, Bridged, V4)),
        cell("upl-unbound-mgmt", LeftViaUplink, opts(Unbound, Bind, Mgmt, Routed, V4)),
        defect("upl-drop-dnsmasq", LeftViaUplink, Twist::DroppedBeyondUplink, opts(Dnsmasq, Unbound, Dflt, Routed, V4), 2),
        defect("upl-drop-bind-bridged", LeftViaUplink, Twist::DroppedBeyondUplink, opts(Bind, Knot, Dflt, Bridged, V4), 2),
        // 7. Truncation without a TCP retry.
        cell("tc-unbound", TruncatedNoTcp, opts(Dnsmasq, Unbound, Dflt, Routed, V4)),
        cell("tc-bind-noroute-bridged", TruncatedNoTcp, opts(Dnsmasq, Bind, Specific, Bridged, V4)),
        cell("tc-kresd-v6", TruncatedNoTcp, opts(Dnsmasq, Knot, Dflt, Routed, V6)),
        cell("tc-dnsmasq-mgmt-v6", TruncatedNoTcp, opts(Unbound, Dnsmasq, Mgmt, Routed, V6)),
        // 8. Dropped in the kernel.
        cell("drop-unbound", Dropped, opts(Dnsmasq, Unbound, Dflt, Routed, V4)),
        cell("drop-bind-v6-noroute", Dropped, opts(Dnsmasq, Bind, Specific, Routed, V6)),
        cell("drop-kresd-bridged", Dropped, opts(Dnsmasq, Knot, Dflt, Bridged, V4)),
        cell("drop-dnsmasq-mgmt", Dropped, opts(Unbound, Dnsmasq, Mgmt, Routed, V4)),
        // Healthy: every server in each role somewhere.
        cell("ok", Healthy, opts(Dnsmasq, Unbound, Dflt, Routed, V4)),
        cell("ok-unbound-bind-noroute", Healthy, opts(Unbound, Bind, Specific, Routed, V4)),
        cell("ok-bind-kresd-v6-bridged", Healthy, opts(Bind, Knot, Dflt, Bridged, V6)),
        cell("ok-kresd-dnsmasq-v6-noroute", Healthy, opts(Knot, Dnsmasq, Specific, Routed, V6)),
        cell("ok-dnsmasq-bind-mgmt-v6", Healthy, opts(Dnsmasq, Bind, Mgmt, Routed, V6)),
    ]
}

impl Cell {
    fn with(self, twist: Twist) -> Cell {
        Cell { twist, ..self }
    }

    /// Whether the servers in the forwarder roles matter to this failure mode.
    fn roles(&self) -> (&'static str, &'static str) {
        let o = &self.options;
        match self.scenario {
            Scenario::LoopbackNameserver => ("-", "-"),
            // The client asks the ClusterIP: node-local-dns is not on its path.
            Scenario::UpstreamRejectsEdns
            | Scenario::UpstreamDisagreement
            | Scenario::ReplyFromUnexpectedSource
            | Scenario::TruncatedNoTcp
            | Scenario::Dropped => ("-", o.coredns.name()),
            // Its address is gone: nothing reaches it, nor CoreDNS.
            Scenario::LeftViaUplink => (o.nodelocal.name(), "-"),
            Scenario::ForwardingLoop | Scenario::Healthy => (o.nodelocal.name(), o.coredns.name()),
        }
    }

    fn mode(&self) -> String {
        let mut mode = self.scenario.name().to_owned();
        match self.twist {
            Twist::None => {}
            Twist::DroppedBeyondUplink => mode.push_str(" + dropped beyond"),
            Twist::UplinkGiven => mode.push_str(" + --uplink"),
        }
        if let Some(n) = self.defect {
            mode.push_str(&format!(" (defect {n})"));
        }
        mode
    }

    /// Why this machine cannot run the cell, if it cannot.
    fn lacks(&self) -> Option<String> {
        for server in [self.options.nodelocal, self.options.coredns] {
            if !on_path(server.program()) {
                return Some(format!(
                    "{} not installed (run `cargo xtask setup`)",
                    server.program()
                ));
            }
        }
        if self.options.layout.is_bridged()
            && !Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()
        {
            return Some("br_netfilter is not loaded (`modprobe br_netfilter`)".to_owned());
        }
        None
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// One row of the table.
#[derive(Clone, Debug)]
struct Row {
    cell: Cell,
    expected: String,
    got: String,
    culprit: String,
    last_hop: String,
    outcome: Outcome,
    /// Why it failed or was skipped.
    why: String,
    /// The tracer said it lost events (then a failed cell runs once more).
    lost: Option<String>,
    /// A first run that failed while the tracer lost events, and why.
    retried: Option<String>,
    took: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail,
    Skip,
}

fn run_cell(cell: Cell, index: usize) -> Row {
    let started = Instant::now();
    let mut row = Row {
        cell,
        expected: cell.scenario.verdict().to_owned(),
        got: String::new(),
        culprit: String::new(),
        last_hop: String::new(),
        outcome: Outcome::Skip,
        why: String::new(),
        lost: None,
        retried: None,
        took: Duration::ZERO,
    };
    if let Some(why) = cell.lacks() {
        eprintln!("SKIP {}: {why}", cell.name);
        row.why = why;
        return row;
    }
    let fresh = row.clone();
    attempt(cell, index, &mut row);
    // A verdict is only as good as the tracer's coverage: a cell that failed
    // while the tracer lost events (another lab's load seen through the
    // socket hop, which sees every netns) runs once more, and says so.
    if row.outcome == Outcome::Fail
        && let Some(lost) = row.lost.clone()
    {
        eprintln!(
            "RETRY {}: failed while dnstrace lost events ({lost}): {}",
            cell.name, row.why
        );
        let first = format!("{} ({lost})", row.why);
        row = fresh;
        attempt(cell, index, &mut row);
        row.retried = Some(first);
    }
    row.took = started.elapsed();
    row
}

fn attempt(cell: Cell, index: usize, row: &mut Row) {
    if let Err(e) = try_cell(cell, index, row) {
        row.outcome = Outcome::Fail;
        row.why = format!("{e:#}");
    }
}

/// The uplinks named on dnstrace's start line ("…; uplink(s): a b; netns cookie …").
fn started_with_uplinks(stderr: &str) -> Vec<String> {
    stderr
        .split("uplink(s): ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .map(|list| list.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// What the tracer's summary says it lost, if anything.
fn losses(summary: &Value) -> Option<String> {
    let count = |v: &Value| v.as_u64().unwrap_or(0);
    let lost = [
        ("lost", count(&summary["lost"])),
        ("userspace.dropped", count(&summary["userspace"]["dropped"])),
        (
            "lookups.lost_events",
            count(&summary["lookups"]["lost_events"]),
        ),
        ("lookups.evicted", count(&summary["lookups"]["evicted"])),
    ];
    let said: Vec<String> = lost
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what}={n}"))
        .collect();
    (!said.is_empty()).then(|| said.join(" "))
}

fn try_cell(cell: Cell, index: usize, row: &mut Row) -> Result<()> {
    let tag = format!("m{index:02}");
    let t = Instant::now();
    let mut node = Node::with_options(&tag, cell.options).context("building the node")?;
    if cell.twist == Twist::DroppedBeyondUplink {
        left_via_uplink_dropped_beyond(&mut node)
    } else {
        cell.scenario.apply(&mut node)
    }
    .with_context(|| format!("applying {}", cell.mode()))?;
    let mut args = vec!["--auto", "--timeout", LOOKUP_TIMEOUT];
    if cell.twist == Twist::UplinkGiven {
        args.extend(["--uplink", node.upstream_link()]);
    }
    let built = t.elapsed();
    let tracer =
        Tracer::start(&node.lab, &node.node_ns, "trace", &args).context("start dnstrace")?;
    let attached = t.elapsed();
    let seen = cell.scenario.run_client(&node).context("run the client")?;
    let asked = t.elapsed();
    let expects = cell.scenario.expect(&node);
    for e in &expects {
        let want = seen
            .iter()
            .filter(|s| {
                s.command.contains(&format!("@{}", e.server.ip()))
                    && s.command.contains(e.qname.trim_end_matches('.'))
            })
            .count()
            .max(1);
        let _ = tracer.wait_lookups(|l| e.is_for(l), want, WAIT_LOOKUPS);
    }
    let waited = t.elapsed();
    let trace = tracer.stop(Signal::Int).context("stop dnstrace")?;
    // Found from the routes, default route or not: the link the upstreams are reached by.
    if cell.twist != Twist::UplinkGiven {
        let uplinks = started_with_uplinks(&trace.stderr);
        anyhow::ensure!(
            uplinks.iter().any(|u| u == node.upstream_link()),
            "dnstrace found the uplinks {uplinks:?}, not {} that leads to the upstreams",
            node.upstream_link()
        );
    }
    let mut log = format!(
        "{} [{}]: {} (node built {:.1} s, tracer attached {:.1} s, client done {:.1} s, lookups in {:.1} s)\n",
        cell.name,
        node.lab.prefix(),
        cell.mode(),
        built.as_secs_f64(),
        attached.as_secs_f64(),
        asked.as_secs_f64(),
        waited.as_secs_f64(),
    );
    for s in &seen {
        let _ = writeln!(log, "  $ {}\n    {}", s.command, s.summary());
    }
    let ours: Vec<&Value> = trace
        .lookups
        .iter()
        .filter(|l| expects.iter().any(|e| e.is_for(l)))
        .collect();
    for l in &ours {
        let _ = writeln!(log, "  dnstrace: {}", one_line(l));
    }
    let mut problems = Vec::new();
    for e in &expects {
        let (representative, result) = judge(e, &ours);
        if let Some(l) = representative
            && row.got.is_empty()
        {
            let field = |name: &str| l[name].as_str().unwrap_or("").to_owned();
            row.got = field("verdict");
            row.culprit = field("culprit");
            row.last_hop = field("last_hop");
        }
        if let Err(problem) = result {
            problems.push(format!("{}: {problem:#}", e.banner()));
        }
        for l in ours.iter().filter(|l| e.is_for(l)) {
            if let Err(problem) = also(cell, l) {
                problems.push(problem);
            }
        }
    }
    summarize_client(&seen, &mut log);
    row.lost = losses(&trace.summary);
    if !problems.is_empty() {
        // Coverage: whether the tracer lost events while the cell ran.
        let _ = writeln!(log, "  dnstrace summary: {}", trace.summary);
    }
    eprint!("{log}");
    if problems.is_empty() {
        row.outcome = Outcome::Pass;
    } else {
        row.outcome = Outcome::Fail;
        row.why = problems.join("; ");
    }
    Ok(())
}

/// What a cell checks beyond [`Expect`]: a loop's culprit names the pair
/// (`a <-> b`), and a query dropped after it left keeps that drop in the
/// detail.
fn also(cell: Cell, lookup: &Value) -> Result<(), String> {
    let field = |name: &str| lookup[name].as_str().unwrap_or("").to_owned();
    if cell.scenario == Scenario::ForwardingLoop && !field("culprit").contains(" <-> ") {
        return Err(format!(
            "culprit {:?} names no looping pair \"a <-> b\"",
            field("culprit")
        ));
    }
    if cell.twist == Twist::DroppedBeyondUplink && !field("detail").contains("NETFILTER_DROP") {
        return Err(format!(
            "detail {:?} does not mention the drop beyond the uplink (NETFILTER_DROP)",
            field("detail")
        ));
    }
    Ok(())
}

/// The lookup that stands for `e` in the table, and whether `e` holds.
fn judge<'v>(e: &Expect, ours: &[&'v Value]) -> (Option<&'v Value>, Result<()>) {
    let mine: Vec<&Value> = ours.iter().copied().filter(|l| e.is_for(l)).collect();
    let result = e.check_all(mine.iter().copied());
    let representative = if e.every {
        mine.iter().find(|l| e.check(l).is_err()).or(mine.first())
    } else {
        mine.iter().find(|l| e.check(l).is_ok()).or(mine.first())
    };
    (representative.copied(), result)
}

fn summarize_client(seen: &[ClientLookup], log: &mut String) {
    if seen.len() > 3 {
        let statuses: Vec<&str> = seen.iter().map(|s| s.status().unwrap_or("none")).collect();
        let _ = writeln!(log, "  client statuses: {statuses:?}");
    }
}

fn table(rows: &[Row]) -> String {
    let mut md = String::from(
        "| cell | failure mode | node-local | CoreDNS role | route | layout | family | expected | got | culprit | last hop | result |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let (nl, cd) = r.cell.roles();
        let o = &r.cell.options;
        let result = match (r.outcome, &r.retried) {
            (Outcome::Pass, None) => "pass".to_owned(),
            (Outcome::Pass, Some(_)) => "pass (2nd run: the 1st lost events)".to_owned(),
            (Outcome::Fail, _) => "**FAIL**".to_owned(),
            (Outcome::Skip, _) => format!("**SKIP**: {}", r.why),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {nl} | {cd} | {} | {} | {} | {} | {} | {} | {} | {result} |",
            r.cell.name,
            r.cell.mode(),
            o.route.name(),
            o.layout.name(),
            o.family.name(),
            r.expected,
            cell_text(&r.got),
            cell_text(&r.culprit),
            cell_text(&r.last_hop),
        );
    }
    md
}

fn cell_text(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.replace('|', "\\|")
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(manifest).join("target")
        })
}

#[test]
fn scenario_matrix() {
    if skip_without_root() {
        return;
    }
    if dnstrace_bin().is_none() {
        eprintln!("SKIP scenario_matrix: every cell needs the tracer");
        return;
    }
    let only: Vec<String> = std::env::var("DNSTRACE_MATRIX_ONLY")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let all = cells();
    let chosen: Vec<(usize, Cell)> = all
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, c)| only.is_empty() || only.iter().any(|o| c.name.contains(o.as_str())))
        .collect();
    let jobs = std::env::var("DNSTRACE_MATRIX_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(DEFAULT_JOBS)
        .max(1);
    let started = Instant::now();
    let queue = Arc::new(Mutex::new(chosen.iter().copied().collect::<VecDeque<_>>()));
    let rows = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..jobs.min(chosen.len()))
        .map(|_| {
            let (queue, rows) = (Arc::clone(&queue), Arc::clone(&rows));
            thread::spawn(move || {
                loop {
                    let Some((i, cell)) = queue.lock().unwrap().pop_front() else {
                        break;
                    };
                    let row = run_cell(cell, i);
                    rows.lock().unwrap().push((i, row));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a matrix worker panicked");
    }
    let mut rows = std::mem::take(&mut *rows.lock().unwrap());
    rows.sort_by_key(|(i, _)| *i);
    let rows: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect();
    let wall = started.elapsed();

    let mut md = table(&rows);
    let count = |o| rows.iter().filter(|r| r.outcome == o).count();
    let _ = writeln!(
        md,
        "\n{} cells: {} pass, {} fail, {} skipped; {jobs} in parallel, {:.0} s wall time.",
        rows.len(),
        count(Outcome::Pass),
        count(Outcome::Fail),
        count(Outcome::Skip),
        wall.as_secs_f64()
    );
    let path = target_dir().join("matrix.md");
    if let Err(e) = std::fs::write(&path, &md) {
        eprintln!("could not write {}: {e}", path.display());
    }
    eprintln!("\n{md}\n(written to {})", path.display());
    for r in rows.iter().filter(|r| r.outcome == Outcome::Skip) {
        eprintln!("SKIPPED {}: {}", r.cell.name, r.why);
    }
    for r in rows.iter().filter(|r| r.retried.is_some()) {
        eprintln!(
            "RAN TWICE {}: the first run failed while dnstrace lost events: {}",
            r.cell.name,
            r.retried.as_deref().unwrap_or("")
        );
    }
    for r in &rows {
        eprintln!("  {} took {:.1} s", r.cell.name, r.took.as_secs_f64());
    }
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.outcome == Outcome::Fail)
        .map(|r| format!("{} ({}): {}", r.cell.name, r.cell.mode(), r.why))
        .collect();
    assert!(
        failed.is_empty(),
        "{} wrong cell(s):\n{}",
        failed.len(),
        failed.join("\n")
    );
}
