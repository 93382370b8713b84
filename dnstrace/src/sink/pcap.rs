//! `--pcap FILE`: every captured packet into a pcapng file that Wireshark opens, one
//! interface block per capture point, each packet commented with its lookup and verdict.
//!
//! Packets are held in capture order until the lookup they belong to has a verdict, so
//! that the comment can carry it. Holding is bounded ([`Bounds`]): a lookup with more
//! packets than `per_lookup` held, or a backlog over `packets`/`bytes`, or a packet held
//! longer than `hold_ns` (capture time), is written without its verdict
//! (`verdict=pending`) and counted in [`PcapStats::without_verdict`].
use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    fs::File,
    io::BufWriter,
    path::Path,
    time::Duration,
};

use pcap_file::{
    DataLink, Endianness,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            interface_statistics::{InterfaceStatisticsBlock, InterfaceStatisticsOption},
            section_header::{SectionHeaderBlock, SectionHeaderOption},
        },
    },
};

use crate::{
    correlate::{Coverage, Lookup, Placement},
    decode::{LinkType, Meta, Point},
};

/// The application name written in the section header; replay recognises our files by it.
pub const APPLICATION: &str = "dnstrace";
/// Starts the section comment that carries what replay needs to judge like the live run.
pub const CONFIG_TAG: &str = "dnstrace-capture";
/// EPB flags: direction bits (pcapng spec, epb_flags bits 0-1).
pub const FLAG_INBOUND: u32 = 0b01;
pub const FLAG_OUTBOUND: u32 = 0b10;

/// Which kind of capture point an interface block stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PointKind {
    /// A tc hook on an interface (ingress and egress).
    Tc,
    /// The socket hop (cgroup_skb), every netns.
    Socket,
    /// Kernel drops (skb:kfree_skb).
    Drop,
}

impl PointKind {
    pub fn of(point: Point) -> Self {
        match point {
            Point::TcIngress | Point::TcEgress => Self::Tc,
            Point::SocketIn | Point::SocketOut => Self::Socket,
            Point::Drop => Self::Drop,
        }
    }

    /// The interface block's name for the points that are not an interface.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Self::Tc => None,
            Self::Socket => Some("socket"),
            Self::Drop => Some("drop"),
        }
    }

    /// What the capture point is, for the interface block's description.
    pub fn role(self) -> &'static str {
        match self {
            Self::Tc => "tc hook, ingress and egress",
            Self::Socket => {
                "socket hop (cgroup_skb): packets as local sockets send and receive them, in every netns; each packet's netns is in its comment"
            }
            Self::Drop => {
                "kernel drops (tp_btf/kfree_skb): DNS packets the kernel freed as dropped; the reason is in each packet's comment"
            }
        }
    }
}

/// One capture point, declared up front so that its interface block exists even when it
/// sees no packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointDesc {
    pub kind: PointKind,
    /// Interface index for tc points, 0 otherwise.
    pub ifindex: u32,
    pub link: LinkType,
    /// if_name: the interface, "socket" or "drop".
    pub name: String,
    /// if_description: netns and role.
    pub description: String,
}

/// What the section header says about the run, so that replay judges the same way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunInfo {
    pub host_netns: u64,
    pub uplinks: Vec<String>,
    /// The capture points watched.
    pub watched: Coverage,
    pub timeout_ms: u64,
}

impl RunInfo {
    /// `dnstrace-capture host_netns=N uplinks=a,b ifaces=x,y all_ifaces=1 socket=1 drops=0 timeout_ms=5000`
    pub fn to_comment(&self) -> String {
        format!(
            "{CONFIG_TAG} host_netns={} uplinks={} ifaces={} all_ifaces={} socket={} drops={} timeout_ms={}",
            self.host_netns,
            self.uplinks.join(","),
            self.watched.ifaces.join(","),
            u8::from(self.watched.all_ifaces),
            u8::from(self.watched.socket),
            u8::from(self.watched.drops),
            self.timeout_ms
        )
    }

