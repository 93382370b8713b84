//! Collector throughput benchmark, used by `cargo xtask bench`.
//!
//! `collector_bench gen FILE LOOKUPS` writes a pcap (Ethernet, IPv4, UDP) of
//! LOOKUPS client lookups, each a query seen on a pod veth and, except for
//! every 100th, its answer: about 2×LOOKUPS DNS packets, interleaved as on a
//! busy node (about 15 lookups in flight).
//!
//! `collector_bench gen-flood FILE QUERIES` writes QUERIES distinct queries
//! that nobody answers (the correlator's memory bound).
//!
//! `collector_bench run FILE [MAX_LOOKUPS]` reads it back through dnstrace's own decode and
//! correlate stages, the way `dnstrace watch` feeds them (expiring open
//! lookups every 100 ms of capture time; a healthy lookup's hops counted and placed but
//! not built, as for the default `--hops problems`), and prints one JSON line: events,
//! lookups by verdict, wall and CPU seconds, and events per CPU second.
//! `run-heap FILE MAX_LOOKUPS` also counts heap bytes (slower): held with the
//! capture's lookups still open (`heap_at_end`), and at most (`heap_peak`);
//! `peak_rss_kib_open` is the RSS peak before the end of capture finishes them.
//!
//! `collector_bench decode FILE` times the decode stage alone on the first
//! [`DECODE_FRAMES`] frames, each seen at [`HOPS`] points as on a node (the same payload,
//! its addresses rewritten as DNAT and SNAT do), the kernel having sent all but the first
//! sighting as compact records: every sighting parsed, against one parse per message
//! (`pipeline::Reused`). Passes of the two alternate; it prints ns per sighting for each.
use std::{
    alloc::{GlobalAlloc, Layout},
    collections::BTreeMap,
    fs::File,
    io::{BufReader, BufWriter},
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use dnstrace::{
    capture::{Message, MessageName},
    correlate::{self, Correlator, Coverage},
    decode::{self, Detail, LinkType, Meta, Point},
    pipeline::Reused,
};
use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use tikv_jemallocator::Jemalloc;

/// dnstrace's own allocator (jemalloc, with its options), so that the figures are
/// dnstrace's; it also counts the heap bytes held, to tell the correlator's own state
/// from RSS, only for `run-heap` (the counting costs time).
struct Counting;

#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 47] = dnstrace::JEMALLOC_CONF;

static COUNTING: AtomicBool = AtomicBool::new(false);
static HELD: AtomicUsize = AtomicUsize::new(0);
static HELD_PEAK: AtomicUsize = AtomicUsize::new(0);

fn held(delta: isize) {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    let now = HELD
        .fetch_add(delta as usize, Ordering::Relaxed)
        .wrapping_add(delta as usize);
    HELD_PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to jemalloc unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        held(l.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { Jemalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        held(-(l.size() as isize));
        // SAFETY: the caller's contract, passed on.
        unsafe { Jemalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        held(new as isize - l.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { Jemalloc.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Every this many lookups, one gets no answer.
const UNANSWERED_EVERY: u64 = 100;
const SPACING_NS: u64 = 20_000;
const RTT_NS: u64 = 300_000;
const NAMES: u64 = 1000;
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const IFACE: &str = "pod0";
const TICK_NS: u64 = 100_000_000;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["gen", file, lookups] => generate(file, lookups.parse().context("LOOKUPS")?),
        ["gen-flood", file, queries] => generate_flood(file, queries.parse().context("QUERIES")?),
        ["decode", file] => decode_once(file),
        ["run", file] => run(file, correlate::Config::default().max_lookups),
        ["run", file, cap] => run(file, cap.parse().context("MAX_LOOKUPS")?),
        ["run-heap", file, cap] => {
            COUNTING.store(true, Ordering::Relaxed);
            run(file, cap.parse().context("MAX_LOOKUPS")?)
        }
        _ => bail!(
            "usage: collector_bench gen FILE LOOKUPS | gen-flood FILE QUERIES | run FILE [MAX_LOOKUPS] | run-heap FILE MAX_LOOKUPS | decode FILE"
        ),
    }
}

fn client(i: u64) -> (Ipv4Addr, u16) {
    let pod = i % 250;
    (
        Ipv4Addr::new(10, 244, (pod / 250) as u8, (pod % 250 + 2) as u8),
        (1024 + (i / 250) % 60_000) as u16,
    )
}

fn qname(i: u64) -> String {
    format!("host{}.ns{}.svc.cluster.local", i % NAMES, i % 7)
}

/// A DNS message: the question, and for a response one A record.
fn dns(id: u16, name: &str, answer: Option<Ipv4Addr>) -> Vec<u8> {
    let mut m = Vec::with_capacity(96);
    let flags: u16 = if answer.is_some() { 0x8180 } else { 0x0100 };
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&u16::from(answer.is_some()).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&[0, 1, 0, 1]);
    if let Some(addr) = answer {
        m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        m.extend_from_slice(&addr.octets());
    }
    m
}

fn frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Result<Vec<u8>> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .udp(src.1, dst.1);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload)?;
    Ok(out)
}

fn generate(path: &str, lookups: u64) -> Result<()> {
    let started = Instant::now();
    // (time, sequence, frame): sorted by time, queries before answers at a tie.
    let mut packets: Vec<(u64, u64, Vec<u8>)> = Vec::with_capacity(2 * lookups as usize);
    for i in 0..lookups {
        let t = 1_000_000_000 + i * SPACING_NS;
        let answered = i % UNANSWERED_EVERY != UNANSWERED_EVERY - 1;
        // An unanswered lookup's name is its own: a later lookup of the same
        // name from the same pod would rightly count as its retry.
        let name = if answered {
            qname(i)
        } else {
            format!("gone{i}.svc.cluster.local")
        };
        let (id, pod) = ((i * 7919) as u16, client(i));
        let server = (SERVER, 53);
        packets.push((t, 2 * i, frame(pod, server, &dns(id, &name, None))?));
        if answered {
            let answer = Ipv4Addr::new(10, 0, (i % NAMES / 250) as u8, (i % 250) as u8);
            packets.push((
                t + RTT_NS,
                2 * i + 1,
                frame(server, pod, &dns(id, &name, Some(answer)))?,
            ));
        }
    }
    packets.sort_unstable_by_key(|(t, seq, _)| (*t, *seq));
    let file = File::create(path).with_context(|| format!("creating {path}"))?;
    let mut writer = PcapWriter::new(BufWriter::with_capacity(1 << 20, file))?;
    for (t, _, data) in &packets {
        writer.write_packet(&PcapPacket::new(
            Duration::from_nanos(*t),
            data.len() as u32,
            data,
        ))?;
    }
    println!(
        "{{\"packets\":{},\"lookups\":{lookups},\"unanswered\":{},\"seconds\":{:.3}}}",
        packets.len(),
        lookups / UNANSWERED_EVERY,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// QUERIES distinct queries (own name each) that nobody answers, 10 µs apart.
fn generate_flood(path: &str, queries: u64) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {path}"))?;
    let mut writer = PcapWriter::new(BufWriter::with_capacity(1 << 20, file))?;
    for i in 0..queries {
        let data = frame(
            client(i),
            (SERVER, 53),
            &dns(i as u16, &format!("n{i:x}.flood.test"), None),
        )?;
        let t = Duration::from_nanos(1_000_000_000 + i * 10_000);
        writer.write_packet(&PcapPacket::new(t, data.len() as u32, &data))?;
    }
    println!("{{\"packets\":{queries}}}");
    Ok(())
}

fn run(path: &str, max_lookups: usize) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    let mut reader = PcapReader::new(BufReader::with_capacity(1 << 20, file))?;
    let mut correlator = Correlator::new(correlate::Config {
        host_netns: 1,
        // As `dnstrace watch --auto` on the node: nothing leaves unseen.
        watched: Coverage::full(),
        max_lookups,
        // As `watch` writing JSON or text with the default `--hops problems`: a healthy
        // lookup's hops are counted and placed, not built.
        ok_hops: false,
        ..correlate::Config::default()
    });
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let (mut events, mut finished, mut next_tick) = (0u64, 0u64, 0u64);
    let mut last_ts = 0;
    let mut done = Vec::new();
    // One name shared by every event, as `dnstrace watch` names them.
    let iface: std::sync::Arc<str> = IFACE.into();
    while let Some(packet) = reader.next_packet() {
        let packet = packet?;
        let ts_ns = packet.timestamp.as_nanos() as u64;
        // Queries arrive from the pod (ingress on its veth), answers leave towards it.
        let to_server = packet.data.get(36..38) == Some(&[0, 53]);
        let meta = Meta {
            ts_ns,
            ifindex: 2,
            netns: 1,
            point: if to_server {
                Point::TcIngress
            } else {
                Point::TcEgress
            },
            wire_len: packet.orig_len,
            cap_len: packet.data.len() as u32,
            pid: 0,
            comm: None,
        };
        // As `dnstrace watch` without packet lines: answers are checked, not kept.
        let decoded = decode::decode_with(meta, LinkType::Ethernet, &packet.data, Detail::Stitch);
        events += 1;
        correlator.ingest_into(
            correlate::Event {
                packet: decoded,
                iface: iface.clone(),
                drop_reason: None,
            },
            ts_ns,
            &mut done,
        );
        finished += done.len() as u64;
        done.clear();
        if ts_ns >= next_tick {
            finished += correlator.expire(ts_ns).len() as u64;
            next_tick = ts_ns + TICK_NS;
        }
        last_ts = ts_ns;
    }
    let (heap_end, heap_peak) = (
        HELD.load(Ordering::Relaxed),
        HELD_PEAK.load(Ordering::Relaxed),
    );
    let (live, rss_open) = (correlator.stats().live_lookups, peak_rss_kib());
    // The capture ends; unanswered lookups end at their deadline.
    // In batches, as `dnstrace watch` writes them.
    let end = last_ts + 60_000_000_000;
    while {
        let more = correlator.expire_into(end, 1024, &mut done);
        finished += done.len() as u64;
        done.clear();
        more
    } {}
    while {
        let more = correlator.finish_into(end, 1024, &mut done);
        finished += done.len() as u64;
        done.clear();
        more
    } {}
    let (wall, cpu) = (wall0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let stats = correlator.stats();
    let verdicts: BTreeMap<&str, u64> = stats.by_verdict.clone().into_iter().collect();
    println!(
        "{{\"events\":{events},\"lookups\":{finished},\"verdicts\":{},\"ignored\":{},\"evicted\":{},\"wall_s\":{wall:.4},\"cpu_s\":{cpu:.4},\"events_per_cpu_s\":{:.0},\"peak_rss_kib\":{},\"live_at_end\":{live},\"peak_rss_kib_open\":{rss_open},\"heap_at_end\":{heap_end},\"heap_peak\":{heap_peak}}}",
        serde_json::to_string(&verdicts)?,
        stats.ignored,
        stats.evicted,
        events as f64 / cpu.max(1e-9),
        peak_rss_kib()
    );
    Ok(())
}

/// Frames of the capture the decode benchmark takes.
const DECODE_FRAMES: usize = 100_000;
/// Points each message is seen at in the decode benchmark.
const HOPS: u8 = 4;
/// Passes of each way in the decode benchmark.
const DECODE_PASSES: usize = 9;

fn decode_once(path: &str) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    let mut reader = PcapReader::new(BufReader::with_capacity(1 << 20, file))?;
    let mut sightings: Vec<(Meta, Vec<u8>, Message)> = Vec::new();
    let mut n = 0u64;
    while let Some(packet) = reader.next_packet() {
        let packet = packet?;
        if n as usize == DECODE_FRAMES {
            break;
        }
        n += 1;
        // Names as the kernel gives them: 64 slots, the low bits of a clock.
        let name = MessageName {
            slot: (n % 64) as u16,
            seq: n as u32,
        };
        for hop in 0..HOPS {
            let mut data = packet.data.to_vec();
            // The source address of hops past the first: 10.hop.x.y.
            if hop > 0 && data.len() > 30 {
                data[27] = hop;
            }
            let meta = Meta {
                ts_ns: packet.timestamp.as_nanos() as u64 + u64::from(hop),
                ifindex: u32::from(hop) + 2,
                netns: 1,
                point: Point::TcIngress,
                wire_len: packet.orig_len,
                cap_len: data.len() as u32,
                pid: 0,
                comm: None,
            };
            let payload = if hop == 0 {
                Message::Kept(name)
            } else {
                Message::Named(name)
            };
            sightings.push((meta, data, payload));
        }
    }
    let (mut parsed, mut once) = (Vec::new(), Vec::new());
    let mut check = (0u64, 0u64);
    for _ in 0..DECODE_PASSES {
        let cpu0 = cpu_seconds();
        for (meta, data, _) in &sightings {
            let p = decode::decode_with(meta.clone(), LinkType::Ethernet, data, Detail::Stitch);
            check.0 += u64::from(std::hint::black_box(p).dns.is_some());
        }
        parsed.push((cpu_seconds() - cpu0) * 1e9 / sightings.len() as f64);
        let cpu0 = cpu_seconds();
        let mut reused = Reused::default();
        for (meta, data, payload) in &sightings {
            let p = reused.decode(
                meta.clone(),
                LinkType::Ethernet,
                data,
                *payload,
                Detail::Stitch,
            );
            check.1 += u64::from(std::hint::black_box(p).dns.is_some());
        }
        once.push((cpu_seconds() - cpu0) * 1e9 / sightings.len() as f64);
        if reused.served == 0 {
            bail!("no message was taken from an earlier decode");
        }
    }
    if check.0 != check.1 {
        bail!("the two ways decoded different messages: {check:?}");
    }
    let show = |v: &[f64]| serde_json::to_string(v).unwrap_or_default();
    println!(
        "{{\"sightings\":{},\"hops\":{HOPS},\"parsed_ns\":{},\"once_ns\":{}}}",
        sightings.len(),
        show(&parsed),
        show(&once)
    );
    Ok(())
}

/// User + system CPU time of this process.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
