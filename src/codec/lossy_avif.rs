//! Lossy image storage with AV1 (codec `image-avif`): an 8-bit picture (the PNGs and binary
//! PNMs `lossy_image` reads) coded as one AV1 still frame at the coarsest quantizer whose
//! decoded pixels meet a PSNR target, served back exactly as `image-webp` serves its pictures
//! (a PNG written by `lossy_image::write_png`, or a PNM's own header and tail around the
//! pixels).
//!
//! Invariants:
//! - Decoding is deterministic: AV1 decoding is bit-exact by specification (dav1d, whatever
//!   its version or SIMD paths, outputs the normative reconstruction; film grain, which this
//!   encoder never signals, is not applied), and everything after it is integer arithmetic
//!   in this module: the colour transform below and the PNG writer of `lossy_image`. So the
//!   served bytes, hence `st_size`, never change between reads, remounts, machines or thread
//!   counts. `tests::golden_png_bytes` pins them for a frozen payload.
//! - No library does colour conversion: RGB is coded as 10-bit 4:4:4 planes of an exactly
//!   invertible integer YCoCg (`to_planes` / `from_planes`), grey as one 10-bit monochrome
//!   plane of 4·g, alpha (if any) losslessly as a zstd frame beside the AV1 stream.
//! - `encode` checks its own result with the decoder that serves it: the payload it returns
//!   decodes to pixels whose PSNR against the input's (over every sample, alpha included) is
//!   at least the target (`EncodeParams::level`, hundredths of a dB); otherwise it refuses.
//! - Malformed payloads give `Err`, never a panic: dav1d is called through `wire::fence`, the
//!   picture it returns is checked against the payload's geometry before any sample is read,
//!   and every length is bounded before allocation (the frame size limit is the payload's).
//!
//! Payload (version 1): `1u8, kind u8 (as image-webp: 1 PNG, 2 PNM, 3 BMP, 4 TIFF), channels u8 (1..=4), colour type u8,
//! width varint, height varint (1..=16383, at most MAX_PIXELS), chunks-before, chunks-after
//! (as `image-webp`), av1-len varint, AV1 bytes (OBUs: sequence header and one frame),
//! alpha-len varint, alpha bytes (a zstd frame of width·height alpha samples, present exactly
//! when channels is 2 or 4)`. Params, for statistics only: the AV1 quantizer index (0..=255).

use super::lossy_image::{
    deliver, get_chunks, load_picture, psnr, psnr_target, put_chunks, serve, Kind, Picture,
};
use super::wire::{self, put_varint, Reader};
use super::{check_whole_len, Codec, CodecError, EncodeParams, Granularity, IMAGE_AVIF};

/// Largest file accepted (as image-webp).
const MAX_LEN: usize = 256 << 20;
const MAX_SIDE: u32 = 16383;
/// Largest picture a payload may hold (a decoding bound, part of the format).
const MAX_PIXELS: u64 = 16 << 20;
/// Largest picture the encoder takes: its quantizer search costs 7–14 CPU seconds per Mpixel
/// (rav1e without assembly, BENCHMARKS.md 8.1), so larger pictures would run into the
/// recompressor's 120 s limit per candidate; they are refused at once and the other
/// candidates apply.
const ENCODE_MAX_PIXELS: u64 = 8 << 20;
/// rav1e speed preset (0 slowest .. 10 fastest): 8 keeps a search of 4–5 encodings of a
/// megapixel photo within seconds; the bitstream is valid AV1 whatever the preset.
const SPEED: u8 = 8;
/// Bit depth of the coded planes: the YCoCg below needs 10 bits to be exactly invertible.
const DEPTH: usize = 10;
/// Offset of the chroma planes (their values are signed around it).
const MID: i32 = 512;

pub struct ImageAvif;

fn bad(why: &str) -> CodecError {
    CodecError::Failed(format!("AV1 image coding: {why}"))
}

