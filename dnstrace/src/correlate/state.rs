//! The correlator's private records: small, copyable hop records and the legs they form.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::decode::tunnel::{Tunnel, TunnelKind};
use crate::decode::{Point, Proto, TcpFlags, dns::Rcode};

/// Hops kept per leg; later ones are counted, except the few that establish a fact.
pub(super) const MAX_HOPS: usize = 64;
/// Room above [`MAX_HOPS`] for fact-bearing hops (first reply, drop, uplink, final reply).
const FACT_SLACK: usize = 8;
/// Legs (client attempts + forwarded queries at any depth) kept per lookup.
pub(super) const MAX_LEGS: usize = 32;
/// The leg index of a message left out at the leg cap (never a real leg).
pub(super) const OMITTED: u8 = u8::MAX;
/// How many left-out messages a lookup keeps absorbing.
pub(super) const MAX_OMITTED_IDS: usize = 256;
/// SYN / SYN-ACK / RST segments of a TCP retry kept per lookup.
pub(super) const MAX_TCP_HOPS: usize = 16;

// HopRec::bits
pub(super) const B_DNS: u8 = 1;
pub(super) const B_QR: u8 = 2;
pub(super) const B_TC: u8 = 4;
pub(super) const B_EDNS: u8 = 8;
pub(super) const B_DO: u8 = 16;
pub(super) const B_TCP: u8 = 32;

/// One sighting of a packet, reduced to what correlation and output need (no heap).
#[derive(Clone, Copy, Debug)]
pub(super) struct HopRec {
    pub ts: u64,
    pub netns: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub iface: u16,
    /// Interned drop reason; 0 = not a drop.
    pub drop_reason: u16,
    pub rcode: Rcode,
    pub edns_udp: u16,
    pub id: u16,
    pub point: Point,
    pub bits: u8,
    pub tcp: TcpFlags,
    /// Interned overlay tunnel ([`Tunnels`]); 0 = none.
    pub tunnel: u16,
    /// The tunnel's outer source port, which [`Tunnels`] leaves out.
    pub tunnel_sport: u16,
}

impl HopRec {
    pub fn has(&self, bit: u8) -> bool {
        self.bits & bit != 0
    }
    pub fn is_response(&self) -> bool {
        self.has(B_QR)
    }
    pub fn is_query(&self) -> bool {
        self.has(B_DNS) && !self.has(B_QR)
    }
    pub fn proto(&self) -> Proto {
        if self.has(B_TCP) {
            Proto::Tcp
        } else {
            Proto::Udp
        }
    }
    pub fn edns(&self) -> Option<(u16, bool)> {
        self.has(B_EDNS).then_some((self.edns_udp, self.has(B_DO)))
    }
    pub fn spot(&self) -> Spot {
        Spot {
            point: self.point,
            iface: self.iface,
            netns: self.netns,
        }
    }
}

/// A capture point: the same (point, interface, netns) seen twice by one message is a retransmission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Spot {
    pub point: Point,
    pub iface: u16,
    pub netns: u64,
}

impl Spot {
    /// Where the reply to a message first seen here comes back past.
    pub fn mirror(self) -> Self {
        Self {
            point: mirror(self.point),
            ..self
        }
    }
}

pub(super) fn mirror(p: Point) -> Point {
    match p {
        Point::TcIngress => Point::TcEgress,
        Point::TcEgress => Point::TcIngress,
        Point::SocketIn => Point::SocketOut,
        Point::SocketOut => Point::SocketIn,
        Point::Drop => Point::Drop,
    }
}

pub(super) fn is_tc(p: Point) -> bool {
    matches!(p, Point::TcIngress | Point::TcEgress)
}

/// The packet reaches something here (tc ingress into the host, or delivery to a socket).
pub(super) fn is_arrival(p: Point) -> bool {
    matches!(p, Point::TcIngress | Point::SocketIn)
}

