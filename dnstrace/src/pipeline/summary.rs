//! What one run counted, printed on stderr at exit and written as the JSON `summary`
//! record: the same for `watch` and `replay`.
use std::collections::BTreeMap;

use crate::{
    capture::{DrainStats, KernelCounters},
    correlate::{CorrelateStats, UpstreamStats},
    decode::{IssueKind, Packet, frag::FragStats, tcp::TcpStats},
    sink::pcap::PcapStats,
};

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
    /// Of `decoded`, the DNS messages not parsed again: a compact record's payload is that
    /// of an earlier record, whose decoded message it takes (one decode per message).
    pub decode_reused: u64,
    pub issues: IssueCounts,
    /// DNS over TCP reassembly, with what its bounds gave up.
    pub tcp: TcpStats,
    /// Lookups stitched from the packets, and how they ended.
    pub lookups: CorrelateStats,
    pub upstreams: Vec<UpstreamStats>,
    pub duration_ms: u64,
    /// What `--pcap` wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap: Option<PcapStats>,
    /// What `dnstrace replay` read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayStats>,
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
        if l.not_shown > 0 {
            v.push(format!(
                "dnstrace: {} of them not shown (--client, --qname, --verdict, --pod, --namespace)",
                l.not_shown
            ));
        }
        if l.packets_not_shown > 0 {
            v.push(format!(
                "dnstrace: {} packet lines not shown (their lookups were not, or they went into none)",
                l.packets_not_shown
            ));
        }
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
                "dnstrace: kernel: {} packets seen, {} on DNS ports, {} events emitted, {} lost (ring buffer full: {}, copy failed: {}, compact record without its payload: {}), {} cut at snaplen, {} compact (payload sent once)",
                k.packets,
                k.dns_seen,
                k.emitted,
                k.lost(),
                k.ring_full,
                k.copy_failed,
                k.orphaned,
                k.truncated,
                k.compact
            ),
            format!(
                "dnstrace: userspace: {} received, {} dropped (output closed), {} decoded ({} DNS messages taken from an earlier sighting's decode), {} malformed, {} partial",
                u.received,
                u.dropped,
                self.decoded,
                self.decode_reused,
                self.issues.malformed,
                self.issues.partial
            ),
        ]
    }
}

/// What replay read, in the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayStats {
    pub file: String,
    /// "pcap" or "pcapng".
    pub format: &'static str,
    /// Written by `dnstrace watch --pcap`: capture points, netns and drop reasons came from it.
    pub dnstrace_file: bool,
    /// Interface names, in interface-block order (pcapng), or the link type (pcap).
    pub interfaces: Vec<String>,
    /// Packet records in the file.
    pub frames: u64,
    /// Frames handed to the decoder and correlator (UDP/TCP on a DNS port).
    pub dns_frames: u64,
    /// Frames of a link type dnstrace cannot parse, by link type.
    pub skipped_link: BTreeMap<String, u64>,
    /// Frames that are not UDP/TCP on a DNS port (ARP, ICMP, mDNS, LLMNR, other ports).
    pub not_dns: u64,
    /// IP fragments after the first that could not be reassembled (they carry no port).
    pub later_fragments: u64,
    /// IP fragment reassembly: fragment frames, datagrams rebuilt, sets never completed.
    pub ip: FragStats,
    /// Frames whose headers could not be parsed far enough to find ports, by problem kind.
    pub unparsed: BTreeMap<&'static str, u64>,
    /// False when the file is cut short or damaged: only its first `frames` packets were read.
    pub complete: bool,
    /// Why reading stopped early (a damaged or cut file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
