//! Pure offset/block arithmetic. Files are cut into fixed logical blocks of `BLOCK` bytes.

/// Logical block size: 128 KiB, as btrfs compresses. Changing it changes the on-disk format.
pub const BLOCK: usize = 128 * 1024;
pub const BLOCK_U64: u64 = BLOCK as u64;
/// Largest file offset accepted (the kernel's own limit for 64-bit files).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// The part of one block that a byte range touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    pub idx: u64,
    /// Offset inside the block.
    pub skip: usize,
    pub len: usize,
    /// Offset of this span inside the caller's buffer.
    pub buf_off: usize,
}

impl BlockSpan {
    pub fn covers_block(&self) -> bool {
        self.skip == 0 && self.len == BLOCK
    }
}

/// Split `off..off+len` into per-block spans, in order.
pub fn spans(off: u64, len: usize) -> impl Iterator<Item = BlockSpan> {
    let mut pos = off;
    let end = off.saturating_add(len as u64);
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let idx = pos / BLOCK_U64;
        let skip = (pos % BLOCK_U64) as usize;
        let n = ((BLOCK - skip) as u64).min(end - pos) as usize;
        let s = BlockSpan {
            idx,
            skip,
            len: n,
            buf_off: (pos - off) as usize,
        };
        pos += n as u64;
        Some(s)
    })
}

/// Number of blocks needed to hold `size` bytes.
pub fn blocks_for(size: u64) -> u64 {
    size.div_ceil(BLOCK_U64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_range_exactly() {
        let cases = [
            (0u64, 0usize),
            (0, 1),
            (5, BLOCK),
            (BLOCK_U64 - 1, 2),
            (3 * BLOCK_U64, 3 * BLOCK),
            (7, 10 * BLOCK + 13),
        ];
        for (off, len) in cases {
            let v: Vec<_> = spans(off, len).collect();
            assert_eq!(v.iter().map(|s| s.len).sum::<usize>(), len);
            let mut pos = off;
            for s in &v {
                assert_eq!(s.idx * BLOCK_U64 + s.skip as u64, pos);
                assert_eq!(s.buf_off as u64, pos - off);
                assert!(s.skip + s.len <= BLOCK);
                pos += s.len as u64;
            }
        }
        assert!(spans(0, BLOCK).next().is_some_and(|s| s.covers_block()));
        assert_eq!(blocks_for(0), 0);
        assert_eq!(blocks_for(1), 1);
        assert_eq!(blocks_for(BLOCK_U64), 1);
        assert_eq!(blocks_for(BLOCK_U64 + 1), 2);
    }
}