/// The packet leaves something here (tc egress, or a socket sending).
pub(super) fn is_departure(p: Point) -> bool {
    matches!(p, Point::TcEgress | Point::SocketOut)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LegKind {
    /// The client's first query.
    Client,
    /// The client asking again with a new ID or port.
    Retry,
    /// The client's TCP retry after a TC=1 answer.
    Tcp,
    /// A forwarder's query on behalf of its parent leg.
    Child,
}

/// How many sightings to make room for when a leg outgrows the two it starts with.
///
/// A leg starts with room for its query and reply. On a node whose DNS path passes
/// several points (a pod's socket and veth, node-local-dns's sockets, a DNAT), a leg
/// ends with about as many sightings as the path has points; growing to that by doubling
/// copies the leg three times over. The room is the longest recent leg, forgotten by an
/// eighth of a sighting per leg: it follows the node's path, not a fixed guess, and a
/// leg never seen past two sightings (a flood of unanswered queries) keeps two.
#[derive(Clone, Copy, Debug)]
pub(super) struct HopRoom(u16);

impl HopRoom {
    /// Doubling's first step; legs grow in steps of at least this.
    const MIN: u16 = 4;
    /// The room asked for at most; a longer leg grows by doubling from there.
    const MAX: u16 = 16;

    pub fn get(self) -> usize {
        usize::from(self.0.div_ceil(8))
    }

    /// A finished leg held `n` sightings.
    pub fn saw(&mut self, n: usize) {
        let n = n.clamp(usize::from(Self::MIN), usize::from(Self::MAX)) as u16;
        self.0 = (n * 8).max(self.0 - 1);
    }
}

impl Default for HopRoom {
    fn default() -> Self {
        Self(Self::MIN * 8)
    }
}

/// One DNS query message and its reply, seen at every point it passed. Its first sighting
/// is `hops[0]` (always there): ID, transport, client and server, where and when it started.
#[derive(Clone, Debug)]
pub(super) struct Leg {
    pub parent: Option<u8>,
    pub depth: u8,
    pub kind: LegKind,
    /// First tc sighting, when it still carried the server address (a client-facing veth).
    pub client_tc: Option<Spot>,
    pub tc_seen: bool,
    pub last_query_ts: u64,
    pub last_child_ts: u64,
    pub children: u16,
    // Indexes into `hops` of the facts the verdict needs.
    pub resp: Option<u8>,
    pub final_reply: Option<u8>,
    pub unexpected: Option<u8>,
    pub drop: Option<u8>,
    pub uplink: Option<u8>,
    pub hops: Vec<HopRec>,
    pub hops_omitted: u32,
}

impl Leg {
    pub fn new(hop: HopRec, kind: LegKind, parent: Option<u8>, depth: u8, on_uplink: bool) -> Self {
        let first = hop.spot();
        let tc = is_tc(hop.point);
        // Room for the query and its reply: a healthy leg seen at one point never grows
        // (the collector bench runs 10 % faster than growing from one), an unanswered one
        // leaves one empty.
        let mut hops = Vec::with_capacity(2);
        hops.push(hop);
        Self {
            parent,
            depth,
            kind,
            client_tc: tc.then_some(first),
            tc_seen: tc,
            last_query_ts: hop.ts,
            last_child_ts: 0,
            children: 0,
            resp: None,
            final_reply: None,
            unexpected: None,
            drop: (hop.point == Point::Drop).then_some(0),
            uplink: (on_uplink && hop.point == Point::TcEgress).then_some(0),
            hops,
            hops_omitted: 0,
        }
    }

    /// Stores a hop unless the leg is full; a hop that establishes a fact gets a little extra room.
    /// A leg out of room below `room` grows to it at once (see [`HopRoom`]); past it, it
    /// grows as a `Vec` does.
    pub fn push(&mut self, hop: HopRec, fact: bool, room: usize) -> Option<u8> {
        let limit = if fact {
            MAX_HOPS + FACT_SLACK
        } else {
            MAX_HOPS
        };
        if self.hops.len() >= limit {
            self.hops_omitted += 1;
            return None;
        }
        let len = self.hops.len();
        if len == self.hops.capacity() && room > len {
            self.hops.reserve_exact(room - len);
        }
        self.hops.push(hop);
        Some((self.hops.len() - 1) as u8)
    }

    /// The first sighting.
    fn first_hop(&self) -> &HopRec {
        &self.hops[0]
    }

    pub fn id(&self) -> u16 {
        self.first_hop().id
    }

    pub fn proto(&self) -> Proto {
        self.first_hop().proto()
    }

    /// Source of the first sighting: "as the client addressed it".
    pub fn client(&self) -> SocketAddr {
        self.first_hop().src
    }

    /// Destination of the first sighting.
    pub fn server(&self) -> SocketAddr {
        self.first_hop().dst
    }

    pub fn first(&self) -> Spot {
        self.first_hop().spot()
    }

    pub fn first_ts(&self) -> u64 {
        self.first_hop().ts
    }

    pub fn query_hops(&self) -> impl Iterator<Item = &HopRec> {
        self.hops.iter().filter(|h| h.is_query())
    }

    pub fn hop(&self, idx: Option<u8>) -> Option<&HopRec> {
        idx.and_then(|i| self.hops.get(usize::from(i)))
    }

    /// The query was sent with an OPT record.
    pub fn edns(&self) -> Option<(u16, bool)> {
        self.hops.first().and_then(HopRec::edns)
    }
}

/// One client lookup: its attempts (depth 0) and the forwarded queries under them.
#[derive(Debug)]
pub(super) struct LookupState {
    pub qhash: u64,
    /// The first query's name, shared with its decoded message.
    pub qname: std::sync::Arc<str>,
    /// A name from the decoder's table: no allocation per lookup.
    pub qtype: crate::decode::dns::Text,
    pub legs: Vec<Leg>,
    pub retries: u32,
    pub start: u64,
    pub last_client_ts: u64,
    pub deadline: u64,
    /// What only a lookup with a TCP retry or past the leg cap needs (boxed: most never do).
    pub rare: Option<Box<Rare>>,
    /// The task that sent the first query (pid, comm), when the socket hop saw it.
    pub task: Option<Box<(u32, String)>>,
}

/// The rarely needed part of a [`LookupState`].
#[derive(Debug, Default)]
pub(super) struct Rare {
    pub tcp_hops: Vec<HopRec>,
    /// Client-side addresses of TCP retries, registered in the flow index.
    pub tcp_flows: Vec<SocketAddr>,
    pub legs_omitted: u32,
    /// IDs of forwarded queries left out at the leg cap, indexed under
    /// [`OMITTED`] so that their later sightings and replies are absorbed.
    pub omitted_ids: Vec<u16>,
    /// Last sighting of a left-out message.
    pub omitted_ts: u64,
    /// When a TC=1 answer reached the client: a TCP retry is now expected.
    pub await_tcp: Option<u64>,
}

static NO_RARE: Rare = Rare {
    tcp_hops: Vec::new(),
    tcp_flows: Vec::new(),
    legs_omitted: 0,
    omitted_ids: Vec::new(),
    omitted_ts: 0,
    await_tcp: None,
};

impl LookupState {
    pub fn rare(&self) -> &Rare {
        self.rare.as_deref().unwrap_or(&NO_RARE)
    }

    pub fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }
}

