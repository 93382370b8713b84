//! Draining the BPF ring buffer into the bounded userspace pipeline.
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
};

use super::{Captured, from_bytes};

/// Events travel in batches: one channel operation per wake-up, not per packet.
pub type Batch = Vec<Captured>;

/// Largest batch handed to the pipeline.
const BATCH: usize = 256;

/// What happened to the records read from the ring buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DrainStats {
    /// Records read from the ring buffer.
    pub received: u64,
    /// Records dropped because the pipeline queue was full.
    pub dropped: u64,
    /// Records that did not hold a valid event header (never expected).
    pub bad_records: u64,
}

pub struct Drain {
    ring: AsyncFd<RingBuf<MapData>>,
    own_netns: u64,
    stats: DrainStats,
}

impl Drain {
    pub(super) fn new(ring: RingBuf<MapData>, own_netns: u64) -> std::io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged
        // for as long as the AsyncFd holds the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Self {
            ring,
            own_netns,
            stats: DrainStats::default(),
        })
    }

    pub fn stats(&self) -> DrainStats {
        self.stats
    }

    /// Moves events into `tx` until `stop` turns true.
    pub async fn run(&mut self, tx: &mpsc::Sender<Batch>, stop: &mut watch::Receiver<bool>) {
        loop {
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    let Ok(mut guard) = guard else { break };
                    let ring = guard.get_inner_mut();
                    drain_into(ring, self.own_netns, &mut self.stats, tx);
                    guard.clear_ready();
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
            }
        }
    }

    /// Drains what is in the ring right now (used once more after detaching).
    pub fn drain_now(&mut self, tx: &mpsc::Sender<Batch>) {
        drain_into(self.ring.get_mut(), self.own_netns, &mut self.stats, tx);
    }
}

fn drain_into(
    ring: &mut RingBuf<MapData>,
    own_netns: u64,
    stats: &mut DrainStats,
    tx: &mpsc::Sender<Batch>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(item) = ring.next() {
        stats.received += 1;
        match from_bytes(&item, own_netns) {
            Some(c) => batch.push(c),
            None => stats.bad_records += 1,
        }
        drop(item);
        if batch.len() == BATCH {
            send(
                tx,
                std::mem::replace(&mut batch, Vec::with_capacity(BATCH)),
                stats,
            );
        }
    }
    if !batch.is_empty() {
        send(tx, batch, stats);
    }
}

fn send(tx: &mpsc::Sender<Batch>, batch: Batch, stats: &mut DrainStats) {
    let n = batch.len() as u64;
    if tx.try_send(batch).is_err() {
        stats.dropped += n;
    }
}
