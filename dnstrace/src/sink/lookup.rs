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
        return CompactRecord::new(stamp, l)
            .to_json()
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
    #[serde(serialize_with = "crate::decode::text::serialize_socket_addr")]
    client: SocketAddr,
    #[serde(serialize_with = "crate::decode::text::serialize_socket_addr")]
    server: SocketAddr,
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
            client: l.client,
            server: l.server,
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

impl CompactRecord<'_> {
    /// The record, exactly as `serde_json::to_string` writes it (a test compares the two
    /// over every field that can be left out), with each key written as it stands: the
    /// derived `Serialize` goes through serde's map machinery (the `Stamp` is flattened)
    /// and escapes every key byte by byte, which cost more than the values. The values
    /// are still written by serde_json.
    fn to_json(&self) -> serde_json::Result<String> {
        let mut j = JsonObject(Vec::with_capacity(384));
        j.0.extend_from_slice(b"{\"type\":");
        j.value(self.r#type)?;
        j.field("time", &self.stamp.time)?;
        j.field("node", self.stamp.node)?;
        j.field("schema", self.stamp.schema)?;
        j.field("id", &self.id)?;
        j.addr("client", &self.client)?;
        j.addr("server", &self.server)?;
        j.field("qname", self.qname)?;
        j.field("qtype", self.qtype)?;
        j.some("rcode", self.rcode.as_ref())?;
        j.field("verdict", &self.verdict)?;
        j.some("latency_ms", self.latency_ms.as_ref())?;
        if self.retries != 0 {
            j.field("retries", &self.retries)?;
        }
        j.some("netns", self.netns.as_ref())?;
        j.some("netns_inode", self.netns_inode.as_ref())?;
        j.some("pod_namespace", self.pod_namespace)?;
        j.some("pod_name", self.pod_name)?;
        j.some("pod_uid", self.pod_uid)?;
        j.some("container", self.container)?;
        j.field("hop_count", &self.hop_count)?;
        j.field("path", &*self.path)?;
        if self.forwarded != 0 {
            j.field("forwarded", &self.forwarded)?;
        }
        j.some("culprit", self.culprit)?;
        j.some("last_hop", self.last_hop)?;
        j.some("hint", self.hint)?;
        j.some("detail", self.detail)?;
        j.0.push(b'}');
        // serde_json writes only UTF-8, and the keys are ASCII.
        String::from_utf8(j.0).map_err(serde::ser::Error::custom)
    }
}

/// A JSON object being written: keys as they stand (plain ASCII names, nothing to
/// escape), values by serde_json.
struct JsonObject(Vec<u8>);

