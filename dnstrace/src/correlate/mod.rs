//! Pure correlation stage: packet events plus an injected clock → one [`Lookup`] per client
//! lookup, stitched hop by hop across NAT and forwarders, ending in one [`Verdict`].
//!
//! Model. Every DNS query message is a *leg*. The same message seen at several capture
//! points (socket, pod veth, CoreDNS veth, uplink; before and after DNAT/SNAT) is one leg
//! with several hops: same ID and question, and each sighting shares its source or its
//! destination with an earlier one (NAT rewrites one side at a time). A forwarder's new
//! query for the same question (new ID, new port), sent while a leg is open, is a *child*
//! of the leg that reached that forwarder, at any depth. A client's retry is another
//! top-level leg of the same lookup. A reply is matched to its leg by ID, question and
//! the query's source (its destination), whatever its own source. A lookup finishes when
//! the reply reaches the client (the mirror of the point where the query was first seen),
//! or at its deadline, or at the end of capture.
//!
//! Nothing here reads a clock or does I/O: every call takes `now_ns`.

mod gaps;
mod judge;
mod state;
/// The fast hasher of the correlator's maps, for other per-event tables keyed by small integers.
pub(crate) use state::Fx;
mod upstream;

#[cfg(test)]
mod scenario;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

use crate::decode::{Packet, Point, Proto, dns, dns::Rcode, tunnel::Tunnel};
use state::{
    B_DNS, B_DO, B_EDNS, B_QR, B_TC, B_TCP, HopRec, Interner, Leg, LegKind, LegRef, LookupState,
    Refs,
};
use upstream::Upstreams;

/// One captured packet, with where it was seen.
#[derive(Clone, Debug)]
pub struct Event {
    pub packet: Packet,
    /// Interface name, or "socket" for the socket hop (shared: no allocation per event).
    pub iface: std::sync::Arc<str>,
    /// Set when this event is a kernel drop of the packet (skb:kfree_skb): the drop
    /// reason name, e.g. "NETFILTER_DROP", "NO_SOCKET", "IP_RPFILTER".
    pub drop_reason: Option<String>,
}

/// Heap bytes one live lookup's state may take under a flood of one-sighting lookups: the
/// lookup, its leg and hop, its index entries, and its share of the tables at their
/// largest (asserted by a test with a counting allocator).
pub const LOOKUP_STATE_BYTES: usize = 640;

/// How many of the last events' interfaces are tried by address before the name is hashed.
const RECENT_IFACES: usize = 8;

/// Which capture points are watched: a verdict that rests on *not* seeing something is
/// only given when the place it would have been seen is watched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Interfaces hooked with tc (both directions).
    pub ifaces: Vec<String>,
    /// Every interface of the node is hooked, so a packet cannot leave unseen.
    pub all_ifaces: bool,
    /// The socket hop (cgroup_skb) is on: local delivery and local sends are visible.
    pub socket: bool,
    /// Kernel drops (skb:kfree_skb) are traced.
    pub drops: bool,
}

impl Coverage {
    /// Everything watched.
    pub fn full() -> Self {
        Self {
            ifaces: Vec::new(),
            all_ifaces: true,
            socket: true,
            drops: true,
        }
    }

    pub fn watches(&self, iface: &str) -> bool {
        self.all_ifaces || self.ifaces.iter().any(|i| i == iface)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// A lookup without a reply this long after the client's last query is unanswered.
    pub timeout_ns: u64,
    /// A forwarder's new query for the same question within this of its parent's last
    /// activity is a child; also the time a client has to start TCP after TC=1.
    pub forward_window_ns: u64,
    /// Upstream answers for one question are compared over this window.
    pub disagreement_window_ns: u64,
    /// Live lookups; beyond it the oldest is finished early as `unknown` and counted.
    pub max_lookups: usize,
    /// Interfaces that lead off the node.
    pub uplinks: Vec<String>,
    /// Netns cookie of the node's host netns; any other netns is a pod. Must be set: with
    /// the default 0 every socket event counts as a pod's.
    pub host_netns: u64,
    pub watched: Coverage,
    /// Build a lookup judged `ok` in full: its hop records (and its forwarded queries'),
    /// its detail line and its last hop. Off, such a lookup carries only
    /// [`Lookup::trail`] of them, all that a compact record writes: for `--hops problems`
    /// and `none` when no TUI shows them.
    pub ok_hops: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            timeout_ns: 5_000_000_000,
            forward_window_ns: 2_000_000_000,
            disagreement_window_ns: 60_000_000_000,
            max_lookups: 100_000,
            uplinks: Vec::new(),
            host_netns: 0,
            watched: Coverage::full(),
            ok_hops: true,
        }
    }
}

/// Defines [`Verdict`] and every fact about each verdict in one table: the variant, its
/// user-facing name (JSON, text, `--verdict`), the short label for narrow columns, and
/// its severity. `ALL` lists them in this order. The judge's rule for each verdict lives in
/// `judge.rs` (`RULES`), matched exhaustively, so a new line here is a compile error there
/// until its rule exists.
macro_rules! verdicts {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, $short:literal, $severity:ident; )*) => {
        /// How a lookup ended. The serialized names are the user-facing API.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        pub enum Verdict {
            $( $(#[$doc])* #[serde(rename = $name)] $variant, )*
        }

        impl Verdict {
            /// Every verdict, in definition order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            /// The user-facing name: `upstream_rejects_edns`.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name,)* }
            }

            /// A label that fits a narrow column: `rejects-edns`.
            pub fn short(self) -> &'static str {
                match self { $(Self::$variant => $short,)* }
            }

            /// How loud it is. `unknown` is information about the tracer, not the path;
            /// EDNS rejection and disagreement may still have given the client an answer.
            pub fn severity(self) -> Severity {
                match self { $(Self::$variant => Severity::$severity,)* }
            }
        }
    };
}

verdicts! {
    /// Answered, and nothing on its path went wrong.
    Ok = "ok", "ok", Ok;
    /// An upstream answered FORMERR/BADVERS/NOTIMP to a query with OPT.
    UpstreamRejectsEdns = "upstream_rejects_edns", "rejects-edns", Warning;
    /// One forwarder's upstreams gave different rcodes for the same question.
    UpstreamDisagreement = "upstream_disagreement", "disagreement", Warning;
    /// A pod asked a loopback address in its own netns.
    LoopbackNameserver = "loopback_nameserver", "loopback-ns", Error;
    /// The reply came back from an address the client did not ask (DNAT not reversed).
    ReplyFromUnexpectedSource = "reply_from_unexpected_source", "odd-source", Error;
    /// A query to a node-local (link-local) address left through the uplink.
    LeftViaUplink = "left_via_uplink", "left-uplink", Error;
    /// A forwarded copy of the question reached a server already on its path.
    ForwardingLoop = "forwarding_loop", "forward-loop", Error;
    /// TC=1 answer and no TCP retry that got an answer.
    TruncatedNoTcp = "truncated_no_tcp", "trunc-no-tcp", Error;
    /// The kernel dropped a packet of the lookup on this node.
    Dropped = "dropped", "dropped", Error;
    /// SERVFAIL/REFUSED/NOTIMP, followed down to where it came from.
    ServerError = "server_error", "server-error", Error;
    /// No reply, with every hop watched and nothing lost.
    Unanswered = "unanswered", "unanswered", Error;
    /// The tracer cannot tell: events lost, a hop not watched, capture cut short.
    Unknown = "unknown", "unknown", Info;
}