    pub fn from_comment(s: &str) -> Option<Self> {
        let rest = s.strip_prefix(CONFIG_TAG)?;
        let mut info = Self::default();
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        };
        for (k, v) in fields(rest) {
            match k {
                "host_netns" => info.host_netns = v.parse().ok()?,
                "uplinks" => info.uplinks = list(v),
                "ifaces" => info.watched.ifaces = list(v),
                "all_ifaces" => info.watched.all_ifaces = v == "1",
                "socket" => info.watched.socket = v == "1",
                "drops" => info.watched.drops = v == "1",
                "timeout_ms" => info.timeout_ms = v.parse().ok()?,
                _ => {}
            }
        }
        Some(info)
    }
}

/// `key=value` words of a comment, split at ASCII whitespace as dnstrace writes them.
/// Replay reads one comment per packet: split at Unicode whitespace and with
/// `split_once`, its characters took a fifth of a replay's instructions.
pub fn fields(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split_ascii_whitespace().filter_map(|w| {
        let eq = w.bytes().position(|b| b == b'=')?;
        // '=' is ASCII: both sides are whole characters.
        Some((&w[..eq], &w[eq + 1..]))
    })
}

/// What one packet's comment says, parsed back by replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PacketNote {
    pub point: Option<Point>,
    pub iface: Option<String>,
    pub netns: Option<u64>,
    pub drop_reason: Option<String>,
    pub lookup: Option<u64>,
    pub verdict: Option<String>,
}

impl PacketNote {
    pub fn parse(comment: &str) -> Self {
        let mut n = Self::default();
        for (k, v) in fields(comment) {
            match k {
                "point" => n.point = Point::parse(v),
                "iface" => n.iface = Some(v.to_owned()),
                "netns" => n.netns = v.parse().ok(),
                "drop_reason" => n.drop_reason = Some(v.to_owned()),
                "lookup" => n.lookup = v.split(',').next().and_then(|x| x.parse().ok()),
                "verdict" => n.verdict = Some(v.to_owned()),
                _ => {}
            }
        }
        n
    }
}

/// How much is held back waiting for verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Packets held for one lookup.
    pub per_lookup: u32,
    /// Packets held in all.
    pub packets: usize,
    /// Bytes held in all.
    pub bytes: usize,
    /// Longest a packet is held, in capture time.
    pub hold_ns: u64,
}

impl Bounds {
    /// For a lookup timeout: a lookup ends at most [`lookup_lifetime_ns`] after its
    /// client's last query; retries can stretch it, hence twice that plus a second.
    ///
    /// [`lookup_lifetime_ns`]: crate::correlate::lookup_lifetime_ns
    pub fn for_timeout(timeout: Duration) -> Self {
        Self {
            per_lookup: 256,
            packets: 16_384,
            bytes: 32 << 20,
            hold_ns: 2 * crate::correlate::lookup_lifetime_ns(timeout.as_nanos() as u64)
                + 1_000_000_000,
        }
    }
}

/// What was written, reported in the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PcapStats {
    pub path: String,
    pub interfaces: u32,
    pub packets: u64,
    /// Packets that belong to a lookup and carry its verdict.
    pub with_verdict: u64,
    /// Packets of a lookup written before its verdict was known (a bound was hit).
    pub without_verdict: u64,
    /// Packets that joined no lookup (not DNS, orphan replies, ignored segments).
    pub no_lookup: u64,
    /// Packets left out because none of their lookups was shown (`--client`, `--qname`,
    /// `--verdict`), with those not in any lookup.
    #[serde(skip_serializing_if = "super::is_zero")]
    pub not_shown: u64,
    /// Why writing stopped, if it failed (the file is incomplete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One packet handed to the writer.
pub struct Record<'a> {
    /// Nanoseconds since the Unix epoch.
    pub epoch_ns: u64,
    pub meta: &'a Meta,
    pub link: LinkType,
    pub data: &'a [u8],
    /// The capture point's name as the correlator knows it (interface, "socket").
    pub iface: &'a str,
    pub drop_reason: Option<&'a str>,
    /// The lookups its DNS message(s) joined (several for a TCP segment with several).
    pub placed: &'a [Placement],
}

