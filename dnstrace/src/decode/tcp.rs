//! DNS over TCP stream reassembly: each direction of a connection is a byte stream of
//! 2-byte length-prefixed messages, cut into segments anywhere. A segment may hold several
//! messages, or part of one. Retransmitted bytes are skipped. After a gap (a segment
//! missing from the capture), and on a stream first seen without its SYN, the first bytes
//! are not trusted as a length: framing resumes at the first length prefix whose message
//! parses, and what was skipped to find it is counted.
//!
//! Memory is bounded whatever the peers send: a stream holds at most the one message it
//! is waiting for (2 + 65,535 bytes), all streams together at most [`Limits::max_bytes`],
//! and at most [`Limits::max_streams`] streams are followed; a stream silent for
//! [`Limits::idle_ns`] is forgotten, and one closed by FIN or RST is freed at once. Each of
//! these losses is counted in [`TcpStats`].
use std::net::SocketAddr;

use lru::LruCache;

use super::{Issue, IssueKind, LinkType, Packet, Point, dns, set_message, tcp_segment};

/// One direction of a connection at one capture point: the same segment seen at several
/// points (pod veth, socket hop, uplink) is reassembled at each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub point: Point,
    pub ifindex: u32,
    pub netns: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl StreamKey {
    /// The other direction of the same connection, at the same point.
    pub fn reverse(self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            ..self
        }
    }
}

/// How much reassembly may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Streams followed at once; past this the least recently used is forgotten.
    pub max_streams: usize,
    /// Bytes held for incomplete messages, over all streams; past this the least recently
    /// used streams give up the message they were waiting for.
    pub max_bytes: usize,
    /// A stream without a segment for this long is forgotten.
    pub idle_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_streams: 16_384,
            max_bytes: 16 << 20,
            idle_ns: 30_000_000_000,
        }
    }
}

/// The largest buffer one stream needs: a length prefix and the longest message it can announce.
pub const MAX_MESSAGE: usize = 2 + u16::MAX as usize;
/// Idle streams are looked for at most this often (in capture time).
const SWEEP_NS: u64 = 1_000_000_000;

#[derive(Default)]
struct Stream {
    /// Sequence number of the next byte expected; None until one segment was seen.
    next: Option<u32>,
    /// The start of the one message not yet whole (its prefix included); empty, with no
    /// capacity, when the stream is at a message boundary.
    buf: Vec<u8>,
    /// The framing is not known (after a gap, on a stream picked up without its SYN, or
    /// after the message held was given up): `buf` holds bytes that may start a message.
    resync: bool,
    /// Capture time of its last segment.
    seen_ns: u64,
}

impl Stream {
    /// Bytes the message being held will have, prefix included (None before its prefix).
    fn announced(&self) -> Option<usize> {
        match self.buf[..] {
            [hi, lo, ..] => Some(2 + usize::from(u16::from_be_bytes([hi, lo]))),
            _ => None,
        }
    }

    /// Appends to the held message, growing the buffer at most to the message's size.
    fn hold(&mut self, bytes: &[u8]) {
        let need = self.buf.len() + bytes.len();
        if need > self.buf.capacity() {
            let total = match (self.announced(), &self.buf[..], bytes) {
                (Some(t), _, _) => t,
                (None, [hi], [lo, ..]) | (None, [], [hi, lo, ..]) => {
                    2 + usize::from(u16::from_be_bytes([*hi, *lo]))
                }
                _ => 2,
            };
            // Doubling keeps the copies few; the announced size caps it, so a peer that
            // announces 65,535 bytes and sends 3 costs 3.
            let want = need.max(self.buf.capacity() * 2).min(total).max(need);
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Forgets the held bytes and their memory; returns how many there were.
    fn release(&mut self) -> usize {
        let n = self.buf.len();
        self.buf = Vec::new();
        n
    }
}

/// Counts of what reassembly did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpStats {
    /// Messages handed on whole.
    pub messages: u64,
    /// Segments that held more than one message.
    pub multi_message_segments: u64,
    /// Messages completed from bytes of more than one segment.
    pub joined_messages: u64,
    /// Segments (or parts) seen again and skipped.
    pub retransmitted: u64,
    /// Gaps in a stream (segments missing from the capture).
    pub gaps: u64,
    /// Bytes the gaps missed (how far the sequence numbers jumped).
    pub gap_bytes: u64,
    /// Streams first seen without their SYN (picked up mid-way, or seen again after being
    /// forgotten): their first bytes were checked before they were trusted as a length.
    pub picked_up: u64,
    /// Times the framing was found again (after a gap, a give-up, or on a stream picked up
    /// mid-way): a length prefix followed by a message that parses.
    pub resyncs: u64,
    /// Bytes skipped while looking for a message boundary, with the part of a message that
    /// a gap cut.
    pub resync_dropped_bytes: u64,
    /// Messages of length 0 (nothing to decode): skipped, and counted here only.
    pub empty_messages: u64,
    /// Connections closed (FIN or RST) while part of a message was held.
    pub incomplete_at_close: u64,
    /// Streams forgotten after [`Limits::idle_ns`] without a segment.
    pub evicted_idle: u64,
    /// Streams forgotten because [`Limits::max_streams`] were followed.
    pub evicted_streams: u64,
    /// Incomplete messages given up because [`Limits::max_bytes`] were held.
    pub evicted_messages: u64,
    /// Bytes of incomplete messages given up at a close or an eviction.
    pub dropped_bytes: u64,
    /// Most streams followed at once.
    pub peak_streams: u64,
    /// Most bytes held at once for incomplete messages (buffer capacity).
    pub peak_bytes: u64,
}

/// One TCP segment of a stream.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    /// Capture time, in ns (any clock, as long as it only moves forward).
    pub ts_ns: u64,
    pub seq: u32,
    pub payload: &'a [u8],
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
}

