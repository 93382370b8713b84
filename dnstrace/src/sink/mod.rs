//! Output stages. Each consumes decoded packets (and, at the end, the run's
//! counters) and writes them somewhere.
mod json;
mod lookup;
pub mod pcap;
mod text;

use std::{collections::HashMap, io::Write};

pub use json::JsonSink;
pub use lookup::{lookup_json, lookup_text, upstreams_json, upstreams_text};
pub use text::TextSink;
pub(crate) use text::clock;

use crate::{
    capture::{DrainStats, KernelCounters},
    correlate::{CorrelateStats, Lookup, UpstreamStats},
    decode::{IssueKind, Meta, Packet, Point, tcp::TcpStats, text::printable_string},
};

/// stdout's reader went away (EPIPE): the run ends quietly, like other Unix tools,
/// once everything is detached (see `app::die_of_sigpipe`).
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct StdoutClosed;

/// An error writing to stdout as the run reports it: a closed pipe is [`StdoutClosed`];
/// anything else (ENOSPC, EIO …) is a failure that names stdout.
pub fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("writing the output to stdout failed")
    }
}

/// Turns capture metadata into names a human reads.
#[derive(Clone, Debug, Default)]
pub struct Names {
    own_netns: u64,
    by_index: HashMap<u32, String>,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC at start, to turn kernel timestamps into wall time.
    mono_to_epoch_ns: i128,
    drop_reasons: HashMap<u32, String>,
}

impl Names {
    pub fn new(own_netns: u64, ifaces: impl IntoIterator<Item = (u32, String)>) -> Self {
        Self {
            own_netns,
            by_index: ifaces
                .into_iter()
                .map(|(i, name)| (i, printable_string(name)))
                .collect(),
            mono_to_epoch_ns: mono_to_epoch_ns(),
            drop_reasons: HashMap::new(),
        }
    }

    pub fn with_drop_reasons(mut self, reasons: HashMap<u32, String>) -> Self {
        self.drop_reasons = reasons;
        self
    }

    /// Timestamps that already are nanoseconds since the Unix epoch (replay of a file).
    pub fn with_epoch_timestamps(mut self) -> Self {
        self.mono_to_epoch_ns = 0;
        self
    }

    /// Names an interface index learnt after the start (replay learns them from the file).
    pub fn add_iface(&mut self, index: u32, name: String) {
        self.by_index.insert(index, printable_string(name));
    }

    /// Name of a kernel drop reason value, e.g. "NETFILTER_DROP".
    pub fn drop_reason(&self, value: u32) -> String {
        self.drop_reasons
            .get(&value)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{value}"))
    }

    /// The capture point: the interface name for tc hooks, "socket" for the socket hop.
    pub fn iface(&self, meta: &Meta) -> String {
        match meta.point {
            Point::SocketIn | Point::SocketOut => "socket".to_owned(),
            Point::TcIngress | Point::TcEgress | Point::Drop => {
                match self.by_index.get(&meta.ifindex) {
                    Some(name) if meta.netns == self.own_netns => name.clone(),
                    // Loopback is the first device of every netns.
                    _ if meta.ifindex == 1 => "lo".to_owned(),
                    _ => format!("if{}", meta.ifindex),
                }
            }
        }
    }

    /// Kernel timestamp (CLOCK_MONOTONIC) as nanoseconds since the Unix epoch.
    pub fn epoch_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.mono_to_epoch_ns).max(0) as u64
    }
}

fn mono_to_epoch_ns() -> i128 {
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid clock id and out pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

/// Counts of per-packet problems, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IssueCounts {
    /// Packets whose DNS message or headers could not be parsed (junk, hostile, cut short).
    pub malformed: u64,
    /// Packets cut by the snaplen, TCP segments holding part of a message, and TCP
    /// segments after bytes of their stream that were missed or skipped.
    pub partial: u64,
    pub by_kind: std::collections::BTreeMap<&'static str, u64>,
}

impl IssueCounts {
    pub fn add(&mut self, packet: &Packet) {
        let Some(issue) = &packet.issue else { return };
        match issue.kind {
            IssueKind::Truncated | IssueKind::TcpPartial | IssueKind::TcpGap => self.partial += 1,
            _ => self.malformed += 1,
        }
        *self.by_kind.entry(issue.kind.as_str()).or_default() += 1;
    }
}

