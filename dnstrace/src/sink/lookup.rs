//! Output of finished lookups and the per-upstream table: text for humans
//! (readable on an 80-column terminal), JSON lines for machines.
use std::{borrow::Cow, cell::Cell, fmt::Write as _, net::SocketAddr};

use serde::{Serialize, Serializer};

use super::{Names, Stamp, WallTime, epoch_ns};
use crate::correlate::{Hop, Lookup, UpstreamStats, Verdict};

/// `{"type":"lookup", ...}`: the [`Stamp`] (its `time` is the lookup's start), then every
/// field of [`Lookup`], flattened.
#[derive(Serialize)]
struct LookupRecord<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    stamp: Stamp<'a>,
    #[serde(flatten)]
    lookup: &'a Lookup,
}

#[derive(Serialize)]
struct UpstreamsRecord<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    stamp: Stamp<'a>,
    upstreams: &'a [UpstreamStats],
}

/// A record that could not be serialized, in its place.
#[derive(Serialize)]
struct ErrorRecord<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    stamp: Stamp<'a>,
    error: String,
}

fn error_json(stamp: Stamp<'_>, e: &serde_json::Error) -> String {
    serde_json::to_string(&ErrorRecord {
        r#type: "error",
        stamp,
        error: e.to_string(),
    })
    .unwrap_or_else(|_| r#"{"type":"error"}"#.to_owned())
}

thread_local! {
    /// While [`lookup_json`] writes a lookup: the offset that turns its hops' `ts_ns`
    /// into wall-clock `time`. [`Hop`] itself has no field for it: the correlator's
    /// clock is the capture's, and only the output knows the wall clock.
    static HOP_CLOCK: Cell<Option<i128>> = const { Cell::new(None) };
}

/// Sets [`HOP_CLOCK`] for as long as it lives (and clears it on the way out, even on a panic).
struct HopClock;

impl HopClock {
    fn set(offset_ns: i128) -> Self {
        HOP_CLOCK.set(Some(offset_ns));
        Self
    }
}

impl Drop for HopClock {
    fn drop(&mut self) {
        HOP_CLOCK.set(None);
    }
}

/// A hop with its wall-clock `time` first.
#[derive(Serialize)]
struct TimedHop<'a> {
    time: WallTime,
    #[serde(flatten)]
    hop: &'a Hop,
}

/// `Lookup::hops`: each hop with its `time` when written by [`lookup_json`], as is otherwise.
pub(crate) fn serialize_hops<S: Serializer>(hops: &[Hop], s: S) -> Result<S::Ok, S::Error> {
    match HOP_CLOCK.get() {
        Some(offset) => s.collect_seq(hops.iter().map(|hop| TimedHop {
            time: WallTime(epoch_ns(hop.ts_ns, offset)),
            hop,
        })),
        None => s.collect_seq(hops),
    }
}

pub fn lookup_json(l: &Lookup, names: &Names) -> String {
    let stamp = names.stamp(names.epoch_ns(l.start_ts_ns));
    if !names.full_lookup(l) {
        return serde_json::to_string(&CompactRecord::new(stamp, l))
            .unwrap_or_else(|e| error_json(stamp, &e));
    }
    let _clock = HopClock::set(names.clock_offset_ns());
    serde_json::to_string(&LookupRecord {
        r#type: "lookup",
        stamp,
        lookup: l,
    })
    .unwrap_or_else(|e| error_json(stamp, &e))
}

/// `{"type":"lookup", ...}` without the hops and forwarded queries (`--hops problems`
/// for a healthy lookup, `--hops none` for every one): the question, the answer, the
/// verdict and where the lookup went, as a hop count and a path.
#[derive(Serialize)]
struct CompactRecord<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    stamp: Stamp<'a>,
    id: u64,
    client: &'a SocketAddr,
    server: &'a SocketAddr,
    qname: &'a str,
    qtype: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rcode: Option<crate::decode::dns::Rcode>,
    verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "super::is_zero")]
    retries: u32,
    // No `start_ts_ns`: `time` is the start. The netns cookie only when its inode is
    // unknown: the inode is the name other tools know.
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<u64>,
    /// The client's netns inode and pod, each when known; no process and no long ids:
    /// `pod_uid` only when the pod has no name, no `container_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    netns_inode: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
    /// The client's hops (its own attempts), as in the full record.
    hop_count: usize,
    /// Where they were seen, each place once, in the order first seen: "socket>pod0".
    path: Cow<'a, str>,
    /// Forwarded queries at any depth.
    #[serde(skip_serializing_if = "super::is_zero")]
    forwarded: usize,
    // A problem written compactly (`--hops none`) keeps what explains it.
    #[serde(skip_serializing_if = "Option::is_none")]
    culprit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_hop: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

impl<'a> CompactRecord<'a> {
    fn new(stamp: Stamp<'a>, l: &'a Lookup) -> Self {
        let problem = l.verdict != Verdict::Ok;
        let (hop_count, path) = match &l.trail {
            Some(t) => (t.hop_count, Cow::Borrowed(t.path.as_str())),
            None => {
                let mut places: Vec<&str> = Vec::new();
                for h in &l.hops {
                    let place = if h.dir.starts_with("socket") {
                        "socket"
                    } else {
                        &*h.iface
                    };
                    if !places.contains(&place) {
                        places.push(place);
                    }
                }
                let path = Cow::Owned(places.join(">"));
                (l.hops.len() + l.hops_omitted as usize, path)
            }
        };
        let pod = l.origin.pod.as_deref();
        Self {
            r#type: "lookup",
            stamp,
            id: l.id,
            client: &l.client,
            server: &l.server,
            qname: &l.qname,
            qtype: &l.qtype,
            rcode: l.rcode,
            verdict: l.verdict,
            latency_ms: l.latency_ms,
            retries: l.retries,
            netns: l.netns.filter(|_| l.origin.netns_inode.is_none()),
            netns_inode: l.origin.netns_inode,
            pod_namespace: pod.and_then(|p| p.namespace.as_deref()),
            pod_name: pod.and_then(|p| p.name.as_deref()),
            pod_uid: pod.filter(|p| p.name.is_none()).map(|p| p.uid.as_str()),
            container: l
                .origin
                .container
                .as_deref()
                .and_then(|c| c.name.as_deref()),
            hop_count,
            path,
            forwarded: l.descendants() + l.children_omitted as usize,
            culprit: l.culprit.as_deref().filter(|_| problem),
            last_hop: l.last_hop.as_deref().filter(|_| problem),
            hint: l.hint.as_deref().filter(|_| problem),
            detail: Some(l.detail.as_str()).filter(|d| problem && !d.is_empty()),
        }
    }
}

