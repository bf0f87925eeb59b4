//! Binary arithmetic coder for the context-mixing codec: 32-bit, carry-less, driven by 12-bit
//! probabilities.
//!
//! Invariants:
//! - Integer arithmetic only: the same probabilities give the same bytes on every machine.
//! - The decoder never reads past the payload (missing bytes read as zero) and never panics:
//!   a damaged payload decodes to wrong bytes, which the caller's length and hash checks catch.

/// Encodes bits with a probability `p1` (of a 1, in 1..4095 out of 4096).
pub(super) struct Encoder<'a> {
    x1: u32,
    x2: u32,
    out: &'a mut Vec<u8>,
}

impl<'a> Encoder<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Encoder {
            x1: 0,
            x2: u32::MAX,
            out,
        }
    }

    #[inline]
    pub fn encode(&mut self, bit: u32, p1: u32) {
        let xmid = split(self.x1, self.x2, p1);
        if bit != 0 {
            self.x2 = xmid;
        } else {
            self.x1 = xmid + 1;
        }
        // Emit the leading bytes both ends agree on.
        while (self.x1 ^ self.x2) & 0xff00_0000 == 0 {
            self.out.push((self.x2 >> 24) as u8);
            self.x1 <<= 8;
            self.x2 = (self.x2 << 8) | 0xff;
        }
    }

    /// Write enough of `x1` that the decoder lands inside the final interval.
    pub fn finish(self) {
        self.out.extend_from_slice(&self.x1.to_be_bytes());
    }
}

/// The point splitting `x1..=x2` in proportion to `p1` (the lower part codes a 1).
#[inline]
fn split(x1: u32, x2: u32, p1: u32) -> u32 {
    let range = x2 - x1;
    x1 + (range >> 12) * p1 + (((range & 0xfff) * p1) >> 12)
}

pub(super) struct Decoder<'a> {
    x1: u32,
    x2: u32,
    x: u32,
    input: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        let mut d = Decoder {
            x1: 0,
            x2: u32::MAX,
            x: 0,
            input,
            pos: 0,
        };
        for _ in 0..4 {
            d.x = (d.x << 8) | d.next_byte();
        }
        d
    }

    #[inline]
    fn next_byte(&mut self) -> u32 {
        let b = self.input.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b as u32
    }

    #[inline]
    pub fn decode(&mut self, p1: u32) -> u32 {
        let xmid = split(self.x1, self.x2, p1);
        let bit = if self.x <= xmid {
            self.x2 = xmid;
            1
        } else {
            self.x1 = xmid + 1;
            0
        };
        while (self.x1 ^ self.x2) & 0xff00_0000 == 0 {
            self.x1 <<= 8;
            self.x2 = (self.x2 << 8) | 0xff;
            self.x = (self.x << 8) | self.next_byte();
        }
        bit
    }

    /// Whether the decoder consumed more than the payload held (a truncated payload).
    pub fn overran(&self) -> bool {
        self.pos > self.input.len() + 4
    }
}
