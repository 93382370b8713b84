//! `dnstrace replay FILE`: reads a pcap or pcapng file and takes every packet through the
//! same pipeline as `watch` (decode → correlate → sinks), with the file's timestamps as the
//! clock. Needs no privileges.
use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use pcap_file::{
    DataLink, TsResolution,
    pcap::PcapReader,
    pcapng::{
        Block, PcapNgReader,
        blocks::{
            enhanced_packet::EnhancedPacketOption,
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            interface_statistics::InterfaceStatisticsOption,
            section_header::SectionHeaderOption,
        },
    },
};
use tokio::sync::watch;

use crate::{
    cli::{Output, ReplayArgs},
    correlate::{self, Correlator, Coverage},
    decode::{
        self, IssueKind, LinkType, Meta, Packet, Point,
        frag::{Defrag, Outcome},
        text::{printable, printable_string},
    },
    pipeline::{Consumer, Frame, Outputs, ReplayStats, Summary, start_tui},
    sink::{
        Names,
        pcap::{APPLICATION, Bounds, PacketNote, PcapSink, RunInfo},
    },
    tui,
};

/// Open lookups are checked for their deadline this often, in file time.
const TICK_NS: u64 = 100_000_000;
/// The netns all packets of a foreign file are said to be in.
const FILE_NETNS: u64 = 1;
/// Timestamps are clamped to this (year 2116): deadlines are computed by adding to them.
const MAX_TS_NS: u64 = 1 << 62;
/// ARPHRD_LOOPBACK, the hardware type of `lo` in SLL headers.
const ARPHRD_LOOPBACK: u16 = 772;

/// Validated `replay` settings.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    pub file: PathBuf,
    pub output: Output,
    pub packets: bool,
    /// None: the capture's own timeout for our files, else 5 s.
    pub timeout: Option<Duration>,
    pub ports: Vec<u16>,
    pub uplinks: Option<Vec<String>>,
    pub pcap: Option<PathBuf>,
    /// Where logs go; the TUI defaults to a file so that nothing writes over it.
    pub log_file: Option<PathBuf>,
    /// A cut or damaged file is an error, not a warning.
    pub strict: bool,
    /// The `node` of the records.
    pub node: String,
    /// `--client`, `--qname`, `--verdict`.
    pub filter: crate::filter::LookupFilter,
    /// `--hops`.
    pub hops: crate::cli::Hops,
}

impl From<ReplayArgs> for ReplayConfig {
    fn from(a: ReplayArgs) -> Self {
        let mut ports = a.ports;
        ports.sort_unstable();
        ports.dedup();
        Self {
            file: a.file,
            output: a.output,
            packets: a.packets,
            timeout: a.timeout,
            ports,
            uplinks: (!a.uplinks.is_empty()).then_some(a.uplinks),
            pcap: a.pcap,
            log_file: crate::cli::log_file_for(a.output, a.log_file),
            strict: a.strict,
            node: a.node.unwrap_or_else(crate::identity::hostname),
            hops: a.filter.hops,
            filter: a.filter.build(),
        }
    }
}

/// One interface of the file.
#[derive(Clone, Debug)]
struct IfInfo {
    name: Option<String>,
    link: DataLink,
    /// Units per second of its timestamps.
    units: u128,
    offset_s: u64,
}

impl IfInfo {
    fn from_idb(idb: &InterfaceDescriptionBlock<'_>) -> Self {
        let mut info = Self {
            name: None,
            link: idb.linktype,
            units: 1_000_000,
            offset_s: 0,
        };
        for o in &idb.options {
            match o {
                InterfaceDescriptionOption::IfName(n) => {
                    info.name = Some(printable(n).into_owned())
                }
                InterfaceDescriptionOption::IfTsResol(r) => {
                    info.units = if r & 0x80 == 0 {
                        10u128.checked_pow(u32::from(*r)).unwrap_or(1_000_000)
                    } else {
                        1u128.checked_shl(u32::from(r & 0x7f)).unwrap_or(1_000_000)
                    }
                    .max(1);
                }
                InterfaceDescriptionOption::IfTsOffset(s) => info.offset_s = *s,
                _ => {}
            }
        }
        info
    }