/// How loud a verdict is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Ok = 0,
    Info = 1,
    Warning = 2,
    Error = 3,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// EDNS0 as the query carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HopEdns {
    pub udp: u16,
    #[serde(rename = "do")]
    pub dnssec_ok: bool,
}

impl std::fmt::Display for HopEdns {
    /// "udp=1232 DO=0".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "udp={} DO={}", self.udp, u8::from(self.dnssec_ok))
    }
}

/// One sighting of a packet of the lookup.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hop {
    pub ts_ns: u64,
    /// Interface name, or "socket" (shared with the correlator's table of names).
    pub iface: std::sync::Arc<str>,
    /// "ingress", "egress", "socket-in", "socket-out" or "drop".
    pub dir: &'static str,
    pub netns: u64,
    #[serde(serialize_with = "crate::decode::text::serialize_socket_addr")]
    pub src: SocketAddr,
    #[serde(serialize_with = "crate::decode::text::serialize_socket_addr")]
    pub dst: SocketAddr,
    /// None for TCP segments without a DNS message (SYN, SYN-ACK, RST).
    pub id: Option<u16>,
    pub qr: Option<bool>,
    pub rcode: Option<Rcode>,
    pub edns: Option<HopEdns>,
    pub tc: bool,
    pub proto: Proto,
    pub tcp_flags: Option<String>,
    pub drop_reason: Option<String>,
    /// The overlay tunnel the packet crossed this point in: `src` and `dst` above are the
    /// inner packet's, these the outer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,
}

/// One finished lookup: a `{"type":"lookup",...}` JSON line. Field names are the API.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lookup {
    /// The correlator's number for this lookup, unique in a run, counting from 1; a
    /// forwarded query (child) carries the number of the lookup it belongs to.
    pub id: u64,
    /// The client's address and port (JSON: "ip:port", as `Display` writes it).
    #[serde(serialize_with = "crate::decode::text::serialize_socket_addr")]
    pub client: SocketAddr,
    /// The address and port the client sent to (before any DNAT).
    #[serde(serialize_with = "crate::decode::text::serialize_socket_addr")]
    pub server: SocketAddr,
    /// Shared with the lookup's live state and its forwarded queries: never copied.
    pub qname: std::sync::Arc<str>,
    /// A name from the decoder's table ("A", "AAAA"): no allocation per lookup.
    pub qtype: dns::Text,
    /// What the client finally got, or None.
    pub rcode: Option<Rcode>,
    pub verdict: Verdict,
    /// The hop or address blamed.
    pub culprit: Option<String>,
    /// "iface direction", or "socket-in (netns N)"…
    pub last_hop: Option<String>,
    /// One line naming the fix.
    pub hint: Option<String>,
    pub latency_ms: Option<f64>,
    /// One line explaining the verdict.
    pub detail: String,
    /// Every sighting of the client's queries and replies, in time order (the JSON output
    /// adds each hop's wall-clock `time`).
    #[serde(serialize_with = "crate::sink::serialize_hops")]
    pub hops: Vec<Hop>,
    /// The forwarded queries, stitched the same way.
    pub children: Vec<Lookup>,
    /// Client retransmissions and retries grouped into this lookup.
    pub retries: u32,
    pub start_ts_ns: u64,
    /// The client's netns, when the socket hop saw it send.
    pub netns: Option<u64>,
    /// Hops not kept (per-leg cap).
    pub hops_omitted: u32,
    /// Forwarded queries not kept (per-lookup cap).
    pub children_omitted: u32,
    /// Who sent it: the task from the socket hop here, the rest from `crate::identity`.
    #[serde(flatten)]
    pub origin: Origin,
    /// In place of `hops` (then empty, and so are the forwarded queries'), for an `ok`
    /// lookup built without them ([`Config::ok_hops`] off; its `detail` is then empty and
    /// its `last_hop` None).
    #[serde(skip)]
    pub trail: Option<Trail>,
}

/// What a compact record says of a lookup's hops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trail {
    /// The client's hops, those not kept included.
    pub hop_count: usize,
    /// Where they were seen, each place once, in the order first seen: "socket>pod0".
    pub path: String,
}

/// Who sent a lookup, as far as the node can tell; every field may be unknown. In JSON
/// the fields are flat: `pid`, `comm`, `netns_inode`, `pod_namespace`, `pod_name`,
/// `pod_uid`, `container`, `container_id`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Origin {
    /// The sending task (its thread group id), when the socket hop saw the query leave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The inode of the client's netns (what `lsns` and `/proc/PID/ns/net` show).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_inode: Option<u64>,
    #[serde(flatten)]
    pub pod: Option<std::sync::Arc<PodRef>>,
    #[serde(flatten)]
    pub container: Option<std::sync::Arc<ContainerRef>>,
}

/// A Kubernetes pod, as the container runtime (CRI) or the cgroup path names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct PodRef {
    /// Unknown without the CRI (the cgroup path holds only the UID).
    #[serde(rename = "pod_namespace", skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(rename = "pod_name", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "pod_uid")]
    pub uid: String,
}

impl PodRef {
    /// "namespace/name", or "pod <uid>" when only the UID is known.
    pub fn label(&self) -> String {
        let mut s = String::new();
        self.push_label(&mut s);
        s
    }

    /// Appends [`Self::label`].
    pub fn push_label(&self, s: &mut String) {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => {
                s.push_str(ns);
                s.push('/');
                s.push_str(name);
            }
            (None, Some(name)) => s.push_str(name),
            _ => {
                s.push_str("pod ");
                s.push_str(&self.uid);
            }
        }
    }
}

/// One container of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct ContainerRef {
    /// Unknown without the CRI.
    #[serde(rename = "container", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The runtime's container id (64 hex digits).
    #[serde(rename = "container_id")]
    pub id: String,
}

impl Lookup {
    /// Where its timeline starts: the first sighting.
    pub fn t0(&self) -> u64 {
        self.hops.first().map_or(self.start_ts_ns, |h| h.ts_ns)
    }

    /// This lookup and every forwarded query under it, depth first.
    pub fn descendants(&self) -> usize {
        self.children.iter().map(|c| 1 + c.descendants()).sum()
    }
}

