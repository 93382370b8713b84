//! The byte format of the fuzz inputs that are sequences (targets `decode`, `tcp` and
//! `correlate`): operations one after the other, each starting with a tag byte. Every byte
//! string is a valid input (the tag is taken modulo the number of kinds, a record cut short
//! takes what is left), so the fuzzer never wastes runs on rejected inputs.
//!
//! ```text
//! frame:  tag≡0  link:u8  cut:u16  len:u16  bytes[len]   a captured frame; `cut` bytes of it
//!                                                      were left out by the snaplen
//! tick:   tag≡1  ms:u16                                  time passes
//! custom: tag≡2  len:u8  bytes[len]                      a record the target builds itself
//!                                                      (with `arbitrary`) from these bytes
//! ```
//! Integers are big-endian. Std only: `cargo xtask fuzz` includes this file to write seeds.

/// Link types, by the index a frame record carries (taken modulo their number).
pub const LINK_ETHERNET: u8 = 0;
pub const LINK_RAW_IP: u8 = 1;
pub const LINK_SLL: u8 = 2;
pub const LINK_SLL2: u8 = 3;
pub const LINK_NULL: u8 = 4;
pub const LINK_LOOP: u8 = 5;
pub const LINKS: u8 = 6;

const FRAME: u8 = 0;
const TICK: u8 = 1;
const CUSTOM: u8 = 2;
const KINDS: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Frame { link: u8, cut: u16, bytes: &'a [u8] },
    Tick { ms: u16 },
    Custom(&'a [u8]),
}

/// The operations of an input, in order.
pub struct Ops<'a>(&'a [u8]);

impl<'a> Ops<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Self(input)
    }

    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

impl<'a> Iterator for Ops<'a> {
    type Item = Op<'a>;

    fn next(&mut self) -> Option<Op<'a>> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.byte() % KINDS {
            FRAME => {
                let (link, cut, len) = (self.byte() % LINKS, self.u16(), self.u16());
                Op::Frame {
                    link,
                    cut,
                    bytes: self.take(usize::from(len)),
                }
            }
            TICK => Op::Tick { ms: self.u16() },
            _ => {
                let len = self.byte();
                Op::Custom(self.take(usize::from(len)))
            }
        })
    }
}

/// Appends a frame record; frames longer than a record holds are cut, and the rest
/// counted as cut by the snaplen.
pub fn frame(out: &mut Vec<u8>, link: u8, cut: usize, bytes: &[u8]) {
    let len = bytes.len().min(usize::from(u16::MAX));
    let cut = (cut + bytes.len() - len).min(usize::from(u16::MAX));
    out.extend([FRAME, link]);
    out.extend((cut as u16).to_be_bytes());
    out.extend((len as u16).to_be_bytes());
    out.extend(&bytes[..len]);
}

/// Appends a tick record of `ms` milliseconds (at most 65.5 s per record).
pub fn tick(out: &mut Vec<u8>, ms: u64) {
    out.push(TICK);
    out.extend((ms.min(u64::from(u16::MAX)) as u16).to_be_bytes());
}

/// Appends a custom record (at most 255 bytes of it).
pub fn custom(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len().min(usize::from(u8::MAX));
    out.extend([CUSTOM, len as u8]);
    out.extend(&bytes[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut input = Vec::new();
        frame(&mut input, LINK_SLL2, 7, b"abc");
        tick(&mut input, 1500);
        custom(&mut input, b"xy");
        tick(&mut input, 1 << 20);
        let ops: Vec<Op> = Ops::new(&input).collect();
        assert_eq!(
            ops,
            [
                Op::Frame {
                    link: LINK_SLL2,
                    cut: 7,
                    bytes: b"abc"
                },
                Op::Tick { ms: 1500 },
                Op::Custom(b"xy"),
                Op::Tick { ms: u16::MAX },
            ]
        );
    }

    #[test]
    fn any_bytes_parse() {
        // Tag 3 is a frame (3 mod 3), link 9 is 3, cut 0x0102, length 0xffff of which 1 is there.
        let ops: Vec<Op> = Ops::new(&[3, 9, 1, 2, 0xff, 0xff, 42]).collect();
        assert_eq!(
            ops,
            [Op::Frame {
                link: 3,
                cut: 0x0102,
                bytes: &[42]
            }]
        );
        assert_eq!(Ops::new(&[1]).collect::<Vec<_>>(), [Op::Tick { ms: 0 }]);
    }
}