    fn ns(&self, ticks: u128) -> u64 {
        let ns = ticks.saturating_mul(1_000_000_000) / self.units;
        u64::try_from(ns)
            .unwrap_or(u64::MAX)
            .saturating_add(self.offset_s.saturating_mul(1_000_000_000))
    }
}

/// One packet record, owned.
struct FileFrame {
    ts_ns: u64,
    iface: usize,
    orig_len: u32,
    data: Vec<u8>,
    /// epb_flags.
    flags: Option<u32>,
    comment: Option<String>,
}

/// Direction as far as the file tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    In,
    Out,
    /// Unknown, or loopback where both directions are one.
    Unknown,
}

/// Reads pcap or pcapng, one frame at a time.
enum Reader {
    Pcap {
        r: PcapReader<BufReader<File>>,
        res: TsResolution,
    },
    PcapNg(PcapNgReader<BufReader<File>>),
}

struct Input {
    reader: Reader,
    ifaces: Vec<IfInfo>,
    /// Our section comment, when dnstrace wrote the file.
    run: Option<RunInfo>,
    /// The latest isb_endtime: when the capture that wrote the file stopped.
    end_ns: Option<u64>,
}

impl Input {
    fn open(path: &std::path::Path) -> anyhow::Result<(Self, &'static str)> {
        let file = File::open(path).with_context(|| format!("opening {}", shown(path)))?;
        let mut buf = BufReader::with_capacity(1 << 16, file);
        let magic: Vec<u8> = buf.fill_buf()?.iter().take(4).copied().collect();
        if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
            let r = PcapNgReader::new(buf)
                .map_err(|e| anyhow::anyhow!("{}: not a readable pcapng file: {e}", shown(path)))?;
            let run = section_run(r.section().options.iter());
            Ok((
                Self {
                    reader: Reader::PcapNg(r),
                    ifaces: Vec::new(),
                    run,
                    end_ns: None,
                },
                "pcapng",
            ))
        } else {
            let r = PcapReader::new(buf)
                .map_err(|e| anyhow::anyhow!("{}: not a pcap or pcapng file: {e}", shown(path)))?;
            let h = r.header();
            Ok((
                Self {
                    ifaces: vec![IfInfo {
                        name: None,
                        link: h.datalink,
                        units: 1_000_000_000,
                        offset_s: 0,
                    }],
                    reader: Reader::Pcap {
                        res: h.ts_resolution,
                        r,
                    },
                    run: None,
                    end_ns: None,
                },
                "pcap",
            ))
        }
    }

    /// The next packet record; Err when the file is damaged.
    fn next(&mut self) -> Option<Result<FileFrame, String>> {
        match &mut self.reader {
            Reader::Pcap { r, res } => {
                let p = match r.next_raw_packet()? {
                    Ok(p) => p,
                    Err(e) => return Some(Err(read_error(&e))),
                };
                let frac = u64::from(p.ts_frac);
                let frac_ns = match res {
                    TsResolution::MicroSecond => frac * 1000,
                    TsResolution::NanoSecond => frac,
                };
                Some(Ok(FileFrame {
                    ts_ns: u64::from(p.ts_sec) * 1_000_000_000 + frac_ns,
                    iface: 0,
                    orig_len: p.orig_len,
                    data: p.data.into_owned(),
                    flags: None,
                    comment: None,
                }))
            }
            Reader::PcapNg(r) => loop {
                let block = match r.next_block()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(read_error(&e))),
                };
                match block {
                    Block::SectionHeader(shb) => {
                        self.ifaces.clear();
                        self.run = section_run(shb.options.iter());
                    }
                    Block::InterfaceDescription(idb) => self.ifaces.push(IfInfo::from_idb(&idb)),
                    Block::EnhancedPacket(epb) => {
                        let i = epb.interface_id as usize;
                        let ts_ns = self
                            .ifaces
                            .get(i)
                            .map_or(0, |f| f.ns(epb.timestamp.as_nanos()));
                        let mut flags = None;
                        let mut comment = None;
                        for o in &epb.options {
                            match o {
                                EnhancedPacketOption::Flags(f) => flags = Some(*f),
                                EnhancedPacketOption::Comment(c) if comment.is_none() => {
                                    comment = Some(printable(c).into_owned())
                                }
                                _ => {}
                            }
                        }
                        return Some(Ok(FileFrame {
                            ts_ns,
                            iface: i,
                            orig_len: epb.original_len,
                            data: epb.data.into_owned(),
                            flags,
                            comment,
                        }));
                    }
                    Block::SimplePacket(spb) => {
                        return Some(Ok(FileFrame {
                            ts_ns: 0,
                            iface: 0,
                            orig_len: spb.original_len,
                            data: spb.data.into_owned(),
                            flags: None,
                            comment: None,
                        }));
                    }
                    Block::Packet(pb) => {
                        let i = usize::from(pb.interface_id);
                        let ts_ns = self
                            .ifaces
                            .get(i)
                            .map_or(0, |f| f.ns(u128::from(pb.timestamp)));
                        return Some(Ok(FileFrame {
                            ts_ns,
                            iface: i,
                            orig_len: pb.original_len,
                            data: pb.data.into_owned(),
                            flags: None,
                            comment: None,
                        }));
                    }
                    Block::InterfaceStatistics(isb) => {
                        let units = self.ifaces.get(isb.interface_id as usize).cloned();
                        for o in &isb.options {
                            if let (InterfaceStatisticsOption::IsbEndTime(t), Some(f)) = (o, &units)
                            {
                                let t = f.ns(u128::from(*t));
                                self.end_ns = Some(self.end_ns.map_or(t, |e| e.max(t)));
                            }
                        }
                    }
                    _ => {}
                }
            },
        }
    }
}

