//! Codecs: pure functions from a raw block to a payload and back, behind one small trait.
//!
//! Invariants:
//! - A `CodecId` is persisted in every stored block; ids are never reused or renumbered.
//! - `decode` depends only on the payload, the stored params and the raw length (never on the
//!   current policy or configuration) and returns `Err` on malformed input; it never panics.
//! - Codecs know nothing of the store, the engine or FUSE.
//! - A `Granularity::WholeFile` codec is only ever handed a complete file (never a block of
//!   one); its `raw_len` is the file length, and it refuses (`Err`) inputs above `max_len`.
//! - The whole-file codecs (JPEG, DEFLATE, FLAC) verify their own round trip inside `encode`:
//!   an `Ok` means `decode` gives back the input bit for bit. Their decoders wrap third-party
//!   code in `catch_unwind` (`wire::fence`), so the build must keep `panic = "unwind"`.
//! - Whole-file codecs refuse input that is not their format with `Err`; the caller then keeps
//!   a block codec. They do not compare themselves with zstd: choosing the smallest is the
//!   caller's job (see `examples/codec_ratio.rs`).

mod audio;
mod cm;
mod deflate;
mod deflate_tokens;
mod exec;
mod jpeg;
mod learned_image;
mod lossy_audio;
mod lossy_avif;
mod lossy_image;
pub(crate) mod pixels;
mod raw;
#[cfg(test)]
pub(crate) mod testdata;
mod wire;
mod xz_recode;
mod zstd;
mod zstd_dict;
mod zstd_long;

pub use self::audio::Flac;
pub use self::cm::{ContextMix, ContextMixBlock, MAX_LEN as CM_MAX_LEN};
pub use self::deflate::Deflate;
pub use self::deflate_tokens::{
    analyze as deflate_tokens_analyze, plain_coding as deflate_tokens_plain_coding,
    rebuild as deflate_tokens_rebuild, rebuild_tokens as deflate_tokens_rebuild_tokens,
    set_plain_coding as deflate_tokens_set_plain_coding, DeflateTokens,
    IMAGE_LEVEL as DEFLATE_TOKENS_IMAGE_LEVEL, PLAIN_IMAGE as DEFLATE_TOKENS_PLAIN_IMAGE,
};
pub use self::exec::Exec;
pub use self::jpeg::Jpeg;
pub use self::learned_image::{bench as learned_bench, LearnedImage};
pub use self::lossy_audio::{audio_matches_layout, opus_bitrate, pcm_snr, WavOpus};
pub use self::lossy_avif::{bench as avif_bench, ImageAvif};
pub use self::lossy_image::{image_psnr, ImageWebp};
pub use self::raw::Raw;
pub use self::xz_recode::XzRecode;
pub use self::zstd::Zstd;
pub use self::zstd_dict::{
    describe as describe_zstd_dict, level_of as zstd_dict_level, ZstdDict, DICT_JSON, DICT_SOURCE,
    DICT_TEXT,
};
pub use self::zstd_long::ZstdLong;

/// Thin public wrappers over the PNG pixel coder (`pixels`) for examples and benchmarks.
#[doc(hidden)]
pub mod pixels_bench {
    use super::pixels::{self, Ihdr};
    use super::CodecError;

    /// `(width, height, bit_depth, color_type, interlace)` of a whole PNG file.
    pub fn parse_ihdr(png: &[u8]) -> Option<(u32, u32, u8, u8, u8)> {
        pixels::parse_ihdr(png).map(|h| (h.width, h.height, h.bit_depth, h.color_type, h.interlace))
    }

    /// `encode_idat_plain` for the PNG file `png`'s header.
    pub fn encode(filtered: &[u8], png: &[u8]) -> Result<Vec<u8>, CodecError> {
        let h: Ihdr = pixels::parse_ihdr(png).ok_or(CodecError::NotWorthIt)?;
        pixels::encode_idat_plain(filtered, &h)
    }

    /// `decode_idat_plain` for the PNG file `png`'s header.
    pub fn decode(payload: &[u8], png: &[u8], expect_len: usize) -> Result<Vec<u8>, CodecError> {
        let h: Ihdr = pixels::parse_ihdr(png).ok_or(CodecError::NotWorthIt)?;
        pixels::decode_idat_plain(payload, &h, expect_len)
    }
}

use std::collections::HashMap;
use std::sync::Arc;

/// Stable, persisted codec identifier.
pub type CodecId = u16;