impl JsonObject {
    fn key(&mut self, key: &'static str) {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    /// An address as [`Lookup`] writes it; IPv4 straight into the record (digits, dots
    /// and a colon: nothing to escape).
    fn addr(&mut self, key: &'static str, a: &SocketAddr) -> serde_json::Result<()> {
        self.key(key);
        match a {
            SocketAddr::V4(v4) => {
                self.0.push(b'"');
                crate::decode::text::push_socket_addr_v4(&mut self.0, v4);
                self.0.push(b'"');
                Ok(())
            }
            SocketAddr::V6(_) => crate::decode::text::serialize_socket_addr(
                a,
                &mut serde_json::Serializer::new(&mut self.0),
            ),
        }
    }

    fn value<T: Serialize + ?Sized>(&mut self, v: &T) -> serde_json::Result<()> {
        serde_json::to_writer(&mut self.0, v)
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> serde_json::Result<()> {
        self.key(key);
        self.value(v)
    }

    /// `skip_serializing_if = "Option::is_none"`.
    fn some<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: Option<&T>,
    ) -> serde_json::Result<()> {
        match v {
            Some(v) => self.field(key, v),
            None => Ok(()),
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
    let mut s = String::with_capacity(128);
    push_head(&mut s, l, names);
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

/// A lookup's first text line (a healthy lookup's only one):
/// `{clock}  {client} → {server}  {qtype} {qname}  {rcode} {latency}  {VERDICT}`, the
/// server without port 53, pushed piece by piece: the formatter and the six strings it
/// took cost more than the rest of a healthy lookup's way through dnstrace.
fn push_head(s: &mut String, l: &Lookup, names: &Names) {
    use crate::decode::text::push_socket_addr;
    super::text::push_clock_ms(s, names.epoch_ns(l.start_ts_ns));
    s.push_str("  ");
    if let Some(pod) = &l.origin.pod {
        pod.push_label(s);
        s.push(' ');
    }
    push_socket_addr(s, &l.client);
    s.push_str(" → ");
    let server = s.len();
    push_socket_addr(s, &l.server);
    let kept = host(&s[server..]).len();
    s.truncate(server + kept);
    s.push_str("  ");
    s.push_str(&l.qtype);
    s.push(' ');
    s.push_str(l.qname.trim_end_matches('.'));
    s.push_str("  ");
    match l.rcode {
        Some(r) => s.push_str(&r.name()),
        None => s.push_str("no answer"),
    }
    s.push(' ');
    match l.latency_ms {
        Some(ms) => {
            let _ = write!(s, "{ms:.1}ms");
        }
        None => s.push('-'),
    }
    s.push_str("  ");
    s.push_str(shout(l.verdict));
    s.push('\n');
}

/// A verdict as the text output shouts it: "SERVER-ERROR".
fn shout(v: Verdict) -> &'static str {
    static SHOUTED: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        Verdict::ALL
            .iter()
            .map(|v| v.as_str().replace('_', "-").to_uppercase())
            .collect()
    });
    SHOUTED.get(v as usize).map_or("?", String::as_str)
}

/// "1.2.3.4:53" → "1.2.3.4" (the port is almost always 53).
fn host(addr: &str) -> &str {
    addr.strip_suffix(":53").unwrap_or(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode::dns::Rcode, sink::WallTime};

    /// A lookup's first text line pushed piece by piece reads as the `format!` it stands
    /// for: with and without a pod, IPv4 and IPv6, port 53 and another, with and without
    /// an answer, for every verdict.
    #[test]
    fn a_lookup_s_head_line_reads_as_the_format_it_replaces() {
        use crate::correlate::PodRef;
        let names = Names::new(1, []);
        let pods = [
            None,
            Some(PodRef {
                namespace: Some("shop".into()),
                name: Some("web-1".into()),
                uid: "u".into(),
            }),
            Some(PodRef {
                namespace: None,
                name: Some("web-2".into()),
                uid: "u".into(),
            }),
            Some(PodRef {
                uid: "1b4e28ba".into(),
                ..PodRef::default()
            }),
        ];
        let servers = [
            "10.96.0.10:53",
            "10.96.0.10:5353",
            "[fd00::a]:53",
            "[::1]:153",
        ];
        let mut n = 0;
        for (i, verdict) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*verdict as usize, i, "Verdict::ALL is in declaration order");
            assert_eq!(
                shout(*verdict),
                verdict.as_str().replace('_', "-").to_uppercase()
            );
            for (j, server) in servers.iter().enumerate() {
                let mut l = crate::sink::tests::lookup(1_795_461_605_123_456_789 + i as u64);
                l.verdict = *verdict;
                l.server = server.parse().unwrap();
                l.client = if j % 2 == 0 {
                    "10.244.1.7:40312"
                } else {
                    "[fd00::7]:40312"
                }
                .parse()
                .unwrap();
                l.origin.pod = pods[(i + j) % pods.len()].clone().map(std::sync::Arc::new);
                l.rcode = (j != 1).then_some(crate::decode::dns::Rcode(i as u16 % 6));
                l.latency_ms = (j != 2).then_some(i as f64 * 1.37 + 0.05);
                let client = match &l.origin.pod {
                    Some(pod) => format!("{} {}", pod.label(), l.client),
                    None => l.client.to_string(),
                };
                let want = format!(
                    "{}  {} → {}  {} {}  {} {}  {}\n",
                    crate::sink::clock_ms(names.epoch_ns(l.start_ts_ns)),
                    client,
                    host(&l.server.to_string()),
                    l.qtype,
                    l.qname.trim_end_matches('.'),
                    l.rcode.map_or("no answer".into(), |r| r.name()),
                    l.latency_ms
                        .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}ms")),
                    verdict.as_str().replace('_', "-").to_uppercase(),
                );
                let mut got = String::new();
                push_head(&mut got, &l, &names);
                assert_eq!(got, want);
                n += 1;
            }
        }
        assert_eq!(n, Verdict::ALL.len() * servers.len());
    }

    /// The compact record written key by key is, byte for byte, what serde_json makes of
    /// the derived `Serialize`: with each field that can be left out present or not, text
    /// that needs escaping, IPv4 and IPv6 addresses, every verdict, and a latency that is
    /// not a number.
    #[test]
    fn a_compact_record_is_written_as_serde_writes_it() {
        let odd = "a\"b\\c\u{1}d\u{7f}é\u{202e}.";
        let addrs: [SocketAddr; 3] = [
            "10.244.1.7:40312".parse().unwrap(),
            "[fd00::a]:53".parse().unwrap(),
            "[fe80::1%3]:5353".parse().unwrap(),
        ];
        let mut checked = 0;
        for mask in 0u32..1 << 14 {
            let on = |bit: u32| mask & (1 << bit) != 0;
            let text = |bit: u32, plain: &'static str| {
                on(bit).then_some(if bit.is_multiple_of(2) { plain } else { odd })
            };
            let verdict = Verdict::ALL[mask as usize % Verdict::ALL.len()];
            let rec = CompactRecord {
                r#type: "lookup",
                stamp: Stamp {
                    time: WallTime(1_733_600_000_123_456_789 + u64::from(mask)),
                    node: if on(3) { odd } else { "node-1" },
                    schema: "dnstrace/v1",
                },
                id: u64::from(mask) * 7919,
                client: addrs[mask as usize % 3],
                server: addrs[(mask as usize + 1) % 3],
                qname: if on(5) { odd } else { "www.example.test." },
                qtype: "AAAA",
                rcode: on(0).then_some(Rcode(u16::from(mask as u8 % 24))),
                verdict,
                // Not a number now and then: serde_json writes null.
                latency_ms: on(1).then_some(if mask % 97 == 1 {
                    f64::NAN
                } else {
                    f64::from(mask) / 7.0
                }),
                retries: if on(2) { mask % 5 } else { 0 },
                netns: on(3).then_some(4_026_531_840 + u64::from(mask)),
                netns_inode: on(4).then_some(4_026_532_400),
                pod_namespace: text(5, "shop"),
                pod_name: text(6, "web-1"),
                pod_uid: text(7, "1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
                container: text(8, "web"),
                hop_count: mask as usize % 70,
                path: if on(9) {
                    Cow::Owned(format!("socket>{odd}"))
                } else {
                    Cow::Borrowed("socket>pod0>nodelocaldns")
                },
                forwarded: if on(10) { 3 } else { 0 },
                culprit: text(10, "10.96.0.10:53"),
                last_hop: text(11, "socket-in (netns 4026532184)"),
                hint: text(12, "check the upstream"),
                detail: text(13, "answered SERVFAIL in 2.1 ms"),
            };
            assert_eq!(
                rec.to_json().unwrap(),
                serde_json::to_string(&rec).unwrap(),
                "mask {mask:#b}"
            );
            checked += 1;
        }
        assert_eq!(checked, 1 << 14);
    }
}
