//! Wires the stages together for `dnstrace watch`: capture → bounded queue →
//! decode → correlate → sinks, plus signals, the ready file, the periodic
//! per-upstream table and the exit summary.
use std::{
    io::{BufWriter, Write},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    capture::{Batch, Capture, CaptureConfig, links::Framing},
    cli::{Output, WatchConfig},
    correlate::{self, Correlator, Coverage},
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

/// How often open lookups are checked for their deadline and losses are noted.
const TICK: Duration = Duration::from_millis(100);

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
    let uplinks = match &cfg.uplinks {
        Some(u) => u.clone(),
        None => crate::capture::links::default_route_ifaces()
            .await
            .unwrap_or_default(),
    };
    let capture_cfg = CaptureConfig {
        ifaces: ifaces.clone(),
        socket_hop: cfg.socket_hop,
        ports: cfg.ports.clone(),
        snaplen: cfg.snaplen,
        ring_bytes: cfg.ring_size,
        tc_mode: cfg.tc_mode,
        tc_priority: cfg.tc_priority,
        drops: cfg.drops,
    };
    let mut capture = Capture::open(&capture_cfg).await?;
    announce(&capture, &cfg, &uplinks);
    if let Some(path) = &cfg.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing the ready file {}", path.display()))?;
    }

    let names = Names::new(
        capture.netns(),
        capture.links().iter().map(|l| (l.index, l.name.clone())),
    )
    .with_drop_reasons(capture.drop_reasons().clone());
    let all_ifaces = cfg.auto
        && capture
            .links()
            .iter()
            .all(|l| ifaces.contains(&l.name) || l.framing == Framing::Unsupported);
    let correlator = Correlator::new(correlate::Config {
        timeout_ns: cfg.timeout.as_nanos() as u64,
        uplinks: uplinks.clone(),
        host_netns: capture.netns(),
        watched: Coverage {
            ifaces,
            all_ifaces,
            socket: cfg.socket_hop,
            drops: capture
                .attached()
                .iter()
                .any(|p| p.point == decode::Point::Drop),
        },
        ..correlate::Config::default()
    });

    let (tx, rx) = mpsc::channel::<Batch>(cfg.queue);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (lost_tx, lost_rx) = watch::channel(0u64);
    let mut drain = capture
        .take_drain()
        .context("opening the ring buffer for polling")?;
    let consumer = Consumer::new(&cfg, names, correlator, lost_rx);
    let consumer = tokio::spawn(consumer.run(rx));
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
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = sigint.recv() => break Stop::Signal("SIGINT"),
                _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
                () = &mut deadline => break Stop::Duration,
                _ = tick.tick() => {
                    // The consumer only ends early when stdout is gone (e.g. `| head`).
                    if consumer.is_finished() {
                        break Stop::OutputClosed;
                    }
                    let _ = lost_tx.send(capture.counters().lost());
                }
            }
        }
    };
    log::info!("stopping: {stop:?}");

    let _ = stop_tx.send(true);
    let (mut drain, tx) = drain_task.await.context("the ring buffer task failed")?;
    // Detach first, then collect what the kernel emitted until that moment.
    capture.detach().await;
    drain.drain_rest(&tx).await;
    let _ = lost_tx.send(capture.counters().lost());
    drop(tx);
    let done = consumer.await.context("the output task failed")?;
    let Done {
        decoded,
        issues,
        lookups,
        upstreams,
        mut sink,
    } = done;
    let summary = Summary {
        netns: capture.netns(),
        kernel: capture.counters(),
        userspace: drain.stats(),
        decoded,
        issues,
        lookups,
        upstreams,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    if stop != Stop::OutputClosed {
        let _ = sink.upstreams(&summary.upstreams);
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

fn announce(capture: &Capture, cfg: &WatchConfig, uplinks: &[String]) {
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
    if !uplinks.is_empty() {
        msg.push_str(&format!("; uplink(s): {}", uplinks.join(" ")));
    }
    eprintln!("{msg}; netns cookie {}; Ctrl-C to stop", capture.netns());
}

/// What the consumer hands back at the end.
struct Done {
    decoded: u64,
    issues: IssueCounts,
    lookups: correlate::CorrelateStats,
    upstreams: Vec<correlate::UpstreamStats>,
    sink: Sink<BufWriter<std::io::Stdout>>,
}

/// Decodes, correlates and writes; owns all per-packet and per-lookup state.
struct Consumer {
    sink: Sink<BufWriter<std::io::Stdout>>,
    names: Names,
    correlator: Correlator,
    packets: bool,
    lost_rx: watch::Receiver<u64>,
    lost_seen: u64,
    upstream_every: Option<Duration>,
    decoded: u64,
    issues: IssueCounts,
}

impl Consumer {
    fn new(
        cfg: &WatchConfig,
        names: Names,
        correlator: Correlator,
        lost_rx: watch::Receiver<u64>,
    ) -> Self {
        let out = BufWriter::with_capacity(64 << 10, std::io::stdout());
        let sink = match cfg.output {
            Output::Text => Sink::Text(TextSink::new(out)),
            Output::Json => Sink::Json(JsonSink::new(out)),
        };
        Self {
            sink,
            names,
            correlator,
            packets: cfg.packets,
            lost_rx,
            lost_seen: 0,
            upstream_every: cfg.upstream_every,
            decoded: 0,
            issues: IssueCounts::default(),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Batch>) -> Done {
        let mut tick = tokio::time::interval(TICK);
        let mut next_table = self.upstream_every.map(|d| Instant::now() + d);
        let mut open = true;
        while open {
            let result = tokio::select! {
                batch = rx.recv() => match batch {
                    Some(batch) => self.batch(batch),
                    None => { open = false; Ok(()) }
                },
                _ = tick.tick() => {
                    let mut r = self.tick(mono_now_ns());
                    if let Some(at) = next_table
                        && Instant::now() >= at
                    {
                        next_table = self.upstream_every.map(|d| at + d);
                        r = r.and_then(|()| self.sink.upstreams(&self.correlator.upstreams()));
                    }
                    r.and_then(|()| self.sink.flush())
                }
            };
            if result.is_err() {
                // stdout is gone: stop, so that the main task notices.
                return self.done();
            }
        }
        let now = mono_now_ns();
        let _ = self.tick(now);
        for l in self.correlator.finish(now) {
            let _ = self.sink.lookup(&l);
        }
        let _ = self.sink.flush();
        self.done()
    }

    fn batch(&mut self, batch: Batch) -> std::io::Result<()> {
        for c in batch {
            let drop_reason = c.drop_reason.map(|r| self.names.drop_reason(r));
            let p = decode::decode(c.meta, c.link, &c.data);
            self.decoded += 1;
            self.issues.add(&p);
            if self.packets {
                self.sink.packet(&p, drop_reason.as_deref(), &self.names)?;
            }
            let now = p.meta.ts_ns;
            let iface = self.names.iface(&p.meta);
            let finished = self.correlator.ingest(
                correlate::Event {
                    packet: p,
                    iface,
                    drop_reason,
                },
                now,
            );
            for l in finished {
                self.sink.lookup(&l)?;
            }
        }
        self.sink.flush()
    }

    /// Notes losses the kernel counted since the last tick, then ends lookups past their deadline.
    fn tick(&mut self, now: u64) -> std::io::Result<()> {
        let lost = *self.lost_rx.borrow();
        if lost > self.lost_seen {
            self.correlator.note_loss(lost - self.lost_seen, now);
            self.lost_seen = lost;
        }
        for l in self.correlator.expire(now) {
            self.sink.lookup(&l)?;
        }
        Ok(())
    }

    fn done(self) -> Done {
        Done {
            decoded: self.decoded,
            issues: self.issues,
            lookups: self.correlator.stats(),
            upstreams: self.correlator.upstreams(),
            sink: self.sink,
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, so of every event.
fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Flushes stdout, ignoring a closed pipe.
pub fn flush_stdout() {
    let _ = std::io::stdout().flush();
}