/// Identity: bytes stored as they are.
pub const RAW: CodecId = 0;
/// zstd, any level; the level is recorded in the block params.
pub const ZSTD: CodecId = 1;
/// JPEG recompressed with lepton_jpeg (whole file).
pub const JPEG: CodecId = 2;
/// gzip / zip / PNG with their deflate streams re-encoded by preflate-rs, then zstd (whole file).
pub const DEFLATE: CodecId = 3;
/// PCM WAV with its samples FLAC-coded, header and trailing chunks verbatim (whole file).
pub const FLAC: CodecId = 4;
/// zstd over a whole file with a window the size of the file (text at max/archive levels).
pub const ZSTD_LONG: CodecId = 5;
/// zstd with a trained dictionary compiled into the binary; params name the dictionary.
pub const ZSTD_DICT: CodecId = 6;
/// ELF/PE executables: LZMA2 behind a branch/call/jump filter for their machine (whole file).
pub const EXEC: CodecId = 7;
/// gzip / zip / PNG with each deflate stream replaced by its plain text and its token choices
/// predicted from that text (fast exact rebuild), then zstd (whole file).
pub const DEFLATE_TOKENS: CodecId = 8;
/// Context mixing (a bitwise predictor and an arithmetic coder) over a whole text-like file,
/// primed with a trained prior (`level=archive`).
pub const CM: CodecId = 9;
/// Context mixing over one block, each block on its own from the class's prior (text-like
/// files too large for one `CM` object, at `level=archive`).
pub const CM_BLOCK: CodecId = 10;
/// Lossy: an 8-bit PNG's (or binary PNM's) pixels as WebP, served as a PNG of the
/// reconstructed pixels with the original's ancillary chunks (whole file; only under
/// `lossy=image:…`).
pub const IMAGE_WEBP: CodecId = 11;
/// Lossy: a 16-bit PCM WAV's samples as Opus at the bitrate its policy's q names, served as
/// a WAV of the decoded samples with the original header and tail (whole file; only under
/// `lossy=audio:q=N`).
pub const WAV_OPUS: CodecId = 12;
/// Lossy: an 8-bit RGB PNG's (or P6 PNM's) pixels coded by a learned hyperprior model with
/// integer-exact decoder networks, served as a PNG like `IMAGE_WEBP` (whole file; only under
/// `lossy=image:…`; the payload names its model by hash).
pub const IMAGE_LEARNED: CodecId = 13;
/// Lossy: an 8-bit PNG's (or binary PNM's) pixels as one AV1 still frame (10-bit 4:4:4 of an
/// exactly invertible integer YCoCg; grey as monochrome; alpha losslessly beside), served as a
/// PNG like `IMAGE_WEBP` (whole file; only under `lossy=image:…`).
pub const IMAGE_AVIF: CodecId = 14;
/// xz streams inside a file (`.tar.xz`, Debian packages) rebuilt exactly by liblzma from their
/// plain content, whose JPEG / PNG / gzip / zip / WAV tar members are coded by codecs 2, 3 and
/// 4 and the rest by one xz stream (whole file; `max`/`archive` only: decoding runs xz's encoder).
pub const XZ_RECODE: CodecId = 15;

/// What unit of data a codec works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// Any block, independently of its neighbours.
    Block,
    /// A whole file in one call, up to `max_len` bytes (format parsers need the whole container).
    WholeFile { max_len: usize },
}

/// What a codec may be asked to do when encoding.
#[derive(Clone, Debug)]
pub struct EncodeParams {
    /// Codec-specific effort (zstd level); for lossy image codecs, the PSNR target in
    /// hundredths of a dB; for lossy audio codecs, the policy's q (1..=100).
    pub level: i32,
    /// Which trained model (dictionary, network) to use, for codecs that have several; 0 is
    /// the codec's default. A codec records the model it used in the block params, so decoding
    /// never depends on what the caller asked for.
    pub model: u32,
}