/// Per upstream address (queries that leave the node).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpstreamStats {
    pub upstream: String,
    pub queries: u64,
    pub answered: u64,
    pub unanswered: u64,
    pub rcodes: BTreeMap<String, u64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Counters of the correlator itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CorrelateStats {
    pub events: u64,
    /// Events without addresses, DNS question, or a standard query opcode.
    pub ignored: u64,
    /// Replies that matched no open query.
    pub orphan_responses: u64,
    pub live_lookups: usize,
    pub started: u64,
    pub finished: u64,
    /// Lookups finished early, as `unknown`, because `max_lookups` were live (they are
    /// also in `finished`).
    pub evicted: u64,
    pub hops_omitted: u64,
    pub legs_omitted: u64,
    /// Events the tracer reported lost (`note_loss`).
    pub lost_events: u64,
    /// Finished lookups left out of the output by `--client`, `--qname` or `--verdict`
    /// (set by the output stage; they are in `finished` and `by_verdict`).
    pub not_shown: u64,
    /// Lookups shown (printed or exported) whose verdict is not `ok` (set by the output stage).
    pub problems_shown: u64,
    /// `--packets` lines left out by the filters: their lookup was not shown, or they
    /// went into no lookup (set by the output stage).
    pub packets_not_shown: u64,
    /// Upstream queries not counted per upstream because too many upstream addresses were seen.
    pub upstreams_untracked: u64,
    pub by_verdict: BTreeMap<&'static str, u64>,
}

/// Why a lookup is being finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The reply reached the client.
    Answered,
    /// Its deadline passed.
    Deadline,
    /// Capture stopped.
    Stopped,
    /// Evicted at the cap on live lookups, to make room for a new one.
    Evicted,
}

enum Place {
    Tcp(u64),
    Child(u64, u8),
    Retry(u64),
    New,
}

/// Both ends of a message rewritten at once (DNAT + SNAT): still the same message this close.
const SAME_MESSAGE_NS: u64 = 100_000_000;
/// A new-ID query for the same question sooner than this is a concurrent lookup, not a retry
/// (resolvers wait at least a second before retrying).
const MIN_RETRY_GAP_NS: u64 = 200_000_000;
/// Open lookups examined per question when placing a new query.
const SCAN: usize = 64;
/// Events reported lost at `t` may have happened this long before.
const LOSS_SLACK_NS: u64 = 1_000_000_000;
const LOSS_MERGE_NS: u64 = 100_000_000;
const MAX_LOSS_SPANS: usize = 4096;

/// Where an ingested event went: the lookup it was attached to and, when it became a hop,
/// the index of its leg (0 is the client's first query; children and retries follow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub lookup: u64,
    pub leg: Option<u8>,
}

/// The correlator: owns all flow state, bounded by TTL and `max_lookups`.
pub struct Correlator {
    cfg: Config,
    /// timeout + grace: how long a lookup stays open after the client's last query.
    ttl_ns: u64,
    next_id: u64,
    /// No live lookup has an id below this.
    oldest: u64,
    /// Boxed: the table stays small (it grows past its load under churn, see
    /// [`LOOKUP_STATE_BYTES`]) and moving a lookup in or out is a pointer.
    lookups: HashMap<u64, Box<LookupState>, Fx>,
    /// (DNS id, question hash) → legs.
    by_msg: HashMap<(u16, u64), Refs, Fx>,
    /// Question hash → open lookups, oldest first.
    by_q: HashMap<u64, state::Ids, Fx>,
    deadlines: state::Deadlines,
    /// Client IP → lookups whose client got TC=1 and may now open TCP.
    tc_wait: HashMap<IpAddr, Vec<u64>, Fx>,
    /// Client address of a TCP retry → lookup.
    tcp_flows: HashMap<SocketAddr, u64, Fx>,
    ifaces: Interner,
    /// The interfaces of the last events (ids into `ifaces`), most recent first.
    recent_ifaces: [u16; RECENT_IFACES],
    uplink: Vec<bool>,
    /// By interface id: the capture time of the last event seen there.
    iface_last: Vec<u64>,
    reasons: Interner,
    tunnels: state::Tunnels,
    /// (first, last, n): times events were reported lost, merged when close.
    loss: VecDeque<(u64, u64, u64)>,
    /// Holes in the capture of TCP streams (`note_tcp_gap`).
    tcp_gaps: gaps::TcpGaps,
    /// Interfaces that went away while the capture ran (`iface_gone`).
    iface_gaps: gaps::IfaceGaps,
    upstreams: Upstreams,
    stats: CorrelateStats,
    /// Finished lookups by verdict, indexed as [`Verdict::ALL`] (`stats()` names them).
    verdicts: [u64; Verdict::ALL.len()],
    /// Where the last ingested event went.
    placed: Option<Placement>,
    /// Lookups evicted while ingesting the current event, to hand back with it.
    evicted: Vec<Lookup>,
    /// The sending task of the event being ingested (socket hop only), for a new lookup.
    task: Option<(u32, String)>,
    /// Sightings a leg that outgrows its first two usually ends with: the node's path
    /// (see [`state::HopRoom`]).
    hop_room: state::HopRoom,
}