struct Held {
    interface: u32,
    epoch_ns: u64,
    /// Capture-clock time, for the hold bound.
    ts_ns: u64,
    orig_len: u32,
    data: Vec<u8>,
    flags: u32,
    /// The comment without the verdict.
    comment: String,
    lookups: Vec<u64>,
}

#[derive(Default)]
struct Mark {
    held: u32,
    verdict: Option<String>,
    /// The lookup passed the output filter.
    shown: bool,
    /// Too many packets held: the rest goes out without the verdict.
    released: bool,
}

#[derive(Default, Clone, Copy)]
struct IfCount {
    packets: u64,
    drops: u64,
    first_ns: u64,
}

/// Writes the pcapng file.
pub struct PcapSink {
    writer: PcapNgWriter<BufWriter<File>>,
    /// Per interface block: what it is and its name.
    points: Vec<(PointKind, String)>,
    by_key: HashMap<(PointKind, u32, LinkType), u32>,
    counts: Vec<IfCount>,
    held: VecDeque<Held>,
    held_bytes: usize,
    marks: HashMap<u64, Mark>,
    bounds: Bounds,
    stats: PcapStats,
    /// A filter is on: write only the packets of lookups it shows (and those written
    /// before their lookup ended, which cannot be decided).
    only_shown: bool,
}

impl PcapSink {
    pub fn create(
        path: &Path,
        run: &RunInfo,
        points: &[PointDesc],
        bounds: Bounds,
    ) -> std::io::Result<Self> {
        let file = crate::outfile::create(path)?;
        let section = SectionHeaderBlock {
            endianness: Endianness::native(),
            major_version: 1,
            minor_version: 0,
            section_length: -1,
            options: vec![
                SectionHeaderOption::UserApplication(Cow::Owned(format!(
                    "{APPLICATION} {}",
                    env!("CARGO_PKG_VERSION")
                ))),
                SectionHeaderOption::OS(Cow::Borrowed(std::env::consts::OS)),
                SectionHeaderOption::Comment(Cow::Owned(run.to_comment())),
            ],
        };
        let writer =
            PcapNgWriter::with_section_header(BufWriter::new(file), section).map_err(io_err)?;
        let mut sink = Self {
            writer,
            points: Vec::new(),
            by_key: HashMap::new(),
            counts: Vec::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            marks: HashMap::new(),
            only_shown: false,
            bounds,
            stats: PcapStats {
                path: path.display().to_string(),
                ..PcapStats::default()
            },
        };
        for p in points {
            sink.interface(p)?;
        }
        Ok(sink)
    }

    fn interface(&mut self, p: &PointDesc) -> std::io::Result<u32> {
        let key = (p.kind, p.ifindex, p.link);
        if let Some(&i) = self.by_key.get(&key) {
            return Ok(i);
        }
        let idb = InterfaceDescriptionBlock {
            linktype: data_link(p.link),
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(p.name.clone())),
                InterfaceDescriptionOption::IfDescription(Cow::Owned(p.description.clone())),
                // Nanoseconds, like the kernel's timestamps.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        self.writer.write_pcapng_block(idb).map_err(io_err)?;
        let i = self.points.len() as u32;
        self.points.push((p.kind, p.name.clone()));
        self.by_key.insert(key, i);
        self.counts.push(IfCount::default());
        self.stats.interfaces += 1;
        Ok(i)
    }

