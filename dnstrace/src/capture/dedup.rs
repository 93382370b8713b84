//! Compact records back into packets.
//!
//! The kernel sends a UDP DNS payload that the same CPU copied moments ago, byte for
//! byte, as a compact record: that sighting's own bytes up to the end of its UDP
//! header, and the name (slot, and the low bits of its clock) of the full record that
//! carried the payload.
//! [`Mirror`] keeps the payload of each slot's latest full record and rebuilds the
//! packet, so nothing downstream (decode, correlate, pcapng) sees a difference.
//!
//! A full record is always in the ring before the compact records that name it (the
//! kernel keeps a payload only once its record is reserved). A compact record whose
//! payload is no longer held here is counted as orphaned, never guessed.
use dnstrace_common::dedup;

/// The payload of one kernel slot, as last seen in a full record.
#[derive(Default)]
struct Held {
    /// The name of the last full record of this slot (0: none).
    seq: u32,
    /// `payload` is that of `seq`: false when two full records came with one name.
    valid: bool,
    payload: Vec<u8>,
}

/// Per-CPU copies of the kernel's payload slots, indexed by `msg_slot`.
pub struct Mirror {
    slots: Vec<Held>,
    /// Highest `msg_slot` + 1 the kernel can send (CPUs × slots).
    limit: usize,
}

impl Mirror {
    pub fn new(cpus: usize) -> Self {
        Self {
            slots: Vec::new(),
            limit: cpus.min(dedup::MAX_CPUS as usize) * dedup::SLOTS as usize,
        }
    }

    /// A full record kept by the kernel as (`slot`, `seq`): holds its payload, in place
    /// of the slot's last one. Two records of a slot with one name (a tie of their
    /// clocks' low 32 bits) leave the slot empty rather than risk a wrong payload.
    pub fn remember(&mut self, slot: u16, seq: u32, payload: &[u8]) -> bool {
        let i = usize::from(slot);
        if i >= self.limit || seq == 0 || payload.len() > dedup::MAX_PAYLOAD as usize {
            return false;
        }
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, Held::default);
        }
        let held = &mut self.slots[i];
        if held.seq == seq {
            held.valid = false;
            return false;
        }
        held.seq = seq;
        held.valid = true;
        held.payload.clear();
        held.payload.extend_from_slice(payload);
        true
    }

    /// The payload a compact record names, if it is still held.
    pub fn payload(&self, slot: u16, seq: u32) -> Option<&[u8]> {
        let held = self.slots.get(usize::from(slot))?;
        (held.valid && held.seq == seq).then_some(held.payload.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_latest_payload_of_each_slot() {
        let mut m = Mirror::new(2);
        assert!(m.remember(3, 1, b"first"));
        assert!(m.remember(70, 1, b"other cpu"));
        assert_eq!(m.payload(3, 1), Some(&b"first"[..]));
        assert_eq!(m.payload(70, 1), Some(&b"other cpu"[..]));
        assert!(m.remember(3, 5, b"second"));
        // The older one is gone: its compact records are orphans.
        assert_eq!(m.payload(3, 1), None);
        assert_eq!(m.payload(3, 5), Some(&b"second"[..]));
        assert_eq!(m.payload(4, 1), None);
        assert_eq!(m.payload(3, 0), None);
    }

    #[test]
    fn one_name_for_two_payloads_empties_the_slot() {
        let mut m = Mirror::new(1);
        assert!(m.remember(0, 7, b"a"));
        // Two full records with one name: which one a compact record means is unknown.
        assert!(!m.remember(0, 7, b"b"));
        assert_eq!(m.payload(0, 7), None);
        // The next full record of the slot is held, whatever its name.
        assert!(m.remember(0, 6, b"c"));
        assert_eq!(m.payload(0, 6), Some(&b"c"[..]));
        assert_eq!(m.payload(0, 7), None);
    }

    #[test]
    fn hostile_slots_are_refused() {
        let mut m = Mirror::new(1);
        assert!(!m.remember(dedup::SLOTS as u16, 1, b"x"));
        assert!(!m.remember(u16::MAX, 1, b"x"));
        assert!(!m.remember(0, 0, b"x"));
        assert!(!m.remember(0, 1, &[0; dedup::MAX_PAYLOAD as usize + 1]));
        assert_eq!(m.payload(u16::MAX, 1), None);
    }
}