impl EncodeParams {
    /// Effort `level` with the codec's default model.
    pub fn level(level: i32) -> Self {
        EncodeParams { level, model: 0 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Output would not be smaller than the input: the caller falls back to the next candidate.
    #[error("encoding does not pay")]
    NotWorthIt,
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("decoded length {got} differs from the recorded {want}")]
    Length { got: usize, want: usize },
    #[error("unknown codec id {0}")]
    Unknown(CodecId),
    #[error("codec failure: {0}")]
    Failed(String),
}

impl CodecError {
    /// `Length` unless a decoder produced exactly the recorded length.
    pub(crate) fn check_len(got: usize, want: usize) -> Result<(), CodecError> {
        if got != want {
            return Err(CodecError::Length { got, want });
        }
        Ok(())
    }
}

/// Refuse a whole-file input above a codec's size limit (`what` names the format).
pub(crate) fn check_whole_len(raw: &[u8], max: usize, what: &str) -> Result<(), CodecError> {
    if raw.len() > max {
        return Err(CodecError::Failed(format!(
            "{} bytes exceeds the {max}-byte {what}limit",
            raw.len()
        )));
    }
    Ok(())
}

/// One compression method. Implementations are stateless or internally synchronized.
pub trait Codec: Send + Sync {
    fn id(&self) -> CodecId;
    fn name(&self) -> &'static str;
    /// Lossy codecs may only be chosen where a policy allows them.
    fn is_lossless(&self) -> bool {
        true
    }
    /// Whether the codec can encode on this machine (a codec that needs a runtime or a model
    /// that is missing says why); an unavailable codec is never chosen, not an error.
    fn availability(&self) -> Result<(), String> {
        Ok(())
    }
    /// Lossy codecs: the length of what `decode` gives for `payload` (a reconstruction, whose
    /// length differs from the input's and must be known before the block is stored).
    /// Lossless codecs: None (the input's length).
    fn decoded_len(&self, _payload: &[u8], _params: u32) -> Result<Option<usize>, CodecError> {
        Ok(None)
    }
    /// What `encode` expects to be handed: a block, or a whole file.
    fn granularity(&self) -> Granularity {
        Granularity::Block
    }
    /// Encode `raw` into `out` (cleared first); returns the params to store with the block.
    fn encode(
        &self,
        raw: &[u8],
        params: &EncodeParams,
        out: &mut Vec<u8>,
    ) -> Result<u32, CodecError>;
    /// Decode `payload` into `out` (cleared first); `out.len()` must equal `raw_len` on success.
    fn decode(
        &self,
        payload: &[u8],
        params: u32,
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError>;
}

/// All codecs this build knows, by id, and which of them may encode here.
///
/// Invariant: every known codec decodes whatever its availability (stored data stays
/// readable); availability only governs what is chosen for new encodings. Raw is always
/// available: it is every choice's fallback.
#[derive(Clone)]
pub struct Registry {
    by_id: HashMap<CodecId, Arc<dyn Codec>>,
    /// Codecs that must not encode, with the reason (configuration, missing runtime).
    unavailable: HashMap<CodecId, String>,
}

impl Default for Registry {
    fn default() -> Self {
        let mut r = Registry {
            by_id: HashMap::new(),
            unavailable: HashMap::new(),
        };
        r.add(Arc::new(Raw));
        r.add(Arc::new(Zstd));
        r.add(Arc::new(Jpeg));
        r.add(Arc::new(Deflate));
        r.add(Arc::new(Flac));
        r.add(Arc::new(ZstdLong));
        r.add(Arc::new(ZstdDict));
        r.add(Arc::new(Exec));
        r.add(Arc::new(DeflateTokens));
        r.add(Arc::new(ContextMix));
        r.add(Arc::new(ContextMixBlock));
        r.add(Arc::new(ImageWebp));
        r.add(Arc::new(WavOpus));
        r.add(Arc::new(LearnedImage::default()));
        r.add(Arc::new(ImageAvif));
        r.add(Arc::new(XzRecode));
        r
    }
}

impl Registry {
    pub fn add(&mut self, c: Arc<dyn Codec>) {
        if let Err(why) = c.availability() {
            tracing::warn!(
                codec = c.name(),
                "codec unavailable, new data will use others: {why}"
            );
            self.unavailable.insert(c.id(), why);
        }
        self.by_id.insert(c.id(), c);
    }

    /// The default registry with the codecs named in `disabled` (by name) made unavailable
    /// for encoding. Unknown names are refused with the list of known ones.
    pub fn with_disabled(disabled: &[String]) -> Result<Registry, String> {
        let mut r = Registry::default();
        for name in disabled {
            let id = r
                .by_id
                .values()
                .find(|c| c.name() == name)
                .map(|c| c.id())
                .ok_or_else(|| {
                    let mut known: Vec<&str> = r.by_id.values().map(|c| c.name()).collect();
                    known.sort_unstable();
                    format!("unknown codec {name:?} (known: {})", known.join(", "))
                })?;
            if id == RAW {
                return Err(
                    "codec \"raw\" cannot be disabled: it is every choice's fallback".into(),
                );
            }
            r.unavailable.insert(id, "disabled by configuration".into());
        }
        Ok(r)
    }