/// Everything counted in one run, printed at exit.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    /// Netns cookie of the namespace dnstrace ran in (its tc hooks' events carry it).
    pub netns: u64,
    pub kernel: KernelCounters,
    pub userspace: DrainStats,
    pub decoded: u64,
    pub issues: IssueCounts,
    /// DNS over TCP reassembly, with what its bounds gave up.
    pub tcp: TcpStats,
    /// Lookups stitched from the packets, and how they ended.
    pub lookups: CorrelateStats,
    pub upstreams: Vec<UpstreamStats>,
    pub duration_ms: u64,
    /// What `--pcap` wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap: Option<pcap::PcapStats>,
    /// What `dnstrace replay` read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<crate::replay::ReplayStats>,
    /// Writing to stdout failed: events dropped after that say nothing about the ring size.
    #[serde(skip)]
    pub output_failed: bool,
}

impl Summary {
    /// The human-readable exit lines.
    pub fn lines(&self) -> Vec<String> {
        let k = &self.kernel;
        let u = &self.userspace;
        let mut v = match &self.replay {
            Some(r) => vec![
                format!(
                    "dnstrace: replay of {} ({}{}): {} packets, {} DNS, {} not DNS, {} later IP fragments, {} of an unsupported link type, {} unparsed{}",
                    r.file,
                    r.format,
                    if r.dnstrace_file {
                        ", written by dnstrace"
                    } else {
                        ""
                    },
                    r.frames,
                    r.dns_frames,
                    r.not_dns,
                    r.later_fragments,
                    r.skipped_link.values().sum::<u64>(),
                    r.unparsed.values().sum::<u64>(),
                    r.error.as_ref().map_or(String::new(), |e| format!("; {e}"))
                ),
                format!(
                    "dnstrace: IP fragments: {} in {} reassembled datagrams, {} in sets never completed, {} contradicting their set",
                    r.ip.fragments_used,
                    r.ip.reassembled,
                    r.ip.fragments_incomplete,
                    r.ip.fragments_bad
                ),
                format!(
                    "dnstrace: decoded {}, {} malformed, {} partial",
                    self.decoded, self.issues.malformed, self.issues.partial,
                ),
            ],
            None => self.live_lines(),
        };
        if let Some(line) = self.tcp_line() {
            v.push(line);
        }
        if let Some(p) = &self.pcap
            && let Some(e) = &p.error
        {
            v.push(format!(
                "dnstrace: pcapng {}: writing failed, the file is incomplete: {e}",
                p.path
            ));
        } else if let Some(p) = &self.pcap {
            v.push(format!(
                "dnstrace: pcapng {}: {} packets on {} interfaces; {} with their lookup's verdict, {} written before it (buffer bound), {} in no lookup",
                p.path, p.packets, p.interfaces, p.with_verdict, p.without_verdict, p.no_lookup
            ));
        }
        let l = &self.lookups;
        let verdicts: Vec<_> = l
            .by_verdict
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        v.push(format!(
            "dnstrace: lookups: {} finished ({}), {} evicted, {} affected by lost events",
            l.finished,
            if verdicts.is_empty() {
                "none".to_owned()
            } else {
                verdicts.join(" ")
            },
            l.evicted,
            l.lost_events
        ));
        if !self.issues.by_kind.is_empty() {
            let kinds: Vec<_> = self
                .issues
                .by_kind
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            v.push(format!("dnstrace: problems by kind: {}", kinds.join(" ")));
        }
        if k.lost() > 0 || (u.dropped > 0 && !self.output_failed) {
            v.push("dnstrace: events were lost; try a larger --ring-size, a faster output (json to a file), or fewer interfaces".into());
        }
        v
    }

