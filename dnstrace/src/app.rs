//! Wires the stages together for `dnstrace watch`: capture → bounded queue → the
//! pipeline ([`crate::pipeline`]: decode → correlate → outputs), plus signals, the
//! ready file, the periodic per-upstream table and the exit summary.
use std::{io::Write, sync::Arc, time::Instant};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    capture::{Batch, Capture, CaptureConfig, LinkNote, Monitor, links::Framing},
    cli::{Output, WatchConfig},
    correlate::{self, Correlator, Coverage},
    decode::{self, LinkType},
    pipeline::{Consumer, Control, Done, Summary, TICK, mono_now_ns, start_tui},
    say,
    sink::{
        Names,
        pcap::{Bounds, PcapSink, PointDesc, PointKind, RunInfo},
        stdout_error,
    },
    tui,
};

/// Why the capture stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Signal(&'static str),
    Duration,
    OutputClosed,
    /// `q` or Ctrl-C in the TUI.
    Quit,
}

/// Runs `dnstrace watch` until a signal, `--duration`, or the reader goes away.
pub async fn watch(cfg: WatchConfig) -> anyhow::Result<Summary> {
    let started = Instant::now();
    tune_allocator();
    // With the TUI, logs move to the file when it takes the terminal.
    if let Some(path) = cfg
        .log_file
        .as_deref()
        .filter(|_| cfg.output != Output::Tui)
    {
        crate::logging::to_file(path)
            .with_context(|| format!("opening the log file {}", path.display()))?;
    }
    let sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let mut ifaces = cfg.ifaces.clone();
    // Subscribed before the listing, so that no interface slips in between.
    let mut monitor = None;
    if cfg.auto {
        monitor = match Monitor::open() {
            Ok(m) => Some(m),
            Err(e) => {
                log::warn!(
                    "not following interfaces that appear later: subscribing to link notifications failed: {e}"
                );
                None
            }
        };
        let links = crate::capture::links::list()
            .await
            .context("listing interfaces")?;
        for l in links {
            if !crate::capture::links::auto_selects(&l) {
                log::warn!("skipping {}: link-layer type dnstrace cannot parse", l.name);
            } else if !ifaces.contains(&l.name) {
                ifaces.push(l.name);
            }
        }
    }
    let uplinks = match &cfg.uplinks {
        Some(u) => u.clone(),
        None => match crate::capture::links::uplink_ifaces().await {
            Ok((found, how)) => {
                if found.is_empty() {
                    // Not a warning: a netns without routes off the node is normal (a test
                    // lab, a pod), and the start line says which uplinks are used.
                    log::info!(
                        "no uplink found (no default route and no route via a gateway): \
                         name it with --uplink IF for the per-upstream table and left_via_uplink"
                    );
                } else {
                    log::info!("uplink(s) {}: {how}", found.join(" "));
                }
                found
            }
            Err(e) => {
                log::warn!(
                    "reading the routes to find the uplinks: {e}; name them with --uplink IF"
                );
                Vec::new()
            }
        },
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
        follow: monitor.is_some(),
        dedup: cfg.dedup,
    };
    let mut capture = Capture::open(&capture_cfg).await?;
    if monitor.is_some() {
        // What was really attached: interfaces come and go while it starts.
        ifaces.clear();
        for p in capture.attached() {
            if p.ifindex != 0 && !ifaces.contains(&p.target) {
                ifaces.push(p.target.clone());
            }
        }
    }
    let inputs = Inputs {
        sigint,
        sigterm,
        monitor,
    };
    let result = run(&cfg, &mut capture, ifaces, uplinks, started, inputs).await;
    // Whatever failed after attaching, nothing stays attached (a no-op once `run` detached).
    capture.detach().await;
    result
}

struct Inputs {
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    /// `--auto`: link notifications, to follow interfaces as they come and go.
    monitor: Option<Monitor>,
}

/// Coverage changes waiting for the consumer; beyond this they are dropped and logged.
const CONTROL_QUEUE: usize = 4096;