impl Correlator {
    pub fn new(cfg: Config) -> Self {
        // Grace after the timeout, so that a client's retry sent exactly at its own timeout
        // still joins the lookup, and a reply arriving just late still counts.
        let ttl_ns = lookup_lifetime_ns(cfg.timeout_ns);
        let upstreams = Upstreams::new(cfg.disagreement_window_ns, cfg.max_lookups);
        Self {
            cfg,
            ttl_ns,
            next_id: 1,
            oldest: 1,
            lookups: HashMap::default(),
            by_msg: HashMap::default(),
            by_q: HashMap::default(),
            deadlines: state::Deadlines::default(),
            tc_wait: HashMap::default(),
            tcp_flows: HashMap::default(),
            ifaces: Interner::new("?"),
            recent_ifaces: [0; RECENT_IFACES],
            uplink: vec![false],
            iface_last: vec![0],
            reasons: Interner::new(""),
            tunnels: state::Tunnels::default(),
            loss: VecDeque::new(),
            tcp_gaps: gaps::TcpGaps::default(),
            iface_gaps: gaps::IfaceGaps::default(),
            upstreams,
            stats: CorrelateStats::default(),
            verdicts: [0; Verdict::ALL.len()],
            placed: None,
            evicted: Vec::new(),
            task: None,
            hop_room: state::HopRoom::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Feeds one event. Returns the lookups that finished because of it: the reply reached
    /// the client, or it was evicted at the cap to make room for the lookup it starts.
    pub fn ingest(&mut self, ev: Event, now_ns: u64) -> Vec<Lookup> {
        let mut out = Vec::new();
        self.ingest_into(ev, now_ns, &mut out);
        out
    }

    /// [`Self::ingest`], appending the lookups it finished to `out` (no vector per event).
    pub fn ingest_into(&mut self, ev: Event, now_ns: u64, out: &mut Vec<Lookup>) {
        let start = out.len();
        self.stats.events += 1;
        self.placed = None;
        let Event {
            packet,
            iface,
            drop_reason,
        } = ev;
        let Packet {
            mut meta,
            proto,
            src,
            dst,
            tcp_flags,
            dns,
            tunnel,
            ..
        } = packet;
        let (Some(src), Some(dst)) = (src, dst) else {
            self.stats.ignored += 1;
            return;
        };
        self.task = (meta.point == Point::SocketOut && meta.pid != 0)
            .then(|| (meta.pid, meta.comm.take().unwrap_or_default()));
        let iface = self.intern_iface(&iface);
        let drop_reason = match drop_reason {
            Some(r) => self.reasons.intern(&r),
            // A drop event without a reason name: the kernel's generic reason.
            None if meta.point == Point::Drop => self.reasons.intern("NOT_SPECIFIED"),
            None => 0,
        };
        let (tunnel, tunnel_sport) = self.tunnels.intern(tunnel.as_deref());
        let mut hop = HopRec {
            ts: if meta.ts_ns != 0 { meta.ts_ns } else { now_ns },
            netns: meta.netns,
            src,
            dst,
            iface,
            drop_reason,
            rcode: Rcode::NOERROR,
            edns_udp: 0,
            id: 0,
            point: if drop_reason != 0 {
                Point::Drop
            } else {
                meta.point
            },
            bits: if proto == Some(Proto::Tcp) { B_TCP } else { 0 },
            tcp: tcp_flags.unwrap_or_default(),
            tunnel,
            tunnel_sport,
        };
        if let Some(last) = self.iface_last.get_mut(usize::from(iface)) {
            *last = (*last).max(hop.ts);
        }
        let Some(msg) = dns else {
            self.on_segment(hop);
            return;
        };
        let dns::Message {
            id,
            qr,
            opcode,
            rcode,
            flags,
            question,
            edns,
            ..
        } = &*msg;
        let Some(q) = question else {
            self.stats.ignored += 1;
            return;
        };
        if opcode != "QUERY" {
            self.stats.ignored += 1;
            return;
        }
        hop.id = *id;
        hop.bits |= B_DNS | if *qr { B_QR } else { 0 } | if flags.tc { B_TC } else { 0 };
        if let Some(e) = edns {
            hop.bits |= B_EDNS | if e.dnssec_ok { B_DO } else { 0 };
            hop.edns_udp = e.udp_size;
        }
        let qhash = state::question_hash(&q.name, &q.qtype, &q.qclass);
        if *qr {
            hop.rcode = *rcode;
            if let Some(done) = self.on_response(hop, qhash, &q.name) {
                out.push(done);
            }
        } else {
            // The name is shared (an `Arc<str>`), the type and class static text.
            self.on_query(hop, qhash, q.clone());
        }
        self.sweep_deadlines();
        // Evicted lookups started before anything this event finished.
        if !self.evicted.is_empty() {
            out.splice(start..start, self.evicted.drain(..));
        }
    }

    /// The lookup (and leg) the last event given to [`Self::ingest`] was attached to; None
    /// when it joined no lookup (not DNS, ignored, an orphan reply). The lookup may already
    /// have finished because of that event: its [`Lookup::id`] is this `lookup`.
    pub fn placed(&self) -> Option<Placement> {
        self.placed
    }

    fn place_at(&mut self, lookup: u64, leg: Option<u8>) {
        self.placed = Some(Placement { lookup, leg });
    }

    /// Time passes: lookups past their deadline finish.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Lookup> {
        let mut out = Vec::new();
        while self.expire_into(now_ns, usize::MAX, &mut out) {}
        out
    }

    /// [`Self::expire`], at most `max` lookups at a time, appended to `out`; true when more
    /// are past their deadline. Writing out each batch before asking for the next keeps
    /// the records of a mass expiry from piling up in memory (the budget counts a live
    /// lookup's state, not its output record, which is about twice as large).
    pub fn expire_into(&mut self, now_ns: u64, max: usize, out: &mut Vec<Lookup>) -> bool {
        let max = max.max(1);
        let mut n = 0;
        while let Some((deadline, lid)) = self.deadlines.first() {
            if deadline > now_ns {
                break;
            }
            // A lookup that finished or moved its deadline left its entry behind.
            if self
                .lookups
                .get(&lid)
                .is_none_or(|lk| lk.deadline != deadline)
            {
                self.deadlines.pop();
                continue;
            }
            if n == max {
                return true;
            }
            n += 1;
            self.deadlines.pop();
            out.extend(self.finish_one(lid, deadline, End::Deadline));
        }
        self.prune(now_ns);
        false
    }

    /// The tracer lost `n` events around `now_ns`: lookups open then end `unknown`
    /// rather than claim that something vanished.
    pub fn note_loss(&mut self, n: u64, now_ns: u64) {
        if n == 0 {
            return;
        }
        self.stats.lost_events += n;
        match self.loss.back_mut() {
            Some(last) if now_ns <= last.1 + LOSS_MERGE_NS => {
                last.1 = last.1.max(now_ns);
                last.2 += n;
            }
            _ => self.loss.push_back((now_ns, now_ns, n)),
        }
        if self.loss.len() > MAX_LOSS_SPANS {
            // Merge the two oldest instead of forgetting a loss.
            if let (Some(a), Some(b)) = (self.loss.pop_front(), self.loss.front_mut()) {
                b.0 = a.0;
                b.2 += a.2;
            }
        }
    }

    /// End of capture: finishes everything still open.
    pub fn finish(&mut self, now_ns: u64) -> Vec<Lookup> {
        let mut out = Vec::new();
        while self.finish_into(now_ns, usize::MAX, &mut out) {}
        out
    }

    /// [`Self::finish`], at most `max` lookups at a time (oldest first), appended to
    /// `out`; true while some are still open.
    pub fn finish_into(&mut self, now_ns: u64, max: usize, out: &mut Vec<Lookup>) -> bool {
        let max = max.max(1);
        let mut ids: Vec<u64> = self.lookups.keys().copied().collect();
        ids.sort_unstable();
        let more = ids.len() > max;
        for lid in ids.into_iter().take(max) {
            out.extend(self.finish_one(lid, now_ns, End::Stopped));
        }
        self.sweep_deadlines();
        more
    }

    fn sweep_deadlines(&mut self) {
        let lookups = &self.lookups;
        self.deadlines.sweep(lookups.len(), |d, lid| {
            lookups.get(&lid).is_some_and(|lk| lk.deadline == d)
        });
    }

    /// Per upstream address, sorted by address.
    pub fn upstreams(&self) -> Vec<UpstreamStats> {
        self.upstreams.stats()
    }

    pub fn stats(&self) -> CorrelateStats {
        let mut s = self.stats.clone();
        s.by_verdict = Verdict::ALL
            .iter()
            .zip(self.verdicts)
            .filter(|(_, n)| *n > 0)
            .map(|(v, n)| (v.as_str(), n))
            .collect();
        s.live_lookups = self.lookups.len();
        s.upstreams_untracked = self.upstreams.dropped;
        s
    }

    fn intern_iface(&mut self, name: &Arc<str>) -> u16 {
        // The pipeline names each interface with one shared string, so the interfaces of
        // the last few events are found by address, without hashing the name.
        if let Some(at) = self
            .recent_ifaces
            .iter()
            .position(|&id| id != 0 && self.ifaces.holds(id, name))
        {
            let id = self.recent_ifaces[at];
            self.recent_ifaces.copy_within(0..at, 1);
            self.recent_ifaces[0] = id;
            return id;
        }
        if let Some(id) = self.ifaces.find(name) {
            self.ifaces.adopt(id, name);
            self.note_recent_iface(id);
            return id;
        }
        // New, or an id given back by an interface gone: its facts start afresh.
        let id = self.ifaces.intern(name);
        let i = usize::from(id);
        if i >= self.uplink.len() {
            self.uplink.resize(i + 1, false);
            self.iface_last.resize(i + 1, 0);
        }
        self.uplink[i] = self.cfg.uplinks.iter().any(|u| **u == **name);
        self.iface_last[i] = 0;
        self.ifaces.adopt(id, name);
        self.note_recent_iface(id);
        id
    }

    fn note_recent_iface(&mut self, id: u16) {
        self.recent_ifaces.copy_within(0..RECENT_IFACES - 1, 1);
        self.recent_ifaces[0] = id;
    }

    fn is_uplink(&self, iface: u16) -> bool {
        self.uplink
            .get(usize::from(iface))
            .copied()
            .unwrap_or(false)
    }

    fn on_query(&mut self, hop: HopRec, qhash: u64, q: dns::Question) {
        if let Some(r) = self.match_query(&hop, qhash, &q.name) {
            self.place_at(r.lookup, Some(r.leg));
            self.add_query_hop(r, hop);
            return;
        }
        if self.absorb_omitted(&hop, qhash, &q.name) {
            return;
        }
        match self.place(&hop, qhash, &q.name) {
            Place::Tcp(lid) => self.add_leg(lid, None, LegKind::Tcp, hop, qhash),
            Place::Child(lid, parent) => {
                self.add_leg(lid, Some(parent), LegKind::Child, hop, qhash)
            }
            Place::Retry(lid) => self.add_leg(lid, None, LegKind::Retry, hop, qhash),
            Place::New => self.new_lookup(hop, qhash, q),
        }
    }

    /// The same query message seen before: same ID and question, and this sighting shares
    /// its destination or its source with an earlier one (NAT rewrites one side per hop).
    fn match_query(&self, hop: &HopRec, qhash: u64, qname: &str) -> Option<LegRef> {
        let refs = self.by_msg.get(&(hop.id, qhash))?;
        let mut best: Option<(u8, LegRef)> = None;
        for r in refs.as_slice() {
            let Some(lk) = self.lookups.get(&r.lookup) else {
                continue;
            };
            let Some(leg) = lk.legs.get(usize::from(r.leg)) else {
                continue;
            };
            if leg.proto() != hop.proto()
                || !lk.qname.eq_ignore_ascii_case(qname)
                || hop.ts > leg.last_query_ts + self.ttl_ns
                // Sent after this message's reply reached its client: a new query reusing the ID.
                || leg.hop(leg.final_reply).is_some_and(|r| r.ts < hop.ts && hop.point != Point::Drop)
            {
                continue;
            }
            let (mut elsewhere, mut other_sender, mut same_dst, mut same_src) =
                (false, false, false, false);
            for h in leg.query_hops() {
                elsewhere |= h.spot() == hop.spot() && h.dst != hop.dst;
                other_sender |= h.spot() == hop.spot() && h.src != hop.src;
                same_dst |= h.dst == hop.dst;
                same_src |= h.src == hop.src;
            }
            // Sent again from a point this message already passed, but elsewhere: a
            // parallel query to another server (musl asks every nameserver at once).
            // A local socket sending is where a message starts: a socket-out sighting of a
            // known message can only be its sender sending it again, from the same address.
            // Another address is a new query that reuses the ID (a transparent forwarder).
            // The same point with another source is another sender reusing the ID and the
            // question (clients with several sockets), and so is a new source arriving at
            // tc ingress: nothing rewrites a source between a socket and the link it leaves by.
            let score = if ((elsewhere || other_sender) && hop.point != Point::Drop)
                || (matches!(hop.point, Point::SocketOut | Point::TcIngress) && !same_src)
            {
                0
            } else if same_dst && same_src {
                // The very addresses an earlier sighting had: above a leg that shares only
                // the destination, which may be another socket's query with the same ID
                // and question (a drop there must not land on the socket that got its answer).
                4
            } else if same_dst {
                3
            } else if same_src {
                2
            } else if hop.ts.saturating_sub(leg.last_query_ts) <= SAME_MESSAGE_NS {
                1
            } else {
                0
            };
            if score > 0 && best.is_none_or(|(s, _)| score > s) {
                best = Some((score, *r));
            }
        }
        best.map(|(_, r)| r)
    }

    fn add_query_hop(&mut self, r: LegRef, hop: HopRec) {
        let on_uplink = hop.point == Point::TcEgress && self.is_uplink(hop.iface);
        let Some(lk) = self.lookups.get_mut(&r.lookup) else {
            return;
        };
        let leg = &mut lk.legs[usize::from(r.leg)];
        let here = hop.spot();
        let room = self.hop_room.get();
        // Seen here already: the sender transmitted the same message again.
        let again = hop.point != Point::Drop && leg.query_hops().any(|h| h.spot() == here);
        let is_drop = hop.point == Point::Drop;
        let fact = (is_drop && leg.drop.is_none()) || (on_uplink && leg.uplink.is_none());
        if let Some(i) = leg.push(hop, fact, room) {
            if is_drop {
                leg.drop.get_or_insert(i);
            }
            if on_uplink {
                leg.uplink.get_or_insert(i);
            }
        } else {
            self.stats.hops_omitted += 1;
        }
        if !leg.tc_seen && state::is_tc(hop.point) {
            leg.tc_seen = true;
            if hop.dst == leg.server() {
                leg.client_tc = Some(here);
            }
        }
        if is_drop {
            return;
        }
        leg.last_query_ts = leg.last_query_ts.max(hop.ts);
        if again && here == leg.first() && leg.depth == 0 {
            lk.retries += 1;
            lk.last_client_ts = hop.ts;
            let deadline = hop.ts + self.ttl_ns;
            set_deadline(&mut self.deadlines, lk, r.lookup, deadline);
        }
    }

    /// Where a query that is not a sighting of a known message belongs.
    fn place(&self, hop: &HopRec, qhash: u64, qname: &str) -> Place {
        let Some(ids) = self.by_q.get(&qhash) else {
            return Place::New;
        };
        let open = || {
            ids.iter()
                .rev()
                .take(SCAN)
                .filter_map(|lid| self.lookups.get(lid).map(|lk| (*lid, lk)))
                .filter(|(_, lk)| lk.qname.eq_ignore_ascii_case(qname))
        };
        // The client's TCP retry after a TC=1 answer: same client IP and question.
        if hop.proto() == Proto::Tcp
            && let Some((lid, _)) = open().find(|(_, lk)| {
                lk.rare().await_tcp.is_some() && lk.legs[0].client().ip() == hop.src.ip()
            })
        {
            return Place::Tcp(lid);
        }
        // A forwarder's query: the best-supported open leg, the most recent on a tie
        // (so a chain pod → node-local-dns → CoreDNS → upstream nests).
        let mut best: Option<(u8, u64, u64, u8)> = None;
        for (lid, lk) in open() {
            for (i, leg) in lk.legs.iter().enumerate() {
                if leg.resp.is_some()
                    || hop.ts < leg.first_ts()
                    || hop.ts
                        > leg.last_query_ts.max(leg.last_child_ts) + self.cfg.forward_window_ns
                {
                    continue;
                }
                // The best evidence first; then a leg still waiting for its forward (two
                // clients asking the same question at once get one each); then the latest,
                // which is the deepest of a chain.
                let score = child_score(leg, hop) * 2 + u8::from(leg.children == 0);
                if score >= 4 && best.is_none_or(|(s, t, _, _)| (score, leg.first_ts()) > (s, t)) {
                    best = Some((score, leg.first_ts(), lid, i as u8));
                }
            }
        }
        if let Some((_, _, lid, leg)) = best {
            return Place::Child(lid, leg);
        }
        // The client asking again: same socket, or same address from the same place. The
        // same socket asking another server is a parallel attempt, whatever the gap.
        for (lid, lk) in open() {
            // A retry is a resend while unanswered: after an answer reached the client,
            // the same socket asking again is a new lookup.
            if lk
                .legs
                .iter()
                .any(|l| l.depth == 0 && l.hop(l.final_reply).is_some_and(|r| !r.has(B_TC)))
            {
                continue;
            }
            let root = &lk.legs[0];
            let gap = hop.ts.saturating_sub(lk.last_client_ts);
            let parallel = lk
                .legs
                .iter()
                .any(|l| l.depth == 0 && l.client() == hop.src && l.server() != hop.dst);
            let same_client = hop.src == root.client()
                || (hop.src.ip() == root.client().ip() && hop.spot() == root.first());
            if gap <= self.ttl_ns && (parallel || (same_client && gap >= MIN_RETRY_GAP_NS)) {
                return Place::Retry(lid);
            }
        }
        // A lookup at its leg cap that is still forwarding this question (a loop storm):
        // one more copy of it, left out and counted, rather than a new lookup.
        for (lid, lk) in open() {
            let busy = lk
                .legs
                .iter()
                .map(|l| l.last_query_ts.max(l.last_child_ts))
                .max()
                .unwrap_or(0)
                .max(lk.rare().omitted_ts);
            if lk.legs.len() >= state::MAX_LEGS && hop.ts <= busy + self.cfg.forward_window_ns {
                return Place::Child(lid, 0);
            }
        }
        Place::New
    }

    /// A sighting of a message left out at a lookup's leg cap: counted, not a new lookup.
    fn absorb_omitted(&mut self, hop: &HopRec, qhash: u64, qname: &str) -> bool {
        let Some(refs) = self.by_msg.get(&(hop.id, qhash)) else {
            return false;
        };
        let Some(lid) = refs
            .as_slice()
            .iter()
            .filter(|r| r.leg == state::OMITTED)
            .map(|r| r.lookup)
            .find(|lid| {
                self.lookups
                    .get(lid)
                    .is_some_and(|lk| lk.qname.eq_ignore_ascii_case(qname))
            })
        else {
            return false;
        };
        if let Some(lk) = self.lookups.get_mut(&lid) {
            lk.rare_mut().omitted_ts = lk.rare().omitted_ts.max(hop.ts);
        }
        self.stats.hops_omitted += 1;
        self.place_at(lid, None);
        true
    }

    fn add_leg(&mut self, lid: u64, parent: Option<u8>, kind: LegKind, hop: HopRec, qhash: u64) {
        let on_uplink = self.is_uplink(hop.iface);
        let Some(lk) = self.lookups.get_mut(&lid) else {
            return;
        };
        if lk.legs.len() >= state::MAX_LEGS {
            lk.rare_mut().legs_omitted += 1;
            self.stats.legs_omitted += 1;
            lk.rare_mut().omitted_ts = lk.rare().omitted_ts.max(hop.ts);
            if lk.rare().omitted_ids.len() < state::MAX_OMITTED_IDS
                && !lk.rare().omitted_ids.contains(&hop.id)
            {
                lk.rare_mut().omitted_ids.push(hop.id);
                let r = LegRef {
                    lookup: lid,
                    leg: state::OMITTED,
                };
                state::refs_insert(&mut self.by_msg, (hop.id, qhash), r);
            }
            self.placed = Some(Placement {
                lookup: lid,
                leg: None,
            });
            return;
        }
        let depth = parent.map_or(0, |p| lk.legs[usize::from(p)].depth.saturating_add(1));
        if let Some(p) = parent {
            let p = &mut lk.legs[usize::from(p)];
            p.children += 1;
            p.last_child_ts = p.last_child_ts.max(hop.ts);
        }
        let idx = lk.legs.len() as u8;
        self.placed = Some(Placement {
            lookup: lid,
            leg: Some(idx),
        });
        lk.legs.push(Leg::new(hop, kind, parent, depth, on_uplink));
        state::refs_insert(
            &mut self.by_msg,
            (hop.id, qhash),
            LegRef {
                lookup: lid,
                leg: idx,
            },
        );
        if depth == 0 {
            if kind == LegKind::Retry {
                lk.retries += 1;
            }
            lk.last_client_ts = hop.ts;
            let deadline = hop.ts + self.ttl_ns;
            set_deadline(&mut self.deadlines, lk, lid, deadline);
        }
    }

    fn new_lookup(&mut self, hop: HopRec, qhash: u64, q: dns::Question) {
        while self.lookups.len() >= self.cfg.max_lookups.max(1) {
            if !self.evict_oldest(hop.ts) {
                break;
            }
        }
        let lid = self.next_id;
        self.next_id += 1;
        self.place_at(lid, Some(0));
        let deadline = hop.ts + self.ttl_ns;
        let leg = Leg::new(hop, LegKind::Client, None, 0, self.is_uplink(hop.iface));
        self.lookups.insert(
            lid,
            Box::new(LookupState {
                qhash,
                qname: q.name,
                qtype: q.qtype,
                legs: vec![leg],
                retries: 0,
                start: hop.ts,
                last_client_ts: hop.ts,
                deadline,
                rare: None,
                task: self.task.take().map(Box::new),
            }),
        );
        self.deadlines.push(deadline, lid);
        state::refs_insert(
            &mut self.by_msg,
            (hop.id, qhash),
            LegRef {
                lookup: lid,
                leg: 0,
            },
        );
        match self.by_q.entry(qhash) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(state::Ids::One(lid));
            }
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().push(lid),
        }
        self.stats.started += 1;
    }

    fn match_response(&self, hop: &HopRec, qhash: u64, qname: &str) -> Option<LegRef> {
        let refs = self.by_msg.get(&(hop.id, qhash))?;
        let mut best: Option<(u8, LegRef)> = None;
        for r in refs.as_slice() {
            let Some(lk) = self.lookups.get(&r.lookup) else {
                continue;
            };
            let Some(leg) = lk.legs.get(usize::from(r.leg)) else {
                continue;
            };
            if leg.proto() != hop.proto()
                || !lk.qname.eq_ignore_ascii_case(qname)
                || hop.ts > leg.last_query_ts + self.ttl_ns
            {
                continue;
            }
            // Addressed to where the query came from; its own source does not matter
            // (that is how a reply from an unexpected source is still matched).
            let to_client = leg.query_hops().any(|h| h.src == hop.dst);
            let from_server = leg.query_hops().any(|h| h.dst == hop.src);
            let score = match (to_client, from_server) {
                (true, true) => 3,
                (true, false) => 2,
                // The port was rewritten somewhere we did not see.
                _ if leg.query_hops().any(|h| h.src.ip() == hop.dst.ip()) => 1,
                _ => 0,
            };
            if score > 0 && best.is_none_or(|(s, _)| score > s) {
                best = Some((score, *r));
            }
        }
        best.map(|(_, r)| r)
    }

    fn on_response(&mut self, hop: HopRec, qhash: u64, qname: &str) -> Option<Lookup> {
        let Some(r) = self.match_response(&hop, qhash, qname) else {
            if !self.absorb_omitted(&hop, qhash, qname) {
                self.stats.orphan_responses += 1;
            }
            return None;
        };
        self.place_at(r.lookup, Some(r.leg));
        let room = self.hop_room.get();
        let lk = self.lookups.get_mut(&r.lookup)?;
        let leg = &mut lk.legs[usize::from(r.leg)];
        let here = hop.spot();
        let is_drop = hop.point == Point::Drop;
        let client_leg = leg.depth == 0 && !is_drop;
        // The reply is back where the client's query was first seen.
        let at_client = client_leg && here == leg.first().mirror();
        // …or passing the client's veth on the way there.
        let near_client = client_leg && leg.client_tc.is_some_and(|s| here == s.mirror());
        let unexpected =
            (at_client || near_client) && unexpected_source(leg, &hop, self.cfg.host_netns);
        let fact = (is_drop && leg.drop.is_none())
            || (!is_drop && leg.resp.is_none())
            || at_client
            || (unexpected && leg.unexpected.is_none());
        match leg.push(hop, fact, room) {
            Some(i) if is_drop => {
                leg.drop.get_or_insert(i);
            }
            Some(i) => {
                leg.resp.get_or_insert(i);
                if unexpected {
                    leg.unexpected.get_or_insert(i);
                }
                if at_client {
                    leg.final_reply = Some(i);
                }
            }
            None => self.stats.hops_omitted += 1,
        }
        if !at_client {
            return None;
        }
        if hop.has(B_TC) && leg.proto() == Proto::Udp {
            // Truncated: the client should now retry over TCP, within the forward window.
            let ip = leg.client().ip();
            if lk.rare().await_tcp.is_none() {
                lk.rare_mut().await_tcp = Some(hop.ts);
                self.tc_wait.entry(ip).or_default().push(r.lookup);
                let deadline = hop.ts + self.cfg.forward_window_ns;
                set_deadline(&mut self.deadlines, lk, r.lookup, deadline);
            }
            return None;
        }
        self.finish_one(r.lookup, hop.ts, End::Answered)
    }

    /// A TCP segment without a DNS message: only SYN and RST matter, to show how far a
    /// client's TCP retry after TC=1 got.
    fn on_segment(&mut self, hop: HopRec) {
        if hop.proto() != Proto::Tcp || !(hop.tcp.syn || hop.tcp.rst) {
            self.stats.ignored += 1;
            return;
        }
        let known = self
            .tcp_flows
            .get(&hop.src)
            .or_else(|| self.tcp_flows.get(&hop.dst))
            .copied();
        let lid = match known {
            Some(lid) => lid,
            None if hop.tcp.syn && !hop.tcp.ack => {
                let waiting = self.tc_wait.get(&hop.src.ip()).and_then(|v| v.last());
                let Some(&lid) = waiting else {
                    self.stats.ignored += 1;
                    return;
                };
                self.tcp_flows.insert(hop.src, lid);
                if let Some(lk) = self.lookups.get_mut(&lid) {
                    lk.rare_mut().tcp_flows.push(hop.src);
                }
                lid
            }
            None => {
                self.stats.ignored += 1;
                return;
            }
        };
        self.place_at(lid, None);
        let Some(lk) = self.lookups.get_mut(&lid) else {
            return;
        };
        if lk.rare().tcp_hops.is_empty() {
            // The TCP attempt gets the full timeout.
            let deadline = hop.ts + self.ttl_ns;
            set_deadline(&mut self.deadlines, lk, lid, deadline);
        }
        if lk.rare().tcp_hops.len() < state::MAX_TCP_HOPS {
            lk.rare_mut().tcp_hops.push(hop);
        } else {
            self.stats.hops_omitted += 1;
        }
    }

    /// Removes a lookup and every index entry that points at it.
    fn remove(&mut self, lid: u64) -> Option<Box<LookupState>> {
        let lk = self.lookups.remove(&lid)?;
        for (i, leg) in lk.legs.iter().enumerate() {
            let r = LegRef {
                lookup: lid,
                leg: i as u8,
            };
            state::refs_remove(&mut self.by_msg, (leg.id(), lk.qhash), r);
        }
        for id in &lk.rare().omitted_ids {
            let r = LegRef {
                lookup: lid,
                leg: state::OMITTED,
            };
            state::refs_remove(&mut self.by_msg, (*id, lk.qhash), r);
        }
        if let Some(q) = self.by_q.get_mut(&lk.qhash)
            && q.remove(lid)
        {
            self.by_q.remove(&lk.qhash);
        }
        if lk.rare().await_tcp.is_some() {
            let ip = lk.legs[0].client().ip();
            if let Some(v) = self.tc_wait.get_mut(&ip) {
                v.retain(|&x| x != lid);
                if v.is_empty() {
                    self.tc_wait.remove(&ip);
                }
            }
        }
        for a in &lk.rare().tcp_flows {
            self.tcp_flows.remove(a);
        }
        Some(lk)
    }

    /// Finishes the oldest live lookup as `unknown`; it goes out with the current event.
    fn evict_oldest(&mut self, now_ns: u64) -> bool {
        while self.oldest < self.next_id && !self.lookups.contains_key(&self.oldest) {
            self.oldest += 1;
        }
        let Some(lookup) = self.finish_one(self.oldest, now_ns, End::Evicted) else {
            return false;
        };
        self.stats.evicted += 1;
        self.evicted.push(lookup);
        true
    }

    fn finish_one(&mut self, lid: u64, end: u64, how: End) -> Option<Lookup> {
        let lk = self.remove(lid)?;
        for leg in &lk.legs {
            self.hop_room.saw(leg.hops.len());
        }
        // An evicted lookup says nothing about its upstreams: it was cut short.
        if how != End::Evicted {
            self.record_upstreams(&lk, end);
        }
        let mut lookup = self.judge(*lk, end, how);
        set_id(&mut lookup, lid);
        self.stats.finished += 1;
        self.verdicts[lookup.verdict as usize] += 1;
        Some(lookup)
    }

    /// Drops loss spans and disagreement history nobody can need any more.
    fn prune(&mut self, now_ns: u64) {
        while self.oldest < self.next_id && !self.lookups.contains_key(&self.oldest) {
            self.oldest += 1;
        }
        let oldest_start = self
            .lookups
            .get(&self.oldest)
            .map_or(u64::MAX, |lk| lk.start);
        let keep_from = oldest_start.min(now_ns.saturating_sub(LOSS_SLACK_NS));
        while self.loss.front().is_some_and(|s| s.1 < keep_from) {
            self.loss.pop_front();
        }
        self.tcp_gaps.prune(keep_from);
        self.iface_gaps.prune(keep_from);
        self.release_gone_ifaces(keep_from);
        self.upstreams.prune(now_ns);
    }

    /// Events reported lost while a lookup spanning [start, end] was open.
    fn lost_during(&self, start: u64, end: u64) -> u64 {
        self.loss
            .iter()
            .filter(|(a, b, _)| a.saturating_sub(LOSS_SLACK_NS) <= end && *b >= start)
            .map(|s| s.2)
            .sum()
    }

    fn record_upstreams(&mut self, lk: &LookupState, end: u64) {
        for leg in &lk.legs {
            let reply = leg.hop(leg.resp);
            // What each forwarder got, wherever its server is (for disagreement).
            if let (Some(p), Some(r)) = (leg.parent, reply) {
                let forwarder = judge::served_at(&lk.legs[usize::from(p)]);
                let key = (forwarder, leg.first().netns, lk.qhash);
                self.upstreams.answer(key, leg.server(), r.rcode, end);
            }
            if self.leaves_node(leg) {
                let sent = leg.hop(leg.uplink).map_or(leg.first_ts(), |h| h.ts);
                let reply = reply.map(|h| (h.rcode, h.ts.saturating_sub(sent)));
                self.upstreams.record(leg.server(), reply);
            }
        }
    }

    /// A query that leaves the node: seen leaving by an uplink or, with no uplinks
    /// configured, a forwarded query that nobody forwarded further and that was last
    /// seen departing.
    fn leaves_node(&self, leg: &Leg) -> bool {
        if leg.uplink.is_some() {
            return true;
        }
        self.cfg.uplinks.is_empty()
            && leg.depth >= 1
            && leg.children == 0
            && leg
                .query_hops()
                .last()
                .is_some_and(|h| state::is_departure(h.point))
    }
}