/// The coded planes of a picture, each `w*h` 10-bit samples: RGB as `Y = R+2G+B`,
/// `Cg = 2G−R−B + 512`, `Co = 2(R−B) + 512` (all in 0..=1022; `from_planes` inverts it
/// exactly); grey as `4·g`. Alpha is not among them (kept losslessly beside).
fn to_planes(p: &Picture) -> Vec<Vec<u16>> {
    let n = p.w as usize * p.h as usize;
    match p.ch {
        1 | 2 => vec![p
            .pixels
            .chunks_exact(p.ch)
            .map(|c| (c[0] as u16) << 2)
            .collect()],
        _ => {
            let mut planes: Vec<Vec<u16>> = (0..3).map(|_| Vec::with_capacity(n)).collect();
            for c in p.pixels.chunks_exact(p.ch) {
                let (r, g, b) = (c[0] as i32, c[1] as i32, c[2] as i32);
                planes[0].push((r + 2 * g + b) as u16);
                planes[1].push((2 * g - r - b + MID) as u16);
                planes[2].push((2 * (r - b) + MID) as u16);
            }
            planes
        }
    }
}

/// The picture's samples from decoded planes (and the alpha samples when `ch` is 2 or 4):
/// `R = (Y − Cg' + Co' + 2) >> 2`, `G = (Y + Cg' + 2) >> 2`, `B = (Y − Cg' − Co' + 2) >> 2`
/// with `Cg' = Cg − 512`, `Co' = Co − 512`, each clamped to 0..=255; grey `(Y + 2) >> 2`.
/// Integer arithmetic only: this is part of the format.
fn from_planes(planes: &[Vec<u16>], alpha: Option<&[u8]>, ch: usize) -> Vec<u8> {
    let px = |v: i32| (v >> 2).clamp(0, 255) as u8;
    let n = planes.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(n * ch);
    for i in 0..n {
        let y = planes[0][i] as i32;
        if ch <= 2 {
            out.push(px(y + 2));
        } else {
            let (cg, co) = (planes[1][i] as i32 - MID, planes[2][i] as i32 - MID);
            out.extend_from_slice(&[px(y - cg + co + 2), px(y + cg + 2), px(y - cg - co + 2)]);
        }
        if let Some(a) = alpha {
            out.push(a[i]);
        }
    }
    out
}

/// One AV1 still frame of `planes` (one: monochrome; three: 4:4:4) at quantizer index `q`.
fn av1_encode(planes: &[Vec<u16>], w: u32, h: u32, q: u8) -> Result<Vec<u8>, CodecError> {
    use rav1e::prelude::*;
    let mono = planes.len() == 1;
    wire::fence("rav1e encode", || {
        let mut enc = EncoderConfig::with_speed_preset(SPEED);
        enc.width = w as usize;
        enc.height = h as usize;
        enc.bit_depth = DEPTH;
        enc.chroma_sampling = if mono {
            ChromaSampling::Cs400
        } else {
            ChromaSampling::Cs444
        };
        enc.pixel_range = PixelRange::Full;
        enc.still_picture = true;
        enc.quantizer = q as usize;
        enc.min_quantizer = q;
        enc.bitrate = 0;
        // The target is PSNR: rate-distortion decisions by squared error, not psychovisual.
        enc.tune = Tune::Psnr;
        let cfg = Config::new().with_encoder_config(enc).with_threads(1);
        let mut ctx: Context<u16> = cfg
            .new_context()
            .map_err(|e| bad(&format!("rav1e configuration: {e}")))?;
        let mut frame = ctx.new_frame();
        for (dst, src) in frame.planes.iter_mut().zip(planes) {
            let bytes: Vec<u8> = src.iter().flat_map(|v| v.to_le_bytes()).collect();
            dst.copy_from_raw_u8(&bytes, w as usize * 2, 2);
        }
        ctx.send_frame(frame)
            .map_err(|e| bad(&format!("rav1e: {e}")))?;
        ctx.flush();
        let mut out = Vec::new();
        loop {
            match ctx.receive_packet() {
                Ok(p) => out.extend_from_slice(&p.data),
                Err(EncoderStatus::Encoded) => {}
                Err(EncoderStatus::LimitReached) => break,
                Err(e) => return Err(bad(&format!("rav1e: {e}"))),
            }
        }
        if out.is_empty() {
            return Err(bad("rav1e wrote nothing"));
        }
        Ok(out)
    })
}