/// Refers to one leg of one live lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LegRef {
    pub lookup: u64,
    pub leg: u8,
}

/// Index values: almost always one entry, so no allocation for the common case.
#[derive(Debug)]
pub(super) enum Refs {
    One(LegRef),
    Many(Vec<LegRef>),
}

impl Refs {
    pub fn as_slice(&self) -> &[LegRef] {
        match self {
            Self::One(r) => std::slice::from_ref(r),
            Self::Many(v) => v,
        }
    }
}

pub(super) fn refs_insert<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Refs, Fx>,
    key: K,
    r: LegRef,
) {
    use std::collections::hash_map::Entry;
    match map.entry(key) {
        Entry::Vacant(e) => {
            e.insert(Refs::One(r));
        }
        Entry::Occupied(mut e) => {
            let refs = e.get_mut();
            match refs {
                Refs::One(old) => *refs = Refs::Many(vec![*old, r]),
                Refs::Many(v) => v.push(r),
            }
        }
    }
}

pub(super) fn refs_remove<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Refs, Fx>,
    key: K,
    r: LegRef,
) {
    use std::collections::hash_map::Entry;
    let Entry::Occupied(mut e) = map.entry(key) else {
        return;
    };
    let now_empty = match e.get_mut() {
        Refs::One(old) => *old == r,
        Refs::Many(v) => {
            v.retain(|x| *x != r);
            v.is_empty()
        }
    };
    if now_empty {
        e.remove();
    }
}