fn section_run<'a, 'b: 'a>(
    options: impl Iterator<Item = &'a SectionHeaderOption<'b>>,
) -> Option<RunInfo> {
    let mut ours = false;
    let mut run = None;
    for o in options {
        match o {
            SectionHeaderOption::UserApplication(a) => {
                ours |= a.split_whitespace().next() == Some(APPLICATION)
            }
            SectionHeaderOption::Comment(c) => {
                run = run.or_else(|| RunInfo::from_comment(&printable(c)))
            }
            _ => {}
        }
    }
    run.filter(|_| ours)
}

/// A path for the terminal: a file name can hold escape sequences too (`replay *`).
fn shown(path: &std::path::Path) -> String {
    printable_string(path.display().to_string())
}

/// Lookups queued for the TUI: a replay produces them faster than any screen shows them.
const TUI_QUEUE: usize = 1 << 16;

/// Runs `dnstrace replay`.
pub async fn replay(cfg: ReplayConfig) -> anyhow::Result<Summary> {
    let started = std::time::Instant::now();
    let (mut input, format) = Input::open(&cfg.file)?;
    let run = input.run.clone();
    let timeout = cfg.timeout.unwrap_or_else(|| {
        run.as_ref()
            .filter(|r| r.timeout_ms > 0)
            .map_or(Duration::from_secs(5), |r| {
                Duration::from_millis(r.timeout_ms)
            })
    });
    let host_netns = run.as_ref().map_or(FILE_NETNS, |r| r.host_netns);
    let uplinks = cfg
        .uplinks
        .clone()
        .or_else(|| run.as_ref().map(|r| r.uplinks.clone()))
        .unwrap_or_default();
    let watched = match &run {
        Some(r) => r.watched.clone(),
        // Any other file is taken as the whole story: what it does not show did not happen
        // where it was captured (else every unanswered query would be `unknown`).
        None => Coverage::full(),
    };
    let correlator = Correlator::new(correlate::Config {
        timeout_ns: timeout.as_nanos() as u64,
        uplinks: uplinks.clone(),
        host_netns,
        watched: watched.clone(),
        ok_hops: crate::app::shows_ok_hops(cfg.output, cfg.hops),
        ..correlate::Config::default()
    });
    let names = Names::new(host_netns, [])
        .with_epoch_timestamps()
        .with_node(cfg.node.clone())
        .with_hops(cfg.hops);
    // The TUI stays up after the file ends, to browse its lookups, until `q`.
    let mut ui = match cfg.output {
        Output::Tui => {
            let header = tui::HeaderInfo {
                source: format!("replay {}", shown(&cfg.file)),
                coverage: watched.clone(),
                netns: host_netns,
                uplinks: uplinks.clone(),
                ports: cfg.ports.clone(),
                clock_offset_ns: 0,
            };
            let opts = tui::Options {
                linger: true,
                handle_signals: true,
            };
            Some(start_tui(header, cfg.log_file.as_deref(), TUI_QUEUE, opts)?)
        }
        _ => None,
    };
    let out = Outputs::new(cfg.output, ui.as_ref().map(|(feed, _)| feed.clone()));
    let (_lost_tx, lost_rx) = watch::channel(0u64);
    let mut consumer = Consumer::with_outputs(
        out,
        names,
        correlator,
        cfg.packets,
        None,
        lost_rx,
        cfg.filter.clone(),
    );
    if let Some(path) = &cfg.pcap {
        let info = RunInfo {
            host_netns,
            uplinks: uplinks.clone(),
            watched: watched.clone(),
            timeout_ms: timeout.as_millis() as u64,
        };
        let sink = PcapSink::create(path, &info, &[], Bounds::for_timeout(timeout))
            .with_context(|| format!("creating the pcapng file {}", path.display()))?;
        consumer.pcap = Some(sink);
        if let Some(p) = consumer.pcap.as_mut().filter(|_| !cfg.filter.is_empty()) {
            p.only_shown();
        }
    }

    let mut stats = ReplayStats {
        file: shown(&cfg.file),
        format,
        dnstrace_file: run.is_some(),
        complete: true,
        ..ReplayStats::default()
    };
    let mut ifindex: HashMap<String, u32> = HashMap::new();
    let mut defrag = Defrag::new();
    let mut next_tick = 0u64;
    let mut last_ts = 0u64;
    // The first failed write to stdout; nothing more is written after it.
    let mut out_error: Option<std::io::Error> = None;
    // Frames naming an interface the file never described.
    let unknown_iface = IfInfo {
        name: None,
        link: DataLink::Unknown(u32::MAX),
        units: 1_000_000_000,
        offset_s: 0,
    };
    while let Some(next) = input.next() {
        let f = match next {
            Ok(f) => f,
            Err(e) => {
                stats.complete = false;
                stats.error = Some(format!("stopped after {} packets: {e}", stats.frames));
                break;
            }
        };
        stats.frames += 1;
        // A damaged timestamp must not overflow the correlator's deadlines.
        let ts = f.ts_ns.min(MAX_TS_NS);
        last_ts = last_ts.max(ts);
        if ts >= next_tick {
            if let Err(e) = consumer.tick(ts) {
                out_error = Some(e);
                break;
            }
            next_tick = ts.saturating_add(TICK_NS);
            defrag.expire(ts);
        }
        let info = input.ifaces.get(f.iface).unwrap_or(&unknown_iface);
        let Some(framed) = frame_of(&f, info) else {
            *stats
                .skipped_link
                .entry(format!("{:?}", info.link))
                .or_default() += 1;
            continue;
        };
        let note = f
            .comment
            .as_deref()
            .filter(|_| run.is_some())
            .map(PacketNote::parse)
            .filter(|n| n.point.is_some());
        let ours = note.is_some();
        let (iface, netns, point, drop_reason) = match note {
            Some(n) => (
                n.iface.unwrap_or_else(|| "?".to_owned()),
                n.netns.unwrap_or(host_netns),
                n.point,
                n.drop_reason,
            ),
            None => (framed.iface, host_netns, None, None),
        };
        let index = match ifindex.get(&iface) {
            Some(&i) => i,
            None => {
                let i = ifindex.len() as u32 + 1;
                consumer.names.add_iface(i, iface.clone());
                ifindex.insert(iface.clone(), i);
                i
            }
        };
        // Our own file names each point as the live run did; keep that name whatever netns.
        let named = ours.then(|| std::sync::Arc::<str>::from(iface));
        let mut data = &f.data[framed.offset..];
        let mut link = framed.link;
        let mut orig_len = f.orig_len.saturating_sub(framed.offset as u32);
        let datagram;
        match defrag.push(link, data, ts) {
            Outcome::Whole => {}
            Outcome::Held | Outcome::Bad => continue,
            Outcome::Datagram(p) => {
                datagram = p;
                data = &datagram;
                link = LinkType::RawIp;
                orig_len = data.len() as u32;
            }
        }
        let cap_len = data.len() as u32;
        let meta = Meta {
            ts_ns: ts,
            ifindex: index,
            netns,
            point: point.unwrap_or(Point::TcIngress),
            wire_len: orig_len.max(cap_len),
            cap_len,
            pid: 0,
            comm: None,
        };
        let mut p = decode::decode_with(meta, link, data, consumer.detail());
        if !is_dns(&p, &cfg.ports, &mut stats) {
            continue;
        }
        if point.is_none() {
            p.meta.point = guess_point(&p, framed.dir, &cfg.ports);
        }
        stats.dns_frames += 1;
        let frame = Frame {
            link,
            data,
            drop_reason,
            iface: named,
            // A file's frames each carry their packet whole.
            message: crate::capture::Message::Unnamed,
        };
        if let Err(e) = consumer.decoded(&frame, p) {
            out_error = Some(e);
            break;
        }
    }
    stats.interfaces = input
        .ifaces
        .iter()
        .enumerate()
        .map(|(i, f)| f.name.clone().unwrap_or_else(|| default_name(i, f.link)))
        .collect();
    // End of the file: a file we wrote ends when its capture ended, any other file at its
    // last packet. A lookup whose client's timeout had not run out by then ends `unknown`
    // (its reply may have come after), never `unanswered`.
    let end = match (input.end_ns, run.is_some()) {
        (Some(end), true) => end.max(last_ts),
        _ => last_ts,
    };
    if out_error.is_none() {
        out_error = consumer.tick(end).and_then(|()| consumer.finish(end)).err();
    }
    defrag.finish();
    stats.ip = defrag.stats;
    let mut done = consumer.done_with(None);
    let pcap = done.close_pcap(end, 0);
    if let Some(e) = out_error.take_if(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
        // The reader went away (`| head`): end quietly.
        return Err(crate::sink::stdout_error(e));
    }
    let mut out = Some(done.out);
    let names = done.names;
    let end_epoch_ns = done.end_epoch_ns;
    if let Some((mut feed, mut handle)) = ui.take() {
        let l = &done.lookups;
        feed.live(
            tui::LiveStats {
                at_ns: end,
                packets: done.decoded,
                lookups: l.finished,
                open: l.live_lookups as u64,
                malformed: done.issues.malformed,
                evicted: l.evicted,
                ..tui::LiveStats::default()
            },
            || done.upstreams.clone(),
        );
        drop(feed);
        // Closing the last sender tells the screen the file has ended.
        out = None;
        handle.ended().await;
        if let Err(e) = handle.finish().await {
            return Err(anyhow::Error::new(e).context("the TUI failed"));
        }
    }
    let mut summary = Summary {
        netns: host_netns,
        decoded: done.decoded,
        decode_reused: done.reused,
        issues: done.issues,
        tcp: done.tcp,
        lookups: done.lookups,
        upstreams: done.upstreams,
        duration_ms: started.elapsed().as_millis() as u64,
        pcap,
        replay: Some(stats),
        output_failed: out_error.is_some(),
        ..Summary::default()
    };
    if out_error.is_none()
        && let Some(out) = &mut out
    {
        out_error = out
            .upstreams(&summary.upstreams, &names, end_epoch_ns)
            .and_then(|()| out.summary(&summary, &names, end_epoch_ns))
            .and_then(|()| out.flush())
            .err();
        summary.output_failed = out_error.is_some();
    }
    for line in summary.lines() {
        crate::say!("{line}");
    }
    if cfg.output == Output::Tui
        && let Some(path) = &cfg.log_file
    {
        crate::say!("dnstrace: log in {}", path.display());
    }
    if let Some(e) = out_error {
        return Err(crate::sink::stdout_error(e));
    }
    if let Some(p) = &summary.pcap
        && let Some(e) = &p.error
    {
        anyhow::bail!("writing the pcapng file {} failed: {e}", p.path);
    }
    if let Some(r) = summary.replay.as_ref().filter(|r| !r.complete) {
        let what = format!(
            "{} is incomplete: {}; the lookups cover only the packets before that",
            r.file,
            r.error.as_deref().unwrap_or("unreadable")
        );
        if cfg.strict {
            anyhow::bail!("{what} (--strict)");
        }
        crate::say!("dnstrace: warning: {what} (with --strict this is an error)");
    }
    Ok(summary)
}

