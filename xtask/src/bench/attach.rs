//! Attach time: dnstrace on a netns with 250 veths, named one by one and with
//! `--auto` (which adds lo, the socket hop and kernel drops). Timed from the
//! spawn to the ready file, which dnstrace writes once every attach succeeded.

use std::time::Instant;

use anyhow::Result;

use super::{Ctx, measure::Samples, report::Report, start_dnstrace, stop_dnstrace, topo::many_lab};
use crate::bail_if_stopped;

pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let n = ctx.plan.veths;
    let t = Instant::now();
    let m = many_lab(n)?;
    let built = t.elapsed();
    let named = vec![
        "watch".to_owned(),
        "--iface".to_owned(),
        m.ifaces.join(","),
        "--upstream-every".to_owned(),
        "0".to_owned(),
    ];
    let auto: Vec<String> = ["watch", "--auto", "--upstream-every", "0"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut tcx = named.clone();
    tcx.extend(["--tc-mode".to_owned(), "tcx".to_owned()]);
    // (label, args, repeats): tcx attaches cost a kernel RCU grace period each, so fewer repeats.
    let configs = [
        (
            format!(
                "`dnstrace watch --iface <{n} names> --upstream-every 0` (default `--tc-mode auto`: netlink tc above 32 interfaces)"
            ),
            &named,
            ctx.plan.repeats,
        ),
        (
            format!("`dnstrace watch --iface <{n} names> --upstream-every 0 --tc-mode tcx`"),
            &tcx,
            ctx.plan.attach_repeats,
        ),
        (
            "`dnstrace watch --auto --upstream-every 0` (default `--tc-mode auto`)".to_owned(),
            &auto,
            ctx.plan.repeats,
        ),
    ];
    let mut results: Vec<(Samples, Samples)> = Vec::new();
    for (i, (label, args, repeats)) in configs.iter().enumerate() {
        let (mut up, mut down) = (Samples::default(), Samples::default());
        for r in 0..*repeats {
            bail_if_stopped()?;
            let (t, took) = start_dnstrace(ctx, &m.lab, &m.ns, &format!("att{i}{r}"), args)?;
            let stopping = Instant::now();
            stop_dnstrace(&m.lab, t)?;
            let detach = stopping.elapsed();
            eprintln!(
                "[bench] attach: {label}: {:.0} ms, stop+detach {:.0} ms",
                took.as_secs_f64() * 1e3,
                detach.as_secs_f64() * 1e3
            );
            up.push(took.as_secs_f64() * 1e3);
            down.push(detach.as_secs_f64() * 1e3);
        }
        results.push((up, down));
    }
    report.row(
        &format!("Attach time, {n} veths named with -i (default: netlink tc above 32 interfaces)"),
        "≤ 1 s",
        format!(
            "{} ms (tcx forced: {} ms)",
            results[0].0.show(0),
            results[1].0.show(0)
        ),
        Some(results[0].0.max() <= 1000.0),
    );
    report.row(
        &format!("Attach time, --auto on a netns with {n} veths (default mode)"),
        "≤ 1 s",
        format!("{} ms", results[2].0.show(0)),
        Some(results[2].0.max() <= 1000.0),
    );
    let mut body = format!(
        "A netns `{ns}` with {n} veths, all up (built in {built:.1} s with `ip -batch`). Time from \
         spawning dnstrace to its `--ready-file` (written once every attach succeeded: \
         2 × {n} tc hooks, plus for `--auto` lo, the cgroup_skb socket hop and the kfree_skb \
         tracepoint), and from SIGINT to exit (detach, final drain, summary).\n\n\
         | | repeats | attach, ms | stop and detach, ms |\n|---|---|---|---|\n",
        ns = m.ns,
        built = built.as_secs_f64(),
    );
    for ((label, _, repeats), (up, down)) in configs.iter().zip(&results) {
        body.push_str(&format!(
            "| {label} | {repeats} | {} | {} |\n",
            up.show(0),
            down.show(0)
        ));
    }
    body.push_str(
        "\nEvery tcx attach and detach waits for an RCU grace period under the RTNL lock \
         (the kernel swaps the hook's program array and must wait for readers of the old one), \
         so they cannot overlap: on this kernel that is about 16 ms per hook, whatever the \
         tracer does. Netlink tc filters (cls_bpf) are freed asynchronously. So `--tc-mode auto` \
         uses tcx only up to 32 interfaces and netlink tc beyond. tcx links vanish with the \
         process even after SIGKILL; netlink filters are removed on SIGINT, SIGTERM and exit, \
         but not after SIGKILL.\n",
    );
    report.section("Attach time", body);
    Ok(())
}