/// Index values of the question index: open lookups, oldest first, almost always one.
#[derive(Debug)]
pub(super) enum Ids {
    One(u64),
    /// Boxed: the index's entries stay small (16 bytes, not 32), and few questions have
    /// two lookups open at once.
    #[allow(clippy::box_collection)]
    Many(Box<VecDeque<u64>>),
}

impl Ids {
    pub fn push(&mut self, id: u64) {
        match self {
            Self::One(old) => *self = Self::Many(Box::new(VecDeque::from([*old, id]))),
            Self::Many(v) => v.push_back(id),
        }
    }

    /// Takes `id` out; true when none is left.
    pub fn remove(&mut self, id: u64) -> bool {
        match self {
            Self::One(old) => *old == id,
            Self::Many(v) => {
                // Lookups mostly finish in start order, so the search from the front is short.
                if let Some(pos) = v.iter().position(|&x| x == id) {
                    v.remove(pos);
                }
                v.is_empty()
            }
        }
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &u64> {
        match self {
            Self::One(id) => std::slice::from_ref(id).iter().chain(&[]),
            Self::Many(v) => {
                let (a, b) = v.as_slices();
                a.iter().chain(b)
            }
        }
    }
}

/// Interned names (interfaces, drop reasons): hop records carry a u16 instead of a String,
/// and an output record shares the name (no copy per hop).
#[derive(Debug)]
pub(super) struct Interner {
    names: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u16, Fx>,
    /// Ids given back ([`Self::release`]), handed out again first.
    free: Vec<u16>,
}

impl Interner {
    /// Slot 0 holds `zero` ("?" for interfaces, "" for "no drop reason") and absorbs overflow.
    pub fn new(zero: &str) -> Self {
        Self {
            names: vec![Arc::from(zero)],
            index: HashMap::default(),
            free: Vec::new(),
        }
    }

    /// The id of `name`, if it has one.
    pub fn find(&self, name: &str) -> Option<u16> {
        self.index.get(name).copied()
    }

    pub fn intern(&mut self, name: &str) -> u16 {
        if let Some(&id) = self.index.get(name) {
            return id;
        }
        let shared: Arc<str> = Arc::from(name);
        if let Some(id) = self.free.pop() {
            self.names[usize::from(id)] = shared.clone();
            self.index.insert(shared, id);
            return id;
        }
        if self.names.len() >= usize::from(u16::MAX) {
            return 0;
        }
        let id = self.names.len() as u16;
        self.names.push(shared.clone());
        self.index.insert(shared, id);
        id
    }

    /// Whether `id` is held as this very string (the same allocation: the interner keeps a
    /// clone, so no other string can have its address while it does).
    pub fn holds(&self, id: u16, name: &Arc<str>) -> bool {
        self.names
            .get(usize::from(id))
            .is_some_and(|n| Arc::ptr_eq(n, name))
    }

    /// Keeps `name` itself for `id` when it is the same text, so that [`Self::holds`]
    /// knows it next time.
    pub fn adopt(&mut self, id: u16, name: &Arc<str>) {
        if let Some(n) = self.names.get_mut(usize::from(id)).filter(|_| id != 0)
            && **n == **name
        {
            *n = Arc::clone(name);
        }
    }

    pub fn get(&self, id: u16) -> &str {
        self.names.get(usize::from(id)).map_or("?", |n| n)
    }

    /// The name, shared.
    pub fn shared(&self, id: u16) -> Arc<str> {
        self.names
            .get(usize::from(id))
            .cloned()
            .unwrap_or_else(|| Arc::from("?"))
    }

    /// Gives `id` back for another name: nothing refers to it any more (an interface
    /// that went away, whose lookups have all ended). Interfaces come and go for as long
    /// as dnstrace runs; their names must not pile up.
    pub fn release(&mut self, id: u16) {
        let Some(name) = self.names.get_mut(usize::from(id)).filter(|_| id != 0) else {
            return;
        };
        if self.index.remove(&**name).is_some() {
            *name = Arc::from("");
            self.free.push(id);
        }
    }

    /// Names held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.index.len()
    }
}