/// Why the reader stopped, for people: the file's own bytes never reach the terminal raw.
fn read_error(e: &pcap_file::PcapError) -> String {
    use pcap_file::PcapError;
    match e {
        PcapError::IncompleteBuffer => "the file ends inside a record (cut short?)".to_owned(),
        PcapError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the file ends inside a record (cut short?)".to_owned()
        }
        PcapError::IoError(io) => format!("read error: {io}"),
        other => printable_string(format!("damaged record: {other}")),
    }
}

/// Where a frame's packet starts, how to parse it, and what the file says of its interface.
struct Framed {
    link: LinkType,
    offset: usize,
    iface: String,
    dir: Dir,
}

fn default_name(i: usize, link: DataLink) -> String {
    match link {
        DataLink::LINUX_SLL | DataLink::LINUX_SLL2 => "any".to_owned(),
        _ => format!("if{i}"),
    }
}

fn frame_of(f: &FileFrame, info: &IfInfo) -> Option<Framed> {
    let name = info
        .name
        .clone()
        .unwrap_or_else(|| default_name(f.iface, info.link));
    let dir_flag = match f.flags.map(|x| x & 0b11) {
        Some(1) => Dir::In,
        Some(2) => Dir::Out,
        _ => Dir::Unknown,
    };
    let loopback = |n: &str| n == "lo" || n.starts_with("lo0") || n == "Loopback";
    let plain = |link| Framed {
        link,
        offset: 0,
        dir: if loopback(&name) {
            Dir::Unknown
        } else {
            dir_flag
        },
        iface: name.clone(),
    };
    Some(match info.link {
        DataLink::ETHERNET => plain(LinkType::Ethernet),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => plain(LinkType::RawIp),
        // DLT_RAW as numbered on some BSDs.
        DataLink::Unknown(12 | 14) => plain(LinkType::RawIp),
        DataLink::NULL => Framed {
            dir: Dir::Unknown,
            ..plain(LinkType::Null)
        },
        DataLink::LOOP => Framed {
            dir: Dir::Unknown,
            ..plain(LinkType::Loop)
        },
        DataLink::LINUX_SLL => {
            let d = &f.data;
            let (pkttype, hatype) = match d.get(..4) {
                Some(h) => (
                    u16::from_be_bytes([h[0], h[1]]),
                    u16::from_be_bytes([h[2], h[3]]),
                ),
                None => (u16::MAX, 0),
            };
            cooked(name, LinkType::LinuxSll, u32::from(pkttype), hatype, None)
        }
        DataLink::LINUX_SLL2 => {
            let d = &f.data;
            let (ifindex, hatype, pkttype) = match d.get(..11) {
                Some(h) => (
                    Some(u32::from_be_bytes([h[4], h[5], h[6], h[7]])),
                    u16::from_be_bytes([h[8], h[9]]),
                    u32::from(h[10]),
                ),
                None => (None, 0, u32::MAX),
            };
            cooked(name, LinkType::LinuxSll2, pkttype, hatype, ifindex)
        }
        DataLink::NFLOG => {
            let offset = nflog_payload(&f.data)?;
            Framed {
                link: LinkType::RawIp,
                offset,
                iface: name,
                dir: Dir::Unknown,
            }
        }
        _ => return None,
    })
}

