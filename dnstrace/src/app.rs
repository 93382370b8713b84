//! Wires the stages together for `dnstrace watch`: capture → bounded queue →
//! decode → sink, plus signals, the ready file and the exit summary.
use std::{
    io::{BufWriter, Write},
    time::Instant,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    capture::{Batch, Capture, CaptureConfig, links::Framing},
    cli::{Output, WatchConfig},
    decode,
    sink::{IssueCounts, JsonSink, Names, Sink, Summary, TextSink},
};

/// Why the capture stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Signal(&'static str),
    Duration,
    OutputClosed,
}

/// Runs `dnstrace watch` until a signal, `--duration`, or the reader goes away.
pub async fn watch(cfg: WatchConfig) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let mut ifaces = cfg.ifaces.clone();
    if cfg.auto {
        let links = crate::capture::links::list()
            .await
            .context("listing interfaces")?;
        for l in links {
            if l.framing == Framing::Unsupported {
                log::warn!("skipping {}: link-layer type dnstrace cannot parse", l.name);
            } else if !ifaces.contains(&l.name) {
                ifaces.push(l.name);
            }
        }
    }
    let capture_cfg = CaptureConfig {
        ifaces,
        socket_hop: cfg.socket_hop,
        ports: cfg.ports.clone(),
        snaplen: cfg.snaplen,
        ring_bytes: cfg.ring_size,
        tc_mode: cfg.tc_mode,
        tc_priority: cfg.tc_priority,
        drops: cfg.drops,
    };
    let mut capture = Capture::open(&capture_cfg).await?;
    announce(&capture, &cfg);
    if let Some(path) = &cfg.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing the ready file {}", path.display()))?;
    }

    let names = Names::new(
        capture.netns(),
        capture.links().iter().map(|l| (l.index, l.name.clone())),
    )
    .with_drop_reasons(capture.drop_reasons().clone());
    let (tx, rx) = mpsc::channel::<Batch>(cfg.queue);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let mut drain = capture
        .take_drain()
        .context("opening the ring buffer for polling")?;
    let output = cfg.output;
    let consumer = tokio::task::spawn_blocking(move || consume(rx, names, output));
    let drain_task = tokio::spawn(async move {
        drain.run(&tx, &mut stop_rx).await;
        (drain, tx)
    });

    let stop = {
        let deadline = async {
            match cfg.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let consumer_done = async {
            // The consumer only ends early when stdout is gone (e.g. `| head`).
            while !consumer.is_finished() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            _ = sigint.recv() => Stop::Signal("SIGINT"),
            _ = sigterm.recv() => Stop::Signal("SIGTERM"),
            () = deadline => Stop::Duration,
            () = consumer_done => Stop::OutputClosed,
        }
    };
    log::info!("stopping: {stop:?}");

    let _ = stop_tx.send(true);
    let (mut drain, tx) = drain_task.await.context("the ring buffer task failed")?;
    // Detach first, then collect what the kernel emitted until that moment.
    capture.detach().await;
    drain.drain_rest(&tx).await;
    drop(tx);
    let (decoded, issues, mut sink) = consumer.await.context("the output task failed")?;
    let summary = Summary {
        netns: capture.netns(),
        kernel: capture.counters(),
        userspace: drain.stats(),
        decoded,
        issues,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    if stop != Stop::OutputClosed {
        let _ = sink.summary(&summary);
    }
    if let Stop::Signal(sig) = stop {
        eprintln!("dnstrace: {sig} received, detached");
    }
    for line in summary.lines() {
        eprintln!("{line}");
    }
    Ok(summary)
}

fn announce(capture: &Capture, cfg: &WatchConfig) {
    let mut tc: Vec<String> = Vec::new();
    let mut socket = None;
    let mut mode = None;
    let mut drops = false;
    for p in capture.attached() {
        match p.mode {
            crate::capture::AttachMode::Cgroup => socket = Some(p.target.clone()),
            crate::capture::AttachMode::Tracepoint => drops = true,
            m => {
                mode = Some(m.to_string());
                if !tc.contains(&p.target) {
                    tc.push(p.target.clone());
                }
            }
        }
    }
    let ports: Vec<String> = cfg.ports.iter().map(u16::to_string).collect();
    let mut msg = format!(
        "dnstrace: capturing UDP/TCP port {} (snaplen {})",
        ports.join(","),
        cfg.snaplen
    );
    if !tc.is_empty() {
        msg.push_str(&format!(
            " on {} interface(s) [{}] via {}",
            tc.len(),
            tc.join(" "),
            mode.unwrap_or_default()
        ));
    }
    if let Some(root) = socket {
        msg.push_str(&format!(
            "; socket hop via cgroup_skb on {root} (every netns)"
        ));
    }
    if drops {
        msg.push_str("; kernel drops via tp_btf/kfree_skb");
    }
    eprintln!("{msg}; netns cookie {}; Ctrl-C to stop", capture.netns());
}

/// Decodes and writes every batch; returns when the queue closes or stdout is gone.
fn consume(
    mut rx: mpsc::Receiver<Batch>,
    names: Names,
    output: Output,
) -> (u64, IssueCounts, Sink<BufWriter<std::io::Stdout>>) {
    let out = BufWriter::with_capacity(64 << 10, std::io::stdout());
    let mut sink = match output {
        Output::Text => Sink::Text(TextSink::new(out)),
        Output::Json => Sink::Json(JsonSink::new(out)),
    };
    let mut decoded = 0u64;
    let mut issues = IssueCounts::default();
    while let Some(batch) = rx.blocking_recv() {
        for c in batch {
            let drop = c.drop_reason.map(|r| names.drop_reason(r));
            let p = decode::decode(c.meta, c.link, &c.data);
            decoded += 1;
            issues.add(&p);
            if sink.packet(&p, drop.as_deref(), &names).is_err() {
                return (decoded, issues, sink);
            }
        }
        if sink.flush().is_err() {
            return (decoded, issues, sink);
        }
    }
    let _ = sink.flush();
    (decoded, issues, sink)
}

/// Flushes stdout, ignoring a closed pipe.
pub fn flush_stdout() {
    let _ = std::io::stdout().flush();
}
