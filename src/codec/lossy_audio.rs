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
//!
//! Payload version 2 (AIFF, whose samples are big-endian): `2u8, order u8 (1: big-endian),
//! then exactly as version 1`. WAVs are still written as version 1, so their payloads do not
//! change. Only plain AIFF (not AIFF-C) with 16-bit samples and an SSND chunk whose offset is
//! 0 is accepted; its header and trailing chunks are kept verbatim like a WAV's.

use super::audio::{parse_wav, Pcm};
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
    /// Samples served big-endian (AIFF) rather than little-endian (WAV).
    be: bool,
}

fn be16(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(d.get(at..at + 2)?.try_into().ok()?))
}
fn be32(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

/// An integral sample rate from an 80-bit IEEE extended float (AIFF's COMM chunk); None when
/// it is not a whole number below 2^32.
fn extended_rate(b: &[u8]) -> Option<u32> {
    let exp = (be16(b, 0)? & 0x7fff) as i32;
    let mant = u64::from_be_bytes(b.get(2..10)?.try_into().ok()?);
    if be16(b, 0)? & 0x8000 != 0 || mant == 0 {
        return None;
    }
    let shift = 16383 + 63 - exp;
    if !(0..64).contains(&shift) || mant & ((1u64 << shift) - 1) != 0 {
        return None;
    }
    u32::try_from(mant >> shift).ok()
}

/// The PCM layout of a plain AIFF file (FORM/AIFF, COMM, SSND with offset 0): where its
/// samples lie (whole frames), or why it cannot be taken. Samples are big-endian.
fn parse_aiff(d: &[u8]) -> Result<Pcm, &'static str> {
    if d.len() < 12 || &d[..4] != b"FORM" || &d[8..12] != b"AIFF" {
        return Err("not an AIFF file");
    }
    let mut p = 12;
    let mut comm: Option<(u16, u32, u16, u32)> = None;
    while let (Some(id), Some(size)) = (d.get(p..p + 4), be32(d, p + 4)) {
        let body = p + 8;
        let size = size as usize;
        if id == b"COMM" {
            let f = (|| {
                Some((
                    be16(d, body)?,
                    be32(d, body + 2)?,
                    be16(d, body + 6)?,
                    extended_rate(d.get(body + 8..body + 18)?)?,
                ))
            })();
            comm = Some(f.ok_or("COMM chunk")?);
        } else if id == b"SSND" {
            let (channels, frames, bits, rate) = comm.ok_or("SSND before COMM")?;
            if be32(d, body).ok_or("SSND chunk")? != 0 {
                return Err("SSND with an offset");
            }
            if !(1..=8).contains(&channels) || bits == 0 {
                return Err("COMM chunk");
            }
            let start = body + 8;
            let len = frames as usize * channels as usize * bits.div_ceil(8) as usize;
            if size < 8 + len || start + len > d.len() {
                return Err("truncated SSND chunk");
            }
            return Ok(Pcm {
                bits: u8::try_from(bits).map_err(|_| "sample size")?,
                channels: channels as u8,
                rate,
                start,
                end: start + len,
            });
        }
        // Chunks are padded to an even length.
        p = body.saturating_add(size).saturating_add(size & 1);
    }
    Err("no SSND chunk")
}

/// The PCM layout of a WAV or plain AIFF file, and whether its samples are big-endian.
fn parse_pcm(d: &[u8]) -> Result<(Pcm, bool), &'static str> {
    if d.starts_with(b"FORM") {
        return parse_aiff(d).map(|p| (p, true));
    }
    parse_wav(d).map(|p| (p, false))
}

fn decode_payload(payload: &[u8]) -> Result<Decoded<'_>, CodecError> {
    let mut r = Reader::new(payload);
    let be = match r.u8()? {
        1 => false,
        2 => match r.u8()? {
            1 => true,
            _ => return Err(wire::malformed("sample byte order")),
        },
        _ => return Err(wire::malformed("unknown wav-opus payload version")),
    };
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
        be,
    })
}