/// The planes of the one frame `data` holds, checked to be `w`×`h`, 10-bit, and 4:4:4 (or
/// monochrome when `mono`).
fn av1_decode(data: &[u8], w: u32, h: u32, mono: bool) -> Result<Vec<Vec<u16>>, CodecError> {
    use dav1d::{Decoder, PixelLayout, PlanarImageComponent as Pc, Settings};
    let mal = |why: &str| wire::malformed(&format!("AV1: {why}"));
    wire::fence("dav1d decode", || {
        let mut s = Settings::new();
        // One thread and no frame delay: a still picture, decoded where it is asked for
        // (bit-exact either way).
        s.set_n_threads(1);
        s.set_max_frame_delay(1);
        s.set_apply_grain(false);
        s.set_frame_size_limit(w.saturating_mul(h));
        let mut dec = Decoder::with_settings(&s).map_err(|e| mal(&format!("open: {e}")))?;
        let pic = match dec.send_data(data.to_vec(), None, None, None) {
            Ok(()) => dec.get_picture(),
            Err(e) if e.is_again() => {
                // The data holds more than one frame's worth: take the first picture.
                match dec.get_picture() {
                    Ok(p) => Ok(p),
                    Err(_) => {
                        let _ = dec.send_pending_data();
                        dec.get_picture()
                    }
                }
            }
            Err(e) => return Err(mal(&format!("{e}"))),
        }
        .map_err(|e| mal(&format!("no picture: {e}")))?;
        let layout_ok = matches!(
            (pic.pixel_layout(), mono),
            (PixelLayout::I400, true) | (PixelLayout::I444, false)
        );
        if pic.width() != w || pic.height() != h || pic.bit_depth() != DEPTH || !layout_ok {
            return Err(mal("frame does not match the picture"));
        }
        let comps: &[Pc] = if mono {
            &[Pc::Y]
        } else {
            &[Pc::Y, Pc::U, Pc::V]
        };
        let row = w as usize * 2;
        let mut planes = Vec::with_capacity(comps.len());
        for &c in comps {
            let stride = pic.stride(c) as usize;
            let plane = pic.plane(c);
            if stride < row || plane.len() < stride * (h as usize - 1) + row {
                return Err(mal("plane geometry"));
            }
            let mut v = Vec::with_capacity(w as usize * h as usize);
            for y in 0..h as usize {
                let r = &plane[y * stride..y * stride + row];
                // dav1d stores high-bit-depth samples as native-endian u16.
                v.extend(r.chunks_exact(2).map(|b| u16::from_ne_bytes([b[0], b[1]])));
            }
            planes.push(v);
        }
        Ok(planes)
    })
}

/// The parts of a payload, before AV1 decoding.
struct Parsed<'a> {
    pic: Picture,
    av1: &'a [u8],
    alpha: &'a [u8],
}

fn parse(payload: &[u8]) -> Result<Parsed<'_>, CodecError> {
    let mut r = Reader::new(payload);
    if r.u8()? != 1 {
        return Err(wire::malformed("unknown AV1 image payload version"));
    }
    let kind = Kind::from_byte(r.u8()?)?;
    let ch = r.u8()? as usize;
    let color_type = r.u8()?;
    let expect_ct = match ch {
        1 => 0,
        2 => 4,
        3 => 2,
        4 => 6,
        _ => return Err(wire::malformed("channels")),
    };
    if color_type != expect_ct {
        return Err(wire::malformed("colour type"));
    }
    let w = r.len(MAX_SIDE as usize)? as u32;
    let h = r.len(MAX_SIDE as usize)? as u32;
    if w == 0 || h == 0 || (w as u64) * (h as u64) > MAX_PIXELS {
        return Err(wire::malformed("picture size"));
    }
    let before = get_chunks(&mut r, payload.len())?;
    let after = get_chunks(&mut r, payload.len())?;
    let n = r.len(payload.len())?;
    let av1 = r.bytes(n)?;
    let a = r.len(payload.len())?;
    let alpha = r.bytes(a)?;
    if r.remaining() != 0 {
        return Err(wire::malformed("trailing bytes"));
    }
    if (a > 0) != ch.is_multiple_of(2) {
        return Err(wire::malformed("alpha plane"));
    }
    kind.check(ch, &before, &after)?;
    Ok(Parsed {
        pic: Picture {
            w,
            h,
            ch,
            color_type,
            pixels: Vec::new(),
            before,
            after,
            kind,
        },
        av1,
        alpha,
    })
}

