//! Output stages. Each consumes decoded packets (and, at the end, the run's
//! counters) and writes them somewhere.
mod json;
mod lookup;
pub mod pcap;
mod text;

use std::{
    collections::HashMap,
    io::Write,
    sync::{Arc, LazyLock},
};

pub use json::JsonSink;
pub(crate) use lookup::serialize_hops;
pub use lookup::{lookup_json, lookup_text, upstreams_json, upstreams_text};
pub use text::TextSink;
pub(crate) use text::{clock, clock_ms};

use crate::{
    correlate::{Lookup, UpstreamStats},
    decode::{Meta, Packet, Point, text::printable_string},
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

/// The version of the JSON records, in every record's `schema`. It changes only when a
/// field is renamed or removed or changes meaning; new fields keep it.
pub const SCHEMA: &str = "dnstrace/1";

/// Nanoseconds since the Unix epoch, written as RFC 3339 in UTC with nine decimals:
/// `2026-12-06T22:30:01.123456789Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallTime(pub u64);

impl std::fmt::Display for WallTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every u64 of nanoseconds (up to the year 2554) is within jiff's range.
        let ts =
            jiff::Timestamp::from_nanosecond(i128::from(self.0)).map_err(|_| std::fmt::Error)?;
        write!(f, "{ts:.9}")
    }
}

impl serde::Serialize for WallTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What every JSON record carries besides its own fields: when, where, and which schema.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Stamp<'a> {
    pub time: WallTime,
    pub node: &'a str,
    pub schema: &'static str,
}

/// Turns capture metadata into names a human reads.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// The `node` of every record.
    node: String,
    own_netns: u64,
    /// Shared with every event named after it: naming one costs no allocation.
    by_index: HashMap<u32, Arc<str>, crate::correlate::Fx>,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC at start, to turn kernel timestamps into wall time.
    mono_to_epoch_ns: i128,
    drop_reasons: HashMap<u32, String>,
    /// `--hops`: which lookups are written with their hops.
    hops: crate::cli::Hops,
    /// Interfaces gone, forgotten once packets captured on them have had time to
    /// arrive: (monotonic time it went, index, name).
    retired: std::collections::VecDeque<(u64, u32, Arc<str>)>,
    /// Netns inodes and pods (live runs only).
    identity: Option<crate::identity::Identity>,
}

/// How long the name of an interface that went away is kept for its last packets.
const RETIRE_AFTER_NS: u64 = 5_000_000_000;

impl Names {
    pub fn new(own_netns: u64, ifaces: impl IntoIterator<Item = (u32, String)>) -> Self {
        Self {
            node: crate::identity::hostname(),
            own_netns,
            by_index: ifaces
                .into_iter()
                .map(|(i, name)| (i, printable_string(name).into()))
                .collect(),
            mono_to_epoch_ns: mono_to_epoch_ns(),
            drop_reasons: HashMap::new(),
            hops: crate::cli::Hops::default(),
            retired: std::collections::VecDeque::new(),
            identity: None,
        }
    }