/// Everything after the attach: the caller detaches whatever this returns.
async fn run(
    cfg: &WatchConfig,
    capture: &mut Capture,
    ifaces: Vec<String>,
    uplinks: Vec<String>,
    started: Instant,
    inputs: Inputs,
) -> anyhow::Result<Summary> {
    let Inputs {
        mut sigint,
        mut sigterm,
        mut monitor,
    } = inputs;
    announce(capture, cfg, &uplinks);

    let names = Names::new(
        capture.netns(),
        capture.links().iter().map(|l| (l.index, l.name.clone())),
    )
    .with_drop_reasons(capture.drop_reasons().clone())
    .with_node(cfg.node.clone())
    .with_hops(cfg.hops)
    .with_identity({
        let identity = crate::identity::Identity::start(cfg.pods.clone()).await;
        say!("dnstrace: {}", identity.source);
        identity
    });
    let all_ifaces = cfg.auto
        && capture
            .links()
            .iter()
            .all(|l| ifaces.contains(&l.name) || l.framing == Framing::Unsupported);
    let correlator = Correlator::new(correlate::Config {
        timeout_ns: cfg.timeout.as_nanos() as u64,
        max_lookups: cfg.max_lookups,
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
        ok_hops: shows_ok_hops(cfg.output, cfg.hops),
        ..correlate::Config::default()
    });

    let pcap = match &cfg.pcap {
        Some(path) => {
            let run = RunInfo {
                host_netns: capture.netns(),
                uplinks: uplinks.clone(),
                watched: correlator.config().watched.clone(),
                timeout_ms: cfg.timeout.as_millis() as u64,
            };
            let sink = PcapSink::create(
                path,
                &run,
                &pcap_points(capture),
                Bounds::for_timeout(cfg.timeout),
            )
            .with_context(|| format!("creating the pcapng file {}", path.display()))?;
            Some(sink)
        }
        None => None,
    };

    let mut drain = capture
        .take_drain()
        .context("opening the ring buffer for polling")?;

    // The TUI owns the terminal from here until the summary is due.
    let mut ui = match cfg.output {
        Output::Tui => {
            let header = tui::HeaderInfo {
                source: "watch".to_owned(),
                coverage: correlator.config().watched.clone(),
                netns: capture.netns(),
                uplinks: uplinks.clone(),
                ports: cfg.ports.clone(),
                clock_offset_ns: i128::from(names.epoch_ns(0)),
            };
            Some(start_tui(
                header,
                cfg.log_file.as_deref(),
                tui::QUEUE,
                tui::Options::default(),
            )?)
        }
        _ => None,
    };

    let metrics = match cfg.metrics {
        Some(addr) => {
            let m = Arc::new(crate::metrics::Metrics::new(cfg.metrics_pods));
            let (bound, task) = crate::metrics::serve(addr, m.clone()).await?;
            crate::say!("dnstrace: metrics on http://{bound}/metrics");
            Some((m, task))
        }
        None => None,
    };
    let tracer_figures = |capture: &Capture| crate::metrics::Tracer {
        kernel: capture.counters(),
        interfaces: capture
            .attached()
            .iter()
            .filter(|p| matches!(p.point, decode::Point::TcIngress))
            .count() as u64,
        socket_hop: capture
            .attached()
            .iter()
            .any(|p| p.point == decode::Point::SocketIn),
        drops: capture
            .attached()
            .iter()
            .any(|p| p.point == decode::Point::Drop),
    };
    if let Some((m, _)) = &metrics {
        m.tracer(&tracer_figures(capture));
    }

    // Only now has everything started: tell the script or test that waits.
    if let Some(path) = &cfg.ready_file
        && let Err(e) = crate::outfile::write_ready(path)
    {
        if let Some((feed, handle)) = ui.take() {
            feed.close();
            let _ = handle.finish().await;
        }
        return Err(
            anyhow::Error::new(e).context(format!("writing the ready file {}", path.display()))
        );
    }

    let (tx, rx) = mpsc::channel::<Batch>(cfg.queue);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (lost_tx, lost_rx) = watch::channel(0u64);
    let (ctl_tx, ctl_rx) = mpsc::channel::<Control>(CONTROL_QUEUE);
    let feed = ui.as_ref().map(|(feed, _)| feed.clone());
    let mut consumer = Consumer::new(cfg, names, correlator, lost_rx, feed);
    consumer.pcap = pcap;
    consumer.metrics = metrics.as_ref().map(|(m, _)| m.clone());
    consumer.control = Some(ctl_rx);
    if let Some(p) = consumer.pcap.as_mut().filter(|_| !cfg.filter.is_empty()) {
        p.only_shown();
    }
    let consumer = tokio::spawn(consumer.run(rx));
    let drain_task = tokio::spawn(async move {
        drain.run(&tx, &mut stop_rx).await;
        (drain, tx)
    });

    let watch_stdout = cfg.output != Output::Tui;
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
                () = ui_ended(&mut ui) => break Stop::Quit,
                note = next_link(&mut monitor) => {
                    follow_link(capture, note, &mut monitor, &ctl_tx).await;
                }
                _ = tick.tick() => {
                    // The consumer only ends early when writing to stdout failed; a
                    // reader that went away (`| head`) is noticed even with nothing to write.
                    if consumer.is_finished() || (watch_stdout && stdout_reader_gone()) {
                        break Stop::OutputClosed;
                    }
                    let _ = lost_tx.send(capture.counters().lost());
                    if let Some((m, _)) = &metrics {
                        m.tracer(&tracer_figures(capture));
                    }
                }
            }
        }
    };
    log::info!("stopping: {stop:?}");
    // Give the terminal back first: the summary goes there.
    let ui_exit = match ui.take() {
        Some((feed, handle)) => {
            feed.close();
            Some(handle.finish().await)
        }
        None => None,
    };

    drop(monitor);
    drop(ctl_tx);
    let _ = stop_tx.send(true);
    let (mut drain, tx) = drain_task.await.context("the ring buffer task failed")?;
    // Detach first, then collect what the kernel emitted until that moment.
    capture.detach().await;
    drain.drain_rest(&tx).await;
    let _ = lost_tx.send(capture.counters().lost());
    drop(tx);
    let mut done = consumer.await.context("the output task failed")?;
    let kernel = capture.counters();
    let pcap = done.close_pcap(done.end_epoch_ns.max(1), kernel.lost());
    let Done {
        decoded,
        reused,
        issues,
        tcp,
        lookups,
        upstreams,
        mut out,
        names,
        end_epoch_ns,
        error,
        ..
    } = done;
    // The reader went away: nothing more to say, and no one to say it to.
    let mut error = match error {
        None if stop == Stop::OutputClosed => {
            return Err(stdout_error(std::io::ErrorKind::BrokenPipe.into()));
        }
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Err(stdout_error(e)),
        e => e,
    };
    let mut summary = Summary {
        netns: capture.netns(),
        kernel,
        userspace: drain.stats(),
        decoded,
        decode_reused: reused,
        issues,
        tcp,
        lookups,
        upstreams,
        duration_ms: started.elapsed().as_millis() as u64,
        pcap,
        replay: None,
        output_failed: error.is_some(),
    };
    if error.is_none() {
        error = out
            .upstreams(&summary.upstreams, &names, end_epoch_ns)
            .and_then(|()| out.summary(&summary, &names, end_epoch_ns))
            .and_then(|()| out.flush())
            .err();
        summary.output_failed = error.is_some();
    }
    if let Stop::Signal(sig) = stop {
        say!("dnstrace: {sig} received, detached");
    }
    if stop == Stop::Quit {
        say!("dnstrace: quit, detached");
    }
    for line in summary.lines() {
        say!("{line}");
    }
    if let Some(path) = &cfg.log_file {
        say!("dnstrace: log in {}", path.display());
    }
    if let Some(Err(e)) = ui_exit {
        return Err(anyhow::Error::new(e).context("the TUI failed"));
    }
    if let Some(e) = error {
        return Err(stdout_error(e));
    }
    if let Some(p) = &summary.pcap
        && let Some(e) = &p.error
    {
        anyhow::bail!("writing the pcapng file {} failed: {e}", p.path);
    }
    Ok(summary)
}