/// The picture a payload holds (reconstructed pixels, original chunks).
fn decode_picture(payload: &[u8]) -> Result<Picture, CodecError> {
    let Parsed {
        mut pic,
        av1,
        alpha,
    } = parse(payload)?;
    let n = pic.w as usize * pic.h as usize;
    let alpha = if pic.ch.is_multiple_of(2) {
        let a = wire::zstd_decompress(alpha, n)?;
        if a.len() != n {
            return Err(wire::malformed("alpha plane length"));
        }
        Some(a)
    } else {
        None
    };
    let planes = av1_decode(av1, pic.w, pic.h, pic.ch <= 2)?;
    pic.pixels = from_planes(&planes, alpha.as_deref(), pic.ch);
    Ok(pic)
}

/// The payload of `pic` with the AV1 stream `av1` and the coded alpha `alpha`.
fn payload(pic: &Picture, av1: &[u8], alpha: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(av1.len() + alpha.len() + 64);
    out.extend_from_slice(&[1, pic.kind as u8, pic.ch as u8, pic.color_type]);
    put_varint(&mut out, pic.w as u64);
    put_varint(&mut out, pic.h as u64);
    put_chunks(&mut out, &pic.before);
    put_chunks(&mut out, &pic.after);
    put_varint(&mut out, av1.len() as u64);
    out.extend_from_slice(av1);
    put_varint(&mut out, alpha.len() as u64);
    out.extend_from_slice(alpha);
    out
}

impl ImageAvif {
    /// The smallest payload of `pic` whose decoded pixels keep `target` dB (the coarsest
    /// quantizer meeting it, by `search_quantizer`: PSNR falls as the quantizer grows), with its
    /// quantizer; or, with `fixed`, the payload at that quantizer whatever its PSNR.
    fn encode_picture(
        pic: &Picture,
        target: f64,
        fixed: Option<u8>,
    ) -> Result<(u8, Vec<u8>), CodecError> {
        if (pic.w as u64) * (pic.h as u64) > ENCODE_MAX_PIXELS
            || pic.w > MAX_SIDE
            || pic.h > MAX_SIDE
        {
            return Err(bad("picture too large"));
        }
        let planes = to_planes(pic);
        let alpha_plane: Option<Vec<u8>> = pic.ch.is_multiple_of(2).then(|| {
            pic.pixels
                .chunks_exact(pic.ch)
                .map(|c| c[pic.ch - 1])
                .collect()
        });
        let alpha = match &alpha_plane {
            Some(a) => wire::zstd_compress(a, 19)?,
            None => Vec::new(),
        };
        let try_q = |q: u8| -> Result<(Vec<u8>, f64), CodecError> {
            let av1 = av1_encode(&planes, pic.w, pic.h, q)?;
            // Verified with the decoder that will serve it.
            let back = from_planes(
                &av1_decode(&av1, pic.w, pic.h, pic.ch <= 2)?,
                alpha_plane.as_deref(),
                pic.ch,
            );
            Ok((payload(pic, &av1, &alpha), psnr(&pic.pixels, &back)))
        };
        if let Some(q) = fixed {
            return Ok((q, try_q(q)?.0));
        }
        search_quantizer(try_q, target)?
            .ok_or_else(|| bad(&format!("AV1 cannot reach {target:.1} dB on this image")))
    }
}

/// First quantizer tried: near where photos meet 35–40 dB (BENCHMARKS.md 8.1).
const FIRST_Q: i32 = 80;
/// Assumed PSNR slope (dB per quantizer step) until two probes measure it.
const SLOPE: f64 = 0.08;

