//! Byte-level helpers shared by the whole-file codecs' payload formats: LEB128 varints, a
//! bounds-checked reader, a bounded zstd wrapper, and a panic fence around third-party decoders.
//!
//! Invariants: every reader method checks its bounds and returns `CodecError::Malformed`
//! instead of panicking; no helper allocates more than the caller's stated limit.

use super::CodecError;

/// Appends `v` as an unsigned LEB128 varint (7 bits per byte, low group first).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over a payload whose every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.remaining() {
            return Err(malformed("payload truncated"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub(crate) fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f)
                .checked_shl(shift)
                .ok_or_else(|| malformed("varint overflow"))?;
            if b & 0x80 == 0 {
                // A 10th byte may only carry the top bit of a u64.
                if shift == 63 && b > 1 {
                    return Err(malformed("varint overflow"));
                }
                return Ok(v);
            }
        }
        Err(malformed("varint too long"))
    }

    /// A varint that must fit in `usize` and not exceed `max`.
    pub(crate) fn len(&mut self, max: usize) -> Result<usize, CodecError> {
        let v = self.varint()?;
        usize::try_from(v)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| malformed("length out of range"))
    }
}

pub(crate) fn malformed(why: &str) -> CodecError {
    CodecError::Malformed(why.to_string())
}

/// zstd at `level` with a long-distance window (one frame, content size recorded). The window
/// is capped at 2^27 so that default decoders accept the frame without raising their limit.
pub(crate) fn zstd_compress(data: &[u8], level: i32) -> Result<Vec<u8>, CodecError> {
    use zstd::zstd_safe::CParameter;
    let fail = |e: std::io::Error| CodecError::Failed(e.to_string());
    let mut c = zstd::bulk::Compressor::new(level).map_err(fail)?;
    // A window larger than the input only costs memory; size it to the data.
    let wlog = (usize::BITS - data.len().max(1 << 10).leading_zeros()).clamp(10, 27);
    c.set_parameter(CParameter::WindowLog(wlog)).map_err(fail)?;
    if data.len() > 8 << 20 {
        c.set_parameter(CParameter::EnableLongDistanceMatching(true))
            .map_err(fail)?;
    }
    c.compress(data).map_err(fail)
}

/// Decompresses one zstd frame, failing if it holds more than `limit` bytes.
pub(crate) fn zstd_decompress(payload: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut d = zstd::bulk::Decompressor::new().map_err(|e| CodecError::Failed(e.to_string()))?;
    // The frame header states its content size; checking it first avoids reserving `limit`
    // bytes for a small frame.
    let cap = match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(n)) if n <= limit as u64 => n as usize,
        Ok(Some(_)) => return Err(malformed("zstd frame larger than allowed")),
        _ => return Err(malformed("zstd frame without content size")),
    };
    let out = d
        .decompress(payload, cap)
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if out.len() != cap {
        return Err(malformed("zstd frame shorter than its header says"));
    }
    Ok(out)
}

/// Runs third-party code that may panic on hostile input, turning a panic into an error so a
/// decoder never unwinds into the filesystem.
pub(crate) fn fence<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, CodecError>,
) -> Result<T, CodecError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(CodecError::Malformed(format!("{what} panicked"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_roundtrip_and_reject_overflow() {
        let vals = [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX];
        let mut buf = Vec::new();
        for v in vals {
            put_varint(&mut buf, v);
        }
        let mut r = Reader::new(&buf);
        for v in vals {
            assert_eq!(r.varint().unwrap(), v);
        }
        assert_eq!(r.remaining(), 0);
        assert!(r.varint().is_err());
        // Eleven continuation bytes, and a 10th byte with too many bits.
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        let mut big = vec![0xff; 9];
        big.push(0x02);
        assert!(Reader::new(&big).varint().is_err());
        assert!(Reader::new(&[5]).len(4).is_err());
    }

    #[test]
    fn zstd_limit_is_enforced() {
        let data = vec![7u8; 100_000];
        let z = zstd_compress(&data, 3).unwrap();
        assert_eq!(zstd_decompress(&z, 100_000).unwrap(), data);
        assert!(zstd_decompress(&z, 99_999).is_err());
        assert!(zstd_decompress(&z[..z.len() / 2], 100_000).is_err());
    }
}