/// The next link notification; never without a monitor.
async fn next_link(monitor: &mut Option<Monitor>) -> Option<LinkNote> {
    match monitor {
        Some(m) => m.next().await,
        None => std::future::pending().await,
    }
}

/// Follows one link notification: attaches to a new interface, lets go of one that
/// went away, and tells the consumer. `None`: the notification socket closed; it is
/// opened again and the links listed afresh.
async fn follow_link(
    capture: &mut Capture,
    note: Option<LinkNote>,
    monitor: &mut Option<Monitor>,
    ctl: &mpsc::Sender<Control>,
) {
    let tell = |c: Control| {
        if let Err(e) = ctl.try_send(c) {
            log::warn!("interface change not passed on (output behind): {e}");
        }
    };
    let changes = match note {
        Some(LinkNote::New(link)) => {
            tell(Control::Name(link.index, link.name.clone()));
            capture.link_seen(link).await.into_iter().collect()
        }
        Some(LinkNote::Gone { index, .. }) => capture.link_gone(index).into_iter().collect(),
        Some(LinkNote::Overrun) | None => {
            if note.is_none() {
                log::warn!("link notifications stopped; subscribing again");
                *monitor = Monitor::open()
                    .inspect_err(|e| {
                        log::warn!("not following interfaces any more: subscribing failed: {e}")
                    })
                    .ok();
            } else {
                log::warn!("link notifications were lost; listing the interfaces again");
            }
            match capture.resync().await {
                Ok(changes) => changes,
                Err(e) => {
                    log::warn!("listing the interfaces again: {e}");
                    Vec::new()
                }
            }
        }
    };
    for c in changes {
        if c.event == crate::capture::CoverageEvent::Attached {
            tell(Control::Name(c.ifindex, c.iface.clone()));
        }
        tell(Control::Coverage(c, mono_now_ns()));
    }
}