pub fn upstreams_json(u: &[UpstreamStats], stamp: Stamp<'_>) -> String {
    serde_json::to_string(&UpstreamsRecord {
        r#type: "upstreams",
        stamp,
        upstreams: u,
    })
    .unwrap_or_else(|e| error_json(stamp, &e))
}

/// A healthy lookup is one line, starting with the time it started (UTC); a problem also
/// gets its hop timeline, the forwarded queries, what is to blame and the hint.
pub fn lookup_text(l: &Lookup, names: &Names) -> String {
    let mut s = String::new();
    let client = match &l.origin.pod {
        Some(pod) => format!("{} {}", pod.label(), l.client),
        None => l.client.to_string(),
    };
    let _ = writeln!(
        s,
        "{}  {} → {}  {} {}  {} {}  {}",
        super::clock_ms(names.epoch_ns(l.start_ts_ns)),
        client,
        host(&l.server.to_string()),
        l.qtype,
        l.qname.trim_end_matches('.'),
        l.rcode.map_or("no answer".into(), |r| r.name()),
        l.latency_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}ms")),
        shout(l.verdict),
    );
    if !names.full_lookup(l) && l.verdict == Verdict::Ok {
        return s;
    }
    if names.full_lookup(l) {
        timeline(&mut s, l, l.t0(), 1);
    }
    if !l.detail.is_empty() {
        let _ = writeln!(s, "  why: {}", l.detail);
    }
    if let Some(c) = &l.culprit {
        let _ = write!(s, "  culprit: {c}");
        if let Some(h) = &l.last_hop {
            let _ = write!(s, "   last hop: {h}");
        }
        s.push('\n');
    } else if let Some(h) = &l.last_hop {
        let _ = writeln!(s, "  last hop: {h}");
    }
    if let Some(h) = &l.hint {
        let _ = writeln!(s, "  hint: {h}");
    }
    s
}

fn timeline(s: &mut String, l: &Lookup, t0: u64, depth: usize) {
    let pad = "  ".repeat(depth);
    for h in &l.hops {
        let _ = writeln!(s, "{pad}{}", hop_text(h, t0));
    }
    if l.hops_omitted > 0 {
        let _ = writeln!(s, "{pad}… {} more hops", l.hops_omitted);
    }
    for c in &l.children {
        let _ = writeln!(
            s,
            "{pad}↳ forwarded {} {} to {}  {}",
            c.qtype,
            c.qname.trim_end_matches('.'),
            c.server,
            c.rcode.map_or("no answer".into(), |r| r.name())
        );
        timeline(s, c, t0, depth + 1);
    }
    if l.children_omitted > 0 {
        let _ = writeln!(s, "{pad}… {} more forwarded queries", l.children_omitted);
    }
}

fn hop_text(h: &Hop, t0: u64) -> String {
    let ms = h.ts_ns.saturating_sub(t0) as f64 / 1e6;
    let arrow = if h.qr == Some(true) { "←" } else { "→" };
    let mut s = format!(
        "{arrow} {ms:7.2}ms {} {} {}→{}",
        h.iface, h.dir, h.src, h.dst
    );
    if let Some(rc) = &h.rcode {
        let _ = write!(s, " {rc}");
    }
    if h.tc {
        s.push_str(" TC");
    }
    if let Some(e) = &h.edns {
        let _ = write!(s, " [OPT {e}]");
    }
    if let Some(f) = &h.tcp_flags {
        let _ = write!(s, " tcp[{f}]");
    }
    if let Some(r) = &h.drop_reason {
        let _ = write!(s, " DROPPED {r}");
    }
    if let Some(t) = &h.tunnel {
        let _ = write!(s, " [{t}]");
    }
    s
}

/// The per-upstream table.
pub fn upstreams_text(u: &[UpstreamStats]) -> String {
    let mut s = String::new();
    if u.is_empty() {
        return s;
    }
    let _ = writeln!(s, "upstreams:");
    let _ = writeln!(
        s,
        "  {:<26} {:>7} {:>6} {:>7} {:>8} {:>8}  rcodes",
        "server", "queries", "answd", "unansd", "p50", "p99"
    );
    for x in u {
        let rcodes: Vec<String> = x.rcodes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}ms"));
        let _ = writeln!(
            s,
            "  {:<26} {:>7} {:>6} {:>7} {:>8} {:>8}  {}",
            x.upstream,
            x.queries,
            x.answered,
            x.unanswered,
            ms(x.p50_ms),
            ms(x.p99_ms),
            rcodes.join(" ")
        );
    }
    s
}

fn shout(v: Verdict) -> String {
    v.as_str().replace('_', "-").to_uppercase()
}

/// "1.2.3.4:53" → "1.2.3.4" (the port is almost always 53).
fn host(addr: &str) -> &str {
    addr.strip_suffix(":53").unwrap_or(addr)
}