    /// Names netns by inode and clients by pod.
    pub fn with_identity(mut self, identity: crate::identity::Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    pub fn identity(&self) -> Option<&crate::identity::Identity> {
        self.identity.as_ref()
    }

    /// A packet's netns inode and its client's pod (the sender of a query, the receiver
    /// of a response), when known.
    pub fn packet_origin(
        &self,
        p: &Packet,
    ) -> (
        Option<u64>,
        Option<std::sync::Arc<crate::correlate::PodRef>>,
    ) {
        let Some(id) = &self.identity else {
            return (None, None);
        };
        let response = p.dns.as_ref().is_some_and(|d| d.qr);
        let client = if response { p.dst } else { p.src };
        id.packet(p.meta.netns, client.map(|a| a.ip()))
    }

    /// `--hops`: which lookups are written with their hops.
    pub fn with_hops(mut self, hops: crate::cli::Hops) -> Self {
        self.hops = hops;
        self
    }

    /// Whether `l` is written with its hops and forwarded queries.
    pub fn full_lookup(&self, l: &crate::correlate::Lookup) -> bool {
        match self.hops {
            crate::cli::Hops::All => true,
            crate::cli::Hops::Problems => l.verdict != crate::correlate::Verdict::Ok,
            crate::cli::Hops::None => false,
        }
    }

    pub fn with_drop_reasons(mut self, reasons: HashMap<u32, String>) -> Self {
        self.drop_reasons = reasons;
        self
    }

    /// The `node` the records name (default: the host name).
    pub fn with_node(mut self, node: String) -> Self {
        self.node = node;
        self
    }

    /// Timestamps that already are nanoseconds since the Unix epoch (replay of a file).
    pub fn with_epoch_timestamps(mut self) -> Self {
        self.mono_to_epoch_ns = 0;
        self
    }

    /// Names an interface index learnt after the start (replay learns them from the file).
    pub fn add_iface(&mut self, index: u32, name: String) {
        self.by_index.insert(index, printable_string(name).into());
    }

    /// Interface `index` went away at `at_ns` (monotonic): its name is forgotten a little
    /// later ([`Self::forget_retired`]), after its last packets.
    pub fn retire(&mut self, index: u32, at_ns: u64) {
        if let Some(name) = self.by_index.get(&index) {
            self.retired.push_back((at_ns, index, name.clone()));
        }
    }

    /// Forgets the names of interfaces gone long enough before `now_ns`, unless the
    /// index names another interface since.
    pub fn forget_retired(&mut self, now_ns: u64) {
        while let Some((at, index, name)) = self.retired.front() {
            if now_ns < at.saturating_add(RETIRE_AFTER_NS) {
                break;
            }
            if self.by_index.get(index) == Some(name) {
                self.by_index.remove(index);
            }
            self.retired.pop_front();
        }
    }

    /// Name of a kernel drop reason value, e.g. "NETFILTER_DROP".
    pub fn drop_reason(&self, value: u32) -> String {
        self.drop_reasons
            .get(&value)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{value}"))
    }

    /// The capture point: the interface name for tc hooks, "socket" for the socket hop.
    pub fn iface(&self, meta: &Meta) -> Arc<str> {
        static SOCKET: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("socket"));
        static LO: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("lo"));
        match meta.point {
            Point::SocketIn | Point::SocketOut => Arc::clone(&SOCKET),
            Point::TcIngress | Point::TcEgress | Point::Drop => {
                match self.by_index.get(&meta.ifindex) {
                    Some(name) if meta.netns == self.own_netns => Arc::clone(name),
                    // Loopback is the first device of every netns.
                    _ if meta.ifindex == 1 => Arc::clone(&LO),
                    _ => format!("if{}", meta.ifindex).into(),
                }
            }
        }
    }

    /// Kernel timestamp (CLOCK_MONOTONIC) as nanoseconds since the Unix epoch.
    pub fn epoch_ns(&self, mono_ns: u64) -> u64 {
        epoch_ns(mono_ns, self.mono_to_epoch_ns)
    }

    /// What to add to a capture timestamp to get nanoseconds since the Unix epoch.
    pub(crate) fn clock_offset_ns(&self) -> i128 {
        self.mono_to_epoch_ns
    }

    /// The common fields of a record written at `epoch_ns`.
    pub fn stamp(&self, epoch_ns: u64) -> Stamp<'_> {
        Stamp {
            time: WallTime(epoch_ns),
            node: &self.node,
            schema: SCHEMA,
        }
    }
}