/// What one segment gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// The whole messages it completed, in order, without their length prefixes.
    pub messages: Vec<Vec<u8>>,
    /// Zero-length messages it held (skipped; see [`TcpStats::empty_messages`]).
    pub empty: u64,
    /// It closed the stream while part of a message was held: (bytes held, bytes announced),
    /// both counting the 2-byte prefix; announced is 0 when the prefix itself was cut.
    pub cut: Option<(usize, usize)>,
    /// Bytes of the stream missing from the capture just before it (its sequence number
    /// jumped this far).
    pub gap: u64,
    /// Bytes skipped to find a message boundary (see [`TcpStats::resync_dropped_bytes`]).
    pub skipped: u64,
}

/// Bytes of a stream that the capture never saw: its sequence number jumped past them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hole {
    /// The stream's sender and receiver.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Capture time of the segment after the hole.
    pub ts_ns: u64,
    pub bytes: u64,
}

/// Reassembles every TCP stream of a capture.
pub struct Streams {
    /// Least recently used first.
    streams: LruCache<StreamKey, Stream>,
    /// The streams holding part of a message, least recently used first: who gives up
    /// their bytes when [`Limits::max_bytes`] are held.
    holding: LruCache<StreamKey, ()>,
    limits: Limits,
    /// Bytes held over all streams (buffer capacity).
    held: usize,
    /// Latest capture time seen.
    now_ns: u64,
    swept_ns: u64,
    /// The hole found by the last [`Self::push`], before its segment.
    hole: Option<Hole>,
    /// Directions that ended (FIN, RST) lately: the last ACK of a close is no stream
    /// picked up mid-way. At most [`Limits::max_streams`].
    closed: LruCache<StreamKey, ()>,
    pub stats: TcpStats,
}

impl Default for Streams {
    fn default() -> Self {
        Self::new()
    }
}

impl Streams {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        Self {
            streams: LruCache::unbounded(),
            holding: LruCache::unbounded(),
            limits,
            held: 0,
            now_ns: 0,
            swept_ns: 0,
            hole: None,
            closed: LruCache::unbounded(),
            stats: TcpStats::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Streams followed now.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Bytes held now for incomplete messages (buffer capacity).
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Turns one decoded TCP segment into the packets to correlate: one per whole message it
    /// completes (each a copy of the segment with that message), or the segment itself with
    /// no message when it completes none (a SYN, an ACK, part of a message).
    pub fn packets(&mut self, packet: Packet, link: LinkType, bytes: &[u8]) -> Vec<Packet> {
        let (Some(src), Some(dst), Some(flags)) = (packet.src, packet.dst, packet.tcp_flags) else {
            return vec![packet];
        };
        // Cut by the snaplen: the bytes are not all there, keep the decoder's verdict.
        if packet.meta.cap_len < packet.meta.wire_len {
            return vec![packet];
        }
        let Some((seq, payload)) = tcp_segment(link, bytes) else {
            return vec![packet];
        };
        let key = StreamKey {
            point: packet.meta.point,
            ifindex: packet.meta.ifindex,
            netns: packet.meta.netns,
            src,
            dst,
        };
        let pushed = self.push(
            key,
            Segment {
                ts_ns: packet.meta.ts_ns,
                seq,
                payload,
                syn: flags.syn,
                fin: flags.fin,
                rst: flags.rst,
            },
        );
        let hole = gap_detail(pushed.gap, pushed.skipped).map(|d| Issue::new(IssueKind::TcpGap, d));
        if pushed.messages.is_empty() {
            let mut p = packet;
            p.dns = None;
            p.issue = match (pushed.cut, pushed.empty) {
                (Some((held, announced)), _) => Some(Issue::new(
                    IssueKind::TcpPartial,
                    cut_detail(flags.rst, held, announced),
                )),
                _ if hole.is_some() => hole,
                // One record for the segment, however many there were.
                (None, n) if n > 0 => Some(Issue::new(
                    IssueKind::Malformed,
                    format!("{n} zero-length DNS message(s)"),
                )),
                // Part of a message: held for reassembly, not a problem.
                _ if p
                    .issue
                    .as_ref()
                    .is_some_and(|i| i.kind == IssueKind::TcpPartial) =>
                {
                    None
                }
                _ => p.issue,
            };
            return vec![p];
        }
        let mut out: Vec<Packet> = pushed
            .messages
            .iter()
            .map(|m| {
                let mut p = packet.clone();
                set_message(&mut p, m);
                p
            })
            .collect();
        // The hole is before the first message (which parsed: it is where framing resumed).
        if let (Some(first), Some(hole)) = (out.first_mut(), hole) {
            first.issue.get_or_insert(hole);
        }
        out
    }

    /// The hole in its stream that the last segment given to [`Self::packets`] or
    /// [`Self::push`] came after, if any: a reply in it was never seen.
    pub fn take_hole(&mut self) -> Option<Hole> {
        self.hole.take()
    }

