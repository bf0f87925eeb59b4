//! Lossless PCM WAV compression (whole file): the samples are FLAC-coded with flacenc and
//! decoded with claxon; the bytes before the samples (RIFF header, fmt and any other chunks)
//! and after them (odd tail bytes, padding, LIST/id3 chunks) are kept verbatim, so the rebuild
//! is byte-identical even for headers that a WAV writer would not reproduce (extensible format,
//! odd sizes, wrong RIFF lengths).
//!
//! Invariants:
//! - `encode` only succeeds after decoding its own payload and comparing it with the input, and
//!   only when the payload is smaller than the input (flacenc sometimes is not, notably on
//!   24-bit audio: flacenc-rs#246).
//! - `decode` checks the FLAC stream's format against the payload header and never produces
//!   more than `raw_len` bytes; claxon errors and panics become `Err`.
//!
//! Payload, format version 1 (varint = unsigned LEB128):
//! ```text
//! u8      version = 1
//! u8      bits per sample: 8 (unsigned PCM), 16 or 24 (signed little-endian PCM)
//! u8      channels (1..=8)
//! varint  H, the length of the verbatim head (every byte before the first sample)
//! varint  T, the length of the verbatim tail (every byte after the last whole frame)
//! H bytes head, T bytes tail
//! ...     a FLAC stream ("fLaC", STREAMINFO, frames) holding the interleaved samples
//! ```
//! The sample bytes are `raw_len - H - T`, a whole number of frames of `channels * bits / 8`.

use std::io::Cursor;

use flacenc::component::BitRepr;
use flacenc::error::Verify;

use super::wire::{fence, malformed, put_varint, Reader};
use super::{Codec, CodecError, CodecId, EncodeParams, Granularity, FLAC};

const VERSION: u8 = 1;
/// Samples are held as i32 while encoding (2x a 16-bit file), so keep files moderate.
const MAX_LEN: usize = 512 << 20;

pub struct Flac;

/// The PCM layout found in a WAV file and where its samples lie.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Pcm {
    pub(super) bits: u8,
    pub(super) channels: u8,
    pub(super) rate: u32,
    /// Byte range of the whole frames of samples.
    pub(super) start: usize,
    pub(super) end: usize,
}

fn le16(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?))
}
fn le32(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

/// Finds the PCM samples of a RIFF/WAVE file, or says why this codec cannot take it.
pub(super) fn parse_wav(d: &[u8]) -> Result<Pcm, &'static str> {
    if d.len() < 12 || &d[..4] != b"RIFF" || &d[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file");
    }
    let mut p = 12;
    let mut fmt: Option<(u16, u16, u32, u16, u16)> = None;
    while let (Some(id), Some(size)) = (d.get(p..p + 4), le32(d, p + 4)) {
        let body = p + 8;
        let size = size as usize;
        if id == b"fmt " {
            let f = (|| {
                let mut tag = le16(d, body)?;
                let channels = le16(d, body + 2)?;
                let rate = le32(d, body + 4)?;
                let align = le16(d, body + 12)?;
                let bits = le16(d, body + 14)?;
                if tag == 0xfffe && size >= 40 {
                    // WAVE_FORMAT_EXTENSIBLE: the sub-format GUID starts with the real tag.
                    tag = le16(d, body + 24)?;
                }
                Some((tag, channels, rate, align, bits))
            })();
            fmt = Some(f.ok_or("truncated fmt chunk")?);
        } else if id == b"data" {
            let (tag, channels, rate, align, bits) = fmt.ok_or("data chunk before fmt")?;
            if tag != 1 {
                return Err("not integer PCM");
            }
            if ![8, 16, 24].contains(&bits) {
                return Err("unsupported bits per sample");
            }
            if !(1..=8).contains(&channels) || rate == 0 || rate > 655_350 {
                return Err("unsupported channel count or rate");
            }
            if usize::from(align) != usize::from(channels) * usize::from(bits / 8) {
                return Err("block align does not match the format");
            }
            // A data chunk that claims more than the file holds (truncated or streamed WAV)
            // still has its present samples coded; the rest of the bytes stay verbatim.
            let avail = size.min(d.len() - body.min(d.len()));
            let frames = avail / usize::from(align);
            if frames == 0 {
                return Err("no samples");
            }
            return Ok(Pcm {
                bits: bits as u8,
                channels: channels as u8,
                rate,
                start: body,
                end: body + frames * usize::from(align),
            });
        }
        // Chunks are padded to an even length.
        p = body.saturating_add(size).saturating_add(size & 1);
    }
    Err("no data chunk")
}

fn to_samples(pcm: &[u8], bits: u8) -> Vec<i32> {
    match bits {
        8 => pcm.iter().map(|&b| i32::from(b) - 128).collect(),
        16 => pcm
            .chunks_exact(2)
            .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]])))
            .collect(),
        _ => pcm
            .chunks_exact(3)
            .map(|c| i32::from_le_bytes([0, c[0], c[1], c[2]]) >> 8)
            .collect(),
    }
}

