//! Draining the BPF ring buffer into the bounded userspace pipeline.
//!
//! The pipeline applies backpressure instead of dropping: when the queue to
//! the decoder is full (in batches, or in bytes: [`QUEUE_BYTES`]), draining
//! pauses and events wait in the kernel ring buffer. If that fills too, the
//! kernel counts every lost event (`ring_full`), so all losses are counted in
//! one place, exactly.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
};

use super::{Captured, Message, MessageName, Payload, dedup::Mirror, from_record};

/// Memory the queue to the decoder may hold. Its length in batches alone would let
/// 1,024 batches of 256 full-size packets (a flood at snaplen 2048) take 512 MiB.
pub const QUEUE_BYTES: usize = 16 << 20;

/// Events travel in batches: one channel operation per wake-up, not per packet.
pub struct Batch {
    events: Vec<Captured>,
    /// Its share of [`QUEUE_BYTES`], given back when the decoder takes the events.
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Batch {
    fn new(events: Vec<Captured>) -> Self {
        Self {
            events,
            _bytes: None,
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl IntoIterator for Batch {
    type Item = Captured;
    type IntoIter = std::vec::IntoIter<Captured>;

    fn into_iter(self) -> Self::IntoIter {
        self.events.into_iter()
    }
}

/// Largest batch handed to the pipeline.
pub(crate) const BATCH: usize = 256;
/// The kernel wakes the reader only once a quarter of the ring is waiting
/// (a wake-up per event would cost more than capturing it), so the ring is
/// also drained this often.
const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// What happened to the records read from the ring buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DrainStats {
    /// Records read from the ring buffer.
    pub received: u64,
    /// Records lost because the consumer had gone (e.g. stdout closed).
    pub dropped: u64,
    /// Records that did not hold a valid event header (never expected).
    pub bad_records: u64,
}

pub struct Drain {
    ring: AsyncFd<RingBuf<MapData>>,
    own_netns: u64,
    stats: DrainStats,
    /// The payloads compact records name.
    mirror: Mirror,
    /// Compact records whose payload was no longer held (shared with the capture's counters).
    orphaned: Arc<AtomicU64>,
    /// Bytes the queue may still take.
    budget: Arc<Semaphore>,
}

impl Drain {
    pub(super) fn new(
        ring: RingBuf<MapData>,
        own_netns: u64,
        orphaned: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged
        // for as long as the AsyncFd holds the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Self {
            ring,
            own_netns,
            stats: DrainStats::default(),
            mirror: Mirror::new(
                aya::util::nr_cpus().unwrap_or(dnstrace_common::dedup::MAX_CPUS as usize),
            ),
            orphaned,
            budget: Arc::new(Semaphore::new(QUEUE_BYTES)),
        })
    }

    pub fn stats(&self) -> DrainStats {
        self.stats
    }

    /// Moves events into `tx` until `stop` turns true.
    pub async fn run(&mut self, tx: &mpsc::Sender<Batch>, stop: &mut watch::Receiver<bool>) {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = tokio::select! {
                guard = self.ring.readable_mut() => {
                    let Ok(mut guard) = guard else { break };
                    let mut reader = Reader {
                        own_netns: self.own_netns,
                        stats: &mut self.stats,
                        mirror: &mut self.mirror,
                        orphaned: &self.orphaned,
                    };
                    let batch = read_batch(guard.get_inner_mut(), &mut reader);
                    if batch.0.len() < BATCH {
                        // The ring is empty: wait for the next wake-up.
                        guard.clear_ready();
                    }
                    batch
                }
                _ = poll.tick() => {
                    self.drain_rest(tx).await;
                    continue;
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                    continue;
                }
            };
            if !batch.0.is_empty() {
                // Waits while the queue is full: backpressure onto the ring buffer.
                self.send(tx, batch).await;
            }
        }
    }