    /// Adds one segment; returns the whole messages it completes.
    pub fn push(&mut self, key: StreamKey, seg: Segment<'_>) -> Pushed {
        let mut out = Pushed::default();
        self.hole = None;
        self.now_ns = self.now_ns.max(seg.ts_ns);
        if self.now_ns >= self.swept_ns.saturating_add(SWEEP_NS) {
            self.expire(self.now_ns);
        }
        if seg.syn {
            // A new connection: anything held under this key was an old one's.
            self.close(&key);
            self.closed.pop(&key);
            self.insert(
                key,
                Stream {
                    next: Some(seg.seq.wrapping_add(1)),
                    seen_ns: seg.ts_ns,
                    ..Stream::default()
                },
            );
            return out;
        }
        let closing_ack = seg.payload.is_empty() && self.closed.contains(&key);
        if !(seg.fin || seg.rst || closing_ack || self.streams.contains(&key)) {
            // Picked up mid-way: its first bytes may be anywhere in a message. An ACK
            // without data tells where the sender's next byte is.
            self.stats.picked_up += 1;
            self.insert(
                key,
                Stream {
                    next: seg.payload.is_empty().then_some(seg.seq),
                    resync: true,
                    ..Stream::default()
                },
            );
        }
        // A segment without data (an ACK, a FIN) still says where the sender's bytes are:
        // past a hole, it is the only sign of one when nothing more is sent.
        if let Some(s) = self.streams.get_mut(&key) {
            s.seen_ns = seg.ts_ns;
            let before = s.buf.capacity();
            feed(s, seg.seq, seg.payload, &mut self.stats, &mut out);
            if out.gap > 0 {
                self.hole = Some(Hole {
                    src: key.src,
                    dst: key.dst,
                    ts_ns: seg.ts_ns,
                    bytes: out.gap,
                });
            }
            self.held = self.held - before + s.buf.capacity();
            if s.buf.is_empty() {
                self.holding.pop(&key);
            } else {
                self.holding.put(key, ());
            }
        }
        if seg.fin || seg.rst {
            out.cut = self.close(&key);
            self.note_closed(key);
            if seg.rst {
                // A reset ends both directions.
                self.close(&key.reverse());
                self.note_closed(key.reverse());
            }
        }
        self.give_up_bytes();
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.held as u64);
        let n = out.messages.len() as u64;
        self.stats.messages += n;
        if n > 1 {
            self.stats.multi_message_segments += 1;
        }
        out
    }

    /// Forgets the streams silent for [`Limits::idle_ns`] by `now_ns` (capture time).
    pub fn expire(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        self.swept_ns = self.now_ns;
        while let Some((&key, s)) = self.streams.peek_lru()
            && s.seen_ns.saturating_add(self.limits.idle_ns) <= self.now_ns
        {
            self.remove(&key);
            self.stats.evicted_idle += 1;
        }
    }

    /// Starts following `key`, making room under [`Limits::max_streams`].
    fn insert(&mut self, key: StreamKey, s: Stream) {
        while self.streams.len() >= self.limits.max_streams.max(1) {
            let Some((&oldest, _)) = self.streams.peek_lru() else {
                break;
            };
            self.remove(&oldest);
            self.stats.evicted_streams += 1;
        }
        self.streams.put(key, s);
        self.stats.peak_streams = self.stats.peak_streams.max(self.streams.len() as u64);
    }

    /// Remembers that `key` ended, forgetting the oldest such beyond the stream cap.
    fn note_closed(&mut self, key: StreamKey) {
        if self.closed.len() >= self.limits.max_streams.max(1) {
            self.closed.pop_lru();
        }
        self.closed.put(key, ());
    }

    /// Stops following `key`; the bytes it held count as dropped.
    fn remove(&mut self, key: &StreamKey) -> Option<Stream> {
        let s = self.streams.pop(key)?;
        self.held -= s.buf.capacity();
        if !s.buf.is_empty() {
            self.holding.pop(key);
            self.stats.dropped_bytes += s.buf.len() as u64;
        }
        Some(s)
    }

    /// The end of a stream (FIN, RST, or a new SYN): (bytes held, bytes announced) when it
    /// ended inside a message.
    fn close(&mut self, key: &StreamKey) -> Option<(usize, usize)> {
        let s = self.remove(key)?;
        if s.buf.is_empty() {
            return None;
        }
        self.stats.incomplete_at_close += 1;
        Some((s.buf.len(), s.announced().unwrap_or(0)))
    }

    /// Above [`Limits::max_bytes`]: the least recently used streams give up their
    /// incomplete message and look for the next message boundary.
    fn give_up_bytes(&mut self) {
        while self.held > self.limits.max_bytes {
            let Some((key, ())) = self.holding.pop_lru() else {
                break;
            };
            if let Some(s) = self.streams.peek_mut(&key) {
                self.held -= s.buf.capacity();
                self.stats.dropped_bytes += s.release() as u64;
                s.resync = true;
                self.stats.evicted_messages += 1;
            }
        }
    }
}

/// What a segment's packet line says about the bytes before it that were never seen or
/// were skipped.
fn gap_detail(gap: u64, skipped: u64) -> Option<String> {
    match (gap, skipped) {
        (0, 0) => None,
        (0, s) => Some(format!("{s} bytes skipped to find a message boundary")),
        (g, 0) => Some(format!(
            "{g} bytes of the stream missing from the capture before this segment"
        )),
        (g, s) => Some(format!(
            "{g} bytes of the stream missing from the capture before this segment; {s} bytes skipped to find a message boundary"
        )),
    }
}

fn cut_detail(rst: bool, held: usize, announced: usize) -> String {
    let how = if rst { "reset" } else { "closed" };
    if announced == 0 {
        format!("connection {how} after 1 byte of a length prefix")
    } else {
        format!("connection {how} with {held} of {announced} bytes of a message")
    }
}

