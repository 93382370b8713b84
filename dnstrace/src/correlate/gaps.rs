//! Holes in the capture: bytes of a TCP stream that were never seen (its sequence number
//! jumped past them), and interfaces that went away while lookups crossed them (a pod's
//! veth, deleted with the pod). A lookup whose reply could have been in such a hole cannot
//! be said to have gone unanswered.
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use super::Correlator;
use super::state::{Fx, Leg, LookupState};
use crate::decode::{Point, Proto};

/// Streams whose latest hole is remembered; past this the oldest hole is forgotten.
const MAX_STREAMS: usize = 16_384;

/// A hole in the capture of one TCP stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Gap {
    /// The stream's sender (the server) and receiver.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Capture time of the segment after the hole.
    pub ts: u64,
    pub bytes: u64,
}

/// The latest hole of each stream that had one.
#[derive(Debug, Default)]
pub(super) struct TcpGaps {
    /// (sender, receiver) → (capture time of the segment after the hole, bytes missed).
    latest: HashMap<(SocketAddr, SocketAddr), (u64, u64), Fx>,
}

impl TcpGaps {
    fn note(&mut self, src: SocketAddr, dst: SocketAddr, bytes: u64, ts: u64) {
        if self.latest.len() >= MAX_STREAMS
            && !self.latest.contains_key(&(src, dst))
            && let Some(&oldest) = self.latest.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| k)
        {
            self.latest.remove(&oldest);
        }
        self.latest.insert((src, dst), (ts, bytes));
    }

    /// Forgets the holes before `ts`: no open lookup started before it.
    pub fn prune(&mut self, ts: u64) {
        if !self.latest.is_empty() {
            self.latest.retain(|_, v| v.0 >= ts);
        }
    }

    /// The hole in the stream `src` → `dst` seen in [from, to].
    fn within(&self, src: SocketAddr, dst: SocketAddr, from: u64, to: u64) -> Option<Gap> {
        let &(ts, bytes) = self.latest.get(&(src, dst))?;
        (from <= ts && ts <= to).then_some(Gap {
            src,
            dst,
            ts,
            bytes,
        })
    }
}

/// Interfaces remembered as gone; past this the oldest is forgotten.
const MAX_GONE: usize = 4096;

/// An interface that went away while the capture ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IfaceGap {
    /// The interface's interned name.
    pub iface: u16,
    /// When it was seen gone (monotonic, the clock of the events).
    pub ts: u64,
}

/// An interface's name is given back this long after the last event seen on it, at
/// the earliest (timestamps of events from several CPUs may be a little out of order).
const RELEASE_SLACK_NS: u64 = 1_000_000_000;

/// Interfaces that went away, oldest first.
#[derive(Debug, Default)]
pub(super) struct IfaceGaps {
    gone: VecDeque<IfaceGap>,
    /// Interfaces gone whose interned name is to be given back once no open lookup
    /// can refer to it.
    releasing: Vec<IfaceGap>,
}

impl IfaceGaps {
    fn note(&mut self, iface: u16, ts: u64) {
        if self.gone.len() >= MAX_GONE {
            self.gone.pop_front();
        }
        self.gone.push_back(IfaceGap { iface, ts });
        self.releasing.retain(|g| g.iface != iface);
        self.releasing.push(IfaceGap { iface, ts });
    }

    /// Forgets the interfaces gone before `ts`: no open lookup started before it.
    pub fn prune(&mut self, ts: u64) {
        while self.gone.front().is_some_and(|g| g.ts < ts) {
            self.gone.pop_front();
        }
    }

    /// The first interface among `ifaces` gone in [from, to].
    fn within(&self, mut on: impl FnMut(u16) -> bool, from: u64, to: u64) -> Option<IfaceGap> {
        self.gone
            .iter()
            .find(|g| from <= g.ts && g.ts <= to && on(g.iface))
            .copied()
    }
}

impl Correlator {
    /// A new interface is hooked (`--auto` follows the netns).
    pub fn iface_watched(&mut self, name: &str) {
        // A name that comes back keeps its id.
        if let Some(id) = self.ifaces.find(name) {
            self.iface_gaps.releasing.retain(|g| g.iface != id);
        }
        let w = &mut self.cfg.watched;
        if !w.ifaces.iter().any(|i| i == name) {
            w.ifaces.push(name.to_owned());
        }
    }

    /// A new interface could not be hooked: packets may now leave unseen.
    pub fn iface_unwatched(&mut self, name: &str) {
        let w = &mut self.cfg.watched;
        w.ifaces.retain(|i| i != name);
        w.all_ifaces = false;
    }

    /// A watched interface was renamed.
    pub fn iface_renamed(&mut self, old: &str, new: &str) {
        let w = &mut self.cfg.watched;
        if let Some(i) = w.ifaces.iter_mut().find(|i| *i == old) {
            new.clone_into(i);
        }
    }

