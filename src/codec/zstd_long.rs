//! Whole-file zstd with a window the size of the file (long-distance matching for large
//! files): for text-like files at the strongest levels, where matches span far more than one
//! 128 KiB block.

use super::wire::{zstd_compress, zstd_decompress};
use super::{Codec, CodecError, CodecId, EncodeParams, Granularity, ZSTD_LONG};

pub struct ZstdLong;

/// Largest file encoded as one frame (its window is capped at 128 MiB).
const MAX_LEN: usize = 128 << 20;

impl Codec for ZstdLong {
    fn id(&self) -> CodecId {
        ZSTD_LONG
    }
    fn name(&self) -> &'static str {
        "zstd-long"
    }
    fn granularity(&self) -> Granularity {
        Granularity::WholeFile { max_len: MAX_LEN }
    }
    fn encode(&self, raw: &[u8], p: &EncodeParams, out: &mut Vec<u8>) -> Result<u32, CodecError> {
        super::check_whole_len(raw, MAX_LEN, "zstd-long ")?;
        let level = p.level.clamp(1, 22);
        let z = zstd_compress(raw, level)?;
        if z.len() >= raw.len() {
            return Err(CodecError::NotWorthIt);
        }
        // Lossless codecs verify their own round trip.
        if zstd_decompress(&z, raw.len())? != raw {
            return Err(CodecError::Failed("zstd-long round trip mismatch".into()));
        }
        *out = z;
        Ok(level as u32)
    }
    fn decode(
        &self,
        payload: &[u8],
        _params: u32,
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let d = zstd_decompress(payload, raw_len)?;
        CodecError::check_len(d.len(), raw_len)?;
        *out = d;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let text: Vec<u8> = (0..400_000u32)
            .flat_map(|i| format!("line {} of a log\n", i % 977).into_bytes())
            .collect();
        let mut out = Vec::new();
        let p = ZstdLong
            .encode(&text, &EncodeParams::level(9), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.len() < text.len() / 10);
        let mut back = Vec::new();
        ZstdLong
            .decode(&out, p, text.len(), &mut back)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(back == text);
        assert!(ZstdLong
            .decode(&out[..out.len() / 2], p, text.len(), &mut back)
            .is_err());
        assert!(ZstdLong.decode(&out, p, text.len() - 1, &mut back).is_err());
    }
}