/// The coarsest quantizer q (0..=255) whose encoding meets `target` where q + 1 does not (or
/// q = 255), with its payload; `None` when even q = 0 misses. Same answer as a binary search
/// where PSNR falls with q, in fewer encodings (about 4 instead of 8): the next quantizer is
/// interpolated from the PSNRs measured at the bracket's ends (extrapolated from the measured
/// or an assumed slope while one end is missing), and every third probe halves the bracket,
/// so a bad guess costs at most a binary search's steps again.
fn search_quantizer(
    mut try_q: impl FnMut(u8) -> Result<(Vec<u8>, f64), CodecError>,
    target: f64,
) -> Result<Option<(u8, Vec<u8>)>, CodecError> {
    // `lo`: the coarsest quantizer known to meet the target (its PSNR and payload); `hi`:
    // the finest known to miss it (its PSNR). The answer lies in lo..hi.
    let mut lo: Option<(i32, f64, Vec<u8>)> = None;
    let mut hi: Option<(i32, f64)> = None;
    let mut q = FIRST_Q;
    for probe in 0.. {
        let (out, db) = try_q(q as u8)?;
        if db >= target {
            if lo.as_ref().is_none_or(|l| q > l.0) {
                lo = Some((q, db, out));
            }
        } else if hi.is_none_or(|h| q < h.0) {
            hi = Some((q, db));
        }
        let (lq, hq) = (lo.as_ref().map_or(-1, |l| l.0), hi.map_or(256, |h| h.0));
        if hq - lq <= 1 {
            break;
        }
        let guess = match (&lo, hi) {
            _ if probe % 3 == 2 => (lq + hq) as f64 / 2.0,
            (Some((lq, lp, _)), Some((hq, hp))) => {
                *lq as f64 + (lp - target) / (lp - hp).max(1e-6) * (hq - lq) as f64
            }
            (Some((lq, lp, _)), None) => *lq as f64 + (lp - target) / SLOPE,
            (None, Some((hq, hp))) => hq as f64 - (target - hp) / SLOPE,
            (None, None) => FIRST_Q as f64,
        };
        q = (guess.round() as i32).clamp(lq + 1, hq - 1);
    }
    Ok(lo.map(|(q, _, out)| (q as u8, out)))
}

impl Codec for ImageAvif {
    fn id(&self) -> super::CodecId {
        IMAGE_AVIF
    }

    fn name(&self) -> &'static str {
        "image-avif"
    }

    fn is_lossless(&self) -> bool {
        false
    }

    fn granularity(&self) -> Granularity {
        Granularity::WholeFile { max_len: MAX_LEN }
    }

    fn decoded_len(&self, payload: &[u8], _params: u32) -> Result<Option<usize>, CodecError> {
        Ok(Some(serve(&decode_picture(payload)?).len()))
    }

    /// `params.level`: the PSNR target in hundredths of a dB. Params returned: the AV1
    /// quantizer index of the smallest encoding meeting it.
    fn encode(
        &self,
        raw: &[u8],
        params: &EncodeParams,
        out: &mut Vec<u8>,
    ) -> Result<u32, CodecError> {
        check_whole_len(raw, MAX_LEN, "image ")?;
        let target = psnr_target(params)?;
        let pic = load_picture(raw)?;
        let (q, payload) = Self::encode_picture(&pic, target, None)?;
        if payload.len() >= raw.len() {
            return Err(CodecError::NotWorthIt);
        }
        *out = payload;
        Ok(q as u32)
    }

    fn decode(
        &self,
        payload: &[u8],
        _params: u32,
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        deliver(&decode_picture(payload)?, raw_len, out)
    }
}

/// Rate-distortion measurements (`examples/lossy_rd.rs`): encode at a fixed quantizer, decode.
#[doc(hidden)]
pub mod bench {
    use super::*;

    /// The payload of an image file at AV1 quantizer index `q`.
    pub fn encode_q(raw: &[u8], q: u8) -> Result<Vec<u8>, CodecError> {
        Ok(ImageAvif::encode_picture(&load_picture(raw)?, 0.0, Some(q))?.1)
    }