/// Takes one segment's payload into its stream.
fn feed(s: &mut Stream, seq: u32, payload: &[u8], stats: &mut TcpStats, out: &mut Pushed) {
    let mut data = payload;
    if let Some(next) = s.next {
        let ahead = seq.wrapping_sub(next) as i32;
        if ahead < 0 {
            if payload.is_empty() {
                // An ACK or a keepalive probe (one below the next byte): nothing to take.
                return;
            }
            let seen = ahead.unsigned_abs() as usize;
            stats.retransmitted += 1;
            if seen >= data.len() {
                return;
            }
            data = &data[seen..];
        } else if ahead > 0 {
            // Bytes the capture never saw: whatever was held is cut, and the framing of
            // what follows has to be found again.
            stats.gaps += 1;
            stats.gap_bytes += ahead as u64;
            out.gap += ahead as u64;
            let cut = s.release() as u64;
            stats.resync_dropped_bytes += cut;
            out.skipped += cut;
            s.resync = true;
        }
    }
    s.next = Some(seq.wrapping_add(payload.len() as u32));
    if data.is_empty() {
        return;
    }
    if s.resync {
        resync(s, data, stats, out);
    } else {
        frame(s, data, stats, out);
    }
}

/// Frames a stream known to be at a message boundary (or inside the message held).
fn frame(s: &mut Stream, mut data: &[u8], stats: &mut TcpStats, out: &mut Pushed) {
    // First the message held from earlier segments.
    while !s.buf.is_empty() && !data.is_empty() {
        let need = match s.announced() {
            Some(total) => total - s.buf.len(),
            None => 2 - s.buf.len(),
        };
        let (now, rest) = data.split_at(need.min(data.len()));
        s.hold(now);
        data = rest;
        if s.announced() == Some(s.buf.len()) {
            let whole = std::mem::take(&mut s.buf);
            if whole.len() > 2 {
                stats.joined_messages += 1;
            }
            take(&whole[2..], stats, out);
        }
    }
    // Then the messages that start in this segment, straight from it.
    let mut at = 0;
    while let [hi, lo, ..] = data[at..] {
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if data.len() - at - 2 < len {
            break;
        }
        take(&data[at + 2..at + 2 + len], stats, out);
        at += 2 + len;
    }
    let rest = &data[at..];
    if !rest.is_empty() {
        s.hold(rest);
    }
}

/// Full parses tried per segment while looking for a message boundary: a stream of junk
/// costs at most this many, whatever its length.
const RESYNC_PARSES: usize = 32;

/// Finds the framing again: the held bytes and this segment's are not known to start at a
/// message boundary (after a gap, on a stream picked up without its SYN, or after the
/// message held was given up). A boundary is a length prefix followed by that many bytes
/// that parse as a DNS message. Until one is found, the earliest place that could still
/// be one (a plausible prefix and header whose message has not all arrived, such as a
/// prefix alone in its segment) is held, at most one message's worth; bytes before it are
/// skipped and counted.
fn resync(s: &mut Stream, data: &[u8], stats: &mut TcpStats, out: &mut Pushed) {
    let held = s.buf.len();
    let mut work = std::mem::take(&mut s.buf);
    work.extend_from_slice(data);
    let mut parses = 0;
    let mut wait = None;
    let mut found = None;
    let mut at = 0;
    while let [hi, lo, ref rest @ ..] = work[at..] {
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let head = &rest[..rest.len().min(len).min(12)];
        if plausible(len, head) {
            if rest.len() < len {
                wait.get_or_insert(at);
            } else if parses < RESYNC_PARSES {
                parses += 1;
                if dns::parse(&rest[..len]).is_ok() {
                    found = Some(at);
                    break;
                }
            } else {
                break;
            }
        }
        at += 1;
    }
    let keep = match (found, wait) {
        (Some(at), _) => at,
        (None, Some(at)) => at,
        // A last byte may be the first of a prefix.
        (None, None) if parses < RESYNC_PARSES => work.len().saturating_sub(1),
        (None, None) => work.len(),
    };
    let skipped = keep as u64;
    stats.resync_dropped_bytes += skipped;
    out.skipped += skipped;
    match found {
        Some(at) => {
            s.resync = false;
            stats.resyncs += 1;
            let len = usize::from(u16::from_be_bytes([work[at], work[at + 1]]));
            if at < held && at + 2 + len > held {
                stats.joined_messages += 1;
            }
            frame(s, &work[at..], stats, out);
        }
        // Held as bytes of their own, never more than one message from where it may start.
        None => s.buf = work[keep..].to_vec(),
    }
}

/// Whether a length prefix of `len` followed by `head` (the message's first bytes, up to
/// its 12-byte header) could start a DNS message: a header fits, the opcode is one in use,
/// and the counts fit in `len` (a question takes at least 5 bytes, a record 11).
fn plausible(len: usize, head: &[u8]) -> bool {
    if len < 12 {
        return false;
    }
    if let Some(flags) = head.get(2)
        && !matches!((flags >> 3) & 0xf, 0 | 1 | 2 | 4 | 5 | 6)
    {
        return false;
    }
    let [
        _,
        _,
        _,
        _,
        qd_hi,
        qd_lo,
        an_hi,
        an_lo,
        ns_hi,
        ns_lo,
        ar_hi,
        ar_lo,
    ] = *head
    else {
        return true;
    };
    let count = |hi: u8, lo: u8| usize::from(u16::from_be_bytes([hi, lo]));
    count(qd_hi, qd_lo) * 5 + (count(an_hi, an_lo) + count(ns_hi, ns_lo) + count(ar_hi, ar_lo)) * 11
        <= len - 12
}