/// Linux cooked captures: the direction is the packet type, the interface (SLL2) its index.
fn cooked(name: String, link: LinkType, pkttype: u32, hatype: u16, ifindex: Option<u32>) -> Framed {
    let lo = hatype == ARPHRD_LOOPBACK;
    let iface = match (lo, ifindex) {
        (true, _) => "lo".to_owned(),
        (false, Some(i)) if name == "any" || name.starts_with("if") => format!("if{i}"),
        (false, Some(i)) => format!("{name}:if{i}"),
        (false, None) => name,
    };
    let dir = match pkttype {
        // Loopback packets are seen once, in whatever direction: both ends are here.
        _ if lo => Dir::Unknown,
        4 => Dir::Out,
        0..=3 => Dir::In,
        _ => Dir::Unknown,
    };
    Framed {
        link,
        offset: 0,
        iface,
        dir,
    }
}

/// NFLOG: a 4-byte header, then TLVs (length and type in the capturing host's byte order,
/// padded to 4 bytes); the packet is the NFULA_PAYLOAD (type 9) value. Returns its offset.
fn nflog_payload(d: &[u8]) -> Option<usize> {
    const NFULA_PAYLOAD: u16 = 9;
    for little in [true, false] {
        let u16_at = |i: usize| {
            let b = [*d.get(i)?, *d.get(i + 1)?];
            Some(if little {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            })
        };
        let mut at = 4;
        while at + 4 <= d.len() {
            let (Some(len), Some(kind)) = (u16_at(at), u16_at(at + 2)) else {
                break;
            };
            let len = usize::from(len);
            if len < 4 || at + len > d.len() {
                break;
            }
            if kind & 0x7fff == NFULA_PAYLOAD {
                return Some(at + 4);
            }
            at += len.div_ceil(4) * 4;
        }
    }
    None
}