    /// Queues one packet; it is written once every lookup it joined has a verdict.
    pub fn packet(&mut self, r: Record<'_>) -> std::io::Result<()> {
        let kind = PointKind::of(r.meta.point);
        let key_index = if kind == PointKind::Tc {
            r.meta.ifindex
        } else {
            0
        };
        let interface = match self.by_key.get(&(kind, key_index, r.link)) {
            Some(&i) => i,
            None => self.interface(&PointDesc {
                kind,
                ifindex: key_index,
                link: r.link,
                name: kind.name().unwrap_or(r.iface).to_owned(),
                description: format!("{} (seen first during the capture)", kind.role()),
            })?,
        };
        let c = &mut self.counts[interface as usize];
        c.packets += 1;
        if c.first_ns == 0 {
            c.first_ns = r.epoch_ns;
        }
        if kind == PointKind::Drop {
            // The drop also counts against the interface the packet was on, if watched.
            if let Some(&i) = self
                .by_key
                .get(&(PointKind::Tc, r.meta.ifindex, LinkType::Ethernet))
            {
                self.counts[i as usize].drops += 1;
            } else if let Some(&i) =
                self.by_key
                    .get(&(PointKind::Tc, r.meta.ifindex, LinkType::RawIp))
            {
                self.counts[i as usize].drops += 1;
            }
            self.counts[interface as usize].drops += 1;
        }
        let flags = match r.meta.point {
            Point::TcIngress | Point::SocketIn => FLAG_INBOUND,
            Point::TcEgress | Point::SocketOut => FLAG_OUTBOUND,
            Point::Drop => 0,
        };
        let mut lookups: Vec<u64> = r.placed.iter().map(|p| p.lookup).collect();
        lookups.dedup();
        let mut comment = String::with_capacity(128);
        if lookups.is_empty() {
            comment.push_str("lookup=none");
        } else {
            comment.push_str("lookup=");
            for (i, id) in lookups.iter().enumerate() {
                let _ = write!(comment, "{}{id}", if i > 0 { "," } else { "" });
            }
            comment.push_str(" leg=");
            for (i, p) in r.placed.iter().enumerate() {
                comment.push_str(if i > 0 { "," } else { "" });
                match p.leg {
                    Some(l) => {
                        let _ = write!(comment, "{l}");
                    }
                    None => comment.push('-'),
                }
            }
        }
        let _ = write!(
            comment,
            " point={} iface={} netns={}",
            r.meta.point.as_str(),
            r.iface,
            r.meta.netns
        );
        if let Some(reason) = r.drop_reason {
            let _ = write!(comment, " drop_reason={reason}");
        }
        if r.meta.cap_len < r.meta.wire_len {
            let _ = write!(comment, " snapped={}of{}", r.meta.cap_len, r.meta.wire_len);
        }
        for id in &lookups {
            let m = self.marks.entry(*id).or_default();
            m.held += 1;
            if m.held > self.bounds.per_lookup {
                m.released = true;
            }
        }
        self.held_bytes += r.data.len();
        self.held.push_back(Held {
            interface,
            epoch_ns: r.epoch_ns,
            ts_ns: r.meta.ts_ns,
            orig_len: r.meta.wire_len.max(r.data.len() as u32),
            data: r.data.to_vec(),
            flags,
            comment,
            lookups,
        });
        self.drain(r.meta.ts_ns, false)
    }

    /// From now on, write only the packets of lookups that [`Self::lookup_done`] says are
    /// shown.
    pub fn only_shown(&mut self) {
        self.only_shown = true;
    }

    /// A lookup finished: its held packets can carry the verdict; `shown`: it passed the
    /// output filter.
    pub fn lookup_done(&mut self, l: &Lookup, shown: bool) {
        let mut v = format!("verdict={}", l.verdict.as_str());
        if let Some(rcode) = &l.rcode {
            let _ = write!(v, " rcode={rcode}");
        }
        if let Some(c) = &l.culprit {
            let _ = write!(v, " culprit={}", c.replace(' ', "_"));
        }
        self.verdict(l.id, v, shown);
    }

    fn verdict(&mut self, id: u64, text: String, shown: bool) {
        if let Some(m) = self.marks.get_mut(&id) {
            if m.held == 0 {
                // Everything it held went out already (a bound was hit).
                self.marks.remove(&id);
            } else {
                m.verdict = Some(text);
                m.shown = shown;
            }
        }
    }