impl Codec for Flac {
    fn id(&self) -> CodecId {
        FLAC
    }
    fn name(&self) -> &'static str {
        "wav-flac"
    }
    fn granularity(&self) -> Granularity {
        Granularity::WholeFile { max_len: MAX_LEN }
    }

    fn encode(&self, raw: &[u8], _p: &EncodeParams, out: &mut Vec<u8>) -> Result<u32, CodecError> {
        out.clear();
        super::check_whole_len(raw, MAX_LEN, "WAV ")?;
        let pcm = parse_wav(raw).map_err(|e| CodecError::Failed(e.to_string()))?;
        let samples = to_samples(&raw[pcm.start..pcm.end], pcm.bits);
        let flac = fence("flacenc", || {
            let config = flacenc::config::Encoder::default()
                .into_verified()
                .map_err(|e| CodecError::Failed(format!("flacenc config: {e:?}")))?;
            let source = flacenc::source::MemSource::from_samples(
                &samples,
                usize::from(pcm.channels),
                usize::from(pcm.bits),
                pcm.rate as usize,
            );
            let stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size)
                .map_err(|e| CodecError::Failed(format!("flacenc: {e:?}")))?;
            let mut sink = flacenc::bitsink::ByteSink::new();
            stream
                .write(&mut sink)
                .map_err(|e| CodecError::Failed(format!("flacenc write: {e:?}")))?;
            let mut bytes = sink.into_inner();
            fixed_block_streaminfo(&mut bytes);
            Ok(bytes)
        })?;
        drop(samples);
        let (head, tail) = (&raw[..pcm.start], &raw[pcm.end..]);
        let mut payload = vec![VERSION, pcm.bits, pcm.channels];
        put_varint(&mut payload, head.len() as u64);
        put_varint(&mut payload, tail.len() as u64);
        payload.extend_from_slice(head);
        payload.extend_from_slice(tail);
        payload.extend_from_slice(&flac);
        if payload.len() >= raw.len() {
            return Err(CodecError::NotWorthIt);
        }
        let mut check = Vec::new();
        self.decode(&payload, 0, raw.len(), &mut check)
            .map_err(|e| CodecError::Failed(format!("round trip: {e}")))?;
        if check != raw {
            return Err(CodecError::Failed("round trip differs".into()));
        }
        *out = payload;
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
            return Err(malformed("length above the codec limit"));
        }
        let mut r = Reader::new(payload);
        if r.u8()? != VERSION {
            return Err(malformed("unknown WAV payload version"));
        }
        let bits = r.u8()?;
        let channels = r.u8()?;
        if ![8, 16, 24].contains(&bits) || !(1..=8).contains(&channels) {
            return Err(malformed("bad PCM format"));
        }
        let head_len = r.len(raw_len)?;
        let tail_len = r.len(raw_len)?;
        let head = r.bytes(head_len)?;
        let tail = r.bytes(tail_len)?;
        let pcm_len = raw_len
            .checked_sub(head_len + tail_len)
            .ok_or_else(|| malformed("head and tail longer than the file"))?;
        let frame = usize::from(channels) * usize::from(bits / 8);
        if pcm_len % frame != 0 {
            return Err(malformed("sample bytes not a whole number of frames"));
        }
        let flac = r.rest();
        out.reserve(raw_len);
        out.extend_from_slice(head);
        fence("claxon", || {
            decode_samples(flac, bits, channels, pcm_len, out)
        })?;
        out.extend_from_slice(tail);
        Ok(())
    }
}

/// flacenc records the true minimum block size in STREAMINFO, which is the short last block
/// when the sample count is not a multiple of the block size; claxon (and the FLAC format for
/// fixed-blocksize streams) wants min = max with only the last block allowed to be shorter, as
/// libFLAC writes it. Sets min to max; nothing else in the stream depends on it.
fn fixed_block_streaminfo(flac: &mut [u8]) {
    // "fLaC", then a metadata block header whose low 7 bits of the first byte are the type
    // (0 = STREAMINFO), then min block size (u16 BE) and max block size (u16 BE).
    if flac.len() >= 12 && &flac[..4] == b"fLaC" && flac[4] & 0x7f == 0 {
        let (min, max) = flac.split_at_mut(10);
        min[8..10].copy_from_slice(&max[..2]);
    }
}