    /// What DNS over TCP reassembly did and gave up, when there was any TCP.
    fn tcp_line(&self) -> Option<String> {
        let t = &self.tcp;
        if t.peak_streams == 0 {
            return None;
        }
        Some(format!(
            "dnstrace: DNS over TCP: {} messages, {} segments with several, {} joined from several segments, {} gaps ({} bytes missed), {} streams picked up without their SYN, framing found again {} times ({} bytes skipped), {} zero-length; at most {} streams and {} KiB held; {} cut by a close, {} streams idle 30 s, {} over the stream cap, {} messages over the byte cap ({} bytes given up)",
            t.messages,
            t.multi_message_segments,
            t.joined_messages,
            t.gaps,
            t.gap_bytes,
            t.picked_up,
            t.resyncs,
            t.resync_dropped_bytes,
            t.empty_messages,
            t.peak_streams,
            t.peak_bytes.div_ceil(1024),
            t.incomplete_at_close,
            t.evicted_idle,
            t.evicted_streams,
            t.evicted_messages,
            t.dropped_bytes
        ))
    }

    /// A live run's capture lines.
    fn live_lines(&self) -> Vec<String> {
        let k = &self.kernel;
        let u = &self.userspace;
        vec![
            format!(
                "dnstrace: kernel: {} packets seen, {} on DNS ports, {} events emitted, {} lost in the kernel (ring buffer full: {}, copy failed: {}), {} cut at snaplen",
                k.packets,
                k.dns_seen,
                k.emitted,
                k.lost(),
                k.ring_full,
                k.copy_failed,
                k.truncated
            ),
            format!(
                "dnstrace: userspace: {} received, {} dropped (output closed), {} decoded, {} malformed, {} partial",
                u.received, u.dropped, self.decoded, self.issues.malformed, self.issues.partial
            ),
        ]
    }
}

/// Where decoded packets go.
pub enum Sink<W: Write> {
    Text(TextSink<W>),
    Json(JsonSink<W>),
    /// The full-screen view: lookups, upstreams and live counters go to its queue.
    Tui(crate::tui::FeedTx),
}

impl<W: Write> Sink<W> {
    /// Writes one packet; `drop` is the kernel drop reason for drop events.
    pub fn packet(&mut self, p: &Packet, drop: Option<&str>, names: &Names) -> std::io::Result<()> {
        match self {
            Self::Text(s) => s.packet(p, drop, names),
            Self::Json(s) => s.packet(p, drop, names),
            Self::Tui(_) => Ok(()),
        }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Text(s) => s.flush(),
            Self::Json(s) => s.flush(),
            Self::Tui(_) => Ok(()),
        }
    }

    /// Writes one finished lookup.
    /// Writes one finished lookup (the TUI keeps it: hence by value).
    pub fn lookup(&mut self, l: Lookup) -> std::io::Result<()> {
        match self {
            Self::Text(s) => s.raw(&lookup_text(&l)),
            Self::Json(s) => s.line(&lookup_json(&l)),
            Self::Tui(t) => {
                t.lookup(l);
                Ok(())
            }
        }
    }

    /// Writes the per-upstream table.
    pub fn upstreams(&mut self, u: &[UpstreamStats]) -> std::io::Result<()> {
        match self {
            Self::Text(s) => s.raw(&upstreams_text(u)),
            Self::Json(s) => s.line(&upstreams_json(u)),
            Self::Tui(t) => {
                t.upstreams(u.to_vec());
                Ok(())
            }
        }
    }

    /// Writes the end-of-run record (JSON only; text prints it on stderr).
    pub fn summary(&mut self, summary: &Summary) -> std::io::Result<()> {
        match self {
            Self::Text(s) => s.flush(),
            Self::Json(s) => s.summary(summary),
            // Printed on stderr once the terminal is restored.
            Self::Tui(_) => Ok(()),
        }
    }

    /// True for the live view, which wants [`Sink::live`] counters.
    pub fn is_live(&self) -> bool {
        matches!(self, Self::Tui(_))
    }

    /// Live counters for the TUI (and, once a second, the upstream table that
    /// `upstreams` computes); the stream outputs ignore them.
    pub fn live(
        &mut self,
        stats: crate::tui::LiveStats,
        upstreams: impl FnOnce() -> Vec<UpstreamStats>,
    ) {
        if let Self::Tui(t) = self {
            t.live(stats, upstreams);
        }
    }
}
