//! Wires the stages together for `dnstrace watch`: capture → bounded queue →
//! decode → correlate → sinks, plus signals, the ready file, the periodic
//! per-upstream table and the exit summary.
use std::{
    io::{BufWriter, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    capture::{Batch, Capture, CaptureConfig, CoverageChange, LinkNote, Monitor, links::Framing},
    cli::{Output, WatchConfig},
    correlate::{self, Correlator, Coverage, Lookup, Placement},
    decode::{self, LinkType, Meta, Packet},
    say,
    sink::{
        IssueCounts, JsonSink, Names, Sink, Summary, TextSink,
        pcap::{Bounds, PcapSink, PcapStats, PointDesc, PointKind, Record, RunInfo},
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

/// How often open lookups are checked for their deadline and losses are noted.
const TICK: Duration = Duration::from_millis(100);

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

/// What the main task tells the consumer besides packets.
#[derive(Debug)]
pub(crate) enum Control {
    /// An interface's name, before anything captured on it can arrive.
    Name(u32, String),
    /// The interfaces watched changed, at this monotonic time.
    Coverage(CoverageChange, u64),
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
        issues,
        tcp,
        lookups,
        upstreams,
        mut sink,
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
        error = sink
            .upstreams(&summary.upstreams, &names, end_epoch_ns)
            .and_then(|()| sink.summary(&summary, &names, end_epoch_ns))
            .and_then(|()| sink.flush())
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

/// What the consumer hands back at the end.
pub(crate) struct Done {
    pub decoded: u64,
    pub issues: IssueCounts,
    pub tcp: decode::tcp::TcpStats,
    pub lookups: correlate::CorrelateStats,
    pub upstreams: Vec<correlate::UpstreamStats>,
    pub sink: Sink<BufWriter<std::io::Stdout>>,
    /// Names and clock of the records still to write (upstreams, summary).
    pub names: Names,
    pub pcap: Option<PcapSink>,
    /// The `--pcap` file after writing it failed.
    pub pcap_failed: Option<PcapStats>,
    pub end_epoch_ns: u64,
    /// The first error writing to stdout; nothing more was written after it.
    pub error: Option<std::io::Error>,
}

impl Done {
    /// Ends the `--pcap` file, if there is one: what was written, and any error.
    pub fn close_pcap(&mut self, end_epoch_ns: u64, lost: u64) -> Option<PcapStats> {
        match self.pcap.take() {
            Some(p) => Some(p.close(end_epoch_ns, lost)),
            None => self.pcap_failed.take(),
        }
    }
}

/// Opens the full-screen view; logs go to `log_file` from now on, since the screen owns
/// the terminal.
pub(crate) fn start_tui(
    header: tui::HeaderInfo,
    log_file: Option<&std::path::Path>,
    queue: usize,
    opts: tui::Options,
) -> anyhow::Result<(tui::FeedTx, tui::UiHandle)> {
    if let Some(path) = log_file {
        crate::logging::to_file(path)
            .with_context(|| format!("opening the log file {}", path.display()))?;
    }
    let (feed, rx) = tui::channel(queue);
    let handle = tui::spawn(rx, header, opts).context("starting the TUI")?;
    Ok((feed, handle))
}

/// Where lookups go: the screen when it is up, else text or JSON lines on stdout.
pub(crate) fn stdout_sink(
    output: Output,
    tui: Option<tui::FeedTx>,
) -> Sink<BufWriter<std::io::Stdout>> {
    let out = BufWriter::with_capacity(64 << 10, std::io::stdout());
    match (output, tui) {
        (_, Some(feed)) => Sink::Tui(feed),
        (Output::Json, None) => Sink::Json(JsonSink::new(out)),
        _ => Sink::Text(TextSink::new(out)),
    }
}

/// One captured packet as the pipeline takes it: from the ring buffer, or from a file.
pub(crate) struct Frame<'a> {
    pub link: LinkType,
    pub data: &'a [u8],
    /// For drop events: the kernel's drop reason name.
    pub drop_reason: Option<String>,
    /// The capture point's name when known already (replay of our own file); else it
    /// comes from [`Names::iface`].
    pub iface: Option<String>,
}

/// Decodes, correlates and writes; owns all per-packet and per-lookup state. Fed by the
/// live capture ([`Consumer::run`]) or by a file (`crate::replay`).
pub(crate) struct Consumer {
    pub sink: Sink<BufWriter<std::io::Stdout>>,
    pub names: Names,
    pub correlator: Correlator,
    packets: bool,
    lost_rx: watch::Receiver<u64>,
    lost_seen: u64,
    upstream_every: Option<Duration>,
    decoded: u64,
    issues: IssueCounts,
    /// `--pcap`: every packet, commented with its lookup and verdict.
    pub pcap: Option<PcapSink>,
    /// What `--pcap` wrote before writing failed.
    pcap_failed: Option<PcapStats>,
    /// Reassembles DNS over TCP: several messages per segment, split messages.
    pub tcp: decode::tcp::Streams,
    finished: Vec<Lookup>,
    placed: Vec<Placement>,
    /// When [`Consumer::finish`] ran, in ns since the Unix epoch.
    end_epoch_ns: u64,
    trim: Trim,
    /// Capture time of the newest event decoded: the clock that ends lookups while
    /// captured events still wait in the queue.
    newest_ts: u64,
    /// `--client`, `--qname`, `--verdict`: which finished lookups are written out.
    filter: crate::filter::LookupFilter,
    not_shown: u64,
    problems_shown: u64,
    /// `--metrics`: every finished lookup is counted there.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// `watch --auto`: interface names and coverage changes from the main task.
    pub control: Option<mpsc::Receiver<Control>>,
    /// `--packets` with a lookup filter: lines wait for their lookup's verdict.
    held: Option<crate::hold::HoldPackets>,
}

impl Consumer {
    fn new(
        cfg: &WatchConfig,
        names: Names,
        correlator: Correlator,
        lost_rx: watch::Receiver<u64>,
        tui: Option<tui::FeedTx>,
    ) -> Self {
        let sink = stdout_sink(cfg.output, tui);
        Self::with_sink(
            sink,
            names,
            correlator,
            cfg.packets,
            cfg.upstream_every,
            lost_rx,
            cfg.filter.clone(),
        )
    }

    pub(crate) fn with_sink(
        sink: Sink<BufWriter<std::io::Stdout>>,
        names: Names,
        correlator: Correlator,
        packets: bool,
        upstream_every: Option<Duration>,
        lost_rx: watch::Receiver<u64>,
        filter: crate::filter::LookupFilter,
    ) -> Self {
        let held = (packets && !filter.is_empty()).then(crate::hold::HoldPackets::default);
        Self {
            sink,
            names,
            correlator,
            packets,
            lost_rx,
            lost_seen: 0,
            upstream_every,
            decoded: 0,
            issues: IssueCounts::default(),
            pcap: None,
            pcap_failed: None,
            tcp: decode::tcp::Streams::new(),
            finished: Vec::new(),
            placed: Vec::new(),
            end_epoch_ns: 0,
            trim: Trim::default(),
            newest_ts: 0,
            filter,
            not_shown: 0,
            problems_shown: 0,
            metrics: None,
            control: None,
            held,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Batch>) -> Done {
        let mut tick = tokio::time::interval(TICK);
        let mut next_table = self.upstream_every.map(|d| Instant::now() + d);
        let mut open = true;
        while open {
            let result = tokio::select! {
                // Names first: a batch may hold packets of an interface just attached.
                biased;
                Some(c) = recv_control(&mut self.control) => self.control(c),
                batch = rx.recv() => match batch {
                    Some(batch) => self.batch(batch),
                    None => { open = false; Ok(()) }
                },
                _ = tick.tick() => {
                    let now = expiry_horizon(mono_now_ns(), self.newest_ts, rx.is_empty());
                    let mut r = self.tick(now);
                    if let Some(at) = next_table
                        && Instant::now() >= at
                    {
                        next_table = self.upstream_every.map(|d| at + d);
                        let at = self.names.epoch_ns(now);
                        r = r.and_then(|()| {
                            self.sink.upstreams(&self.correlator.upstreams(), &self.names, at)
                        });
                    }
                    r.and_then(|()| self.sink.flush())
                }
            };
            if let Err(e) = result {
                // stdout failed: stop, so that the main task notices.
                return self.done_with(Some(e));
            }
        }
        let now = mono_now_ns();
        let end = self.tick(now).and_then(|()| self.finish(now));
        self.done_with(end.err())
    }

    fn batch(&mut self, batch: Batch) -> std::io::Result<()> {
        // Whatever the main task said before these packets were drained.
        while let Some(c) = self.control.as_mut().and_then(|rx| rx.try_recv().ok()) {
            self.control(c)?;
        }
        for c in batch {
            let drop_reason = c.drop_reason.map(|r| self.names.drop_reason(r));
            self.frame(
                c.meta,
                Frame {
                    link: c.link,
                    data: &c.data,
                    drop_reason,
                    iface: None,
                },
            )?;
        }
        self.sink.flush()
    }

    /// A message from the main task: an interface's name, or a change of coverage, which
    /// the correlator takes into account and the output shows.
    fn control(&mut self, c: Control) -> std::io::Result<()> {
        match c {
            Control::Name(index, name) => {
                self.names.add_iface(index, name);
                Ok(())
            }
            Control::Coverage(change, at) => {
                use crate::capture::CoverageEvent as E;
                match change.event {
                    E::Attached => self.correlator.iface_watched(&change.iface),
                    E::Detached => {
                        self.correlator.iface_gone(&change.iface, at);
                        self.names.retire(change.ifindex, at);
                    }
                    E::AttachFailed => self.correlator.iface_unwatched(&change.iface),
                    E::Renamed => {
                        if let Some(old) = &change.old_name {
                            self.correlator.iface_renamed(old, &change.iface);
                        }
                    }
                }
                let watched = &self.correlator.config().watched;
                self.sink
                    .coverage(&change, &self.names, self.names.epoch_ns(at), watched)
            }
        }
    }

    /// Decodes one frame and takes it through the pipeline.
    pub(crate) fn frame(&mut self, meta: Meta, f: Frame<'_>) -> std::io::Result<()> {
        let p = decode::decode_with(meta, f.link, f.data, self.detail());
        self.decoded(&f, p)
    }

    /// How much of each DNS message to decode: the answers only when packet lines show them.
    pub(crate) fn detail(&self) -> decode::Detail {
        if self.packets {
            decode::Detail::Full
        } else {
            decode::Detail::Stitch
        }
    }

    /// Takes one decoded frame through reassembly, the packet output, the correlator and
    /// the pcapng writer.
    pub(crate) fn decoded(&mut self, f: &Frame<'_>, p: Packet) -> std::io::Result<()> {
        self.decoded += 1;
        self.trim.input(f.data.len());
        let ts = p.meta.ts_ns;
        self.newest_ts = self.newest_ts.max(ts);
        let iface = match &f.iface {
            Some(name) => name.clone(),
            None => self.names.iface(&p.meta),
        };
        // The pcapng record needs the frame's metadata after the packet has moved on.
        let meta = self.pcap.is_some().then(|| p.meta.clone());
        self.placed.clear();
        if p.proto == Some(decode::Proto::Tcp) {
            let packets = self.tcp.packets(p, f.link, f.data);
            // Before its messages: they came after the hole.
            if let Some(h) = self.tcp.take_hole() {
                self.correlator.note_tcp_gap(h.src, h.dst, h.bytes, h.ts_ns);
            }
            for p in packets {
                self.ingest(p, iface.clone(), f)?;
            }
        } else {
            self.ingest(p, iface.clone(), f)?;
        }
        if let (Some(pcap), Some(meta)) = (&mut self.pcap, &meta) {
            let written = pcap.packet(Record {
                epoch_ns: self.names.epoch_ns(ts),
                meta,
                link: f.link,
                data: f.data,
                iface: &iface,
                drop_reason: f.drop_reason.as_deref(),
                placed: &self.placed,
            });
            self.pcap_failed(written);
        }
        self.emit_finished(ts)
    }

    /// One DNS message (a TCP segment may hold several) into the packet output and the
    /// correlator.
    fn ingest(&mut self, p: Packet, iface: String, f: &Frame<'_>) -> std::io::Result<()> {
        self.issues.add(&p);
        let held_line = match (&self.held, self.packets) {
            (Some(_), _) => Some(self.sink.render_packet(
                &p,
                f.drop_reason.as_deref(),
                &self.names,
            )),
            (None, true) => {
                self.sink
                    .packet(&p, f.drop_reason.as_deref(), &self.names)?;
                None
            }
            (None, false) => None,
        };
        let now = p.meta.ts_ns;
        let finished = self.correlator.ingest(
            correlate::Event {
                packet: p,
                iface,
                drop_reason: f.drop_reason.clone(),
            },
            now,
        );
        let placed = self.correlator.placed();
        if let (Some(held), Some(line)) = (&mut self.held, held_line) {
            held.push(placed.as_ref().map(|p| p.lookup), line);
        }
        if let Some(placed) = placed {
            self.placed.push(placed);
        }
        self.finished.extend(finished);
        Ok(())
    }

    /// A pcapng write error stops the file, not the capture; the summary reports it
    /// and the run ends in failure.
    fn pcap_failed(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r
            && let Some(pcap) = self.pcap.take()
        {
            log::error!("writing the pcapng file failed, no more packets go to it: {e}");
            self.pcap_failed = Some(pcap.failed(&e));
        }
    }

    /// Writes the lookups that finished, and the pcapng packets that were waiting for
    /// their verdicts.
    fn emit_finished(&mut self, now: u64) -> std::io::Result<()> {
        if self.finished.is_empty() {
            return Ok(());
        }
        let mut finished = std::mem::take(&mut self.finished);
        for mut l in finished.drain(..) {
            if let Some(id) = self.names.identity() {
                id.fill(&mut l);
            }
            if let Some(m) = &self.metrics {
                m.lookup(&l);
            }
            let shown = self.filter.matches(&l);
            if let Some(pcap) = &mut self.pcap {
                pcap.lookup_done(&l, shown);
            }
            if let Some(held) = &mut self.held {
                held.decide(l.id, shown);
            }
            if shown {
                if l.verdict != correlate::Verdict::Ok {
                    self.problems_shown += 1;
                }
                self.sink.lookup(l, &self.names)?;
            } else {
                self.not_shown += 1;
            }
        }
        // Keep the buffer's capacity for the next packet.
        self.finished = finished;
        self.drain_pcap(now);
        self.drain_held(false)
    }

    /// Writes the held packet lines whose lookups have ended (`all`: every one).
    fn drain_held(&mut self, all: bool) -> std::io::Result<()> {
        let (Some(held), sink) = (&mut self.held, &mut self.sink) else {
            return Ok(());
        };
        held.drain(all, |line| sink.held_packet(line))
    }

    /// Writes the pcapng packets whose lookups have ended or whose bound has passed.
    fn drain_pcap(&mut self, now: u64) {
        if let Some(pcap) = &mut self.pcap {
            let written = pcap.drain(now, false);
            self.pcap_failed(written);
        }
    }

    /// Notes losses the kernel counted since the last tick, then ends lookups past their deadline.
    pub(crate) fn tick(&mut self, now: u64) -> std::io::Result<()> {
        let lost = *self.lost_rx.borrow();
        if lost > self.lost_seen {
            self.correlator.note_loss(lost - self.lost_seen, now);
            self.lost_seen = lost;
        }
        let expired = self.correlator.expire(now);
        self.finished.extend(expired);
        self.tcp.expire(now);
        self.names.forget_retired(now);
        let r = self.emit_finished(now);
        // Time moved on: held pcapng packets may have reached their bound.
        self.drain_pcap(now);
        self.live(now);
        if let Some(m) = &self.metrics {
            m.correlator(&self.correlator.stats());
        }
        self.trim.tick(self.tcp.held_bytes());
        r
    }

    /// Live counters for the TUI.
    fn live(&mut self, now: u64) {
        if !self.sink.is_live() {
            return;
        }
        let c = self.correlator.stats();
        let stats = tui::LiveStats {
            at_ns: now,
            packets: self.decoded,
            lookups: c.finished,
            open: c.live_lookups as u64,
            kernel_lost: self.lost_seen,
            dropped: 0,
            malformed: self.issues.malformed,
            evicted: c.evicted,
        };
        let correlator = &self.correlator;
        self.sink.live(stats, || correlator.upstreams());
    }

    /// End of input: finishes every open lookup.
    pub(crate) fn finish(&mut self, now: u64) -> std::io::Result<()> {
        self.end_epoch_ns = self.names.epoch_ns(now);
        let rest = self.correlator.finish(now);
        self.finished.extend(rest);
        let r = self.emit_finished(now).and_then(|()| self.drain_held(true));
        let _ = self.sink.flush();
        r
    }

    /// What is left at the end; `error`: the first failed write to stdout.
    pub(crate) fn done_with(self, error: Option<std::io::Error>) -> Done {
        Done {
            decoded: self.decoded,
            issues: self.issues,
            tcp: self.tcp.stats,
            lookups: correlate::CorrelateStats {
                not_shown: self.not_shown,
                problems_shown: self.problems_shown,
                packets_not_shown: self.held.as_ref().map_or(0, |h| h.not_shown),
                ..self.correlator.stats()
            },
            upstreams: self.correlator.upstreams(),
            sink: self.sink,
            names: self.names,
            pcap: self.pcap,
            pcap_failed: self.pcap_failed,
            end_epoch_ns: self.end_epoch_ns,
            error,
        }
    }
}

/// The next control message; never without a control channel, nor once it closed.
async fn recv_control(control: &mut Option<mpsc::Receiver<Control>>) -> Option<Control> {
    match control {
        Some(rx) => match rx.recv().await {
            Some(c) => Some(c),
            None => {
                *control = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
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

/// Gives memory freed after a burst back to the system. glibc keeps what a burst
/// (a flood, many TCP streams) freed in its arenas, so the process would stay at its
/// peak size; `malloc_trim` returns the free pages. It walks every arena, so it runs at
/// most once a second, and only when the input has gone quiet after some real work, or
/// TCP reassembly has let go of a lot (streams closed).
#[derive(Debug)]
struct Trim {
    /// Captured bytes taken since the last trim.
    since: usize,
    /// Captured bytes taken since the last tick.
    this_tick: usize,
    /// Most bytes TCP reassembly held since the last trim.
    tcp_high: usize,
    last: Instant,
}

impl Default for Trim {
    fn default() -> Self {
        Self {
            since: 0,
            this_tick: 0,
            tcp_high: 0,
            last: Instant::now(),
        }
    }
}

impl Trim {
    /// Input worth a trim once it stops.
    const WORK: usize = 4 << 20;
    const EVERY: Duration = Duration::from_secs(1);

    fn input(&mut self, bytes: usize) {
        self.since += bytes;
        self.this_tick += bytes;
    }

    fn tick(&mut self, tcp_held: usize) {
        let quiet = std::mem::take(&mut self.this_tick) < Self::WORK / 64;
        self.tcp_high = self.tcp_high.max(tcp_held);
        let freed = self.tcp_high - tcp_held;
        if (self.since >= Self::WORK || freed >= Self::WORK)
            && quiet
            && self.last.elapsed() >= Self::EVERY
        {
            log::debug!(
                "returning free memory to the system after {} bytes of input, {freed} bytes let go by TCP reassembly",
                self.since
            );
            self.since = 0;
            self.tcp_high = tcp_held;
            self.last = Instant::now();
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only releases free memory of glibc's own arenas.
            unsafe {
                libc::malloc_trim(0);
            }
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

/// Flushes stdout; a failure names it (a closed pipe is [`crate::sink::StdoutClosed`]).
pub fn flush_stdout() -> anyhow::Result<()> {
    std::io::stdout().flush().map_err(stdout_error)
}

/// The time up to which lookups may be ended. With captured events still queued (the
/// decoder is behind), not past the newest event decoded: a lookup's reply may still wait
/// in the queue, and losses counted now belong to the events around now, so no lookup is
/// judged before its own events are.
fn expiry_horizon(now: u64, newest_ts: u64, queue_empty: bool) -> u64 {
    if queue_empty || newest_ts == 0 {
        now
    } else {
        newest_ts.min(now)
    }
}

#[cfg(test)]
mod tests {
    use super::expiry_horizon;

    #[test]
    fn lookups_end_by_the_events_while_the_queue_is_behind() {
        let s = 1_000_000_000;
        assert_eq!(expiry_horizon(10 * s, 4 * s, false), 4 * s);
        assert_eq!(expiry_horizon(10 * s, 4 * s, true), 10 * s);
        assert_eq!(expiry_horizon(10 * s, 0, false), 10 * s);
        assert_eq!(expiry_horizon(10 * s, 11 * s, false), 10 * s);
    }
}