    /// Whether codec `id` may be chosen for new encodings.
    pub fn available(&self, id: CodecId) -> bool {
        self.by_id.contains_key(&id) && !self.unavailable.contains_key(&id)
    }

    /// Codecs that may not encode here, by name, with the reason.
    pub fn unavailable(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .unavailable
            .iter()
            .map(|(id, why)| (self.name(*id), why.clone()))
            .collect();
        v.sort();
        v
    }

    pub fn get(&self, id: CodecId) -> Result<&Arc<dyn Codec>, CodecError> {
        self.by_id.get(&id).ok_or(CodecError::Unknown(id))
    }

    /// Human name of a codec id, also for ids this build does not know.
    pub fn name(&self, id: CodecId) -> String {
        match self.by_id.get(&id) {
            Some(c) => c.name().to_string(),
            None => format!("codec-{id}"),
        }
    }

    /// Decode and check the length.
    pub fn decode(
        &self,
        id: CodecId,
        payload: &[u8],
        params: u32,
        raw_len: usize,
    ) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(raw_len);
        self.get(id)?.decode(payload, params, raw_len, &mut out)?;
        CodecError::check_len(out.len(), raw_len)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_roundtrips_every_codec() {
        let r = Registry::default();
        let data: Vec<u8> = (0..100_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
            .collect();
        for id in [RAW, ZSTD] {
            let c = r.get(id).unwrap_or_else(|e| panic!("{e}"));
            let mut out = Vec::new();
            let params = c
                .encode(&data, &EncodeParams::level(3), &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
            let back = r
                .decode(id, &out, params, data.len())
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, data);
        }
        assert!(matches!(r.get(999), Err(CodecError::Unknown(999))));
    }

    #[test]
    fn whole_file_codecs_are_registered_and_roundtrip_their_samples() {
        let r = Registry::default();
        for (id, class) in [
            (JPEG, "jpeg"),
            (DEFLATE, "zip"),
            (FLAC, "wav"),
            (DEFLATE_TOKENS, "gzip"),
        ] {
            let c = r.get(id).unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(c.granularity(), Granularity::WholeFile { .. }));
            assert!(c.is_lossless());
            let data = testdata::sample(class);
            let mut out = Vec::new();
            let params = c
                .encode(&data, &EncodeParams::level(19), &mut out)
                .unwrap_or_else(|e| panic!("{class}: {e}"));
            let back = r
                .decode(id, &out, params, data.len())
                .unwrap_or_else(|e| panic!("{class}: {e}"));
            assert!(back == data, "{class}");
        }
        assert_eq!(
            r.get(ZSTD).map(|c| c.granularity()).ok(),
            Some(Granularity::Block)
        );
    }

    #[test]
    fn disabled_codecs_are_unavailable_but_still_decode() {
        let r =
            Registry::with_disabled(&["jpeg-lepton".to_string()]).unwrap_or_else(|e| panic!("{e}"));
        assert!(!r.available(JPEG));
        assert!(r.available(ZSTD) && r.available(RAW));
        assert_eq!(r.unavailable().len(), 1);
        let data = testdata::sample("jpeg");
        let mut out = Vec::new();
        let c = r.get(JPEG).unwrap_or_else(|e| panic!("{e}"));
        let params = c
            .encode(&data, &EncodeParams::level(19), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r
            .decode(JPEG, &out, params, data.len())
            .is_ok_and(|d| d == data));
        let e = Registry::with_disabled(&["nope".to_string()])
            .err()
            .unwrap_or_default();
        assert!(e.contains("unknown codec") && e.contains("zstd"), "{e}");
        assert!(Registry::with_disabled(&["raw".to_string()]).is_err());
    }

    #[test]
    fn garbage_decodes_to_error_not_panic() {
        let r = Registry::default();
        for len in [0usize, 1, 7, 100, 5000] {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            assert!(r.decode(ZSTD, &junk, 3, 131072).is_err());
            assert!(r.decode(RAW, &junk, 0, len + 1).is_err());
            for id in [
                JPEG,
                DEFLATE,
                FLAC,
                DEFLATE_TOKENS,
                CM,
                CM_BLOCK,
                IMAGE_WEBP,
                WAV_OPUS,
                IMAGE_AVIF,
            ] {
                assert!(r.decode(id, &junk, 0, 131072).is_err(), "{id} len {len}");
            }
        }
    }
}