/// True once stdout is a pipe or socket whose reader has gone: poll(2) reports
/// POLLERR or POLLHUP on the write end. So `| head -1` ends the run at once, not at
/// the next write, which may be long in coming on a quiet node.
fn stdout_reader_gone() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, and no waiting.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n == 1 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Ends the process as a closed pipe ends other Unix tools: by SIGPIPE (status 141 in
/// a shell). Call it only once everything is detached.
pub fn die_of_sigpipe() -> ! {
    // SAFETY: restoring a signal's default action and raising it have no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

/// Resolves when the user quits the TUI (never without one).
async fn ui_ended(ui: &mut Option<(tui::FeedTx, tui::UiHandle)>) {
    match ui {
        Some((_, handle)) => handle.ended().await,
        None => std::future::pending().await,
    }
}

/// Whether anything shows an `ok` lookup's hops: the TUI's detail view, or `--hops all`.
/// Otherwise the correlator gives such a lookup only their count and path
/// (`correlate::Config::ok_hops`), all that its compact record writes.
pub fn shows_ok_hops(output: Output, hops: crate::cli::Hops) -> bool {
    output == Output::Tui || hops == crate::cli::Hops::All
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
    say!("{msg}; netns cookie {}; Ctrl-C to stop", capture.netns());
}

/// One interface block per capture point: each tc-hooked interface, the socket hop, drops.
fn pcap_points(capture: &Capture) -> Vec<PointDesc> {
    let netns = capture.netns();
    let mut points = Vec::new();
    for p in capture.attached() {
        let (kind, ifindex, link) = match p.mode {
            crate::capture::AttachMode::Cgroup => (PointKind::Socket, 0, LinkType::RawIp),
            crate::capture::AttachMode::Tracepoint => (PointKind::Drop, 0, LinkType::RawIp),
            _ => {
                let framing = capture
                    .links()
                    .iter()
                    .find(|l| l.index == p.ifindex)
                    .map(|l| l.framing);
                let link = match framing {
                    Some(Framing::RawIp) => LinkType::RawIp,
                    _ => LinkType::Ethernet,
                };
                (PointKind::Tc, p.ifindex, link)
            }
        };
        let name = kind.name().unwrap_or(&p.target).to_owned();
        let description = match kind {
            PointKind::Tc => format!("{name} in netns {netns} (this node's): {}", kind.role()),
            PointKind::Socket => format!("{}; cgroup {}", kind.role(), p.target),
            PointKind::Drop => kind.role().to_owned(),
        };
        let desc = PointDesc {
            kind,
            ifindex,
            link,
            name,
            description,
        };
        // Ingress and egress of one interface are one block: PcapSink keeps the first.
        points.push(desc);
    }
    points
}

/// glibc raises its mmap and trim thresholds each time a large block is freed (up to 32
/// and 64 MiB); after one burst, what is freed then stays in the process for good (a TCP
/// flood left the tracer 30 MiB above its start). Fixed thresholds stop that; 1 MiB is
/// above every block the pipeline allocates in a steady state (a batch's packets are at
/// most 512 KiB), so nothing is mapped and unmapped per batch. `MALLOC_*_` variables in
/// the environment still win.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (param, var) in [
        (libc::M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),
        (libc::M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"),
    ] {
        if std::env::var_os(var).is_none() {
            // SAFETY: mallopt with a valid parameter and value, before the runtime is busy.
            unsafe { libc::mallopt(param, 1 << 20) };
        }
    }
}

/// Flushes stdout; a failure names it (a closed pipe is [`crate::sink::StdoutClosed`]).
pub fn flush_stdout() -> anyhow::Result<()> {
    std::io::stdout().flush().map_err(stdout_error)
}
