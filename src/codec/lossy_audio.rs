//! Lossy audio storage (codec `wav-opus`): the samples of a 16-bit PCM WAV coded with Opus at
//! a bitrate its policy's `q` names, served back as a WAV of the decoded samples with the
//! original's header and trailing bytes verbatim, so its size is the original's.
//!
//! Invariants:
//! - Decoding is deterministic on every machine: libopus is the source bundled with
//!   `opusic-sys =0.7.7`, built fixed-point without SIMD (Cargo.toml), so the decoder is integer
//!   arithmetic. `tests::golden_wav_bytes` pins the exact output of a frozen payload.
//! - Only 16-bit integer PCM, 1 or 2 channels, at an Opus rate (8, 12, 16, 24, 48 kHz) is
//!   accepted; anything else is refused with `Err` and stays lossless (FLAC).
//! - The served file has exactly the original's length: head and tail verbatim, and exactly
//!   the original number of sample frames (the encoder's look-ahead is skipped on decode).
//! - Malformed payloads give `Err`, never a panic (`wire::fence`; lengths bounded first).
//!
//! Payload (version 1): `1u8, channels u8, rate varint, frames varint (samples per channel),
//! bitrate varint (b/s), skip varint (look-ahead samples per channel), head-len varint,
//! tail-len varint, head, tail, packet-count varint, (packet-len varint, packet)*`; every
//! packet holds 20 ms. Params: the bitrate in b/s (statistics only).

use super::audio::parse_wav;
use super::wire::{self, put_varint, Reader};
use super::{check_whole_len, Codec, CodecError, EncodeParams, Granularity, WAV_OPUS};

const MAX_LEN: usize = 512 << 20;
const RATES: [u32; 5] = [8000, 12000, 16000, 24000, 48000];
/// Largest Opus packet (RFC 6716: 1275 bytes per frame; 4000 is what libopus recommends).
const MAX_PACKET: usize = 4000;

pub struct WavOpus;

/// The Opus bitrate (b/s) for quality `q` (1..=100) and `channels`: 6 + 1.26·q kb/s per
/// channel (q=100: 132 kb/s, q=75: ~100, q=50: 69, q=25: ~38 kb/s per channel).
pub fn opus_bitrate(q: u8, channels: u8) -> u32 {
    let per = 6000 + 1260 * q.clamp(1, 100) as u32;
    per * channels.max(1) as u32
}

fn opus_err(e: opus::Error) -> CodecError {
    CodecError::Failed(format!("opus: {e}"))
}

fn channels_of(n: u8) -> Result<opus::Channels, CodecError> {
    match n {
        1 => Ok(opus::Channels::Mono),
        2 => Ok(opus::Channels::Stereo),
        _ => Err(CodecError::Failed("Opus takes 1 or 2 channels".into())),
    }
}

/// Decoded samples (interleaved) of a payload, and its head and tail.
struct Decoded<'a> {
    head: &'a [u8],
    tail: &'a [u8],
    samples: Vec<i16>,
}

fn decode_payload(payload: &[u8]) -> Result<Decoded<'_>, CodecError> {
    let mut r = Reader::new(payload);
    if r.u8()? != 1 {
        return Err(wire::malformed("unknown wav-opus payload version"));
    }
    let ch = r.u8()?;
    let channels = channels_of(ch).map_err(|_| wire::malformed("channels"))?;
    let rate = r.varint()? as u32;
    if !RATES.contains(&rate) {
        return Err(wire::malformed("sample rate"));
    }
    // The output is at most the file length bound: frames × channels × 2 bytes.
    let frames = r.len(MAX_LEN / 2)?;
    let _bitrate = r.varint()?;
    let skip = r.len(rate as usize)?;
    let head_len = r.len(payload.len())?;
    let tail_len = r.len(payload.len())?;
    let head = r.bytes(head_len)?;
    let tail = r.bytes(tail_len)?;
    let n = r.len(payload.len())?;
    let frame = rate as usize / 50;
    let want = (frames + skip) * ch as usize;
    if n.saturating_mul(frame) * (ch as usize) < want {
        return Err(wire::malformed("too few packets"));
    }
    let samples = wire::fence("libopus decode", || {
        let mut dec = opus::Decoder::new(rate, channels).map_err(opus_err)?;
        let mut out: Vec<i16> = Vec::with_capacity(want.min(MAX_LEN));
        let mut buf = vec![0i16; frame * ch as usize];
        for _ in 0..n {
            let len = r.len(MAX_PACKET)?;
            let pkt = r.bytes(len)?;
            let got = dec.decode(pkt, &mut buf, false).map_err(opus_err)?;
            if got != frame {
                return Err(wire::malformed("packet is not 20 ms"));
            }
            out.extend_from_slice(&buf[..got * ch as usize]);
            if out.len() > want + buf.len() {
                return Err(wire::malformed("more packets than samples"));
            }
        }
        if r.remaining() != 0 {
            return Err(wire::malformed("trailing bytes"));
        }
        if out.len() < want {
            return Err(wire::malformed("too few samples"));
        }
        Ok(out[skip * ch as usize..want].to_vec())
    })?;
    Ok(Decoded {
        head,
        tail,
        samples,
    })
}

