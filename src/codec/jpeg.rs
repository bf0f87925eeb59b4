//! Lossless JPEG recompression with lepton_jpeg (whole file): the payload is a lepton stream
//! exactly as `lepton_jpeg` writes it, with nothing of ours around it.
//!
//! Invariants:
//! - `encode` only succeeds after decoding its own output and comparing it with the input
//!   byte for byte (`encode_lepton_verify`), and only when the lepton stream is smaller.
//! - `decode` never writes more than `raw_len` bytes and turns any lepton error or panic into
//!   `Err`. Decoding is capped at the same image dimensions the encoder accepts, so a corrupt
//!   payload cannot ask for more memory than a real one could.

use std::io::{Cursor, Write};

use lepton_jpeg::{decode_lepton, encode_lepton_verify, EnabledFeatures, DEFAULT_THREAD_POOL};

use super::wire::fence;
use super::{Codec, CodecError, CodecId, EncodeParams, Granularity, JPEG};

/// lepton_jpeg's own file size limit.
const MAX_LEN: usize = 128 << 20;
/// lepton_jpeg's write-side dimension limit, enforced on read too.
const MAX_DIM: u32 = 16386;

pub struct Jpeg;

impl Codec for Jpeg {
    fn id(&self) -> CodecId {
        JPEG
    }
    fn name(&self) -> &'static str {
        "jpeg-lepton"
    }
    fn granularity(&self) -> Granularity {
        Granularity::WholeFile { max_len: MAX_LEN }
    }

    fn encode(&self, raw: &[u8], _p: &EncodeParams, out: &mut Vec<u8>) -> Result<u32, CodecError> {
        out.clear();
        // Cheap refusals first: lepton would refuse these too, after more work.
        super::check_whole_len(raw, MAX_LEN, "JPEG ")?;
        if !raw.starts_with(&[0xff, 0xd8, 0xff]) {
            return Err(CodecError::Failed("not a JPEG (no SOI marker)".into()));
        }
        let features = EnabledFeatures::compat_lepton_vector_write();
        let (lep, _metrics) = fence("lepton encoder", || {
            encode_lepton_verify(raw, &features, &DEFAULT_THREAD_POOL)
                .map_err(|e| CodecError::Failed(format!("lepton refused: {e}")))
        })?;
        if lep.len() >= raw.len() {
            return Err(CodecError::NotWorthIt);
        }
        *out = lep;
        Ok(0)
    }

    fn decode(
        &self,
        payload: &[u8],
        _params: u32,
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        out.clear();
        if raw_len > MAX_LEN {
            return Err(CodecError::Malformed(
                "JPEG length above the codec limit".into(),
            ));
        }
        let mut features = EnabledFeatures::compat_lepton_vector_read();
        features.max_jpeg_width = MAX_DIM;
        features.max_jpeg_height = MAX_DIM;
        let mut sink = Bounded {
            buf: std::mem::take(out),
            limit: raw_len,
        };
        let r = fence("lepton decoder", || {
            decode_lepton(
                &mut Cursor::new(payload),
                &mut sink,
                &features,
                &DEFAULT_THREAD_POOL,
            )
            .map(|_| ())
            .map_err(|e| CodecError::Malformed(format!("lepton: {e}")))
        });
        *out = sink.buf;
        r?;
        CodecError::check_len(out.len(), raw_len)?;
        Ok(())
    }
}

/// A Vec writer that fails instead of growing past `limit`, so a corrupt payload cannot make
/// the decoder produce (and allocate) more than the file it claims to be.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
}

impl Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            return Err(std::io::Error::other("decoded JPEG longer than recorded"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testdata::{sample, samples};

    fn p() -> EncodeParams {
        EncodeParams::level(0)
    }

    #[test]
    fn real_jpegs_roundtrip_bit_exact_and_shrink() {
        let files = samples("jpeg");
        assert!(!files.is_empty());
        for (name, raw) in files {
            let mut enc = Vec::new();
            Jpeg.encode(&raw, &p(), &mut enc)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(enc.len() < raw.len(), "{name} did not shrink");
            let mut dec = Vec::new();
            Jpeg.decode(&enc, 0, raw.len(), &mut dec)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(dec == raw, "{name} not bit exact");
        }
    }

    #[test]
    fn jpeg_with_trailing_garbage_roundtrips() {
        let (_, mut raw) = samples("jpeg").swap_remove(0);
        raw.extend_from_slice(b"trailing bytes appended by the test, not part of the image");
        let mut enc = Vec::new();
        // lepton keeps data after EOI verbatim.
        Jpeg.encode(&raw, &p(), &mut enc).unwrap();
        let mut dec = Vec::new();
        Jpeg.decode(&enc, 0, raw.len(), &mut dec).unwrap();
        assert!(dec == raw);
    }

    #[test]
    fn non_jpeg_is_refused_and_truncated_jpeg_roundtrips() {
        let mut enc = Vec::new();
        let png = sample("png");
        assert!(Jpeg.encode(&png, &p(), &mut enc).is_err());
        assert!(Jpeg.encode(b"", &p(), &mut enc).is_err());
        let (_, raw) = samples("jpeg").swap_remove(0);
        // Truncated in the middle of the entropy-coded data (made here, at run time): lepton
        // accepts truncated scans and must still rebuild them exactly.
        let cut = &raw[..raw.len() / 2];
        Jpeg.encode(cut, &p(), &mut enc).unwrap();
        let mut dec = Vec::new();
        Jpeg.decode(&enc, 0, cut.len(), &mut dec).unwrap();
        assert!(dec == cut);
    }

    #[test]
    fn corrupt_payloads_decode_to_err() {
        let (_, raw) = samples("jpeg").swap_remove(0);
        let mut enc = Vec::new();
        Jpeg.encode(&raw, &p(), &mut enc).unwrap();
        let mut dec = Vec::new();
        // Wrong recorded length: the bounded writer or the length check must catch it.
        assert!(Jpeg.decode(&enc, 0, raw.len() - 1, &mut dec).is_err());
        assert!(Jpeg.decode(&enc, 0, raw.len() + 1, &mut dec).is_err());
        for cut in [0, 1, 10, enc.len() / 3, enc.len() - 1] {
            assert!(Jpeg.decode(&enc[..cut], 0, raw.len(), &mut dec).is_err());
        }
        // Flipped bytes: must be Err (the stream is checked) or, at worst, not panic.
        for i in (0..enc.len()).step_by(enc.len() / 16 + 1) {
            let mut bad = enc.clone();
            bad[i] ^= 0x5a;
            if let Ok(()) = Jpeg.decode(&bad, 0, raw.len(), &mut dec) {
                assert_eq!(dec.len(), raw.len());
            }
        }
    }
}