/// How long a lookup stays open after its client's last query: the timeout plus 10 % of
/// grace, for a reply that races the client's own timer.
pub fn lookup_lifetime_ns(timeout_ns: u64) -> u64 {
    timeout_ns + timeout_ns / 10
}

fn set_id(l: &mut Lookup, id: u64) {
    l.id = id;
    for c in &mut l.children {
        set_id(c, id);
    }
}

/// Whether a reply reaching the client (or its veth) from `reply.src` shows that NAT was
/// not reversed. Expected is the address the client's socket sent to. Unexpected for
/// certain is an address the query was DNATed to on the way: the reverse NAT did not
/// happen. Any other source is only decided when the first sighting shows the address as
/// the client addressed it: tc ingress from the client (before PREROUTING), or a pod's
/// socket sending to a non-loopback address. The host's own sockets are seen after
/// kube-proxy's OUTPUT DNAT, and a loopback destination is a local redirect (a mesh's DNS
/// proxy): there a reply from the original address is the correct reverse NAT, which the
/// tracer cannot tell from a stray source, so it is not flagged.
fn unexpected_source(leg: &Leg, reply: &HopRec, host_netns: u64) -> bool {
    if reply.src == leg.server() {
        return false;
    }
    let natted_to = leg
        .query_hops()
        .filter(|h| h.point != Point::Drop)
        .any(|h| h.dst == reply.src);
    let as_addressed = match leg.first().point {
        Point::TcIngress => true,
        Point::SocketOut => leg.first().netns != host_netns && !leg.server().ip().is_loopback(),
        _ => false,
    };
    natted_to || as_addressed
}