/// `ts_ns` on the clock that is `offset_ns` behind the Unix epoch, as nanoseconds since the epoch.
pub(crate) fn epoch_ns(ts_ns: u64, offset_ns: i128) -> u64 {
    (i128::from(ts_ns) + offset_ns).clamp(0, i128::from(u64::MAX)) as u64
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

/// Where decoded packets and finished lookups are written: text or JSON lines.
pub enum Sink<W: Write> {
    Text(TextSink<W>),
    Json(JsonSink<W>),
}

impl<W: Write> Sink<W> {
    /// Writes one packet; `drop` is the kernel drop reason for drop events.
    pub fn packet(&mut self, p: &Packet, drop: Option<&str>, names: &Names) -> std::io::Result<()> {
        match self {
            Self::Text(s) => s.packet(p, drop, names),
            Self::Json(s) => s.packet(p, drop, names),
        }
    }

    /// The packet's line, made now and written later ([`Sink::held_packet`]): with a
    /// lookup filter, a packet is written only once its lookup is known to be shown.
    pub fn render_packet(&self, p: &Packet, drop: Option<&str>, names: &Names) -> Vec<u8> {
        match self {
            Self::Text(_) => text::format_line(p, drop, names).into_bytes(),
            Self::Json(_) => {
                let mut j = JsonSink::new(Vec::new());
                // Writing into a Vec cannot fail.
                let _ = j.packet(p, drop, names);
                j.into_inner()
            }
        }
    }

    /// Writes a line made by [`Sink::render_packet`].
    pub fn held_packet(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Text(s) => s.packet_line(line),
            Self::Json(s) => s.raw(line),
        }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Text(s) => s.flush(),
            Self::Json(s) => s.flush(),
        }
    }

    /// Writes one finished lookup.
    pub fn lookup(&mut self, l: &Lookup, names: &Names) -> std::io::Result<()> {
        match self {
            Self::Text(s) => s.raw(&lookup_text(l, names)),
            Self::Json(s) => s.line(&lookup_json(l, names)),
        }
    }

    /// Writes the per-upstream table, as it stands at `epoch_ns`.
    pub fn upstreams(
        &mut self,
        u: &[UpstreamStats],
        names: &Names,
        epoch_ns: u64,
    ) -> std::io::Result<()> {
        match self {
            Self::Text(s) => s.raw(&upstreams_text(u)),
            Self::Json(s) => s.line(&upstreams_json(u, names.stamp(epoch_ns))),
        }
    }

    /// Writes a change of the interfaces watched, made at `epoch_ns`.
    pub fn coverage(
        &mut self,
        c: &crate::capture::CoverageChange,
        names: &Names,
        epoch_ns: u64,
    ) -> std::io::Result<()> {
        match self {
            Self::Text(s) => s.raw(&coverage_text(c, epoch_ns)),
            Self::Json(s) => s.coverage(c, names.stamp(epoch_ns)),
        }
    }

    /// Writes the end-of-run record, the run having ended at `epoch_ns` and the kernel
    /// having lost `lost` events (JSON only; text prints it on stderr).
    pub fn summary(
        &mut self,
        summary: &impl serde::Serialize,
        lost: u64,
        names: &Names,
        epoch_ns: u64,
    ) -> std::io::Result<()> {
        match self {
            Self::Text(s) => s.flush(),
            Self::Json(s) => s.summary(summary, lost, names.stamp(epoch_ns)),
        }
    }
}

/// A change of the interfaces watched, as a text line.
pub fn coverage_text(c: &crate::capture::CoverageChange, epoch_ns: u64) -> String {
    let mut s = format!(
        "{}  coverage: {} {} (ifindex {}, netns {})",
        clock_ms(epoch_ns),
        c.event.as_str(),
        printable_string(c.iface.clone()),
        c.ifindex,
        c.netns
    );
    if let Some(m) = &c.mode {
        s.push_str(&format!(" via {m}"));
    }
    if let Some(old) = &c.old_name {
        s.push_str(&format!(", was {}", printable_string(old.clone())));
    }
    if let Some(e) = &c.error {
        s.push_str(&format!(": {e}"));
    }
    let t = &c.totals;
    s.push_str(&format!(
        "; watching {} interface{} ({} attached, {} detached, {} failed since start)\n",
        t.interfaces,
        if t.interfaces == 1 { "" } else { "s" },
        t.attached,
        t.detached,
        t.attach_failed
    ));
    s
}

