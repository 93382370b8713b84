//! Bytes written per healthy lookup (issue 10, part 7): the same healthy load
//! (dnsload at 10k qps from the lab node's pod through node-local-dns →
//! ClusterIP → upstream) traced once with the default `--hops problems` and
//! once with `--hops all`, repeats interleaved. Only the pod's `ok` lookups
//! count; the figure is the mean JSON line length, newline included.

use std::{path::Path, process::Stdio};

use anyhow::{Context, Result, bail};
use dnstrace_tests::{Node, load::quiet_nodelocal};
use serde_json::Value;

use super::{
    Ctx,
    load::{QPS, build_dnsload, dnsload_args, traced},
    measure::Samples,
    report::Report,
};
use crate::bail_if_stopped;

/// Lookups per run: two seconds at 10k qps.
const COUNT: u64 = 20_000;
/// The issue's target for the default output.
const TARGET_BYTES: f64 = 400.0;

/// One run's figures.
struct Volume {
    /// Mean bytes per `ok` lookup of the pod.
    per_lookup: f64,
    /// How many there were.
    lookups: usize,
}

pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dnsload = build_dnsload()?;
    let (mut compact, mut full) = (Vec::new(), Vec::new());
    for rep in 0..ctx.plan.repeats {
        for (hops, into) in [("problems", &mut compact), ("all", &mut full)] {
            bail_if_stopped()?;
            let v = one(ctx, &dnsload, hops)?;
            eprintln!(
                "[bench] volume: repeat {}, --hops {hops}: {:.0} bytes per ok lookup over {} lookups",
                rep + 1,
                v.per_lookup,
                v.lookups
            );
            into.push(v);
        }
    }
    let per = |v: &[Volume]| Samples(v.iter().map(|v| v.per_lookup).collect());
    let (c, f) = (per(&compact), per(&full));
    let rate = |bytes: f64| bytes * QPS as f64 / 1e6;
    report.row(
        "JSON bytes per healthy lookup, default `--hops problems`",
        "≤ 400 in every repeat",
        format!("{} ({:.1} MB/s at 10k qps)", c.show(0), rate(c.max())),
        Some(c.max() <= TARGET_BYTES),
    );
    report.row(
        "JSON bytes per healthy lookup, `--hops all`",
        "—",
        format!("{} ({:.1} MB/s at 10k qps)", f.show(0), rate(f.max())),
        None,
    );
    let lookups: Vec<String> = compact
        .iter()
        .chain(&full)
        .map(|v| v.lookups.to_string())
        .collect();
    report.section(
        "Volume of healthy traffic",
        format!(
            "The lab node as in the load section (node-local-dns → ClusterIP → upstream, no cache), \
             `dnsload --qps {QPS} --count {COUNT} --sockets 8 --ids 32` from the pod, traced by \
             `dnstrace watch --auto --output json --timeout 2s --upstream-every 0` in the node netns, \
             once with the default `--hops problems` and once with `--hops all`, {} repeats \
             interleaved. The figure is the mean length of the pod's `ok` lookup lines (newline \
             included); every run's count of those lookups: {}.\n\n\
             | output | bytes per healthy lookup, median (min–max) | at 10k qps |\n|---|---|---|\n\
             | `--hops problems` (default): one compact record | {} | {:.1} MB/s |\n\
             | `--hops all`: every hop | {} | {:.1} MB/s |\n",
            ctx.plan.repeats,
            lookups.join(", "),
            c.show(0),
            rate(c.median()),
            f.show(0),
            rate(f.median()),
        ),
    );
    Ok(())
}

fn one(ctx: &Ctx, dnsload: &Path, hops: &str) -> Result<Volume> {
    let node = Node::new("bvo")?;
    quiet_nodelocal(&node)?;
    let (out, (), _) = traced(ctx, &node, "trace", &["--hops", hops], |node| {
        let log = node.lab.dir().join("dnsload.jsonl");
        let res = node
            .lab
            .cmd(&node.pod_ns, dnsload)
            .args(dnsload_args(node, COUNT, &log))
            .stdin(Stdio::null())
            .output()
            .context("running dnsload")?;
        if !res.status.success() {
            bail!("dnsload: {}", String::from_utf8_lossy(&res.stderr));
        }
        Ok(())
    })?;
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let pod = format!("{}:", node.pod_ip);
    let (mut bytes, mut lookups) = (0usize, 0usize);
    for line in text.lines() {
        if !line.contains(r#""type":"lookup""#) {
            continue;
        }
        let v: Value = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
        let mine = v["client"].as_str().is_some_and(|c| c.starts_with(&pod));
        if mine && v["verdict"] == "ok" {
            bytes += line.len() + 1;
            lookups += 1;
        }
    }
    if (lookups as u64) < COUNT * 9 / 10 {
        bail!("only {lookups} ok lookups of the pod in {}", out.display());
    }
    Ok(Volume {
        per_lookup: bytes as f64 / lookups as f64,
        lookups,
    })
}