    /// Writes what is ready, and what a bound forces out; `now_ns` is the capture clock.
    pub fn drain(&mut self, now_ns: u64, all: bool) -> std::io::Result<()> {
        while let Some(front) = self.held.front() {
            let ready = front.lookups.iter().all(|id| {
                self.marks
                    .get(id)
                    .is_none_or(|m| m.verdict.is_some() || m.released)
            });
            let forced = all
                || self.held.len() > self.bounds.packets
                || self.held_bytes > self.bounds.bytes
                || now_ns.saturating_sub(front.ts_ns) > self.bounds.hold_ns;
            if !ready && !forced {
                break;
            }
            let Some(h) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= h.data.len();
            self.write(h)?;
        }
        Ok(())
    }

    fn write(&mut self, h: Held) -> std::io::Result<()> {
        let mut comment = h.comment;
        // Under a filter: kept when a lookup of its is shown, or one has no verdict yet.
        let keep = !self.only_shown
            || h.lookups.iter().any(|id| {
                self.marks
                    .get(id)
                    .is_some_and(|m| m.shown || m.verdict.is_none())
            });
        if h.lookups.is_empty() {
            if !keep {
                self.stats.not_shown += 1;
                return Ok(());
            }
            self.stats.no_lookup += 1;
        } else {
            let base = comment.len();
            let mut verdicts = 0;
            for id in &h.lookups {
                let Some(m) = self.marks.get_mut(id) else {
                    continue;
                };
                if let Some(v) = &m.verdict {
                    comment.push(' ');
                    comment.push_str(v);
                    verdicts += 1;
                }
                m.held = m.held.saturating_sub(1);
                if m.held == 0 && m.verdict.is_some() {
                    self.marks.remove(id);
                }
            }
            if !keep {
                self.stats.not_shown += 1;
                return Ok(());
            }
            if verdicts == h.lookups.len() {
                self.stats.with_verdict += 1;
            } else {
                comment.truncate(base);
                self.stats.without_verdict += 1;
                comment
                    .push_str(" verdict=pending (written before the lookup ended: buffer bound)");
            }
        }
        let epb = EnhancedPacketBlock {
            interface_id: h.interface,
            timestamp: Duration::from_nanos(h.epoch_ns),
            original_len: h.orig_len,
            data: Cow::Owned(h.data),
            options: vec![
                EnhancedPacketOption::Flags(h.flags),
                EnhancedPacketOption::Comment(Cow::Owned(comment)),
            ],
        };
        self.writer.write_pcapng_block(epb).map_err(io_err)?;
        self.stats.packets += 1;
        Ok(())
    }

    /// Writing failed: what was written, with the error. Nothing more is written.
    pub fn failed(self, e: &std::io::Error) -> PcapStats {
        PcapStats {
            error: Some(e.to_string()),
            ..self.stats
        }
    }

    /// Writes everything still held, one statistics block per interface, and flushes;
    /// a failure is in the stats' `error`.
    /// `lost` is the events lost before the decoder had them (ring buffer full, copy
    /// failed, compact records without their payload): they cannot be
    /// told apart by interface, so every block carries the total as isb_osdrop.
    pub fn close(mut self, end_epoch_ns: u64, lost: u64) -> PcapStats {
        match self.try_close(end_epoch_ns, lost) {
            Ok(()) => self.stats,
            Err(e) => self.failed(&e),
        }
    }

    fn try_close(&mut self, end_epoch_ns: u64, lost: u64) -> std::io::Result<()> {
        self.drain(u64::MAX, true)?;
        for (i, ((kind, name), c)) in self.points.iter().zip(&self.counts).enumerate() {
            let mut options = vec![
                InterfaceStatisticsOption::Comment(Cow::Owned(format!(
                    "{name}: {} packets captured; isb_ifdrop = DNS packets the kernel dropped {}; \
                     isb_osdrop = events lost on the way from the kernel for the whole capture (not per interface)",
                    c.packets,
                    if *kind == PointKind::Drop {
                        "(all drop events)"
                    } else {
                        "that were on this interface"
                    }
                ))),
                InterfaceStatisticsOption::IsbEndTime(end_epoch_ns),
                InterfaceStatisticsOption::IsbIfRecv(c.packets),
                InterfaceStatisticsOption::IsbIfDrop(c.drops),
                InterfaceStatisticsOption::IsbOsDrop(lost),
                InterfaceStatisticsOption::IsbUsrDeliv(c.packets),
            ];
            if c.first_ns != 0 {
                options.insert(1, InterfaceStatisticsOption::IsbStartTime(c.first_ns));
            }
            let isb = InterfaceStatisticsBlock {
                interface_id: i as u32,
                timestamp: end_epoch_ns,
                options,
            };
            self.writer.write_pcapng_block(isb).map_err(io_err)?;
        }
        use std::io::Write as _;
        self.writer.get_mut().flush()
    }
}