/// For `skip_serializing_if`: a count of nothing is left out.
fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::{Hop, Verdict};

    /// 2026-11-23T19:20:05.123456789Z.
    const T: u64 = 1_795_461_605_123_456_789;

    #[test]
    fn wall_time_is_rfc3339_utc_with_nine_decimals() {
        assert_eq!(WallTime(T).to_string(), "2026-11-23T19:20:05.123456789Z");
        assert_eq!(WallTime(0).to_string(), "1970-01-01T00:00:00.000000000Z");
        // Trailing zeros stay: every record's time has the same width.
        assert_eq!(
            WallTime(1_000_000_000_000_000_070).to_string(),
            "2001-09-09T01:46:40.000000070Z"
        );
        // A leap day, the last nanosecond of it.
        assert_eq!(
            WallTime(1_709_251_199_999_999_999).to_string(),
            "2024-02-29T23:59:59.999999999Z"
        );
        assert_eq!(
            WallTime(u64::MAX).to_string(),
            "2554-07-21T23:34:33.709551615Z"
        );
        assert_eq!(
            serde_json::to_string(&WallTime(T)).unwrap(),
            "\"2026-11-23T19:20:05.123456789Z\""
        );
    }

    /// The same instants as coreutils' `date -u` writes them.
    #[test]
    fn wall_time_agrees_with_date() {
        for secs in [
            0u64,
            951_782_400,
            1_709_251_199,
            1_795_461_605,
            4_102_444_800,
        ] {
            let ns = secs * 1_000_000_000 + 987_654_321;
            let out = std::process::Command::new("date")
                .args(["-u", "-d", &format!("@{secs}.987654321")])
                .arg("+%Y-%m-%dT%H:%M:%S.%NZ")
                .output();
            let Some(out) = out.ok().filter(|o| o.status.success()) else {
                eprintln!("SKIPPED: no GNU date to compare with");
                return;
            };
            let want = String::from_utf8(out.stdout).unwrap();
            assert_eq!(WallTime(ns).to_string(), want.trim(), "{secs}");
        }
    }

    #[test]
    fn monotonic_to_epoch_offset() {
        let names = Names::new(1, []);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid clock id and out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let diff = names.epoch_ns(mono).abs_diff(now);
        assert!(diff < 1_000_000_000, "{diff} ns off the wall clock");
        // Replay: the file's timestamps are epoch already.
        assert_eq!(Names::new(1, []).with_epoch_timestamps().epoch_ns(T), T);
    }

    fn hop(ts_ns: u64, dir: &'static str) -> Hop {
        Hop {
            ts_ns,
            iface: "eth0".into(),
            dir,
            netns: 1,
            src: "10.0.0.2:40000".parse().unwrap(),
            dst: "10.0.0.1:53".parse().unwrap(),
            id: Some(7),
            qr: Some(dir == "ingress"),
            rcode: None,
            edns: None,
            tc: false,
            proto: crate::decode::Proto::Udp,
            tcp_flags: None,
            drop_reason: None,
            tunnel: None,
        }
    }

    pub(super) fn lookup(t0: u64) -> Lookup {
        Lookup {
            id: 1,
            client: "10.0.0.2:40000".parse().unwrap(),
            server: "10.0.0.1:53".parse().unwrap(),
            qname: "example.org.".into(),
            qtype: "A".into(),
            rcode: None,
            verdict: Verdict::Ok,
            culprit: None,
            last_hop: None,
            hint: None,
            latency_ms: Some(1.5),
            detail: String::new(),
            hops: vec![hop(t0, "egress"), hop(t0 + 1_500_000, "ingress")],
            children: Vec::new(),
            retries: 0,
            start_ts_ns: t0,
            netns: None,
            hops_omitted: 0,
            children_omitted: 0,
            trail: None,
            origin: Default::default(),
        }
    }

    /// A healthy lookup through node-local-dns as the lab writes it: 8 client hops, a
    /// forwarded query with its own forward, long interface names, a netns cookie.
    fn healthy_lookup() -> Lookup {
        let mut l = lookup(30_765_616_226_119);
        l.id = 123_456;
        l.client = "10.244.0.10:40000".parse().unwrap();
        l.server = "169.254.25.10:53".parse().unwrap();
        l.qname = "www.example.test.".into();
        l.rcode = Some(crate::decode::dns::Rcode::NOERROR);
        l.latency_ms = Some(0.288_123);
        l.netns = Some(4_026_532_184);
        l.last_hop = Some("socket-in (netns 4026532184)".into());
        l.detail = "answered NOERROR in 0.288 ms".into();
        let places = [
            ("socket", "socket-out"),
            ("dtbld0nqhpod0", "ingress"),
            ("socket", "socket-in"),
            ("socket", "socket-out"),
            ("dtbld0nqhpod0", "egress"),
            ("socket", "socket-in"),
            ("dtbld0nqhpod0", "ingress"),
            ("dtbld0nqhpod0", "egress"),
        ];
        l.hops = places
            .iter()
            .enumerate()
            .map(|(i, (iface, dir))| Hop {
                iface: (*iface).into(),
                ..hop(l.start_ts_ns + i as u64 * 40_000, dir)
            })
            .collect();
        let mut child = lookup(l.start_ts_ns + 50_000);
        child.children.push(lookup(l.start_ts_ns + 90_000));
        l.children.push(child);
        l
    }

    #[test]
    fn a_healthy_lookup_is_one_compact_record_of_at_most_400_bytes() {
        let names = Names::new(1, []).with_node("ip-10-0-12-34.ec2.internal".to_owned());
        let l = healthy_lookup();
        let line = lookup_json(&l, &names);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(line.len() <= 400, "{} bytes: {line}", line.len());
        assert_eq!(
            (v["verdict"].as_str(), v["rcode"].as_str()),
            (Some("ok"), Some("NOERROR"))
        );
        assert_eq!(v["hop_count"], 8);
        assert_eq!(v["path"], "socket>dtbld0nqhpod0");
        assert_eq!(v["forwarded"], 2);
        assert!(
            v.get("hops").is_none() && v.get("detail").is_none(),
            "{line}"
        );
        let full = lookup_json(&l, &Names::new(1, []).with_hops(crate::cli::Hops::All));
        assert!(
            full.len() > 3 * line.len(),
            "{} vs {}",
            full.len(),
            line.len()
        );
        // A problem keeps every hop by default…
        let mut bad = healthy_lookup();
        bad.verdict = Verdict::ServerError;
        bad.culprit = Some("10.244.1.10:53".into());
        let v: serde_json::Value = serde_json::from_str(&lookup_json(&bad, &names)).unwrap();
        assert_eq!(v["hops"].as_array().map(Vec::len), Some(8));
        // …and with --hops none keeps what explains it.
        let none = Names::new(1, []).with_hops(crate::cli::Hops::None);
        let v: serde_json::Value = serde_json::from_str(&lookup_json(&bad, &none)).unwrap();
        assert!(v.get("hops").is_none());
        assert_eq!(v["culprit"], "10.244.1.10:53");
        assert_eq!(v["last_hop"], "socket-in (netns 4026532184)");
        // Text: the timeline only for a full lookup.
        assert_eq!(lookup_text(&l, &names).lines().count(), 1);
        assert!(lookup_text(&bad, &names).lines().count() > 8);
        assert!(lookup_text(&bad, &none).lines().count() < 8);
    }

    #[test]
    fn origin_fields_are_flat_in_full_and_compact_records() {
        use crate::correlate::{ContainerRef, Origin, PodRef};
        let mut l = lookup(1_000_000_000);
        l.netns = Some(4099);
        l.origin = Origin {
            pid: Some(4242),
            comm: Some("curl".to_owned()),
            netns_inode: Some(4026532400),
            pod: Some(std::sync::Arc::new(PodRef {
                namespace: Some("shop".to_owned()),
                name: Some("web-1".to_owned()),
                uid: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".to_owned(),
            })),
            container: Some(std::sync::Arc::new(ContainerRef {
                name: Some("web".to_owned()),
                id: "ab".repeat(32),
            })),
        };
        let full: serde_json::Value = serde_json::from_str(&lookup_json(
            &l,
            &Names::new(1, []).with_hops(crate::cli::Hops::All),
        ))
        .unwrap();
        assert_eq!(full["pid"], 4242);
        assert_eq!(full["comm"], "curl");
        assert_eq!(full["netns_inode"], 4026532400u64);
        assert_eq!(full["pod_namespace"], "shop");
        assert_eq!(full["pod_name"], "web-1");
        assert_eq!(full["pod_uid"], "1b4e28ba-2fa1-11d2-883f-0016d3cca427");
        assert_eq!(full["container"], "web");
        assert_eq!(full["container_id"], "ab".repeat(32));
        let compact: serde_json::Value =
            serde_json::from_str(&lookup_json(&l, &Names::new(1, []))).unwrap();
        assert!(compact.get("hops").is_none(), "{compact}");
        assert_eq!(compact["netns_inode"], 4026532400u64);
        assert_eq!(compact["pod_namespace"], "shop");
        assert_eq!(compact["pod_name"], "web-1");
        assert_eq!(compact["container"], "web");
        for long in ["pod_uid", "container_id", "pid", "comm"] {
            assert!(compact.get(long).is_none(), "{long}: {compact}");
        }
        // A pod known by its cgroup only: its UID stands in for the name.
        l.origin.pod = Some(std::sync::Arc::new(PodRef {
            uid: "u-1".to_owned(),
            ..PodRef::default()
        }));
        let compact: serde_json::Value =
            serde_json::from_str(&lookup_json(&l, &Names::new(1, []))).unwrap();
        assert_eq!(compact["pod_uid"], "u-1");
        assert!(compact.get("pod_name").is_none(), "{compact}");
        let text = lookup_text(&l, &Names::new(1, []));
        assert!(text.contains("pod u-1 10.0.0.2:40000 → 10.0.0.1"), "{text}");
    }

    #[test]
    fn lookup_record_has_time_node_schema_and_hop_times() {
        // A live run: monotonic timestamps, 1 s of monotonic clock is T on the wall clock.
        let names = Names {
            mono_to_epoch_ns: i128::from(T) - 1_000_000_000,
            ..Names::new(1, [])
        }
        .with_node("node-a".to_owned())
        .with_hops(crate::cli::Hops::All);
        let mut l = lookup(1_000_000_000);
        l.children.push(lookup(1_000_500_000));
        let v: serde_json::Value = serde_json::from_str(&lookup_json(&l, &names)).unwrap();
        assert_eq!(v["type"], "lookup");
        assert_eq!(v["time"], "2026-11-23T19:20:05.123456789Z");
        assert_eq!(v["node"], "node-a");
        assert_eq!(v["schema"], SCHEMA);
        // The monotonic fields keep their meaning.
        assert_eq!(v["start_ts_ns"], 1_000_000_000u64);
        assert_eq!(v["hops"][0]["ts_ns"], 1_000_000_000u64);
        assert_eq!(v["hops"][0]["time"], "2026-11-23T19:20:05.123456789Z");
        assert_eq!(v["hops"][1]["time"], "2026-11-23T19:20:05.124956789Z");
        assert_eq!(
            v["children"][0]["hops"][1]["time"],
            "2026-11-23T19:20:05.125456789Z"
        );
        // The first keys, in order: what a reader of the raw line sees first.
        let line = lookup_json(&l, &names);
        assert!(
            line.starts_with(r#"{"type":"lookup","time":"2026-11-23T19:20:05.123456789Z","node":"node-a","schema":"dnstrace/1","#),
            "{line}"
        );
        // Outside the output, a lookup serializes as it always did.
        let plain = serde_json::to_value(&l).unwrap();
        assert!(plain["hops"][0].get("time").is_none(), "{plain}");
    }

    #[test]
    fn text_lookup_line_starts_with_the_time() {
        let names = Names::new(1, []).with_epoch_timestamps();
        let text = lookup_text(&lookup(T), &names);
        assert!(
            text.starts_with("19:20:05.123  10.0.0.2:40000 → 10.0.0.1  A example.org"),
            "{text}"
        );
    }

    #[test]
    fn upstreams_and_summary_records_are_stamped() {
        let names = Names::new(1, [])
            .with_epoch_timestamps()
            .with_node("n1".to_owned());
        let mut sink = Sink::Json(JsonSink::new(Vec::new()));
        sink.upstreams(&[], &names, T).unwrap();
        sink.summary(&crate::pipeline::Summary::default(), 0, &names, T + 1)
            .unwrap();
        let Sink::Json(json) = sink else {
            unreachable!()
        };
        let out = String::from_utf8(json.into_inner()).unwrap();
        let recs: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(recs.len(), 2, "{out}");
        assert_eq!(recs[0]["type"], "upstreams");
        assert_eq!(recs[0]["time"], "2026-11-23T19:20:05.123456789Z");
        assert_eq!(recs[1]["type"], "summary");
        assert_eq!(recs[1]["time"], "2026-11-23T19:20:05.123456790Z");
        for r in &recs {
            assert_eq!(r["node"], "n1");
            assert_eq!(r["schema"], "dnstrace/1");
        }
    }

    #[test]
    fn coverage_changes_are_stamped_records_and_text_lines() {
        use crate::capture::{CoverageChange, CoverageEvent, CoverageTotals};
        let names = Names::new(1, [])
            .with_epoch_timestamps()
            .with_node("n1".to_owned());
        let change = CoverageChange {
            event: CoverageEvent::Attached,
            iface: "veth1a2b".to_owned(),
            ifindex: 42,
            netns: 4_026_531_840,
            mode: Some("tcx".to_owned()),
            old_name: None,
            error: None,
            totals: CoverageTotals {
                interfaces: 3,
                attached: 1,
                detached: 0,
                attach_failed: 0,
            },
        };
        let mut sink = Sink::Json(JsonSink::new(Vec::new()));
        sink.coverage(&change, &names, T).unwrap();
        let Sink::Json(json) = sink else {
            unreachable!()
        };
        let out = String::from_utf8(json.into_inner()).unwrap();
        assert!(
            out.starts_with(r#"{"type":"coverage","time":"2026-11-23T19:20:05.123456789Z","node":"n1","schema":"dnstrace/1","event":"attached","iface":"veth1a2b","ifindex":42,"netns":4026531840,"mode":"tcx","totals":{"interfaces":3,"attached":1,"detached":0,"attach_failed":0}}"#),
            "{out}"
        );
        let gone = CoverageChange {
            event: CoverageEvent::Detached,
            mode: None,
            ..change
        };
        assert_eq!(
            coverage_text(&gone, T),
            "19:20:05.123  coverage: detached veth1a2b (ifindex 42, netns 4026531840); watching 3 interfaces (1 attached, 0 detached, 0 failed since start)\n"
        );
    }
}