fn write_wav(d: &Decoded<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.head.len() + d.samples.len() * 2 + d.tail.len());
    out.extend_from_slice(d.head);
    for s in &d.samples {
        out.extend_from_slice(&if d.be {
            s.to_be_bytes()
        } else {
            s.to_le_bytes()
        });
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
    let Ok((p, _)) = parse_pcm(original) else {
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
        check_whole_len(raw, MAX_LEN, "audio ")?;
        let q = u8::try_from(params.level)
            .ok()
            .filter(|q| (1..=100).contains(q))
            .ok_or_else(|| {
                CodecError::Failed(format!("audio q {} out of 1..=100", params.level))
            })?;
        let (pcm, be) = parse_pcm(raw).map_err(|e| CodecError::Failed(e.to_string()))?;
        if pcm.bits != 16 || !RATES.contains(&pcm.rate) {
            return Err(CodecError::Failed(
                "Opus takes 16-bit PCM at 8, 12, 16, 24 or 48 kHz".into(),
            ));
        }
        let ch = pcm.channels;
        let channels = channels_of(ch)?;
        let samples: Vec<i16> = raw[pcm.start..pcm.end]
            .chunks_exact(2)
            .map(|c| {
                if be {
                    i16::from_be_bytes([c[0], c[1]])
                } else {
                    i16::from_le_bytes([c[0], c[1]])
                }
            })
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
        if be {
            out.extend_from_slice(&[2, 1]);
        } else {
            out.push(1);
        }
        out.push(ch);
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
        CodecError::check_len(wav.len(), raw_len)?;
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

    /// The sample's samples as a plain AIFF (big-endian, COMM with an 80-bit rate, SSND),
    /// with a trailing chunk.
    fn aiff_of(wav: &[u8]) -> Vec<u8> {
        let p = parse_wav(wav).unwrap_or_else(|e| panic!("{e}"));
        let frames = (p.end - p.start) / 2 / p.channels as usize;
        let mut comm = Vec::new();
        comm.extend_from_slice(&(p.channels as u16).to_be_bytes());
        comm.extend_from_slice(&(frames as u32).to_be_bytes());
        comm.extend_from_slice(&16u16.to_be_bytes());
        // The rate as an 80-bit extended float: exponent 16383 + bit length - 1.
        let bits = 32 - p.rate.leading_zeros();
        comm.extend_from_slice(&((16383 + bits - 1) as u16).to_be_bytes());
        comm.extend_from_slice(&((p.rate as u64) << (64 - bits)).to_be_bytes());
        let mut ssnd = vec![0u8; 8];
        for c in wav[p.start..p.end].chunks_exact(2) {
            ssnd.extend_from_slice(&[c[1], c[0]]);
        }
        let mut body = b"AIFF".to_vec();
        for (id, d) in [
            (b"COMM", &comm),
            (b"SSND", &ssnd),
            (b"ANNO", &b"idcfs".to_vec()),
        ] {
            body.extend_from_slice(id);
            body.extend_from_slice(&(d.len() as u32).to_be_bytes());
            body.extend_from_slice(d);
            if d.len() % 2 == 1 {
                body.push(0);
            }
        }
        let mut f = b"FORM".to_vec();
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(&body);
        f
    }

    /// AIFF: read back as AIFF with the original header, chunks, channel count and exact
    /// length (big-endian samples close to the original's), as payload version 2.
    #[test]
    fn aiff_round_trips_as_aiff() {
        let wav = sample();
        let aiff = aiff_of(&wav);
        let (p, be) = parse_pcm(&aiff).unwrap_or_else(|e| panic!("{e}"));
        assert!(be && p.bits == 16 && p.rate == 48000);
        let mut out = Vec::new();
        let br = WavOpus
            .encode(&aiff, &EncodeParams::level(60), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out[..2], [2, 1], "payload version 2, big-endian");
        let mut back = Vec::new();
        WavOpus
            .decode(&out, br, aiff.len(), &mut back)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.len(), aiff.len());
        assert!(audio_matches_layout(&aiff, &back));
        assert_eq!(back[..p.start], aiff[..p.start]);
        assert!(back.ends_with(b"ANNO\0\0\0\x05idcfs\0"));
        // The same samples as the WAV's encoding, byte-swapped.
        let mut wout = Vec::new();
        WavOpus
            .encode(&wav, &EncodeParams::level(60), &mut wout)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut wback = Vec::new();
        let wp = parse_wav(&wav).unwrap_or_else(|e| panic!("{e}"));
        WavOpus
            .decode(&wout, br, wav.len(), &mut wback)
            .unwrap_or_else(|e| panic!("{e}"));
        let swapped: Vec<u8> = back[p.start..p.end]
            .chunks_exact(2)
            .flat_map(|c| [c[1], c[0]])
            .collect();
        assert_eq!(swapped, wback[wp.start..wp.end]);
        // Refused: 8-bit, AIFF-C, an SSND offset, a rate Opus does not take.
        let mut b8 = aiff.clone();
        b8[12 + 8 + 6 + 1] = 8;
        let mut aifc = aiff.clone();
        aifc[8..12].copy_from_slice(b"AIFC");
        let mut off = aiff.clone();
        off[12 + 8 + 18 + 8 + 3] = 2;
        let mut rate = aiff.clone();
        rate[12 + 8 + 8 + 2] ^= 0x40;
        for (what, f) in [
            ("8-bit", b8),
            ("aifc", aifc),
            ("offset", off),
            ("rate", rate),
        ] {
            assert!(
                WavOpus
                    .encode(&f, &EncodeParams::level(60), &mut out)
                    .is_err(),
                "{what} accepted"
            );
        }
    }

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