/// What each kind of point is, for if_description.
pub fn data_link(link: LinkType) -> DataLink {
    match link {
        LinkType::Ethernet => DataLink::ETHERNET,
        LinkType::RawIp => DataLink::RAW,
        LinkType::LinuxSll => DataLink::LINUX_SLL,
        LinkType::LinuxSll2 => DataLink::LINUX_SLL2,
        LinkType::Null => DataLink::NULL,
        LinkType::Loop => DataLink::LOOP,
    }
}

fn io_err(e: pcap_file::PcapError) -> std::io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgReader};

    fn meta(ts_ns: u64, point: Point, ifindex: u32, len: u32, cap: u32) -> Meta {
        Meta {
            ts_ns,
            ifindex,
            netns: 7,
            point,
            wire_len: len,
            cap_len: cap,
            pid: 0,
            comm: None,
        }
    }

    fn placed(lookup: u64) -> Vec<Placement> {
        vec![Placement {
            lookup,
            leg: Some(0),
        }]
    }

    struct Read {
        idbs: Vec<(DataLink, Option<String>, Option<u8>)>,
        /// (interface, timestamp ns, orig len, data len, flags, comment)
        epbs: Vec<(u32, u64, u32, usize, Option<u32>, String)>,
        isbs: Vec<(u32, Vec<String>)>,
        section_comment: Option<String>,
    }

    fn read(path: &Path) -> Read {
        let mut r = PcapNgReader::new(std::fs::File::open(path).unwrap()).unwrap();
        let section_comment = r.section().options.iter().find_map(|o| match o {
            SectionHeaderOption::Comment(c) => Some(c.to_string()),
            _ => None,
        });
        let mut out = Read {
            idbs: Vec::new(),
            epbs: Vec::new(),
            isbs: Vec::new(),
            section_comment,
        };
        while let Some(b) = r.next_block() {
            match b.unwrap() {
                Block::InterfaceDescription(i) => {
                    let name = i.options.iter().find_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    });
                    let res = i.options.iter().find_map(|o| match o {
                        InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                        _ => None,
                    });
                    out.idbs.push((i.linktype, name, res));
                }
                Block::EnhancedPacket(e) => {
                    let mut flags = None;
                    let mut comment = String::new();
                    for o in &e.options {
                        match o {
                            EnhancedPacketOption::Flags(f) => flags = Some(*f),
                            EnhancedPacketOption::Comment(c) => comment = c.to_string(),
                            _ => {}
                        }
                    }
                    out.epbs.push((
                        e.interface_id,
                        e.timestamp.as_nanos() as u64,
                        e.original_len,
                        e.data.len(),
                        flags,
                        comment,
                    ));
                }
                Block::InterfaceStatistics(s) => {
                    let opts = s.options.iter().map(|o| format!("{o:?}")).collect();
                    out.isbs.push((s.interface_id, opts));
                }
                _ => {}
            }
        }
        out
    }

    fn rec<'a>(m: &'a Meta, data: &'a [u8], placed: &'a [Placement], iface: &'a str) -> Record<'a> {
        Record {
            epoch_ns: 1_700_000_000_000_000_000 + m.ts_ns,
            meta: m,
            link: if m.point == Point::TcEgress {
                LinkType::Ethernet
            } else {
                LinkType::RawIp
            },
            data: &data[..m.cap_len as usize],
            iface,
            drop_reason: (m.point == Point::Drop).then_some("NETFILTER_DROP"),
            placed,
        }
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("dnstrace-{}-{name}.pcapng", std::process::id()))
    }

    fn points() -> Vec<PointDesc> {
        vec![
            PointDesc {
                kind: PointKind::Tc,
                ifindex: 2,
                link: LinkType::Ethernet,
                name: "eth0".into(),
                description: "eth0 in netns 7".into(),
            },
            PointDesc {
                kind: PointKind::Socket,
                ifindex: 0,
                link: LinkType::RawIp,
                name: "socket".into(),
                description: PointKind::Socket.role().into(),
            },
            PointDesc {
                kind: PointKind::Drop,
                ifindex: 0,
                link: LinkType::RawIp,
                name: "drop".into(),
                description: PointKind::Drop.role().into(),
            },
        ]
    }

    #[test]
    fn under_a_filter_only_the_packets_of_shown_lookups_are_written() {
        let path = temp("filtered");
        let mut w = PcapSink::create(
            &path,
            &RunInfo::default(),
            &points(),
            Bounds::for_timeout(Duration::from_secs(5)),
        )
        .unwrap();
        w.only_shown();
        let data = [0x45u8; 60];
        let (m1, m2, m3) = (
            meta(10, Point::TcEgress, 2, 60, 60),
            meta(20, Point::SocketIn, 0, 40, 40),
            meta(30, Point::Drop, 2, 50, 50),
        );
        w.packet(rec(&m1, &data, &placed(1), "eth0")).unwrap();
        w.packet(rec(&m2, &data, &[], "socket")).unwrap();
        w.packet(rec(&m3, &data, &placed(2), "eth0")).unwrap();
        w.verdict(1, "verdict=dropped".into(), true);
        w.verdict(2, "verdict=ok".into(), false);
        let stats = w.close(1_700_000_000_000_001_000, 0);
        assert_eq!((stats.packets, stats.not_shown), (1, 2));
        let r = read(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(r.epbs.len(), 1);
        assert_eq!(r.epbs[0].1 % 1_000_000, 10);
    }

    #[test]
    fn packets_wait_for_their_verdict_and_keep_capture_order() {
        let path = temp("order");
        let run = RunInfo {
            host_netns: 7,
            uplinks: vec!["eth0".into()],
            watched: Coverage {
                ifaces: vec!["eth0".into()],
                all_ifaces: false,
                socket: true,
                drops: true,
            },
            timeout_ms: 5000,
        };
        let mut w = PcapSink::create(
            &path,
            &run,
            &points(),
            Bounds::for_timeout(Duration::from_secs(5)),
        )
        .unwrap();
        let data = [0x45u8; 60];
        // Lookup 1: a query out of eth0, cut by the snaplen.
        let m1 = meta(10, Point::TcEgress, 2, 1500, 60);
        w.packet(rec(&m1, &data, &placed(1), "eth0")).unwrap();
        // Something that joined no lookup: held behind lookup 1's packet (capture order).
        let m2 = meta(20, Point::SocketIn, 0, 40, 40);
        w.packet(rec(&m2, &data, &[], "socket")).unwrap();
        // Lookup 2, dropped in the kernel on eth0.
        let m3 = meta(30, Point::Drop, 2, 50, 50);
        w.packet(rec(&m3, &data, &placed(2), "eth0")).unwrap();
        assert_eq!(w.stats.packets, 0, "held until lookup 1 has its verdict");
        w.verdict(1, "verdict=ok rcode=NOERROR".into(), true);
        w.drain(40, false).unwrap();
        assert_eq!(
            w.stats.packets, 2,
            "lookup 1's packet and the one behind it"
        );
        w.verdict(2, "verdict=dropped".into(), true);
        let stats = w.close(1_700_000_000_000_001_000, 3);
        assert_eq!(stats.error, None);
        assert_eq!(
            (
                stats.packets,
                stats.with_verdict,
                stats.no_lookup,
                stats.without_verdict
            ),
            (3, 2, 1, 0)
        );

        let r = read(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            RunInfo::from_comment(r.section_comment.as_deref().unwrap()),
            Some(run)
        );
        let names: Vec<_> = r.idbs.iter().map(|i| i.1.clone().unwrap()).collect();
        assert_eq!(names, ["eth0", "socket", "drop"]);
        assert_eq!(r.idbs[0].0, DataLink::ETHERNET);
        assert_eq!(r.idbs[1].0, DataLink::RAW);
        assert!(r.idbs.iter().all(|i| i.2 == Some(9)));
        let e = &r.epbs;
        assert_eq!(e.len(), 3);
        // Capture order, nanosecond timestamps, orig_len = wire_len, direction flags.
        assert_eq!(
            e.iter().map(|x| x.1 % 1_000_000).collect::<Vec<_>>(),
            [10, 20, 30]
        );
        assert_eq!(
            (e[0].0, e[0].2, e[0].3, e[0].4),
            (0, 1500, 60, Some(FLAG_OUTBOUND))
        );
        assert_eq!((e[1].0, e[1].4), (1, Some(FLAG_INBOUND)));
        assert_eq!((e[2].0, e[2].4), (2, Some(0)));
        assert!(
            e[0].5
                .starts_with("lookup=1 leg=0 point=egress iface=eth0 netns=7")
        );
        assert!(e[0].5.contains("snapped=60of1500"));
        assert!(e[0].5.ends_with("verdict=ok rcode=NOERROR"), "{}", e[0].5);
        assert!(
            e[1].5
                .starts_with("lookup=none point=socket-in iface=socket")
        );
        assert!(
            e[2].5
                .contains("drop_reason=NETFILTER_DROP verdict=dropped")
        );
        // The comment parses back into what replay needs.
        let n = PacketNote::parse(&e[2].5);
        assert_eq!(
            (n.point, n.iface.as_deref(), n.netns, n.lookup),
            (Some(Point::Drop), Some("eth0"), Some(7), Some(2))
        );
        // One statistics block per interface; the drop counts against eth0 and "drop".
        assert_eq!(r.isbs.len(), 3);
        let eth0 = r.isbs[0].1.join(" ");
        assert!(
            eth0.contains("IsbIfDrop(1)") && eth0.contains("IsbOsDrop(3)"),
            "{eth0}"
        );
        assert!(eth0.contains("IsbIfRecv(1)"), "{eth0}");
        assert!(r.isbs[2].1.join(" ").contains("IsbIfDrop(1)"));
    }

    #[test]
    fn the_per_lookup_bound_writes_without_the_verdict_and_counts_it() {
        let path = temp("bound");
        let bounds = Bounds {
            per_lookup: 3,
            packets: 100,
            bytes: 1 << 20,
            hold_ns: 1_000_000_000,
        };
        let mut w = PcapSink::create(&path, &RunInfo::default(), &points(), bounds).unwrap();
        let data = [0u8; 20];
        for i in 0..5u64 {
            let m = meta(i, Point::TcEgress, 2, 20, 20);
            w.packet(Record {
                epoch_ns: i,
                meta: &m,
                link: LinkType::Ethernet,
                data: &data,
                iface: "eth0",
                drop_reason: None,
                placed: &placed(9),
            })
            .unwrap();
        }
        // The 4th packet passed the bound: every held packet of lookup 9 went out.
        assert_eq!(w.stats.without_verdict, 5);
        // Another lookup, never finished: the hold time forces it out.
        let m = meta(10, Point::TcEgress, 2, 20, 20);
        let rec = Record {
            epoch_ns: 10,
            meta: &m,
            link: LinkType::Ethernet,
            data: &data,
            iface: "eth0",
            drop_reason: None,
            placed: &placed(10),
        };
        w.packet(rec).unwrap();
        assert_eq!(w.stats.packets, 5);
        w.drain(2_000_000_000, false).unwrap();
        assert_eq!((w.stats.packets, w.stats.without_verdict), (6, 6));
        assert_eq!(w.close(3_000_000_000, 0).error, None);
        let r = read(&path);
        std::fs::remove_file(&path).unwrap();
        assert!(r.epbs.iter().all(|e| e.5.contains("verdict=pending")));
    }
}