/// The overlay tunnels hops were seen in, without their outer source port: that one is
/// a hash of the inner flow (each lookup has its own), the rest is one per node pair and
/// VNI, so a node meets few. Slot 0 is "no tunnel" and absorbs overflow.
#[derive(Debug, Default)]
pub(super) struct Tunnels {
    list: Vec<TunnelKey>,
    index: HashMap<TunnelKey, u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TunnelKey {
    kind: TunnelKind,
    vni: u32,
    src: IpAddr,
    dst: SocketAddr,
}

impl Tunnels {
    /// The id and outer source port a hop record keeps.
    pub fn intern(&mut self, t: Option<&Tunnel>) -> (u16, u16) {
        let Some(t) = t else { return (0, 0) };
        let key = TunnelKey {
            kind: t.kind,
            vni: t.vni,
            src: t.src.ip(),
            dst: t.dst,
        };
        if let Some(&id) = self.index.get(&key) {
            return (id, t.src.port());
        }
        if self.list.len() >= usize::from(u16::MAX) - 1 {
            return (0, 0);
        }
        self.list.push(key);
        let id = self.list.len() as u16;
        self.index.insert(key, id);
        (id, t.src.port())
    }

    pub fn get(&self, id: u16, sport: u16) -> Option<Tunnel> {
        let k = self.list.get(usize::from(id).checked_sub(1)?)?;
        Some(Tunnel {
            kind: k.kind,
            vni: k.vni,
            src: SocketAddr::new(k.src, sport),
            dst: k.dst,
        })
    }
}

/// Open lookups by deadline, soonest first, as (deadline, lookup id).
///
/// Nothing is removed in place: the entry of a lookup that finished or took another
/// deadline goes stale, and the reader skips it by checking the lookup's own deadline
/// (ids are never reused). Stale entries are swept out once the heap holds four times the
/// open lookups (and 256 more). (A `BTreeSet` kept in step cost a removal and an insertion
/// per change: 7 % of the collector's time.)
#[derive(Default)]
pub(super) struct Deadlines(BinaryHeap<Reverse<(u64, u64)>>);

impl Deadlines {
    pub(super) fn push(&mut self, deadline: u64, lid: u64) {
        self.0.push(Reverse((deadline, lid)));
    }

    /// The soonest entry, live or stale.
    pub(super) fn first(&self) -> Option<(u64, u64)> {
        self.0.peek().map(|r| r.0)
    }

    pub(super) fn pop(&mut self) {
        self.0.pop();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Once entries outnumber `4 × live + 256`, keeps only those `is_live` accepts (all
    /// go when no lookup is open)
    /// (amortised: the sweep costs what the pushes since the last one did).
    pub(super) fn sweep(&mut self, live: usize, is_live: impl Fn(u64, u64) -> bool) {
        if live == 0 {
            self.0.clear();
            return;
        }
        if self.0.len() <= 4 * live + 256 {
            return;
        }
        self.0.retain(|&Reverse((d, lid))| is_live(d, lid));
        if self.0.capacity() > 4 * self.0.len() + 64 {
            self.0.shrink_to(2 * self.0.len() + 64);
        }
    }
}

/// FxHash: the maps are keyed by integers and addresses the tracer computed itself.
#[derive(Clone, Copy, Default)]
pub(crate) struct FxHasher(u64);

const FX_K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_K);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap_or_default()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type Fx = BuildHasherDefault<FxHasher>;

/// Case-insensitive hash of a question (name, type, class), without allocating.
///
/// Eight bytes at a time, each word lowercased in place (ASCII `A`–`Z` only, as
/// `eq_ignore_ascii_case` compares): a byte-at-a-time hash waits on one multiply per byte,
/// which was 4 % of the collector's time. Lookups are still matched by name, type and
/// class; the hash only finds the candidates.
pub(super) fn question_hash(name: &str, qtype: &str, qclass: &str) -> u64 {
    let mut h = Words(0x243f_6a88_85a3_08d3);
    h.eat(name.as_bytes(), true);
    h.eat(qtype.as_bytes(), false);
    h.eat(qclass.as_bytes(), false);
    h.finish()
}

/// A word-at-a-time mix (FxHash's step, with a final avalanche).
struct Words(u64);

impl Words {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(Self::K);
    }