/// One whole message.
fn take(message: &[u8], stats: &mut TcpStats, out: &mut Pushed) {
    if message.is_empty() {
        out.empty += 1;
        stats.empty_messages += 1;
    } else {
        out.messages.push(message.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::super::dns::fixtures;
    use super::super::{Meta, decode};
    use super::*;

    fn key() -> StreamKey {
        StreamKey {
            point: Point::TcEgress,
            ifindex: 2,
            netns: 1,
            src: "198.51.100.10:40000".parse().unwrap(),
            dst: "198.51.100.53:53".parse().unwrap(),
        }
    }

    fn key_n(n: u16) -> StreamKey {
        StreamKey {
            src: SocketAddr::new(key().src.ip(), 30000 + n),
            ..key()
        }
    }

    fn framed(m: &[u8]) -> Vec<u8> {
        let mut v = (m.len() as u16).to_be_bytes().to_vec();
        v.extend(m);
        v
    }

    fn seg(seq: u32, payload: &[u8]) -> Segment<'_> {
        Segment {
            ts_ns: 0,
            seq,
            payload,
            syn: false,
            fin: false,
            rst: false,
        }
    }

    fn syn(seq: u32) -> Segment<'static> {
        Segment {
            syn: true,
            ..seg(seq, &[])
        }
    }

    fn at(ts_s: u64, s: Segment<'_>) -> Segment<'_> {
        Segment {
            ts_ns: ts_s * 1_000_000_000,
            ..s
        }
    }

    fn msgs(s: &mut Streams, k: StreamKey, sg: Segment<'_>) -> Vec<Vec<u8>> {
        s.push(k, sg).messages
    }

    #[test]
    fn several_messages_in_one_segment() {
        let mut s = Streams::new();
        assert!(msgs(&mut s, key(), syn(100)).is_empty());
        let mut data = framed(&fixtures::query());
        data.extend(framed(&fixtures::response_a()));
        data.extend(framed(&fixtures::nxdomain()));
        let out = msgs(&mut s, key(), seg(101, &data));
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], fixtures::query());
        assert_eq!(out[2], fixtures::nxdomain());
        assert_eq!(s.stats.multi_message_segments, 1);
        // Nothing held between messages.
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn one_message_split_over_three_segments_and_a_retransmission() {
        let mut s = Streams::new();
        let whole = framed(&fixtures::response_a());
        let (a, rest) = whole.split_at(1);
        let (b, c) = rest.split_at(10);
        assert!(msgs(&mut s, key(), seg(1, a)).is_empty());
        assert!(msgs(&mut s, key(), seg(2, b)).is_empty());
        // The second segment again: skipped.
        assert!(msgs(&mut s, key(), seg(2, b)).is_empty());
        assert!(s.held_bytes() >= 11);
        let out = msgs(&mut s, key(), seg(12, c));
        assert_eq!(out, [fixtures::response_a()]);
        assert_eq!((s.stats.retransmitted, s.stats.joined_messages), (1, 1));
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn a_gap_drops_the_partial_message_and_resyncs_on_a_boundary() {
        let mut s = Streams::new();
        let first = framed(&fixtures::query());
        assert_eq!(msgs(&mut s, key(), seg(1, &first[..5])).len(), 0);
        // The rest of the first message is missing; the next segment starts mid-message.
        let second = framed(&fixtures::response_a());
        let gap_at = 1 + first.len() as u32 + 7;
        assert!(msgs(&mut s, key(), seg(gap_at, &second[9..])).is_empty());
        // The one after starts a message: framing is back.
        let next = gap_at + (second.len() - 9) as u32;
        let out = msgs(&mut s, key(), seg(next, &framed(&fixtures::nxdomain())));
        assert_eq!(out, [fixtures::nxdomain()]);
        assert_eq!(s.stats.gaps, 1);
        assert_eq!(s.held_bytes(), 0);
    }

    fn query_id(id: u16) -> Vec<u8> {
        let mut q = fixtures::query();
        q[..2].copy_from_slice(&id.to_be_bytes());
        q
    }

    /// dnscap's client writes each length prefix in a segment of its own, then the message.
    /// After a hole, the prefix alone is where framing starts again: every later query comes
    /// out, and the segment after the hole says what was missing.
    #[test]
    fn a_prefix_alone_after_a_gap_resyncs() {
        let mut s = Streams::new();
        let _ = s.push(key(), syn(0));
        let mut seq = 1u32;
        let mut got = Vec::new();
        let mut first_after_hole = None;
        for id in 0..12u16 {
            let q = query_id(id);
            let prefix = (q.len() as u16).to_be_bytes();
            // The capture misses query 3 (its prefix and its message).
            let hole = id == 3;
            for part in [&prefix[..], &q[..]] {
                if !hole {
                    let out = s.push(key(), seg(seq, part));
                    if id == 4 && first_after_hole.is_none() {
                        first_after_hole = Some((out.gap, out.skipped));
                    }
                    got.extend(out.messages);
                }
                seq += part.len() as u32;
            }
        }
        let want: Vec<Vec<u8>> = (0..12).filter(|&id| id != 3).map(query_id).collect();
        assert_eq!(got, want);
        let gap = (2 + fixtures::query().len()) as u64;
        assert_eq!(first_after_hole, Some((gap, 0)));
        // Only the segment right after the hole reports it.
        assert_eq!(s.take_hole(), None);
        assert_eq!(
            (s.stats.gaps, s.stats.gap_bytes, s.stats.resyncs),
            (1, gap, 1)
        );
        assert_eq!(s.stats.resync_dropped_bytes, 0);
        assert_eq!(s.held_bytes(), 0);
    }

    /// The reply is lost from the capture and the server sends nothing more but its FIN:
    /// the FIN's sequence number shows the hole.
    #[test]
    fn a_fin_past_a_hole_shows_it() {
        let mut s = Streams::new();
        let _ = s.push(key(), syn(0));
        let r = framed(&fixtures::response_a());
        assert_eq!(msgs(&mut s, key(), seg(1, &r)).len(), 1);
        // A pure ACK and a keepalive probe (one byte back) where expected: no hole.
        let _ = s.push(key(), seg(1 + r.len() as u32, &[]));
        let _ = s.push(key(), seg(r.len() as u32, &[]));
        assert_eq!(s.take_hole(), None);
        let at = 1 + 2 * r.len() as u32;
        let fin = Segment {
            fin: true,
            ..seg(at, &[])
        };
        let out = s.push(key(), fin);
        assert_eq!(out.gap, r.len() as u64);
        assert_eq!(s.take_hole().map(|h| h.bytes), Some(r.len() as u64));
        assert_eq!((s.stats.gaps, s.stats.retransmitted, s.len()), (1, 0, 0));
    }

    /// The last ACK of a close comes after the FIN ended that direction: it starts no
    /// stream picked up mid-way (every closed connection used to leave one for 30 s).
    #[test]
    fn the_last_ack_of_a_close_is_no_stream_picked_up() {
        let mut s = Streams::new();
        let _ = s.push(key(), syn(0));
        let r = framed(&fixtures::response_a());
        assert_eq!(msgs(&mut s, key(), seg(1, &r)).len(), 1);
        let at = 1 + r.len() as u32;
        let _ = s.push(
            key(),
            Segment {
                fin: true,
                ..seg(at, &[])
            },
        );
        assert_eq!(s.len(), 0);
        let _ = s.push(key(), seg(at + 1, &[]));
        assert_eq!((s.len(), s.stats.picked_up), (0, 0));
        // A new connection under the same addresses is followed again.
        let _ = s.push(key(), syn(5000));
        assert_eq!(msgs(&mut s, key(), seg(5001, &r)).len(), 1);
        assert_eq!(s.stats.picked_up, 0);
    }

    /// A hole inside a message: the rest of it is skipped and counted, the next prefix
    /// (alone in its segment) resynchronises.
    #[test]
    fn a_gap_inside_a_message_skips_its_rest_and_counts_it() {
        let mut s = Streams::new();
        let _ = s.push(key(), syn(0));
        let a = framed(&query_id(1));
        let b = framed(&fixtures::response_a());
        let c = framed(&query_id(3));
        assert_eq!(msgs(&mut s, key(), seg(1, &a)), [query_id(1)]);
        // b's first 10 bytes are missing; its rest and c's prefix arrive in one segment.
        let mut data = b[10..].to_vec();
        data.extend(&c[..2]);
        let at = 1 + a.len() as u32 + 10;
        let first = s.push(key(), seg(at, &data));
        assert!(first.messages.is_empty());
        assert_eq!(first.gap, 10);
        let out = s.push(key(), seg(at + data.len() as u32, &c[2..]));
        assert_eq!(out.messages, [query_id(3)]);
        // Some of b's tail may have looked like a prefix until c arrived: skipped then.
        assert_eq!(first.skipped + out.skipped, (b.len() - 10) as u64);
        assert_eq!(s.stats.resync_dropped_bytes, (b.len() - 10) as u64);
        assert_eq!(s.held_bytes(), 0);
    }

    /// No SYN seen: the first bytes are not trusted as a length. Here the capture starts in
    /// the middle of an answer; the query after it is found, the answer's tail is skipped
    /// and counted, and framing then holds for what follows.
    #[test]
    fn a_stream_picked_up_mid_way_checks_its_first_bytes() {
        let mut s = Streams::new();
        let r = framed(&fixtures::response_a());
        let q = framed(&query_id(7));
        let mut data = r[5..].to_vec();
        data.extend(&q);
        data.extend(&framed(&query_id(8))[..9]);
        let out = s.push(key(), seg(1000, &data));
        assert_eq!(out.messages, [query_id(7)]);
        assert_eq!((out.gap, out.skipped), (0, (r.len() - 5) as u64));
        let rest = &framed(&query_id(8))[9..];
        let out = s.push(key(), seg(1000 + data.len() as u32, rest));
        assert_eq!(out.messages, [query_id(8)]);
        assert_eq!(out.skipped, 0);
        assert_eq!((s.stats.picked_up, s.stats.resyncs), (1, 1));
        assert_eq!(s.stats.resync_dropped_bytes, (r.len() - 5) as u64);
        // Picked up at a boundary: nothing skipped.
        let out = s.push(key_n(1), seg(5, &q));
        assert_eq!((out.messages, out.skipped), (vec![query_id(7)], 0));
        assert_eq!((s.stats.picked_up, s.stats.resyncs), (2, 2));
    }

    /// Junk on a stream picked up mid-way: nothing comes out as a message, every byte is
    /// counted as skipped (but the last, which may start a prefix), and what is held stays
    /// within one message.
    #[test]
    fn junk_without_a_syn_never_frames_and_stays_bounded() {
        let mut s = Streams::new();
        let junk = fixtures::junk(7, 200_000);
        let mut seq = 1u32;
        for piece in junk.chunks(1448) {
            let out = s.push(key(), seg(seq, piece));
            assert!(out.messages.is_empty());
            assert!(s.held_bytes() <= MAX_MESSAGE, "{}", s.held_bytes());
            seq += piece.len() as u32;
        }
        assert_eq!(s.stats.messages, 0);
        let held = s.streams.peek(&key()).unwrap().buf.len() as u64;
        assert_eq!(s.stats.resync_dropped_bytes + held, junk.len() as u64);
    }

    /// The packet lines: the segment after a hole carries the issue, with what was missed.
    #[test]
    fn the_segment_after_a_hole_says_so() {
        let meta = Meta {
            ts_ns: 1,
            ifindex: 2,
            netns: 1,
            point: Point::TcEgress,
            wire_len: 0,
            cap_len: 0,
            pid: 0,
            comm: None,
        };
        let frame = |seq: u32, payload: &[u8]| {
            let b = etherparse::PacketBuilder::ipv4([198, 51, 100, 10], [198, 51, 100, 53], 64)
                .tcp(40000, 53, seq, 65535)
                .ack(1)
                .psh();
            let mut bytes = Vec::new();
            b.write(&mut bytes, payload).unwrap();
            let meta = Meta {
                wire_len: bytes.len() as u32,
                cap_len: bytes.len() as u32,
                ..meta.clone()
            };
            (decode(meta, LinkType::RawIp, &bytes), bytes)
        };
        let mut s = Streams::new();
        let _ = s.push(key(), syn(0));
        let q = framed(&query_id(1));
        let (p, bytes) = frame(1, &q);
        let out = s.packets(p, LinkType::RawIp, &bytes);
        assert_eq!(out[0].issue, None);
        // 40 bytes missed, then the prefix alone: no message yet, the issue is on its line.
        let at = 1 + q.len() as u32 + 40;
        let (p, bytes) = frame(at, &q[..2]);
        let out = s.packets(p, LinkType::RawIp, &bytes);
        let hole = Hole {
            src: key().src,
            dst: key().dst,
            ts_ns: 1,
            bytes: 40,
        };
        assert_eq!(s.take_hole(), Some(hole));
        let issue = out[0].issue.as_ref().unwrap();
        assert_eq!(issue.kind, IssueKind::TcpGap);
        assert_eq!(
            issue.detail,
            "40 bytes of the stream missing from the capture before this segment"
        );
        let (p, bytes) = frame(at + 2, &q[2..]);
        let out = s.packets(p, LinkType::RawIp, &bytes);
        assert_eq!(
            (out[0].dns.as_ref().map(|d| d.id), &out[0].issue),
            (Some(1), &None)
        );
    }

    #[test]
    fn directions_and_connections_are_separate() {
        let mut s = Streams::new();
        let ab = key();
        let ba = ab.reverse();
        // The same segment seen at another capture point is that point's stream.
        let elsewhere = StreamKey {
            point: Point::SocketOut,
            ..ab
        };
        let q = framed(&fixtures::query());
        let r = framed(&fixtures::response_a());
        assert!(msgs(&mut s, ab, seg(1, &q[..4])).is_empty());
        assert!(msgs(&mut s, elsewhere, seg(1, &q[..4])).is_empty());
        assert_eq!(msgs(&mut s, ba, seg(7, &r)).len(), 1);
        let fin = Segment {
            fin: true,
            ..seg(5, &q[4..])
        };
        assert_eq!(msgs(&mut s, ab, fin).len(), 1);
        assert_eq!(msgs(&mut s, elsewhere, seg(5, &q[4..])).len(), 1);
        assert_eq!(s.stats.retransmitted, 0);
        assert!(!s.streams.contains(&ab));
        assert_eq!(s.stats.incomplete_at_close, 0);
    }

    /// A peer announcing the largest message and sending little of it costs what it sent.
    #[test]
    fn a_stream_holds_what_arrived_never_what_was_announced() {
        let mut s = Streams::new();
        assert!(msgs(&mut s, key(), syn(0)).is_empty());
        let mut data = u16::MAX.to_be_bytes().to_vec();
        data.push(0x12);
        assert!(msgs(&mut s, key(), seg(1, &data)).is_empty());
        assert!(s.held_bytes() <= 8, "{} bytes held", s.held_bytes());
        // The whole message, in pieces: the buffer never outgrows it.
        let body = vec![0u8; MAX_MESSAGE - 3];
        for (i, piece) in body.chunks(1400).enumerate() {
            let seq = 4 + (i * 1400) as u32;
            let _ = msgs(&mut s, key(), seg(seq, piece));
            assert!(s.held_bytes() <= MAX_MESSAGE, "{}", s.held_bytes());
        }
        // Whole now (not DNS, but framing is all reassembly judges).
        assert_eq!(s.stats.messages, 1);
        assert_eq!(s.held_bytes(), 0);
        assert!(s.stats.peak_bytes <= MAX_MESSAGE as u64);
    }

    /// Many streams each announcing 65,535 bytes and sending most of them: the total stays
    /// under the cap, the least recently used give up their message, and every loss is
    /// counted.
    #[test]
    fn the_total_held_is_capped_and_the_oldest_give_up() {
        let limits = Limits {
            max_bytes: 4 * MAX_MESSAGE,
            ..Limits::default()
        };
        let mut s = Streams::with_limits(limits);
        let mut data = u16::MAX.to_be_bytes().to_vec();
        data.extend(vec![0u8; 60_000]);
        for n in 0..40 {
            let _ = s.push(key_n(n), syn(0));
            for (i, piece) in data.chunks(1448).enumerate() {
                let _ = s.push(key_n(n), seg(1 + (i * 1448) as u32, piece));
                assert!(s.held_bytes() <= limits.max_bytes);
            }
        }
        assert_eq!(s.len(), 40);
        assert!(s.stats.evicted_messages >= 30, "{:?}", s.stats);
        assert!(s.stats.peak_bytes <= limits.max_bytes as u64);
        assert!(s.stats.dropped_bytes >= 30 * 50_000, "{:?}", s.stats);
        // A stream that gave up its message takes the rest of it as a gap: no garbage
        // messages from the middle of a body.
        let rest = vec![0u8; 5_000];
        assert!(msgs(&mut s, key_n(0), seg(60_003, &rest)).is_empty());
        assert_eq!(s.stats.messages, 0);
        // Closing frees everything.
        for n in 0..40 {
            let rst = Segment {
                rst: true,
                ..seg(70_000, &[])
            };
            let _ = s.push(key_n(n), rst);
        }
        assert_eq!((s.len(), s.held_bytes()), (0, 0));
        assert!(s.holding.is_empty());
    }

    #[test]
    fn past_the_stream_cap_the_least_recently_used_is_forgotten() {
        let mut s = Streams::with_limits(Limits {
            max_streams: 4,
            ..Limits::default()
        });
        let q = framed(&fixtures::query());
        for n in 0..6 {
            let _ = s.push(key_n(n), seg(1, &q[..5]));
        }
        assert_eq!(s.len(), 4);
        assert_eq!(s.stats.evicted_streams, 2);
        assert_eq!(s.stats.dropped_bytes, 10);
        assert!(!s.streams.contains(&key_n(0)) && s.streams.contains(&key_n(5)));
        assert_eq!(s.stats.peak_streams, 4);
    }

    #[test]
    fn idle_streams_are_forgotten_and_counted() {
        let mut s = Streams::new();
        let q = framed(&fixtures::query());
        let _ = s.push(key_n(1), at(0, seg(1, &q[..5])));
        let _ = s.push(key_n(2), at(10, seg(1, &q[..5])));
        // A segment 31 s on: stream 1 has been silent for 30 s, stream 2 not yet.
        let _ = s.push(key_n(3), at(31, seg(1, &q[..5])));
        assert_eq!(s.stats.evicted_idle, 1);
        assert!(!s.streams.contains(&key_n(1)) && s.streams.contains(&key_n(2)));
        // With no traffic at all, the clock alone forgets them.
        s.expire(62_000_000_000);
        assert_eq!((s.stats.evicted_idle, s.len(), s.held_bytes()), (3, 0, 0));
        assert_eq!(s.stats.dropped_bytes, 15);
        assert!(s.holding.is_empty());
    }

    #[test]
    fn a_close_inside_a_message_is_counted_and_frees_both_directions() {
        let mut s = Streams::new();
        let q = framed(&fixtures::query());
        let _ = s.push(key(), seg(1, &q[..20]));
        let _ = s.push(key().reverse(), seg(1, &q[..1]));
        let fin = Segment {
            fin: true,
            ..seg(21, &[])
        };
        let out = s.push(key(), fin);
        assert_eq!(out.cut, Some((20, q.len())));
        assert_eq!(s.stats.incomplete_at_close, 1);
        // A reset from the other side: its 1 byte of a length prefix ends there too.
        let rst = Segment {
            rst: true,
            ..seg(2, &[])
        };
        let out = s.push(key().reverse(), rst);
        assert_eq!(out.cut, Some((1, 0)));
        assert_eq!(s.stats.incomplete_at_close, 2);
        assert_eq!((s.len(), s.held_bytes()), (0, 0));
        // A FIN at a message boundary is no loss.
        let _ = s.push(key(), seg(1, &q));
        let fin = Segment {
            fin: true,
            ..seg(1 + q.len() as u32, &[])
        };
        assert_eq!(s.push(key(), fin).cut, None);
        assert_eq!(s.stats.incomplete_at_close, 2);
    }

    #[test]
    fn zero_length_messages_are_counted_not_decoded() {
        let mut s = Streams::new();
        assert!(msgs(&mut s, key(), syn(0)).is_empty());
        let zeros = vec![0u8; 1000];
        let out = s.push(key(), seg(1, &zeros));
        assert_eq!((out.messages.len(), out.empty), (0, 500));
        assert_eq!((s.stats.empty_messages, s.stats.messages), (500, 0));
        // Between real messages they are skipped.
        let mut data = framed(&fixtures::query());
        data.extend([0, 0, 0, 0]);
        data.extend(framed(&fixtures::nxdomain()));
        let out = s.push(key(), seg(1001, &data));
        assert_eq!(out.messages, [fixtures::query(), fixtures::nxdomain()]);
        assert_eq!(out.empty, 2);
    }

    /// The whole path from a captured frame: a segment of zero-length messages is one
    /// malformed record, and a FIN inside a message is a partial one.
    #[test]
    fn packets_from_frames() {
        fn frame(seq: u32, fin: bool, payload: &[u8]) -> (Packet, Vec<u8>) {
            let b = etherparse::PacketBuilder::ipv4([198, 51, 100, 10], [198, 51, 100, 53], 64)
                .tcp(40000, 53, seq, 65535)
                .ack(1);
            let b = if fin { b.fin() } else { b.psh() };
            let mut bytes = Vec::new();
            b.write(&mut bytes, payload).unwrap();
            let meta = Meta {
                ts_ns: 1,
                ifindex: 2,
                netns: 1,
                point: Point::TcEgress,
                wire_len: bytes.len() as u32,
                cap_len: bytes.len() as u32,
                pid: 0,
                comm: None,
            };
            (decode(meta, LinkType::RawIp, &bytes), bytes)
        }
        let mut s = Streams::new();
        assert!(msgs(&mut s, key(), syn(0)).is_empty());
        let (p, bytes) = frame(1, false, &[0u8; 600]);
        let out = s.packets(p, LinkType::RawIp, &bytes);
        assert_eq!(out.len(), 1);
        let issue = out[0].issue.as_ref().unwrap();
        assert_eq!(issue.kind, IssueKind::Malformed);
        assert_eq!(issue.detail, "300 zero-length DNS message(s)");

        let q = framed(&fixtures::query());
        let (p, bytes) = frame(601, false, &q[..30]);
        let out = s.packets(p, LinkType::RawIp, &bytes);
        assert_eq!((out.len(), &out[0].issue), (1, &None));
        let (p, bytes) = frame(631, true, &[]);
        let out = s.packets(p, LinkType::RawIp, &bytes);
        let issue = out[0].issue.as_ref().unwrap();
        assert_eq!(issue.kind, IssueKind::TcpPartial);
        assert_eq!(
            issue.detail,
            format!(
                "connection closed with 30 of {} bytes of a message",
                q.len()
            )
        );
        assert_eq!(s.stats.incomplete_at_close, 1);
    }
}