fn write_wav(d: &Decoded<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.head.len() + d.samples.len() * 2 + d.tail.len());
    out.extend_from_slice(d.head);
    for s in &d.samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.extend_from_slice(d.tail);
    out
}

/// Signal-to-noise ratio in dB of `decoded` against `original` (16-bit PCM sample bytes).
pub fn pcm_snr(original: &[u8], decoded: &[u8]) -> f64 {
    let s = |b: &[u8]| -> Vec<i64> {
        b.chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
            .collect()
    };
    let (a, b) = (s(original), s(decoded));
    let sig: f64 = a.iter().map(|&x| (x * x) as f64).sum();
    let noise: f64 = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| ((x - y) * (x - y)) as f64)
        .sum();
    if noise == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (sig.max(1.0) / noise).log10()
}

/// Whether `decoded` is a WAV this codec could have served for `original`: same length,
/// same bytes outside the samples (the quality is set by the bitrate, see `opus_bitrate`).
pub fn audio_matches_layout(original: &[u8], decoded: &[u8]) -> bool {
    let Ok(p) = parse_wav(original) else {
        return false;
    };
    original.len() == decoded.len()
        && original[..p.start] == decoded[..p.start]
        && original[p.end..] == decoded[p.end..]
}

impl Codec for WavOpus {
    fn id(&self) -> super::CodecId {
        WAV_OPUS
    }