    /// Moves everything the ring holds now into `tx` (on the poll timer, and
    /// once more after detaching).
    pub async fn drain_rest(&mut self, tx: &mpsc::Sender<Batch>) {
        loop {
            let mut reader = Reader {
                own_netns: self.own_netns,
                stats: &mut self.stats,
                mirror: &mut self.mirror,
                orphaned: &self.orphaned,
            };
            let batch = read_batch(self.ring.get_mut(), &mut reader);
            let full = batch.0.len() == BATCH;
            if !batch.0.is_empty() {
                self.send(tx, batch).await;
            }
            if !full {
                break;
            }
        }
    }

    /// Waits for room in bytes, then in batches: backpressure onto the ring buffer.
    async fn send(&mut self, tx: &mpsc::Sender<Batch>, (mut batch, bytes): (Batch, usize)) {
        let n = batch.len() as u64;
        let want = bytes.min(QUEUE_BYTES) as u32;
        // The semaphore is never closed.
        if let Ok(permit) = self.budget.clone().acquire_many_owned(want).await {
            batch._bytes = Some(permit);
        }
        if tx.send(batch).await.is_err() {
            self.stats.dropped += n;
        }
    }
}

/// Reads up to [`BATCH`] events; returns them with the memory they hold.
fn read_batch(ring: &mut RingBuf<MapData>, reader: &mut Reader) -> (Batch, usize) {
    let mut batch = Building::new();
    while batch.len() < BATCH {
        let Some(item) = ring.next() else { break };
        reader.push(&item, &mut batch);
    }
    batch.finish()
}

/// A batch being filled.
pub(crate) struct Building {
    events: Vec<Captured>,
    /// The packets of a batch share one buffer: one allocation per batch, not per event.
    packets: bytes::BytesMut,
    spans: Vec<std::ops::Range<usize>>,
}

impl Building {
    pub fn new() -> Self {
        Self {
            events: Vec::with_capacity(BATCH),
            packets: bytes::BytesMut::with_capacity(BATCH * 128),
            spans: Vec::with_capacity(BATCH),
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// The batch, and the memory it holds: its event slots and its packets' buffer.
    pub fn finish(self) -> (Batch, usize) {
        let Self {
            mut events,
            packets,
            spans,
        } = self;
        let bytes = events.capacity() * size_of::<Captured>() + packets.capacity();
        let packets = packets.freeze();
        for (c, span) in events.iter_mut().zip(spans) {
            c.data = packets.slice(span);
        }
        (Batch::new(events), bytes)
    }
}

/// Turns ring buffer records into events.
pub(crate) struct Reader<'a> {
    pub own_netns: u64,
    pub stats: &'a mut DrainStats,
    pub mirror: &'a mut Mirror,
    pub orphaned: &'a AtomicU64,
}

impl Reader<'_> {
    /// Adds the event of one record to `to`; a compact one rebuilt into its packet.
    pub fn push(&mut self, record: &[u8], to: &mut Building) {
        self.stats.received += 1;
        let Some((mut c, packet, payload)) = from_record(record, self.own_netns) else {
            self.stats.bad_records += 1;
            return;
        };
        let packets = &mut to.packets;
        let start = packets.len();
        match payload {
            Payload::Own => packets.extend_from_slice(packet),
            Payload::Kept { slot, seq, off } => {
                packets.extend_from_slice(packet);
                if let Some(kept) = packet.get(off..)
                    && self.mirror.remember(slot, seq, kept)
                {
                    c.message = Message::Kept(MessageName { slot, seq });
                }
            }
            Payload::Named { slot, seq } => {
                // Its own headers and the payload named, exactly as long as the kernel
                // saw the packet; anything else is not guessed at.
                match self.mirror.payload(slot, seq) {
                    Some(kept) if packet.len() + kept.len() == c.meta.wire_len as usize => {
                        packets.extend_from_slice(packet);
                        packets.extend_from_slice(kept);
                        c.meta.cap_len = c.meta.wire_len;
                        c.message = Message::Named(MessageName { slot, seq });
                    }
                    _ => {
                        self.orphaned.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
        to.spans.push(start..packets.len());
        to.events.push(c);
    }
}