    /// The served file of a payload.
    pub fn decode(payload: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(serve(&decode_picture(payload)?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::lossy_image::{image_psnr, read_png, write_png};
    use super::*;

    /// A small photo-like picture (smooth shading, correlated channels, mild texture).
    fn synthetic(w: u32, h: u32, ch: usize) -> Picture {
        let mut pixels = Vec::with_capacity((w * h) as usize * ch);
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = (x as f64, y as f64);
                let base = 120.0
                    + 60.0 * (fx * 0.09).sin() * (fy * 0.07).cos()
                    + 3.0 * ((fx * 1.7 + fy * 2.3).sin());
                for c in 0..ch {
                    let v = if ch.is_multiple_of(2) && c == ch - 1 {
                        200.0 + 40.0 * (fx * 0.05).cos()
                    } else {
                        base + c as f64 * 12.0 - fy * 0.3
                    };
                    pixels.push(v.clamp(0.0, 255.0) as u8);
                }
            }
        }
        Picture {
            w,
            h,
            ch,
            color_type: [0, 0, 4, 2, 6][ch],
            pixels,
            before: vec![(*b"gAMA", vec![0, 0, 177, 143])],
            after: vec![(*b"tEXt", b"Comment\0idcfs".to_vec())],
            kind: Kind::Png,
        }
    }

    #[test]
    fn colour_transform_is_exactly_invertible() {
        let mut pixels = Vec::new();
        for r in (0..=255u16).step_by(15) {
            for g in (0..=255u16).step_by(17) {
                for b in [0u16, 1, 2, 3, 127, 128, 254, 255] {
                    pixels.extend_from_slice(&[r as u8, g as u8, b as u8]);
                }
            }
        }
        let n = pixels.len() / 3;
        let p = Picture {
            w: n as u32,
            h: 1,
            ch: 3,
            color_type: 2,
            pixels,
            before: vec![],
            after: vec![],
            kind: Kind::Png,
        };
        let planes = to_planes(&p);
        assert!(planes.iter().flatten().all(|&v| v < 1024));
        assert_eq!(from_planes(&planes, None, 3), p.pixels);
        let g = synthetic(9, 7, 2);
        let a: Vec<u8> = g.pixels.chunks(2).map(|c| c[1]).collect();
        assert_eq!(from_planes(&to_planes(&g), Some(&a), 2), g.pixels);
    }

    #[test]
    fn meets_the_target_round_trips_and_is_deterministic() {
        for ch in 1..=4 {
            let png = write_png(&synthetic(64, 48, ch));
            for target in [30.0, 40.0] {
                let mut out = Vec::new();
                let p = EncodeParams::level((target * 100.0) as i32);
                let q = match ImageAvif.encode(&png, &p, &mut out) {
                    Ok(q) => q,
                    Err(e) => panic!("ch {ch} {target}: {e}"),
                };
                assert!(q <= 255);
                let n = ImageAvif
                    .decoded_len(&out, q)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or(0);
                let mut back = Vec::new();
                ImageAvif
                    .decode(&out, q, n, &mut back)
                    .unwrap_or_else(|e| panic!("{e}"));
                let db = image_psnr(&png, &back).unwrap_or(0.0);
                assert!(db >= target, "ch {ch}: {db} < {target}");
                let got = read_png(&back).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(got.before, vec![(*b"gAMA", vec![0, 0, 177, 143])]);
                assert_eq!(got.ch, ch);
                let mut again = Vec::new();
                ImageAvif
                    .decode(&out, q, n, &mut again)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(again, back, "deterministic");
                // A wrong recorded length is an error, not a different file.
                assert!(ImageAvif.decode(&out, q, n + 1, &mut again).is_err());
            }
        }
    }

    #[test]
    fn tiny_and_odd_sizes() {
        for (w, h) in [(1, 1), (3, 2), (17, 9)] {
            let png = write_png(&synthetic(w, h, 3));
            let pic = load_picture(&png).unwrap_or_else(|e| panic!("{e}"));
            let (_, payload) =
                ImageAvif::encode_picture(&pic, 30.0, None).unwrap_or_else(|e| panic!("{e}"));
            let back = decode_picture(&payload).unwrap_or_else(|e| panic!("{w}x{h}: {e}"));
            assert!(psnr(&pic.pixels, &back.pixels) >= 30.0);
        }
    }

    #[test]
    fn pnm_keeps_its_header_and_tail() {
        for ch in [1usize, 3] {
            let p = synthetic(50, 40, ch);
            let mut pnm = format!("P{}\n50 40\n255\n", if ch == 1 { 5 } else { 6 }).into_bytes();
            pnm.extend_from_slice(&p.pixels);
            pnm.extend_from_slice(b"tail");
            let mut out = Vec::new();
            let q = ImageAvif
                .encode(&pnm, &EncodeParams::level(3800), &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
            let n = ImageAvif
                .decoded_len(&out, q)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or(0);
            assert_eq!(n, pnm.len(), "same size as the original");
            let mut back = Vec::new();
            ImageAvif
                .decode(&out, q, n, &mut back)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(back.starts_with(b"P") && back.ends_with(b"tail"));
            assert!(image_psnr(&pnm, &back).unwrap_or(0.0) >= 38.0);
        }
    }

    #[test]
    fn real_photo_meets_40_db() {
        let (_, png) = super::super::testdata::samples("photo")
            .into_iter()
            .min_by_key(|(_, b)| b.len())
            .unwrap_or_default();
        let mut out = Vec::new();
        let q = ImageAvif
            .encode(&png, &EncodeParams::level(4000), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let n = ImageAvif
            .decoded_len(&out, q)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or(0);
        let mut back = Vec::new();
        ImageAvif
            .decode(&out, q, n, &mut back)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(image_psnr(&png, &back).unwrap_or(0.0) >= 40.0);
        assert!(out.len() * 2 < png.len(), "{} vs {}", out.len(), png.len());
    }

    /// A frozen payload (tests/data/codec-golden/image-avif-v1.payload, written with
    /// `IDCFS_WRITE_GOLDEN=1`) must keep serving these exact bytes on any thread: a change in
    /// the AV1 decoder, the colour transform, the PNG writer or miniz_oxide would change what
    /// readers of stored files get (and `st_size`), and must fail here instead.
    #[test]
    fn golden_png_bytes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/codec-golden/image-avif-v1.payload"
        );
        if std::env::var_os("IDCFS_WRITE_GOLDEN").is_some() {
            let png = write_png(&synthetic(48, 32, 4));
            let mut payload = Vec::new();
            ImageAvif
                .encode(&png, &EncodeParams::level(3500), &mut payload)
                .unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(path, &payload).unwrap_or_else(|e| panic!("{e}"));
        }
        let payload = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let hashes: Vec<(usize, String)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut o = Vec::new();
                        ImageAvif
                            .decode(&payload, 0, GOLDEN_LEN, &mut o)
                            .map(|_| (o.len(), blake3::hash(&o).to_hex().to_string()))
                            .unwrap_or_else(|e| (0, e.to_string()))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for h in hashes {
            assert_eq!(
                (h.0, h.1.as_str()),
                (GOLDEN_LEN, GOLDEN_HASH),
                "served PNG bytes changed"
            );
        }
    }

    const GOLDEN_LEN: usize = 1465;
    const GOLDEN_HASH: &str = "18b6bb236ed90d79bcafc64a1db3f4f5ec6863ac499b74f0d0c108affe70ff77";

    #[test]
    fn quantizer_search_finds_the_binary_search_answer_in_fewer_probes() {
        // PSNR curves falling with q, as AV1's do: straight, curved, steep, flat in places.
        type Curve = fn(f64) -> f64;
        let curves: [(&str, Curve); 4] = [
            ("linear", |q| 50.0 - 0.08 * q),
            ("curved", |q| 52.0 - 6.0 * (1.0 + q / 8.0).ln()),
            ("steep", |q| 60.0 - 0.2 * q),
            ("steps", |q| 48.0 - 2.0 * (q / 16.0).floor()),
        ];
        let mut total = 0;
        let mut runs = 0;
        for (name, f) in curves {
            for t in [25.0, 30.0, 33.3, 35.0, 40.0, 45.0, 49.9, 70.0, 0.0] {
                let mut probes = 0;
                let got = search_quantizer(
                    |q| {
                        probes += 1;
                        Ok((vec![q], f(q as f64)))
                    },
                    t,
                )
                .unwrap_or_else(|e| panic!("{e}"));
                let want = (0..=255u8).rev().find(|&q| f(q as f64) >= t);
                assert_eq!(got.as_ref().map(|g| g.0), want, "{name} at {t} dB");
                if let Some((q, out)) = got {
                    assert_eq!(out, vec![q], "the payload is the answer's");
                }
                assert!(probes <= 12, "{name} at {t} dB: {probes} probes");
                total += probes;
                runs += 1;
            }
        }
        eprintln!("{total} probes for {runs} searches");
        assert!(total < 8 * runs, "{total} probes for {runs} searches");
    }

    #[test]
    fn garbage_payloads_are_errors() {
        let png = write_png(&synthetic(40, 30, 4));
        let mut out = Vec::new();
        ImageAvif
            .encode(&png, &EncodeParams::level(3000), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut back = Vec::new();
        for cut in [0, 1, 5, out.len() / 2, out.len() - 1] {
            assert!(ImageAvif.decode(&out[..cut], 0, 1000, &mut back).is_err());
        }
        // Flipped bytes anywhere: an error or some picture, never a panic or a hang.
        for i in (0..out.len()).step_by(3) {
            let mut bad = out.clone();
            bad[i] ^= 0x5a;
            let _ = ImageAvif.decode(&bad, 0, 1000, &mut back);
        }
        // Not an image.
        assert!(ImageAvif
            .encode(b"hello", &EncodeParams::level(4000), &mut out)
            .is_err());
    }
}