    /// `bytes`, then their length (so that "ab"+"c" and "a"+"bc" differ).
    fn eat(&mut self, bytes: &[u8], fold_case: bool) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or_default());
            self.word(if fold_case { ascii_lower(w) } else { w });
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            // The last eight bytes (overlapping the last whole word) when there are eight,
            // so that no copy is made; else the few there are.
            let w = match bytes.len().checked_sub(8) {
                Some(at) => u64::from_le_bytes(bytes[at..].try_into().unwrap_or_default()),
                None => rest
                    .iter()
                    .rev()
                    .fold(0u64, |w, &b| (w << 8) | u64::from(b)),
            };
            self.word(if fold_case { ascii_lower(w) } else { w });
        }
        self.word(bytes.len() as u64);
    }

    fn finish(&self) -> u64 {
        // murmur3's fmix64: every input bit reaches the high bits the table looks at.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Each byte of `w` that is an ASCII capital letter, made small; the rest unchanged.
fn ascii_lower(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    // Per byte, on its low 7 bits (no carry crosses a byte): the high bit says `>= 'A'`,
    // and `> 'Z'`; a byte with its own high bit set is not ASCII and stays.
    let low7 = w & !HIGH;
    let ge_a = low7 + ONES * u64::from(0x80 - b'A');
    let gt_z = low7 + ONES * u64::from(0x7f - b'Z');
    let upper = (ge_a ^ gt_z) & !w & HIGH;
    w | (upper >> 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The room follows the longest recent leg, forgets it slowly, never asks for less than
    /// doubling's first step nor more than its cap; a leg gets it once past two sightings.
    #[test]
    fn hop_room_follows_the_node_s_legs() {
        let mut room = HopRoom::default();
        assert_eq!(room.get(), 4);
        room.saw(10);
        assert_eq!(room.get(), 10);
        // Shorter legs between the long ones do not undo it.
        for _ in 0..7 {
            room.saw(2);
        }
        assert_eq!(room.get(), 10);
        room.saw(2);
        assert_eq!(room.get(), 9);
        for _ in 0..100 {
            room.saw(1);
        }
        assert_eq!(room.get(), 4, "forgotten down to the floor, not below");
        room.saw(1000);
        assert_eq!(room.get(), 16, "capped");

        let hop = HopRec {
            ts: 1,
            netns: 1,
            src: "10.0.0.2:4000".parse().unwrap(),
            dst: "10.0.0.10:53".parse().unwrap(),
            iface: 1,
            drop_reason: 0,
            rcode: Rcode::NOERROR,
            edns_udp: 0,
            id: 7,
            point: Point::TcIngress,
            bits: B_DNS,
            tcp: TcpFlags::default(),
            tunnel: 0,
            tunnel_sport: 0,
        };
        let mut leg = Leg::new(hop, LegKind::Client, None, 0, false);
        leg.push(hop, false, 9);
        assert_eq!(
            leg.hops.capacity(),
            2,
            "a query and its reply fit as they are"
        );
        leg.push(hop, false, 9);
        assert_eq!(leg.hops.capacity(), 9, "grown once, to the room");
        for _ in 0..7 {
            leg.push(hop, false, 9);
        }
        assert_eq!(leg.hops.len(), 10);
        assert!(
            leg.hops.capacity() >= 10,
            "past the room it grows as a Vec does"
        );
        // Not one slot at a time: a loop storm's leg of 64 sightings is not copied 55 times.
        assert!(leg.hops.capacity() >= 18, "{}", leg.hops.capacity());
    }

    /// The word-at-a-time hash agrees with `eq_ignore_ascii_case`: equal for names that
    /// differ only in the case of ASCII letters, different otherwise (including the bytes
    /// that a blunt `| 0x20` would fold together: `@` and `` ` ``, `[` and `{`, `_` and DEL).
    #[test]
    fn question_hash_folds_exactly_ascii_letters() {
        let all: Vec<u8> = (0u8..=255).collect();
        for b in all.iter().copied() {
            let w = u64::from_le_bytes([b, b'A', b, b'z', b'@', b'[', 0xc1, b]);
            let want: Vec<u8> = w.to_le_bytes().iter().map(u8::to_ascii_lowercase).collect();
            assert_eq!(ascii_lower(w).to_le_bytes().to_vec(), want, "byte {b:#x}");
        }
        let names = [
            "x@y.test.",
            "x`y.test.",
            "a[b.test.",
            "a{b.test.",
            "a_b.test.",
            "a\x7fb.test.",
            "Kube-DNS.kube-system.svc.cluster.local.",
            "a.",
            "ab.",
            "abcdefgh.",
            "abcdefgh.i.",
        ];
        for a in names {
            for b in names {
                let same = question_hash(a, "A", "IN") == question_hash(b, "A", "IN");
                assert_eq!(same, a == b, "{a} vs {b}");
            }
            let upper = a.to_ascii_uppercase();
            assert_eq!(
                question_hash(a, "A", "IN"),
                question_hash(&upper, "A", "IN"),
                "{a}"
            );
        }
        // Where one field ends is part of the question.
        assert_ne!(
            question_hash("a.", "AB", "C"),
            question_hash("a.", "A", "BC")
        );
    }

    #[test]
    fn question_hash_ignores_name_case_only() {
        let a = question_hash("WwW.Example.TEST.", "A", "IN");
        assert_eq!(a, question_hash("www.example.test.", "A", "IN"));
        assert_ne!(a, question_hash("www.example.test.", "AAAA", "IN"));
        assert_ne!(a, question_hash("www.example.test.", "A", "CH"));
    }

    /// The correlator counts verdicts in an array indexed by `verdict as usize`.
    #[test]
    fn verdict_index_is_its_place_in_all() {
        for (i, v) in crate::correlate::Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i, "{v}");
        }
    }

    /// Stale entries (a moved deadline, a finished lookup) are swept once they outnumber the live ones three to one,
    /// and the soonest entry comes first.
    #[test]
    fn deadlines_stay_within_four_times_the_live_lookups() {
        let mut d = Deadlines::default();
        // One live lookup (id 1) whose deadline moves 1000 times: one live entry.
        let mut current = 0;
        for t in 1..=1000u64 {
            d.push(t * 10, 1);
            current = t * 10;
            d.sweep(1, |dl, lid| lid == 1 && dl == current);
            assert!(d.len() <= 4 + 256, "{} entries for one lookup", d.len());
        }
        // What the reader sees: stale entries first, skipped, then the live one.
        while let Some((dl, lid)) = d.first() {
            if lid == 1 && dl == current {
                break;
            }
            d.pop();
        }
        assert_eq!(d.first(), Some((10_000, 1)));
        d.push(5, 2);
        assert_eq!(d.first(), Some((5, 2)), "soonest first");
        d.sweep(0, |_, _| true);
        assert!(d.is_empty(), "nothing open, nothing kept");
    }

    /// An interface is known by address only as the very string the interner keeps: the
    /// same text elsewhere is not taken for it until adopted, and a released id matches
    /// nothing it held.
    #[test]
    fn interner_holds_only_the_string_it_keeps() {
        let mut i = Interner::new("?");
        let first: Arc<str> = Arc::from("veth1");
        let id = i.intern(&first);
        assert!(!i.holds(id, &first), "interned from a copy");
        i.adopt(id, &first);
        assert!(i.holds(id, &first));
        let again: Arc<str> = Arc::from("veth1");
        assert!(!i.holds(id, &again), "the same text, another string");
        let other: Arc<str> = Arc::from("veth2");
        i.adopt(id, &other);
        assert!(
            i.holds(id, &first) && i.get(id) == "veth1",
            "another name is not adopted"
        );
        i.release(id);
        assert!(!i.holds(id, &first), "released");
        assert!(!i.holds(0, &first) && !i.holds(99, &first));
    }

    #[test]
    fn refs_insert_and_remove() {
        let mut m: HashMap<u64, Refs, Fx> = HashMap::default();
        let r = |leg| LegRef { lookup: 1, leg };
        refs_insert(&mut m, 7, r(0));
        refs_insert(&mut m, 7, r(1));
        assert_eq!(m[&7].as_slice(), &[r(0), r(1)]);
        refs_remove(&mut m, 7, r(0));
        refs_remove(&mut m, 7, r(1));
        assert!(m.is_empty());
    }
}