/// How strongly a new query looks like `leg`'s forwarder asking on its behalf.
fn child_score(leg: &Leg, hop: &HopRec) -> u8 {
    // The same socket asking again is a retry, not a forward.
    if hop.src == leg.client() {
        return 0;
    }
    for h in leg.query_hops().filter(|h| h.point != Point::Drop) {
        // Sent from the netns the parent was delivered in, or from the address it was sent to.
        if hop.point == Point::SocketOut && h.point == Point::SocketIn && h.netns == hop.netns {
            return 3;
        }
        if h.dst.ip() == hop.src.ip() {
            return 3;
        }
    }
    // Without the socket hop: the parent arrived at a netns (e.g. the host's, delivered to
    // node-local-dns) and this query departs from that same netns.
    let last = leg.query_hops().filter(|h| h.point != Point::Drop).last();
    match last {
        Some(l)
            if state::is_arrival(l.point)
                && state::is_departure(hop.point)
                && l.netns == hop.netns =>
        {
            2
        }
        _ => 0,
    }
}

/// The lookup's old entry in `deadlines` goes stale: `expire_into` skips it.
fn set_deadline(deadlines: &mut state::Deadlines, lk: &mut LookupState, lid: u64, deadline: u64) {
    if lk.deadline != deadline {
        lk.deadline = deadline;
        deadlines.push(deadline, lid);
    }
}