    fn name(&self) -> &'static str {
        "wav-opus"
    }

    fn is_lossless(&self) -> bool {
        false
    }

    fn granularity(&self) -> Granularity {
        Granularity::WholeFile { max_len: MAX_LEN }
    }

    fn decoded_len(&self, payload: &[u8], _params: u32) -> Result<Option<usize>, CodecError> {
        Ok(Some(write_wav(&decode_payload(payload)?).len()))
    }

    /// `params.level`: the policy's q (1..=100), mapped to a bitrate by `opus_bitrate`.
    fn encode(
        &self,
        raw: &[u8],
        params: &EncodeParams,
        out: &mut Vec<u8>,
    ) -> Result<u32, CodecError> {
        check_whole_len(raw, MAX_LEN, "WAV ")?;
        let q = u8::try_from(params.level)
            .ok()
            .filter(|q| (1..=100).contains(q))
            .ok_or_else(|| {
                CodecError::Failed(format!("audio q {} out of 1..=100", params.level))
            })?;
        let pcm = parse_wav(raw).map_err(|e| CodecError::Failed(e.to_string()))?;
        if pcm.bits != 16 || !RATES.contains(&pcm.rate) {
            return Err(CodecError::Failed(
                "Opus takes 16-bit PCM at 8, 12, 16, 24 or 48 kHz".into(),
            ));
        }
        let ch = pcm.channels;
        let channels = channels_of(ch)?;
        let samples: Vec<i16> = raw[pcm.start..pcm.end]
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        let frames = samples.len() / ch as usize;
        let bitrate = opus_bitrate(q, ch);
        let frame = pcm.rate as usize / 50;
        let (skip, packets) = wire::fence("libopus encode", || {
            let mut enc = opus::Encoder::new(pcm.rate, channels, opus::Application::Audio)
                .map_err(opus_err)?;
            enc.set_bitrate(opus::Bitrate::Bits(bitrate as i32))
                .map_err(opus_err)?;
            enc.set_complexity(10).map_err(opus_err)?;
            let skip = enc.get_lookahead().map_err(opus_err)?.max(0) as usize;
            // Zeros after the end flush the look-ahead, then fill the last packet.
            let total = (frames + skip).div_ceil(frame) * frame;
            let mut input = samples.clone();
            input.resize(total * ch as usize, 0);
            let mut packets = Vec::with_capacity(total / frame);
            let mut buf = vec![0u8; MAX_PACKET];
            for chunk in input.chunks_exact(frame * ch as usize) {
                let n = enc.encode(chunk, &mut buf).map_err(opus_err)?;
                packets.push(buf[..n].to_vec());
            }
            Ok((skip, packets))
        })?;
        out.clear();
        out.extend_from_slice(&[1, ch]);
        put_varint(out, pcm.rate as u64);
        put_varint(out, frames as u64);
        put_varint(out, bitrate as u64);
        put_varint(out, skip as u64);
        put_varint(out, pcm.start as u64);
        put_varint(out, (raw.len() - pcm.end) as u64);
        out.extend_from_slice(&raw[..pcm.start]);
        out.extend_from_slice(&raw[pcm.end..]);
        put_varint(out, packets.len() as u64);
        for p in &packets {
            put_varint(out, p.len() as u64);
            out.extend_from_slice(p);
        }
        if out.len() >= raw.len() {
            return Err(CodecError::NotWorthIt);
        }
        // The served file must have the original's length (checked, not assumed).
        let back = write_wav(&decode_payload(out)?);
        if !audio_matches_layout(raw, &back) {
            return Err(CodecError::Failed("decoded WAV layout differs".into()));
        }
        Ok(bitrate)
    }

    fn decode(
        &self,
        payload: &[u8],
        _params: u32,
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let wav = write_wav(&decode_payload(payload)?);
        if wav.len() != raw_len {
            return Err(CodecError::Length {
                got: wav.len(),
                want: raw_len,
            });
        }
        *out = wav;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real 48 kHz mono WAV sample (Debian alsa-utils).
    fn sample() -> Vec<u8> {
        super::super::testdata::samples("wav")
            .into_iter()
            .map(|(_, b)| b)
            .find(|b| parse_wav(b).is_ok_and(|p| p.rate == 48000 && p.bits == 16))
            .unwrap_or_else(|| panic!("no 48 kHz 16-bit WAV in tests/data/wav"))
    }

    #[test]
    fn round_trip_keeps_layout_and_length_and_sounds_close() {
        let wav = sample();
        let p = parse_wav(&wav).unwrap_or_else(|e| panic!("{e}"));
        let mut sizes = Vec::new();
        for q in [20u8, 60, 100] {
            let mut out = Vec::new();
            let br = WavOpus
                .encode(&wav, &EncodeParams::level(q as i32), &mut out)
                .unwrap_or_else(|e| panic!("q {q}: {e}"));
            assert_eq!(br, opus_bitrate(q, 1));
            let mut back = Vec::new();
            WavOpus
                .decode(&out, br, wav.len(), &mut back)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back.len(), wav.len());
            assert!(audio_matches_layout(&wav, &back));
            let snr = pcm_snr(&wav[p.start..p.end], &back[p.start..p.end]);
            // Opus is perceptual, not waveform-exact, but at these rates the waveform
            // stays close (a misaligned decode would give about 0 dB or less).
            assert!(snr > 8.0, "q {q}: SNR {snr:.1} dB");
            sizes.push(out.len());
        }
        assert!(sizes[0] < sizes[1] && sizes[1] < sizes[2], "{sizes:?}");
    }

    /// A frozen payload must keep decoding to these exact bytes (any machine, any build):
    /// `IDCFS_WRITE_GOLDEN=1` rewrites the payload from the sample.
    #[test]
    fn golden_wav_bytes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/codec-golden/wav-opus-v1.payload"
        );
        if std::env::var_os("IDCFS_WRITE_GOLDEN").is_some() {
            let mut out = Vec::new();
            WavOpus
                .encode(&sample(), &EncodeParams::level(50), &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(path, &out).unwrap_or_else(|e| panic!("{e}"));
        }
        let payload = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut back = Vec::new();
        WavOpus
            .decode(&payload, 0, GOLDEN_LEN, &mut back)
            .unwrap_or_else(|e| panic!("{e}"));
        let h = blake3::hash(&back).to_hex().to_string();
        assert_eq!((back.len(), h.as_str()), (GOLDEN_LEN, GOLDEN_HASH));
    }

    const GOLDEN_LEN: usize = 137134;
    const GOLDEN_HASH: &str = "631dfef9cd98bffbcaf680c56b40b95833997b0360f6d6fb0daa644de934ad3e";

    #[test]
    fn refusals_and_garbage() {
        let wav = sample();
        let mut out = Vec::new();
        assert!(WavOpus
            .encode(&wav, &EncodeParams::level(0), &mut out)
            .is_err());
        assert!(WavOpus
            .encode(b"RIFF....WAVE", &EncodeParams::level(50), &mut out)
            .is_err());
        WavOpus
            .encode(&wav, &EncodeParams::level(50), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut back = Vec::new();
        for cut in [0, 1, 10, out.len() / 2, out.len() - 1] {
            assert!(WavOpus
                .decode(&out[..cut], 0, wav.len(), &mut back)
                .is_err());
        }
        for i in (0..out.len()).step_by(97) {
            let mut bad = out.clone();
            bad[i] ^= 0xa5;
            let _ = WavOpus.decode(&bad, 0, wav.len(), &mut back);
        }
    }
}