    /// A watched interface went away at `ts_ns` (a pod's veth, deleted with the pod):
    /// lookups open then that crossed it, and have no reply by their end, are `unknown`
    /// (what became of them happened out of sight), not `unanswered`.
    pub fn iface_gone(&mut self, name: &str, ts_ns: u64) {
        self.cfg.watched.ifaces.retain(|i| i != name);
        let id = self.intern_iface(&std::sync::Arc::from(name));
        self.iface_gaps.note(id, ts_ns);
    }

    /// An interface that a hop of this lookup (at any depth) was seen on, gone by `end`
    /// after the lookup started.
    pub(super) fn iface_gap(&self, lk: &LookupState, end: u64) -> Option<IfaceGap> {
        if self.iface_gaps.gone.is_empty() {
            return None;
        }
        let crossed = |iface: u16| {
            lk.legs
                .iter()
                .flat_map(|l| l.hops.iter())
                .chain(lk.rare().tcp_hops.iter())
                .any(|h| h.iface == iface && matches!(h.point, Point::TcIngress | Point::TcEgress))
        };
        self.iface_gaps.within(crossed, lk.start, end)
    }

    /// The same for one leg.
    pub(super) fn leg_iface_gap(&self, leg: &Leg, end: u64) -> Option<IfaceGap> {
        if self.iface_gaps.gone.is_empty() {
            return None;
        }
        let crossed = |iface: u16| {
            leg.hops
                .iter()
                .any(|h| h.iface == iface && matches!(h.point, Point::TcIngress | Point::TcEgress))
        };
        self.iface_gaps.within(crossed, leg.first_ts(), end)
    }

    /// Gives back the names of interfaces gone before `keep_from` and last seen in an event
    /// before it: every open lookup started later, so none has a hop there, and the gap is
    /// forgotten already.
    pub(super) fn release_gone_ifaces(&mut self, keep_from: u64) {
        if self.iface_gaps.releasing.is_empty() {
            return;
        }
        let last = &self.iface_last;
        let (done, wait): (Vec<IfaceGap>, Vec<IfaceGap>) =
            self.iface_gaps.releasing.drain(..).partition(|g| {
                let seen = last.get(usize::from(g.iface)).copied().unwrap_or(0);
                g.ts < keep_from && seen.saturating_add(RELEASE_SLACK_NS) < keep_from
            });
        self.iface_gaps.releasing = wait;
        for g in done {
            self.ifaces.release(g.iface);
        }
    }

    /// The capture missed `bytes` of the TCP stream `src` → `dst`, just before a segment
    /// seen at `ts_ns`: a lookup whose reply that stream would carry, and that has no reply
    /// by its end, is `unknown`, not `unanswered`.
    pub fn note_tcp_gap(&mut self, src: SocketAddr, dst: SocketAddr, bytes: u64, ts_ns: u64) {
        self.tcp_gaps.note(src, dst, bytes, ts_ns);
    }

    /// A hole, seen by `end`, in the stream a TCP query of this lookup (at any depth) would
    /// be answered on, after that query was sent.
    pub(super) fn tcp_gap(&self, lk: &LookupState, end: u64) -> Option<Gap> {
        if self.tcp_gaps.latest.is_empty() {
            return None;
        }
        lk.legs.iter().find_map(|leg| self.leg_tcp_gap(leg, end))
    }

    /// The same for one leg; every sighting of its query counts (NAT rewrites addresses).
    pub(super) fn leg_tcp_gap(&self, leg: &Leg, end: u64) -> Option<Gap> {
        if leg.proto() != Proto::Tcp || self.tcp_gaps.latest.is_empty() {
            return None;
        }
        leg.query_hops()
            .find_map(|h| self.tcp_gaps.within(h.dst, h.src, leg.first_ts(), end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_latest_hole_per_stream_within_a_window() {
        let (server, client) = (addr("198.51.100.53:53"), addr("198.51.100.10:40000"));
        let mut g = TcpGaps::default();
        g.note(server, client, 145, 100);
        assert_eq!(
            g.within(server, client, 50, 200).map(|h| h.bytes),
            Some(145)
        );
        // Before the query, after the end, or the other direction: not this lookup's.
        assert_eq!(g.within(server, client, 101, 200), None);
        assert_eq!(g.within(server, client, 0, 99), None);
        assert_eq!(g.within(client, server, 0, 200), None);
        g.prune(101);
        assert!(g.latest.is_empty());
    }

    #[test]
    fn the_oldest_hole_goes_at_the_cap() {
        let client = addr("198.51.100.10:40000");
        let mut g = TcpGaps::default();
        for n in 0..=MAX_STREAMS as u64 {
            let server = SocketAddr::new(addr("198.51.100.53:53").ip(), 1000 + n as u16);
            g.note(server, client, 1, 10 + n);
        }
        assert_eq!(g.latest.len(), MAX_STREAMS);
        assert!(!g.latest.contains_key(&(addr("198.51.100.53:1000"), client)));
    }
}
