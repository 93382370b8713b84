//! The consumer pipeline that `watch` and `replay` both feed: each captured frame is
//! decoded, reassembled (DNS over TCP), correlated into lookups, and handed to the
//! outputs (packet lines, finished lookups, the pcapng file, the metrics); at the end,
//! what was counted becomes the run's [`Summary`].
mod outputs;
mod reuse;
mod summary;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};

pub(crate) use outputs::Outputs;
pub use reuse::Reused;
pub use summary::{IssueCounts, ReplayStats, Summary};

use crate::{
    capture::{Batch, CoverageChange},
    cli::WatchConfig,
    correlate::{self, Correlator, Lookup, Placement},
    decode::{self, LinkType, Meta, Packet},
    sink::{
        Names,
        pcap::{PcapSink, PcapStats, Record},
    },
    tui,
};

/// Lookups ended at once (at their deadline, or at the end) before they are written out.
const FINISH_BATCH: usize = 1024;

/// How often open lookups are checked for their deadline and losses are noted.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// What the main task tells the consumer besides packets.
#[derive(Debug)]
pub(crate) enum Control {
    /// An interface's name, before anything captured on it can arrive.
    Name(u32, String),
    /// The interfaces watched changed, at this monotonic time.
    Coverage(CoverageChange, u64),
}

/// What the consumer hands back at the end.
pub(crate) struct Done {
    pub decoded: u64,
    /// DNS messages taken from an earlier sighting's decode.
    pub reused: u64,
    pub issues: IssueCounts,
    pub tcp: decode::tcp::TcpStats,
    pub lookups: correlate::CorrelateStats,
    pub upstreams: Vec<correlate::UpstreamStats>,
    pub out: Outputs,
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

/// One captured packet as the pipeline takes it: from the ring buffer, or from a file.
pub(crate) struct Frame<'a> {
    pub link: LinkType,
    pub data: &'a [u8],
    /// For drop events: the kernel's drop reason name.
    pub drop_reason: Option<String>,
    /// The capture point's name when known already (replay of our own file); else it
    /// comes from [`Names::iface`].
    pub iface: Option<std::sync::Arc<str>>,
    /// What the kernel said about the UDP payload: kept for, or named by, compact records.
    pub message: crate::capture::Message,
}

/// Decodes, correlates and writes; owns all per-packet and per-lookup state. Fed by the
/// live capture ([`Consumer::run`]) or by a file (`crate::replay`).
pub(crate) struct Consumer {
    /// Finished lookups and packet lines go to the stream on stdout or the screen.
    out: Outputs,
    pub names: Names,
    pub correlator: Correlator,
    packets: bool,
    lost_rx: watch::Receiver<u64>,
    lost_seen: u64,
    upstream_every: Option<Duration>,
    decoded: u64,
    /// DNS messages decoded once for the sightings of compact records.
    reuse: reuse::Reused,
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
    pub(crate) fn new(
        cfg: &WatchConfig,
        names: Names,
        correlator: Correlator,
        lost_rx: watch::Receiver<u64>,
        tui: Option<tui::FeedTx>,
    ) -> Self {
        Self::with_outputs(
            Outputs::new(cfg.output, tui),
            names,
            correlator,
            cfg.packets,
            cfg.upstream_every,
            lost_rx,
            cfg.filter.clone(),
        )
    }

    pub(crate) fn with_outputs(
        out: Outputs,
        names: Names,
        correlator: Correlator,
        packets: bool,
        upstream_every: Option<Duration>,
        lost_rx: watch::Receiver<u64>,
        filter: crate::filter::LookupFilter,
    ) -> Self {
        let held = (packets && !filter.is_empty()).then(crate::hold::HoldPackets::default);
        Self {
            out,
            names,
            correlator,
            packets,
            lost_rx,
            lost_seen: 0,
            upstream_every,
            decoded: 0,
            reuse: reuse::Reused::default(),
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

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Batch>) -> Done {
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
                            self.out.upstreams(&self.correlator.upstreams(), &self.names, at)
                        });
                    }
                    r.and_then(|()| self.out.flush())
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
                    message: c.message,
                },
            )?;
        }
        self.out.flush()
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
                self.out
                    .coverage(&change, &self.names, self.names.epoch_ns(at), watched)
            }
        }
    }

    /// Decodes one frame and takes it through the pipeline.
    pub(crate) fn frame(&mut self, meta: Meta, f: Frame<'_>) -> std::io::Result<()> {
        let p = self
            .reuse
            .decode(meta, f.link, f.data, f.message, self.detail());
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
    fn ingest(
        &mut self,
        p: Packet,
        iface: std::sync::Arc<str>,
        f: &Frame<'_>,
    ) -> std::io::Result<()> {
        self.issues.add(&p);
        let held_line = match (&self.held, self.packets) {
            (Some(_), _) => Some(
                self.out
                    .render_packet(&p, f.drop_reason.as_deref(), &self.names),
            ),
            (None, true) => {
                self.out.packet(&p, f.drop_reason.as_deref(), &self.names)?;
                None
            }
            (None, false) => None,
        };
        let now = p.meta.ts_ns;
        self.correlator.ingest_into(
            correlate::Event {
                packet: p,
                iface,
                drop_reason: f.drop_reason.clone(),
            },
            now,
            &mut self.finished,
        );
        let placed = self.correlator.placed();
        if let (Some(held), Some(line)) = (&mut self.held, held_line) {
            held.push(placed.as_ref().map(|p| p.lookup), line);
        }
        if let Some(placed) = placed {
            self.placed.push(placed);
        }
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
                self.out.lookup(l, &self.names)?;
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
        let (Some(held), out) = (&mut self.held, &mut self.out) else {
            return Ok(());
        };
        held.drain(all, |line| out.held_packet(line))
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
        // In batches, each written out before the next is built (a mass expiry's records
        // would otherwise all be in memory at once).
        let mut r = Ok(());
        while self
            .correlator
            .expire_into(now, FINISH_BATCH, &mut self.finished)
        {
            r = r.and(self.emit_finished(now));
        }
        self.tcp.expire(now);
        self.names.forget_retired(now);
        let r = r.and(self.emit_finished(now));
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
        if !self.out.is_live() {
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
        self.out.live(stats, || correlator.upstreams());
    }

    /// End of input: finishes every open lookup.
    pub(crate) fn finish(&mut self, now: u64) -> std::io::Result<()> {
        self.end_epoch_ns = self.names.epoch_ns(now);
        let mut r = Ok(());
        while self
            .correlator
            .finish_into(now, FINISH_BATCH, &mut self.finished)
        {
            r = r.and(self.emit_finished(now));
        }
        let r = r
            .and(self.emit_finished(now))
            .and_then(|()| self.drain_held(true));
        let _ = self.out.flush();
        r
    }

    /// What is left at the end; `error`: the first failed write to stdout.
    pub(crate) fn done_with(self, error: Option<std::io::Error>) -> Done {
        Done {
            decoded: self.decoded,
            reused: self.reuse.served,
            issues: self.issues,
            tcp: self.tcp.stats,
            lookups: correlate::CorrelateStats {
                not_shown: self.not_shown,
                problems_shown: self.problems_shown,
                packets_not_shown: self.held.as_ref().map_or(0, |h| h.not_shown),
                ..self.correlator.stats()
            },
            upstreams: self.correlator.upstreams(),
            out: self.out,
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
pub(crate) fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
