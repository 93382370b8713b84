//! `--packets` with a lookup filter (`--client`, `--qname`, `--verdict`, `--pod`,
//! `--namespace`): a packet line is written only once the lookup it was stitched into
//! has ended and passed the filter. Lines wait in arrival order, so the output keeps
//! the capture's order; a line whose lookup is still open waits, and so do those behind
//! it. Bounded: past [`HoldPackets::MAX_BYTES`] the oldest line is written without a
//! decision (counted), as the pcapng's hold does.
use std::collections::{HashMap, HashSet, VecDeque};

/// Packet lines waiting for their lookups' verdicts.
#[derive(Debug, Default)]
pub struct HoldPackets {
    /// (lookup the packet went into, or None: stitched into none; its line).
    queue: VecDeque<(Option<u64>, Vec<u8>)>,
    bytes: usize,
    /// Lookups ended: shown or not.
    decided: HashMap<u64, bool>,
    /// Lines left out: their lookup was not shown, or they went into no lookup.
    pub not_shown: u64,
    /// Lines written before their lookup ended, because of the bound.
    pub undecided: u64,
}

impl HoldPackets {
    /// Bytes of lines held at most.
    pub const MAX_BYTES: usize = 16 << 20;

    /// A packet's line; `lookup`: where the correlator put it.
    pub fn push(&mut self, lookup: Option<u64>, line: Vec<u8>) {
        self.bytes += line.len();
        self.queue.push_back((lookup, line));
    }

    /// A lookup ended; `shown`: it passed the filter.
    pub fn decide(&mut self, lookup: u64, shown: bool) {
        self.decided.insert(lookup, shown);
    }

    /// Hands `write` every line that can go (or must, at the bound, or `all` at the end),
    /// in arrival order, and forgets the lines left out.
    pub fn drain(
        &mut self,
        all: bool,
        mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        while let Some((lookup, line)) = self.queue.front() {
            let show = match lookup.map(|id| self.decided.get(&id).copied()) {
                // Stitched into no lookup: no lookup filter can select it.
                None => false,
                Some(Some(shown)) => shown,
                Some(None) if all || self.bytes > Self::MAX_BYTES => {
                    self.undecided += 1;
                    true
                }
                Some(None) => break,
            };
            if show {
                write(line)?;
            } else {
                self.not_shown += 1;
            }
            self.bytes -= line.len();
            self.queue.pop_front();
        }
        // Verdicts nothing waits for any more.
        if self.queue.is_empty() {
            self.decided.clear();
        } else if self.decided.len() > 4096 {
            let waiting: HashSet<u64> = self.queue.iter().filter_map(|(id, _)| *id).collect();
            self.decided.retain(|id, _| waiting.contains(id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(h: &mut HoldPackets, all: bool) -> Vec<String> {
        let mut out = Vec::new();
        h.drain(all, |l| {
            out.push(String::from_utf8_lossy(l).into_owned());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn lines_wait_for_their_lookup_in_arrival_order() {
        let mut h = HoldPackets::default();
        h.push(Some(1), b"1a".to_vec());
        h.push(Some(2), b"2a".to_vec());
        h.push(None, b"orphan".to_vec());
        h.push(Some(1), b"1b".to_vec());
        // Lookup 2 ends first, shown: its line waits behind lookup 1's.
        h.decide(2, true);
        assert!(drained(&mut h, false).is_empty());
        // Lookup 1 ends, not shown: its lines go, lookup 2's line is written.
        h.decide(1, false);
        assert_eq!(drained(&mut h, false), ["2a"]);
        assert_eq!(h.not_shown, 3);
        assert!(h.queue.is_empty() && h.decided.is_empty() && h.bytes == 0);
    }

    #[test]
    fn the_bound_and_the_end_write_undecided_lines() {
        let mut h = HoldPackets::default();
        let big = vec![b'x'; HoldPackets::MAX_BYTES / 2 + 1];
        h.push(Some(7), big.clone());
        h.push(Some(8), big);
        h.push(Some(9), b"small".to_vec());
        // Over the bound: the oldest goes out undecided, then it fits again.
        assert_eq!(drained(&mut h, false).len(), 1);
        assert_eq!(h.undecided, 1);
        assert_eq!(drained(&mut h, true).len(), 2);
        assert_eq!(h.undecided, 3);
    }
}