/// Whether a decoded frame is DNS for this replay; counts it when not.
fn is_dns(p: &Packet, ports: &[u16], stats: &mut ReplayStats) -> bool {
    match (p.src, p.dst) {
        (Some(s), Some(d)) => {
            if ports.contains(&s.port()) || ports.contains(&d.port()) {
                true
            } else {
                stats.not_dns += 1;
                false
            }
        }
        _ => {
            match &p.issue {
                Some(i) if i.detail == "non-first fragment" => stats.later_fragments += 1,
                Some(i)
                    if matches!(
                        i.kind,
                        IssueKind::BadL3 | IssueKind::BadL4 | IssueKind::BadL2
                    ) && i.detail.contains("not ") =>
                {
                    stats.not_dns += 1
                }
                Some(i) => *stats.unparsed.entry(i.kind.as_str()).or_default() += 1,
                None => stats.not_dns += 1,
            }
            false
        }
    }
}

/// The capture point of a foreign frame. A known direction maps to tc ingress/egress.
/// Unknown (and loopback, where one sighting is both sending and receiving) is taken as
/// seen at the server's side: a query arrives, a reply leaves, so that a reply is seen at
/// the mirror of where its query was, as for any single capture point.
fn guess_point(p: &Packet, dir: Dir, ports: &[u16]) -> Point {
    match dir {
        Dir::In => Point::TcIngress,
        Dir::Out => Point::TcEgress,
        Dir::Unknown => {
            let query = match &p.dns {
                Some(m) => !m.qr,
                None => p.dst.is_some_and(|d| ports.contains(&d.port())),
            };
            if query {
                Point::TcIngress
            } else {
                Point::TcEgress
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nflog_finds_the_payload_tlv() {
        // header, a 5-byte prefix TLV (padded to 8), then the payload TLV.
        let mut d = vec![2, 0, 0, 0];
        d.extend([9, 0, 10, 0, b'a', b'b', b'c', b'd', b'e', 0, 0, 0]);
        d.extend([8, 0, 9, 0, 0x45, 0, 0, 20]);
        assert_eq!(nflog_payload(&d), Some(4 + 12 + 4));
        assert_eq!(nflog_payload(&d[..10]), None);
    }

    #[test]
    fn cooked_direction_and_names() {
        let f = cooked("any".into(), LinkType::LinuxSll2, 4, 1, Some(7));
        assert_eq!((f.iface.as_str(), f.dir), ("if7", Dir::Out));
        let f = cooked("any".into(), LinkType::LinuxSll, 0, ARPHRD_LOOPBACK, None);
        assert_eq!((f.iface.as_str(), f.dir), ("lo", Dir::Unknown));
        let f = cooked("any".into(), LinkType::LinuxSll, 0, 1, None);
        assert_eq!((f.iface.as_str(), f.dir), ("any", Dir::In));
    }

    fn packet(src: &str, dst: &str, issue: Option<(IssueKind, &str)>) -> Packet {
        Packet {
            meta: Meta {
                ts_ns: 0,
                ifindex: 1,
                netns: 1,
                point: Point::TcIngress,
                wire_len: 0,
                cap_len: 0,
                pid: 0,
                comm: None,
            },
            proto: None,
            src: src.parse().ok(),
            dst: dst.parse().ok(),
            tcp_flags: None,
            dns: None,
            issue: issue.map(|(kind, detail)| decode::Issue {
                kind,
                detail: detail.into(),
            }),
            tunnel: None,
        }
    }

    #[test]
    fn only_dns_ports_are_dns_and_the_rest_is_counted() {
        let mut st = ReplayStats::default();
        let ports = [53];
        assert!(is_dns(
            &packet("10.0.0.1:4000", "10.0.0.2:53", None),
            &ports,
            &mut st
        ));
        assert!(is_dns(
            &packet("10.0.0.2:53", "10.0.0.1:4000", None),
            &ports,
            &mut st
        ));
        // mDNS and LLMNR.
        assert!(!is_dns(
            &packet("10.0.0.1:5353", "224.0.0.251:5353", None),
            &ports,
            &mut st
        ));
        assert!(!is_dns(
            &packet("10.0.0.1:5355", "10.0.0.2:4000", None),
            &ports,
            &mut st
        ));
        // ICMP (a quoted DNS message inside is never looked at), ARP.
        let icmp = (IssueKind::BadL4, "IP protocol ICMP is not UDP or TCP");
        assert!(!is_dns(&packet("", "", Some(icmp)), &ports, &mut st));
        assert!(!is_dns(
            &packet("", "", Some((IssueKind::BadL3, "ARP, not IP"))),
            &ports,
            &mut st
        ));
        assert_eq!(st.not_dns, 4);
        let frag = (IssueKind::BadL4, "non-first fragment");
        assert!(!is_dns(&packet("", "", Some(frag)), &ports, &mut st));
        let cut = (IssueKind::Truncated, "link header: needs 14 bytes, only 3");
        assert!(!is_dns(&packet("", "", Some(cut)), &ports, &mut st));
        assert_eq!(
            (st.later_fragments, st.unparsed.get("truncated")),
            (1, Some(&1))
        );
    }

    #[test]
    fn unknown_direction_is_seen_from_the_server_side() {
        let q = packet("10.0.0.1:4000", "10.0.0.2:53", None);
        let r = packet("10.0.0.2:53", "10.0.0.1:4000", None);
        assert_eq!(guess_point(&q, Dir::Unknown, &[53]), Point::TcIngress);
        assert_eq!(guess_point(&r, Dir::Unknown, &[53]), Point::TcEgress);
        assert_eq!(guess_point(&r, Dir::In, &[53]), Point::TcIngress);
        assert_eq!(guess_point(&q, Dir::Out, &[53]), Point::TcEgress);
    }

    #[test]
    fn tsresol_units() {
        let idb = |r: u8| InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![InterfaceDescriptionOption::IfTsResol(r)],
        };
        assert_eq!(IfInfo::from_idb(&idb(9)).ns(1_500), 1_500);
        assert_eq!(IfInfo::from_idb(&idb(6)).ns(1_500), 1_500_000);
        assert_eq!(IfInfo::from_idb(&idb(0x80 | 10)).ns(1024), 1_000_000_000);
    }

    #[test]
    fn run_info_round_trips() {
        let run = RunInfo {
            host_netns: 4026531840,
            uplinks: vec!["eth0".into()],
            watched: Coverage {
                ifaces: vec!["eth0".into(), "veth1".into()],
                all_ifaces: true,
                socket: true,
                drops: false,
            },
            timeout_ms: 2500,
        };
        assert_eq!(RunInfo::from_comment(&run.to_comment()), Some(run));
        let note = PacketNote::parse(
            "lookup=3 leg=0 point=socket-out iface=socket netns=77 drop_reason=NO_SOCKET verdict=ok",
        );
        assert_eq!(note.point, Some(Point::SocketOut));
        assert_eq!(
            (note.netns, note.lookup, note.drop_reason.as_deref()),
            (Some(77), Some(3), Some("NO_SOCKET"))
        );
    }
}
