//! The tracer's own cost on a real node's DNS path (issue 11): the lab node's
//! pod sends 10k qps through node-local-dns → ClusterIP → upstream, once
//! with nothing attached, once under `dnstrace watch --auto` writing JSON,
//! once writing text, and once under `tcpdump -i any -w` on the same node;
//! modes rotate within each repeat. Each mode gets a fresh node and a fresh
//! process. Figures: the tool's CPU per 10k qps, the client's latency
//! (average and p99) against the runs with nothing attached, the bytes
//! written, and dnstrace's own counters (events per lookup, decode calls).
//!
//! For profiling the collector on this path's real mix of events, set
//! `DNSTRACE_BENCH_COST_PCAP=FILE`: the JSON runs then also write `--pcap
//! FILE`, which `dnstrace replay` reads back (those runs' CPU includes it).

use std::{fs::File, path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};
use dnstrace_tests::{
    Node, Proc, Signal,
    load::{ClientRun, percentile, quiet_nodelocal},
};

use super::{
    Ctx, STOP_GRACE,
    load::{QPS, build_dnsload, dnsload_args},
    measure::{Samples, TraceSummary, clk_tck, proc_ticks},
    report::Report,
    wait_file,
};
use crate::bail_if_stopped;

/// Queries per run: ten seconds at 10k qps.
const COUNT: u64 = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bare,
    Json,
    Text,
    Tcpdump,
}

const MODES: [Mode; 4] = [Mode::Bare, Mode::Json, Mode::Text, Mode::Tcpdump];

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Bare => "nothing attached",
            Mode::Json => "dnstrace `--output json`",
            Mode::Text => "dnstrace `--output text`",
            Mode::Tcpdump => "`tcpdump -i any -w`",
        }
    }
}

/// One run's figures.
#[derive(Default)]
struct Run {
    /// The tool's CPU, % of a core per 10k qps (None with nothing attached).
    cpu: Option<f64>,
    latency_avg_ms: f64,
    latency_p99_ms: f64,
    /// Bytes the tool wrote (its output file).
    bytes: u64,
    /// dnstrace's exit summary.
    summary: Option<TraceSummary>,
}

/// What one mode's figures are, over the repeats.
#[derive(Default)]
struct Figures {
    cpu: Samples,
    avg: Samples,
    p99: Samples,
    bytes_per_query: Samples,
    events_per_lookup: Samples,
    decodes_per_event: Samples,
    compact_share: Samples,
}

pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dnsload = build_dnsload()?;
    let mut figs: Vec<Figures> = MODES.iter().map(|_| Figures::default()).collect();
    for rep in 0..ctx.plan.repeats {
        for k in 0..MODES.len() {
            let i = (k + rep) % MODES.len();
            let mode = MODES[i];
            bail_if_stopped()?;
            let r = one(ctx, &dnsload, mode, rep)?;
            let f = &mut figs[i];
            f.avg.push(r.latency_avg_ms);
            f.p99.push(r.latency_p99_ms);
            if let Some(cpu) = r.cpu {
                f.cpu.push(cpu);
                f.bytes_per_query.push(r.bytes as f64 / COUNT as f64);
            }
            if let Some(s) = r.summary {
                f.events_per_lookup
                    .push(s.received as f64 / s.finished.max(1) as f64);
                f.decodes_per_event
                    .push(s.decoded.saturating_sub(s.reused) as f64 / s.received.max(1) as f64);
                f.compact_share
                    .push(100.0 * s.compact as f64 / s.emitted.max(1) as f64);
            }
            eprintln!(
                "[bench] cost: repeat {}, {}: CPU {} % per 10k qps, latency avg {:.3} ms, p99 {:.3} ms, {} bytes written",
                rep + 1,
                mode.label(),
                r.cpu.map_or("—".to_owned(), |c| format!("{c:.2}")),
                r.latency_avg_ms,
                r.latency_p99_ms,
                r.bytes
            );
        }
    }
    let [bare, json, text, tcpdump] = &figs[..] else {
        unreachable!("one figure set per mode");
    };
    let worst = json.cpu.max().max(text.cpu.max());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    report.goal(
        "dnstrace's own CPU per 10k qps, `--auto`, node-local-dns path: JSON / text",
        "≤ tcpdump `-i any -w` in every repeat",
        format!(
            "{} / {} % of a core (tcpdump: {} %)",
            json.cpu.show(2),
            text.cpu.show(2),
            tcpdump.cpu.show(2)
        ),
        worst <= tcpdump.cpu.min(),
        || {
            // % of a core per 10k lookups/s is µs of CPU per lookup.
            let per_event = worst * 1e3 / json.events_per_lookup.median();
            let need = tcpdump.cpu.min() * 1e3 / json.events_per_lookup.median();
            format!(
                "In the worst repeat dnstrace spent {worst:.1} µs of CPU per lookup: \
                 {per_event:.0} ns for each of the {:.1} events (sightings) it reads per lookup on \
                 this path, each read and stitched into its lookup ({:.0} % of them with a DNS \
                 message parsed, the rest taking the message of the sighting that carried their \
                 payload). tcpdump spent {:.1} µs per lookup at its least, writing each packet \
                 out unread. At or below that, dnstrace would have {need:.0} ns per event, \
                 {:.0}× less than now and less than the collector section's decode and \
                 stitching alone take per event.",
                json.events_per_lookup.median(),
                100.0 * json.decodes_per_event.median(),
                tcpdump.cpu.min(),
                per_event / need,
            )
        },
    );
    let within = |f: &Figures| f.p99.max() <= bare.p99.max() && f.avg.max() <= bare.avg.max();
    report.goal(
        "Added latency at 10k qps, node-local-dns path (client's average / p99)",
        "within the spread of runs with nothing attached",
        format!(
            "JSON avg {} p99 {} ms; nothing attached avg {} p99 {} ms",
            json.avg.show(3),
            json.p99.show(3),
            bare.avg.show(3),
            bare.p99.show(3)
        ),
        within(json) && within(text),
        || {
            let worst = |pick: fn(&Figures) -> &Samples| pick(json).max().max(pick(text).max());
            format!(
                "With dnstrace attached the worst repeat's client average was {:.3} ms and its \
                 p99 {:.3} ms; with nothing attached they ranged up to {:.3} and {:.3} ms. \
                 node-local-dns, CoreDNS, the upstream, the client and the tracer ({:.1} µs of \
                 CPU per lookup) share this machine's {cores} cores, and the tracer runs in \
                 bursts as it drains the ring; waits behind it are the likely source of the \
                 longer tail. It would take a core the DNS path does not use, or that much less \
                 CPU per event.",
                worst(|f| &f.avg),
                worst(|f| &f.p99),
                bare.avg.max(),
                bare.p99.max(),
                json.cpu.median(),
            )
        },
    );
    let mut rows = String::new();
    let cell = |s: &Samples, d: usize| {
        if s.0.is_empty() {
            "—".to_owned()
        } else {
            s.show(d)
        }
    };
    for (label, pick, d) in [
        (
            "the tool's CPU per 10k qps, % of a core",
            (|f: &Figures| &f.cpu) as fn(&Figures) -> &Samples,
            2,
        ),
        ("client latency avg, ms", |f| &f.avg, 3),
        ("client latency p99, ms", |f| &f.p99, 3),
        ("bytes written per query", |f| &f.bytes_per_query, 0),
        (
            "events per lookup (received ÷ lookups finished)",
            |f| &f.events_per_lookup,
            2,
        ),
        (
            "DNS messages parsed per event (the rest taken from the decode of the record that carried their payload)",
            |f| &f.decodes_per_event,
            2,
        ),
        (
            "events sent as compact records (payload copied once), %",
            |f| &f.compact_share,
            1,
        ),
    ] {
        rows.push_str(&format!(
            "| {label} | {} |\n",
            figs.iter()
                .map(|f| cell(pick(f), d))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    report.section(
        "The tracer's cost on the node-local-dns path",
        format!(
            "The lab node as in the load section: the pod's `dnsload --qps {QPS} --count {COUNT} \
             --sockets 8 --ids 32` goes to node-local-dns (dnsmasq, no cache), which forwards \
             to the ClusterIP (DNAT to the CoreDNS pod), which forwards to the upstream; every \
             query and reply is seen at the pod veth, node-local-dns's device and socket, the \
             CoreDNS veth and the uplink. Four modes, rotated within each of {} repeats, each on \
             a fresh node with a fresh process: nothing attached; `dnstrace watch --auto \
             --upstream-every 0 --output json` and `--output text` (default `--hops problems`, \
             stdout to a file on tmpfs); `tcpdump -n -i any -w FILE` (tmpfs). CPU is the tool \
             process's utime + stime (clock ticks, {} per second) from when it was ready to one \
             second after the last answer, over the {} s of load. Latency is the client's own, \
             send(2) to recv(2).\n\n\
             | | {} |\n|---|---|---|---|---|\n{rows}",
            ctx.plan.repeats,
            clk_tck(),
            COUNT / QPS,
            MODES.map(Mode::label).join(" | "),
        ),
    );
    Ok(())
}

/// The running tool of one mode.
struct Tool {
    proc: Proc,
    out: PathBuf,
    err: PathBuf,
}

fn one(ctx: &Ctx, dnsload: &std::path::Path, mode: Mode, rep: usize) -> Result<Run> {
    let node = Node::new("bco")?;
    quiet_nodelocal(&node)?;
    let tool = start(ctx, &node, mode, rep)?;
    let ticks0 = tool.as_ref().map(|t| proc_ticks(t.proc.pid));
    let log = node.lab.dir().join("dnsload.jsonl");
    let res = node
        .lab
        .cmd(&node.pod_ns, dnsload)
        .args(dnsload_args(&node, COUNT, &log))
        .stdin(Stdio::null())
        .output()
        .context("running dnsload")?;
    if !res.status.success() {
        bail!("dnsload: {}", String::from_utf8_lossy(&res.stderr));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut run = Run::default();
    if let (Some(t), Some(t0)) = (&tool, ticks0) {
        let secs = proc_ticks(t.proc.pid).saturating_sub(t0) as f64 / clk_tck();
        let load_secs = COUNT as f64 / QPS as f64;
        run.cpu = Some(secs / load_secs * 100.0 * (10_000.0 / QPS as f64));
    }
    let client = ClientRun::read(&log)?;
    let mut lat = client.latencies();
    if (lat.len() as u64) < COUNT * 99 / 100 {
        bail!(
            "{}: only {} of {COUNT} queries answered",
            mode.label(),
            lat.len()
        );
    }
    lat.sort_by(f64::total_cmp);
    run.latency_avg_ms = lat.iter().sum::<f64>() / lat.len() as f64;
    run.latency_p99_ms = percentile(&lat, 99.0).unwrap_or(f64::NAN);
    if let Some(t) = tool {
        let status = node.lab.stop(&t.proc, Signal::Int, STOP_GRACE)?;
        let stderr = std::fs::read_to_string(&t.err).unwrap_or_default();
        if !status.success() {
            bail!("{} exited with {status}: {stderr}", mode.label());
        }
        run.bytes = std::fs::metadata(&t.out).map_or(0, |m| m.len());
        if matches!(mode, Mode::Json | Mode::Text) {
            run.summary = Some(TraceSummary::parse(&stderr)?);
        }
    }
    Ok(run)
}

fn start(ctx: &Ctx, node: &Node, mode: Mode, rep: usize) -> Result<Option<Tool>> {
    let name = format!("cost{rep}");
    let out = node.lab.dir().join(format!("{name}.out"));
    let (proc, err) = match mode {
        Mode::Bare => return Ok(None),
        Mode::Json | Mode::Text => {
            let ready = node.lab.dir().join(format!("{name}.ready"));
            let err = node.lab.dir().join(format!("{name}.err"));
            let mut cmd = node.lab.cmd_setns(&node.node_ns, &ctx.bin)?;
            cmd.args(["watch", "--auto", "--upstream-every", "0", "--output"])
                .arg(if mode == Mode::Json { "json" } else { "text" })
                .arg("--ready-file")
                .arg(&ready);
            if let (Mode::Json, Some(pcap)) = (mode, std::env::var_os("DNSTRACE_BENCH_COST_PCAP")) {
                cmd.arg("--pcap").arg(pcap);
            }
            cmd.stdin(Stdio::null())
                .stdout(File::create(&out).with_context(|| format!("creating {}", out.display()))?)
                .stderr(File::create(&err).with_context(|| format!("creating {}", err.display()))?);
            let proc = node.lab.spawn(&name, cmd)?;
            wait_file(&node.lab, &proc, &ready, &err)?;
            (proc, err)
        }
        Mode::Tcpdump => {
            let mut cmd = node.lab.cmd_setns(&node.node_ns, "tcpdump")?;
            cmd.args(["-n", "-i", "any", "-w"]).arg(&out);
            let proc = node.lab.spawn_logged(&name, cmd)?;
            // tcpdump says "listening on …" once its socket is bound.
            node.lab
                .wait_for_log(&proc, "listening on", Duration::from_secs(10))
                .context("tcpdump did not start")?;
            let err = proc.log.clone().context("spawn_logged keeps a log")?;
            (proc, err)
        }
    };
    Ok(Some(Tool { proc, out, err }))
}
