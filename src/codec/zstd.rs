//! zstd at any level; the level used is stored as the block's params (informative only: zstd
//! frames decode without it).

use super::{Codec, CodecError, CodecId, EncodeParams, ZSTD};

pub struct Zstd;

impl Codec for Zstd {
    fn id(&self) -> CodecId {
        ZSTD
    }
    fn name(&self) -> &'static str {
        "zstd"
    }
    fn encode(&self, raw: &[u8], p: &EncodeParams, out: &mut Vec<u8>) -> Result<u32, CodecError> {
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        // Thread-local contexts: creating a zstd context per block costs more than compressing
        // a small block.
        thread_local! {
            static CCTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
                const { std::cell::RefCell::new(None) };
        }
        let level = p.level.clamp(-7, 22);
        CCTX.with(|c| {
            let mut slot = c.borrow_mut();
            if slot.is_none() {
                *slot = Some(
                    zstd::bulk::Compressor::new(level)
                        .map_err(|e| CodecError::Failed(e.to_string()))?,
                );
            }
            let comp = slot
                .as_mut()
                .ok_or_else(|| CodecError::Failed("no zstd context".into()))?;
            comp.set_compression_level(level)
                .map_err(|e| CodecError::Failed(e.to_string()))?;
            comp.compress_to_buffer(raw, out)
                .map_err(|e| CodecError::Failed(e.to_string()))
        })?;
        if out.len() >= raw.len() {
            return Err(CodecError::NotWorthIt);
        }
        Ok(level as u32)
    }
    fn decode(
        &self,
        payload: &[u8],
        _params: u32,
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        out.clear();
        out.reserve(raw_len);
        thread_local! {
            static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                const { std::cell::RefCell::new(None) };
        }
        // Output goes into the Vec's spare capacity and is never reallocated, so a frame
        // claiming more than raw_len fails instead of allocating unboundedly.
        let n = DCTX.with(|c| {
            let mut slot = c.borrow_mut();
            if slot.is_none() {
                *slot = Some(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| CodecError::Failed(e.to_string()))?,
                );
            }
            let d = slot
                .as_mut()
                .ok_or_else(|| CodecError::Failed("no zstd context".into()))?;
            d.decompress_to_buffer(payload, out)
                .map_err(|e| CodecError::Malformed(e.to_string()))
        })?;
        CodecError::check_len(n, raw_len)
    }
}