/// Appends exactly `pcm_len` bytes of little-endian PCM decoded from `flac` to `out`.
fn decode_samples(
    flac: &[u8],
    bits: u8,
    channels: u8,
    pcm_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let bad = |e: claxon::Error| CodecError::Malformed(format!("flac: {e}"));
    let mut reader = claxon::FlacReader::new(Cursor::new(flac)).map_err(bad)?;
    let info = reader.streaminfo();
    if info.bits_per_sample != u32::from(bits) || info.channels != u32::from(channels) {
        return Err(malformed("FLAC format differs from the payload header"));
    }
    let want_end = out.len() + pcm_len;
    let (lo, hi) = match bits {
        8 => (-128, 127),
        16 => (i32::from(i16::MIN), i32::from(i16::MAX)),
        _ => (-(1 << 23), (1 << 23) - 1),
    };
    let mut blocks = reader.blocks();
    let mut buf = Vec::new();
    while let Some(block) = blocks.read_next_or_eof(buf).map_err(bad)? {
        let n = block.duration() as usize;
        if block.channels() != u32::from(channels) {
            return Err(malformed("FLAC block channel count changed"));
        }
        if out.len() + n * usize::from(channels) * usize::from(bits / 8) > want_end {
            return Err(malformed("FLAC stream holds more samples than recorded"));
        }
        for i in 0..n {
            for ch in 0..u32::from(channels) {
                let s = block.sample(ch, i as u32);
                if !(lo..=hi).contains(&s) {
                    return Err(malformed("sample out of range"));
                }
                match bits {
                    8 => out.push((s + 128) as u8),
                    16 => out.extend_from_slice(&(s as i16).to_le_bytes()),
                    _ => out.extend_from_slice(&s.to_le_bytes()[..3]),
                }
            }
        }
        buf = block.into_buffer();
    }
    if out.len() != want_end {
        return Err(malformed("FLAC stream holds fewer samples than recorded"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testdata::{sample, samples};

    fn p() -> EncodeParams {
        EncodeParams::level(0)
    }

    #[test]
    fn real_wavs_roundtrip_bit_exact_and_shrink() {
        for (name, raw) in samples("wav") {
            let mut enc = Vec::new();
            Flac.encode(&raw, &p(), &mut enc)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(enc.len() < raw.len());
            let mut dec = Vec::new();
            Flac.decode(&enc, 0, raw.len(), &mut dec)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(dec == raw, "{name}: not bit exact");
        }
    }

    #[test]
    fn parse_finds_the_samples() {
        let raw = sample("wav");
        let pcm = parse_wav(&raw).unwrap();
        assert_eq!((pcm.bits, pcm.channels), (16, 1));
        assert_eq!(&raw[pcm.start - 8..pcm.start - 4], b"data");
        assert_eq!((pcm.end - pcm.start) % 2, 0);
    }

    #[test]
    fn odd_tails_and_truncation_roundtrip() {
        // Variants made here at run time: an extra trailing chunk, an odd byte, and a file cut
        // mid-sample (its data chunk then claims more than is present).
        let raw = sample("wav");
        let mut extra = raw.clone();
        extra.extend_from_slice(b"LIST\x04\x00\x00\x00INFO");
        let mut odd = raw.clone();
        odd.push(7);
        let cut = raw[..raw.len() / 2 + 1].to_vec();
        // Cut so that the last FLAC block holds fewer than 16 samples (claxon refuses a
        // STREAMINFO minimum below 16; see fixed_block_streaminfo).
        let pcm = parse_wav(&raw).unwrap();
        let short_last = raw[..pcm.start + 2 * (4096 + 5)].to_vec();
        for v in [extra, odd, cut, short_last] {
            let mut enc = Vec::new();
            Flac.encode(&v, &p(), &mut enc).unwrap();
            let mut dec = Vec::new();
            Flac.decode(&enc, 0, v.len(), &mut dec).unwrap();
            assert!(dec == v);
        }
    }

    #[test]
    fn other_formats_are_refused() {
        let mut enc = Vec::new();
        for class in ["jpeg", "png", "text", "gzip"] {
            assert!(
                Flac.encode(&sample(class), &p(), &mut enc).is_err(),
                "{class}"
            );
        }
        // Header only, no samples.
        let raw = sample("wav");
        let pcm = parse_wav(&raw).unwrap();
        assert!(Flac.encode(&raw[..pcm.start], &p(), &mut enc).is_err());
        // Float PCM (format tag 3) is refused, not mangled.
        let mut float = raw.clone();
        let fmt = raw.windows(4).position(|w| w == b"fmt ").unwrap();
        float[fmt + 8] = 3;
        assert!(Flac.encode(&float, &p(), &mut enc).is_err());
    }

    #[test]
    fn corrupt_payloads_decode_to_err() {
        let raw = sample("wav");
        let mut enc = Vec::new();
        Flac.encode(&raw, &p(), &mut enc).unwrap();
        let mut dec = Vec::new();
        assert!(Flac.decode(&enc, 0, raw.len() - 2, &mut dec).is_err());
        assert!(Flac.decode(&enc, 0, raw.len() + 2, &mut dec).is_err());
        for cut in [0, 1, 3, 20, enc.len() / 2, enc.len() - 1] {
            assert!(Flac.decode(&enc[..cut], 0, raw.len(), &mut dec).is_err());
        }
        for i in (0..enc.len()).step_by(enc.len() / 32 + 1) {
            let mut bad = enc.clone();
            bad[i] ^= 0xa5;
            // FLAC frames carry CRCs, but a flipped head byte is still valid data: either
            // way, no panic and never the wrong length.
            if Flac.decode(&bad, 0, raw.len(), &mut dec).is_ok() {
                assert_eq!(dec.len(), raw.len());
            }
        }
    }
}
