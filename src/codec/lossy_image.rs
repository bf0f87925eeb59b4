//! Lossy image storage (codec `image-webp`): an 8-bit PNG's pixels coded with lossy WebP
//! (VP8, alpha kept lossless; or lossless VP8L over quantized samples where 4:2:0 chroma
//! cannot keep the target) at the smallest size that meets a PSNR target, served back
//! as a PNG of the reconstructed pixels with the original's ancillary chunks.
//!
//! Invariants:
//! - Decoding is deterministic: the VP8 decoder is bit-exact by specification and libwebp is
//!   built from the source pinned in Cargo.toml (`libwebp-sys =0.14.4`); the PNG is written by
//!   this module (`write_png`: fixed filter, DEFLATE by the pinned `miniz_oxide` at a fixed
//!   level), so the served bytes, hence `st_size`, never change between reads, remounts or
//!   thread counts. `tests::golden_png_bytes` pins the exact output.
//! - Only non-interlaced 8-bit grey, grey+alpha, RGB and RGBA PNGs, binary PNMs (P5, P6)
//!   with maxval 255, uncompressed 24/32-bit BMPs (BI_RGB, either row order, zero row
//!   padding) and uncompressed baseline TIFFs (8-bit grey or RGB, one image, consecutive
//!   strips, either byte order) are accepted; anything else (palette, 16-bit, interlaced,
//!   compressed, tiled, malformed) is refused with `Err` and stays lossless. PNM, BMP and TIFF
//!   are served with their own header and trailing bytes verbatim around the reconstructed
//!   pixels, in their own sample order (same size as the original).
//! - `encode` checks its own result: the payload it returns decodes to a PNG whose PSNR
//!   against the input's pixels is at least the target (`EncodeParams::level`, in hundredths
//!   of a dB); otherwise it refuses.
//! - Malformed payloads give `Err`, never a panic: libwebp is called through `wire::fence`
//!   with buffer sizes it checks, and every length is bounded before allocation.
//!
//! Payload (version 1): `1u8, kind u8 (1 PNG, 2 PNM, 3 BMP, 4 TIFF, see Kind; the picture
//! is WebP either way), channels u8, colour type u8, width varint, height varint, chunks-before-IDAT, chunks-after-IDAT, webp-len varint, webp bytes`, where a chunk
//! list is `count varint, (type 4 bytes, len varint, data)*`. The WebP is lossy VP8 or
//! VP8L over quantized samples (both decode exactly). Params, for statistics only: the VP8
//! quality (0..=100), or 1000 + the quantization step.

use super::wire::{self, put_varint, Reader};
use super::{check_whole_len, Codec, CodecError, EncodeParams, Granularity, IMAGE_WEBP};

/// Largest PNG file accepted, and largest picture (WebP's limit is 16383 per side).
const MAX_LEN: usize = 256 << 20;
const MAX_SIDE: u32 = 16383;
const MAX_PIXELS: u64 = 64 << 20;
/// Fixed DEFLATE level of the served PNG: changing it changes every served file (and the
/// golden test), so it never changes for version 1 payloads.
const PNG_DEFLATE_LEVEL: u8 = 6;
const PNG_SIG: [u8; 8] = [137, 80, 78, 71, 13, 10, 26, 10];

pub struct ImageWebp;

/// A PNG chunk kept verbatim: its type and data.
pub(crate) type Chunk = ([u8; 4], Vec<u8>);

/// A decoded 8-bit PNG: pixels row by row, `ch` interleaved samples per pixel.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Picture {
    pub w: u32,
    pub h: u32,
    pub ch: usize,
    pub color_type: u8,
    pub pixels: Vec<u8>,
    /// Ancillary (and other non-IHDR/IDAT/IEND) chunks before the image data and after it;
    /// for a PNM, one pseudo-chunk each: the header and the trailing bytes, verbatim.
    pub before: Vec<Chunk>,
    pub after: Vec<Chunk>,
    /// What file the picture came from, hence how it is served.
    pub kind: Kind,
}

/// The file format a lossily stored picture is served in; its byte is the payload's `kind`
/// (never renumbered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A PNG written by `write_png` with the original's chunks.
    Png = 1,
    /// A binary PNM: its header, the pixels, its tail (pseudo-chunks `head`, `tail`).
    Pnm = 2,
    /// An uncompressed 24/32-bit BMP: its header, the pixels as BGR(A) rows in the header's
    /// order with zero row padding, its tail.
    Bmp = 3,
    /// An uncompressed 8-bit grey/RGB TIFF with contiguous strips: as a PNM.
    Tiff = 4,
}

impl Kind {
    pub(crate) fn from_byte(b: u8) -> Result<Kind, CodecError> {
        Ok(match b {
            1 => Kind::Png,
            2 => Kind::Pnm,
            3 => Kind::Bmp,
            4 => Kind::Tiff,
            _ => return Err(wire::malformed("unknown lossy image payload kind")),
        })
    }

    /// Check the channel count and the chunk lists a payload of this kind holds (a framed
    /// raster has exactly one `head` and one `tail` pseudo-chunk).
    pub(crate) fn check(
        self,
        ch: usize,
        before: &[Chunk],
        after: &[Chunk],
    ) -> Result<(), CodecError> {
        let ok = match self {
            Kind::Png => true,
            Kind::Pnm | Kind::Tiff => ch == 1 || ch == 3,
            Kind::Bmp => {
                (ch == 3 || ch == 4)
                    && before
                        .first()
                        .is_some_and(|(_, h)| bmp_top_down(h).is_some())
            }
        };
        if !ok || (self != Kind::Png && (before.len() != 1 || after.len() != 1)) {
            return Err(wire::malformed("raster payload layout"));
        }
        Ok(())
    }
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn bad(why: &str) -> CodecError {
    CodecError::Failed(format!("not a lossy-codable PNG: {why}"))
}

/// The PSNR target of a lossy image encoding: `params.level` in hundredths of a dB, 10–99 dB.
pub(crate) fn psnr_target(params: &EncodeParams) -> Result<f64, CodecError> {
    let target = params.level as f64 / 100.0;
    if !(10.0..=99.0).contains(&target) {
        return Err(CodecError::Failed(format!(
            "PSNR target {target} dB out of range"
        )));
    }
    Ok(target)
}

/// Decode an 8-bit, non-interlaced, non-palette PNG (refusals say why).
pub(crate) fn read_png(png: &[u8]) -> Result<Picture, CodecError> {
    if png.get(..8) != Some(&PNG_SIG[..]) {
        return Err(bad("no PNG signature"));
    }
    let mut pos = 8;
    let (mut w, mut h, mut ch, mut ct) = (0u32, 0u32, 0usize, 0u8);
    let mut idat = Vec::new();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut seen_idat = false;
    let mut ended = false;
    while pos + 12 <= png.len() {
        let len = be32(&png[pos..]).ok_or_else(|| bad("chunk"))? as usize;
        let ty: [u8; 4] = png[pos + 4..pos + 8].try_into().map_err(|_| bad("chunk"))?;
        let data = png
            .get(pos + 8..pos + 8 + len)
            .ok_or_else(|| bad("truncated chunk"))?;
        pos += 12 + len;
        match &ty {
            b"IHDR" => {
                if len != 13 || w != 0 {
                    return Err(bad("IHDR"));
                }
                w = be32(data).ok_or_else(|| bad("IHDR"))?;
                h = be32(&data[4..]).ok_or_else(|| bad("IHDR"))?;
                let (depth, colour, interlace) = (data[8], data[9], data[12]);
                if depth != 8 || interlace != 0 || data[10] != 0 || data[11] != 0 {
                    return Err(bad("only 8-bit non-interlaced images"));
                }
                ch = match colour {
                    0 => 1,
                    2 => 3,
                    4 => 2,
                    6 => 4,
                    _ => return Err(bad("palette images stay lossless")),
                };
                ct = colour;
            }
            b"IDAT" => {
                if !after.is_empty() {
                    return Err(bad("IDAT chunks not consecutive"));
                }
                seen_idat = true;
                idat.extend_from_slice(data);
            }
            b"IEND" => {
                ended = true;
                break;
            }
            _ if w == 0 => return Err(bad("IHDR is not first")),
            _ if seen_idat => after.push((ty, data.to_vec())),
            _ => before.push((ty, data.to_vec())),
        }
    }
    if !ended || !seen_idat || w == 0 || h == 0 {
        return Err(bad("incomplete"));
    }
    if w > MAX_SIDE || h > MAX_SIDE || (w as u64) * (h as u64) > MAX_PIXELS {
        return Err(bad("too large for WebP"));
    }
    let stride = w as usize * ch;
    let want = h as usize * (stride + 1);
    let filtered = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&idat, want)
        .map_err(|_| bad("bad image data"))?;
    if filtered.len() != want {
        return Err(bad("image data length"));
    }
    let pixels = unfilter(&filtered, stride, ch).ok_or_else(|| bad("bad filter type"))?;
    Ok(Picture {
        w,
        h,
        ch,
        color_type: ct,
        pixels,
        before,
        after,
        kind: Kind::Png,
    })
}

/// A binary PNM (P5 grey, P6 RGB) with maxval 255: its header and trailing bytes (kept
/// verbatim) and its pixels.
struct Pnm<'a> {
    head: &'a [u8],
    tail: &'a [u8],
    w: u32,
    h: u32,
    ch: usize,
    pixels: &'a [u8],
}

/// Parse a binary PNM with maxval 255 (refusals say why).
fn read_pnm(d: &[u8]) -> Result<Pnm<'_>, CodecError> {
    let ch = match d.get(..2) {
        Some(b"P5") => 1,
        Some(b"P6") => 3,
        _ => return Err(bad("not a binary PNM")),
    };
    let mut pos = 2;
    let mut fields = [0u64; 3];
    for f in &mut fields {
        // Whitespace and comments (from '#' to the end of the line) separate the fields.
        loop {
            match d.get(pos) {
                Some(b'#') => {
                    while d.get(pos).is_some_and(|&c| c != b'\n' && c != b'\r') {
                        pos += 1;
                    }
                }
                Some(c) if c.is_ascii_whitespace() => pos += 1,
                _ => break,
            }
        }
        let start = pos;
        while d.get(pos).is_some_and(u8::is_ascii_digit) && pos - start < 9 {
            *f = *f * 10 + (d[pos] - b'0') as u64;
            pos += 1;
        }
        if pos == start {
            return Err(bad("PNM header"));
        }
    }
    // Exactly one whitespace byte ends the header.
    if !d.get(pos).is_some_and(u8::is_ascii_whitespace) {
        return Err(bad("PNM header"));
    }
    pos += 1;
    let [w, h, maxval] = fields;
    if maxval != 255 {
        return Err(bad("only 8-bit PNM (maxval 255)"));
    }
    if w == 0 || h == 0 || w > MAX_SIDE as u64 || h > MAX_SIDE as u64 || w * h > MAX_PIXELS {
        return Err(bad("PNM picture size"));
    }
    let n = (w * h) as usize * ch;
    let pixels = d.get(pos..pos + n).ok_or_else(|| bad("truncated PNM"))?;
    Ok(Pnm {
        head: &d[..pos],
        tail: &d[pos + n..],
        w: w as u32,
        h: h as u32,
        ch,
        pixels,
    })
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = a as i16 + b as i16 - c as i16;
    let (pa, pb, pc) = (
        (p - a as i16).abs(),
        (p - b as i16).abs(),
        (p - c as i16).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

fn unfilter(f: &[u8], stride: usize, bpp: usize) -> Option<Vec<u8>> {
    let rows = f.len() / (stride + 1);
    let mut out = vec![0u8; rows * stride];
    for y in 0..rows {
        let ft = f[y * (stride + 1)];
        let src = &f[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        let (done, cur) = out.split_at_mut(y * stride);
        let prev = if y > 0 {
            &done[(y - 1) * stride..]
        } else {
            &[][..]
        };
        let cur = &mut cur[..stride];
        for i in 0..stride {
            let a = if i >= bpp { cur[i - bpp] } else { 0 };
            let b = prev.get(i).copied().unwrap_or(0);
            let c = if i >= bpp {
                prev.get(i - bpp).copied().unwrap_or(0)
            } else {
                0
            };
            let pred = match ft {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((a as u16 + b as u16) / 2) as u8,
                4 => paeth(a, b, c),
                _ => return None,
            };
            cur[i] = src[i].wrapping_add(pred);
        }
    }
    Some(out)
}

/// CRC-32 (ISO-HDLC, as PNG uses), bitwise: only the few chunks written here go through it.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for p in parts {
        for &b in *p {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
    }
    !c
}

fn put_chunk(out: &mut Vec<u8>, ty: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(ty);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[ty, data]).to_be_bytes());
}

/// The PNG this module serves for `p`: deterministic (see the module invariants). Every row
/// uses the Paeth filter, which suits photographs.
pub(crate) fn write_png(p: &Picture) -> Vec<u8> {
    let stride = p.w as usize * p.ch;
    let mut filtered = Vec::with_capacity(p.h as usize * (stride + 1));
    for y in 0..p.h as usize {
        filtered.push(4);
        let cur = &p.pixels[y * stride..(y + 1) * stride];
        let prev = if y > 0 {
            &p.pixels[(y - 1) * stride..y * stride]
        } else {
            &[][..]
        };
        for i in 0..stride {
            let a = if i >= p.ch { cur[i - p.ch] } else { 0 };
            let b = prev.get(i).copied().unwrap_or(0);
            let c = if i >= p.ch {
                prev.get(i - p.ch).copied().unwrap_or(0)
            } else {
                0
            };
            filtered.push(cur[i].wrapping_sub(paeth(a, b, c)));
        }
    }
    let z = miniz_oxide::deflate::compress_to_vec_zlib(&filtered, PNG_DEFLATE_LEVEL);
    let mut out = Vec::with_capacity(z.len() + 1024);
    out.extend_from_slice(&PNG_SIG);
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&p.w.to_be_bytes());
    ihdr.extend_from_slice(&p.h.to_be_bytes());
    ihdr.extend_from_slice(&[8, p.color_type, 0, 0, 0]);
    put_chunk(&mut out, b"IHDR", &ihdr);
    for (ty, d) in &p.before {
        put_chunk(&mut out, ty, d);
    }
    put_chunk(&mut out, b"IDAT", &z);
    for (ty, d) in &p.after {
        put_chunk(&mut out, ty, d);
    }
    put_chunk(&mut out, b"IEND", &[]);
    out
}

/// Serves a decoded picture as the decoders of every lossy image codec do: the file must be
/// exactly the recorded length (`st_size`), else the block is reported, never served.
pub(crate) fn deliver(p: &Picture, raw_len: usize, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let file = serve(p);
    CodecError::check_len(file.len(), raw_len)?;
    *out = file;
    Ok(())
}

/// The file served for a decoded picture: a PNG (`write_png`), or a PNM's own header, the
/// pixels and its own tail.
pub(crate) fn serve(p: &Picture) -> Vec<u8> {
    if p.kind == Kind::Png {
        return write_png(p);
    }
    let mut out = Vec::with_capacity(p.pixels.len() + 64);
    for (_, d) in &p.before {
        out.extend_from_slice(d);
    }
    if p.kind == Kind::Bmp {
        // `Kind::check` made sure the header says the row order.
        let top_down = p
            .before
            .first()
            .and_then(|(_, h)| bmp_top_down(h))
            .unwrap_or(false);
        bmp_rows(p, top_down, &mut out);
    } else {
        out.extend_from_slice(&p.pixels);
    }
    for (_, d) in &p.after {
        out.extend_from_slice(d);
    }
    out
}

/// A BMP's pixel rows for `p` (RGB(A) top-down): BGR(A), in the file's row order, each
/// padded with zeros to a multiple of 4 bytes.
fn bmp_rows(p: &Picture, top_down: bool, out: &mut Vec<u8>) {
    let (w, h) = (p.w as usize, p.h as usize);
    let row = w * p.ch;
    let pad = (4 - row % 4) % 4;
    for i in 0..h {
        let y = if top_down { i } else { h - 1 - i };
        for px in p.pixels[y * row..(y + 1) * row].chunks_exact(p.ch) {
            out.extend_from_slice(&[px[2], px[1], px[0]]);
            if p.ch == 4 {
                out.push(px[3]);
            }
        }
        out.extend(std::iter::repeat_n(0u8, pad));
    }
}

fn le16(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?))
}

fn le32(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

/// Whether a BMP header (file header and DIB header) stores its rows top-down (a negative
/// height); None when it is not a header `read_bmp` accepts.
fn bmp_top_down(head: &[u8]) -> Option<bool> {
    if head.get(..2) != Some(b"BM") || !matches!(le32(head, 14)?, 40 | 108 | 124) {
        return None;
    }
    Some((le32(head, 22)? as i32) < 0)
}

/// An uncompressed (BI_RGB) 24- or 32-bit BMP with a BITMAPINFOHEADER (or V4/V5) header and
/// zero row padding: its picture (RGB or RGBA top-down; the header and the bytes after the
/// pixels kept as pseudo-chunks). Anything else (palette, 16-bit, bit fields, RLE, JPEG/PNG
/// inside, OS/2 headers) is refused.
fn read_bmp(d: &[u8]) -> Result<Picture, CodecError> {
    let no = |why: &str| bad(&format!("BMP: {why}"));
    if d.get(..2) != Some(b"BM") {
        return Err(no("no signature"));
    }
    let off = le32(d, 10).ok_or_else(|| no("header"))? as usize;
    let dib = le32(d, 14).ok_or_else(|| no("header"))? as usize;
    if !matches!(dib, 40 | 108 | 124) || off < 14 + dib {
        return Err(no("unsupported header"));
    }
    let w = le32(d, 18).ok_or_else(|| no("header"))? as i32;
    let hs = le32(d, 22).ok_or_else(|| no("header"))? as i32;
    let planes = le16(d, 26).ok_or_else(|| no("header"))?;
    let bpp = le16(d, 28).ok_or_else(|| no("header"))?;
    let compression = le32(d, 30).ok_or_else(|| no("header"))?;
    if planes != 1 || compression != 0 || !(bpp == 24 || bpp == 32) {
        return Err(no("only uncompressed 24- and 32-bit BMPs"));
    }
    let h = hs.unsigned_abs();
    if w <= 0 || h == 0 || w as u32 > MAX_SIDE || h > MAX_SIDE {
        return Err(no("picture size"));
    }
    let (w, top_down) = (w as u32, hs < 0);
    let ch = bpp as usize / 8;
    let row = w as usize * ch;
    let stride = row.div_ceil(4) * 4;
    let data = d
        .get(off..off + stride * h as usize)
        .ok_or_else(|| no("truncated pixels"))?;
    let mut pixels = vec![0u8; row * h as usize];
    for (i, src) in data.chunks_exact(stride).enumerate() {
        if src[row..].iter().any(|&b| b != 0) {
            return Err(no("non-zero row padding"));
        }
        let y = if top_down { i } else { h as usize - 1 - i };
        for (dst, s) in pixels[y * row..(y + 1) * row]
            .chunks_exact_mut(ch)
            .zip(src[..row].chunks_exact(ch))
        {
            dst[..3].copy_from_slice(&[s[2], s[1], s[0]]);
            if ch == 4 {
                dst[3] = s[3];
            }
        }
    }
    Ok(Picture {
        w,
        h,
        ch,
        color_type: if ch == 4 { 6 } else { 2 },
        pixels,
        before: vec![(*b"head", d[..off].to_vec())],
        after: vec![(*b"tail", d[off + stride * h as usize..].to_vec())],
        kind: Kind::Bmp,
    })
}

/// An uncompressed baseline TIFF (one image, 8-bit grey BlackIsZero or RGB, chunky, in
/// strips that follow each other in the file), little or big endian: its picture, with
/// everything before and after the pixel bytes kept verbatim. Anything else (compression,
/// tiles, other depths, extra samples, palettes, several images) is refused.
fn read_tiff(d: &[u8]) -> Result<Picture, CodecError> {
    let no = |why: &str| bad(&format!("TIFF: {why}"));
    let be = match d.get(..4) {
        Some(b"II*\0") => false,
        Some(b"MM\0*") => true,
        _ => return Err(no("no signature")),
    };
    let u16_at = |at: usize| -> Option<u32> {
        let b: [u8; 2] = d.get(at..at + 2)?.try_into().ok()?;
        Some(if be {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        } as u32)
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = d.get(at..at + 4)?.try_into().ok()?;
        Some(if be {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let ifd = u32_at(4).ok_or_else(|| no("header"))? as usize;
    let n = u16_at(ifd).ok_or_else(|| no("IFD"))? as usize;
    let next = u32_at(ifd + 2 + 12 * n).ok_or_else(|| no("IFD"))?;
    if next != 0 {
        return Err(no("several images"));
    }
    // The values of a SHORT (3) or LONG (4) field, inline or at its offset (bounded).
    let values = |e: usize| -> Option<Vec<u32>> {
        let (ty, count) = (u16_at(e + 2)?, u32_at(e + 4)? as usize);
        let size = match ty {
            3 => 2,
            4 => 4,
            _ => return None,
        };
        if count == 0 || count > (1 << 20) {
            return None;
        }
        let at = if size * count <= 4 {
            e + 8
        } else {
            u32_at(e + 8)? as usize
        };
        (0..count)
            .map(|i| {
                if size == 2 {
                    u16_at(at + 2 * i)
                } else {
                    u32_at(at + 4 * i)
                }
            })
            .collect()
    };
    let (mut w, mut h, mut spp, mut photometric) = (0u32, 0u32, 1u32, u32::MAX);
    let (mut bits, mut offsets, mut counts) = (vec![1u32], Vec::new(), Vec::new());
    let (mut compression, mut planar) = (1u32, 1u32);
    for i in 0..n {
        let e = ifd + 2 + 12 * i;
        let tag = u16_at(e).ok_or_else(|| no("IFD"))?;
        let v = || values(e).ok_or_else(|| no("field"));
        let one = || v().map(|v| v[0]);
        match tag {
            256 => w = one()?,
            257 => h = one()?,
            258 => bits = v()?,
            259 => compression = one()?,
            262 => photometric = one()?,
            273 => offsets = v()?,
            277 => spp = one()?,
            279 => counts = v()?,
            284 => planar = one()?,
            // Tiles, extra samples, a colour map, sub-sampled YCbCr, JPEG tables: refused.
            320 | 322 | 323 | 324 | 325 | 338 | 347 | 530 => return Err(no("unsupported layout")),
            _ => {}
        }
    }
    let ch = spp as usize;
    let ok = compression == 1
        && planar == 1
        && ((ch == 1 && photometric == 1) || (ch == 3 && photometric == 2))
        && bits.len() == ch
        && bits.iter().all(|&b| b == 8);
    if !ok {
        return Err(no("only uncompressed 8-bit grey or RGB"));
    }
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE || (w as u64) * (h as u64) > MAX_PIXELS {
        return Err(no("picture size"));
    }
    let total = w as usize * h as usize * ch;
    if offsets.is_empty() || offsets.len() != counts.len() {
        return Err(no("strips"));
    }
    let start = offsets[0] as usize;
    let mut end = start;
    for (&o, &c) in offsets.iter().zip(&counts) {
        if o as usize != end {
            return Err(no("strips are not contiguous"));
        }
        end += c as usize;
    }
    if end - start != total {
        return Err(no("strip sizes"));
    }
    let pixels = d.get(start..end).ok_or_else(|| no("truncated pixels"))?;
    Ok(Picture {
        w,
        h,
        ch,
        color_type: if ch == 1 { 0 } else { 2 },
        pixels: pixels.to_vec(),
        before: vec![(*b"head", d[..start].to_vec())],
        after: vec![(*b"tail", d[end..].to_vec())],
        kind: Kind::Tiff,
    })
}

/// PSNR in dB between two sample buffers of equal length (infinite when identical).
pub(crate) fn psnr(a: &[u8], b: &[u8]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let se: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as i64 - y as i64;
            (d * d) as u64
        })
        .sum();
    if se == 0 {
        return f64::INFINITY;
    }
    let mse = se as f64 / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// PSNR of the image file `decoded` against the image file `original` (PNG, PNM, BMP or
/// TIFF as `load_picture` reads them), over every sample; None when either is not readable
/// or their geometry differs.
pub fn image_psnr(original: &[u8], decoded: &[u8]) -> Option<f64> {
    let (a, b) = (load_picture(original).ok()?, load_picture(decoded).ok()?);
    if (a.w, a.h, a.ch, a.kind) != (b.w, b.h, b.ch, b.kind) {
        return None;
    }
    Some(psnr(&a.pixels, &b.pixels))
}

/// The picture of a binary PNM, an uncompressed BMP or TIFF (header and tail kept as
/// pseudo-chunks), or else of a PNG.
pub(crate) fn load_picture(raw: &[u8]) -> Result<Picture, CodecError> {
    match raw.get(..2) {
        Some(b"BM") => return read_bmp(raw),
        Some(b"II") | Some(b"MM") => return read_tiff(raw),
        _ => {}
    }
    Ok(match read_pnm(raw) {
        Ok(p) => Picture {
            w: p.w,
            h: p.h,
            ch: p.ch,
            color_type: if p.ch == 1 { 0 } else { 2 },
            pixels: p.pixels.to_vec(),
            before: vec![(*b"head", p.head.to_vec())],
            after: vec![(*b"tail", p.tail.to_vec())],
            kind: Kind::Pnm,
        },
        Err(_) => read_png(raw)?,
    })
}

/// The samples WebP is given: grey expanded to RGB(A); alpha kept.
fn to_webp_input(p: &Picture) -> (Vec<u8>, bool) {
    match p.ch {
        1 => (p.pixels.iter().flat_map(|&g| [g, g, g]).collect(), false),
        2 => (
            p.pixels
                .chunks_exact(2)
                .flat_map(|c| [c[0], c[0], c[0], c[1]])
                .collect(),
            true,
        ),
        3 => (p.pixels.clone(), false),
        _ => (p.pixels.clone(), true),
    }
}

/// Back from WebP's RGB(A) to the picture's channels (grey: the rounded mean of R, G, B).
fn from_webp_output(rgb: &[u8], ch: usize) -> Vec<u8> {
    let grey = |c: &[u8]| ((c[0] as u16 + c[1] as u16 + c[2] as u16 + 1) / 3) as u8;
    match ch {
        1 => rgb.chunks_exact(3).map(grey).collect(),
        2 => rgb.chunks_exact(4).flat_map(|c| [grey(c), c[3]]).collect(),
        _ => rgb.to_vec(),
    }
}

/// How to ask libwebp for an encoding.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// VP8 (lossy, 4:2:0 with sharp RGB→YUV conversion) at quality 0..=100.
    Lossy(u8),
    /// VP8L (lossless format) over colour samples rounded to multiples of this step
    /// (`quantize`): for pictures whose colour detail 4:2:0 cannot keep at the target.
    Quantized(u8),
}

fn webp_encode(
    samples: &[u8],
    w: u32,
    h: u32,
    alpha: bool,
    mode: Mode,
) -> Result<Vec<u8>, CodecError> {
    use libwebp_sys as ffi;
    let bpp = if alpha { 4 } else { 3 };
    let stride = (w as usize * bpp) as i32;
    if samples.len() != w as usize * h as usize * bpp {
        return Err(CodecError::Failed("sample buffer size".into()));
    }
    let fail = |what: &str| CodecError::Failed(format!("WebP encoding failed: {what}"));
    wire::fence("libwebp encode", || {
        let mut config = ffi::WebPConfig::new().map_err(|_| fail("config"))?;
        match mode {
            Mode::Lossy(q) => {
                config.quality = q as f32;
                config.method = 4;
                config.use_sharp_yuv = 1;
            }
            Mode::Quantized(_) => {
                // SAFETY: `config` is an initialized WebPConfig.
                if unsafe { ffi::WebPConfigLosslessPreset(&mut config, 2) } == 0 {
                    return Err(fail("lossless preset"));
                }
                // Keep every sample as given, also under transparent pixels.
                config.exact = 1;
            }
        }
        config.thread_level = 0;
        // SAFETY: as above.
        if unsafe { ffi::WebPValidateConfig(&config) } == 0 {
            return Err(fail("invalid config"));
        }
        let mut pic = ffi::WebPPicture::new().map_err(|_| fail("picture"))?;
        pic.width = w as i32;
        pic.height = h as i32;
        pic.use_argb = matches!(mode, Mode::Quantized(_)) as i32;
        let mut writer = std::mem::MaybeUninit::<ffi::WebPMemoryWriter>::uninit();
        // SAFETY: WebPMemoryWriterInit initializes every field of the writer.
        let mut writer = unsafe {
            ffi::WebPMemoryWriterInit(writer.as_mut_ptr());
            writer.assume_init()
        };
        // SAFETY: `samples` holds h rows of `stride` bytes (checked above); the picture owns
        // the imported copy until WebPPictureFree; the writer outlives WebPEncode and its
        // memory is copied out, then released by WebPMemoryWriterClear.
        let ok = unsafe {
            let imported = if alpha {
                ffi::WebPPictureImportRGBA(&mut pic, samples.as_ptr(), stride)
            } else {
                ffi::WebPPictureImportRGB(&mut pic, samples.as_ptr(), stride)
            };
            pic.writer = Some(ffi::WebPMemoryWrite);
            pic.custom_ptr = (&mut writer as *mut ffi::WebPMemoryWriter).cast();
            let ok = imported != 0 && ffi::WebPEncode(&config, &mut pic) != 0;
            ffi::WebPPictureFree(&mut pic);
            ok
        };
        let out = if ok && !writer.mem.is_null() {
            // SAFETY: the writer holds `size` bytes at `mem`.
            Ok(unsafe { std::slice::from_raw_parts(writer.mem, writer.size) }.to_vec())
        } else {
            Err(fail("encoder error"))
        };
        // SAFETY: releases what the writer allocated (nothing when `mem` is null).
        unsafe { ffi::WebPMemoryWriterClear(&mut writer) };
        out
    })
}

/// Colour samples rounded to the nearest multiple of `step` that is at most 255 (alpha
/// kept): a near-lossless pre-quantization, done here (libwebp's own near-lossless mode did
/// not change these pictures) so that the lossless coder has less noise to keep.
fn quantize(samples: &[u8], step: u8, alpha: bool) -> Vec<u8> {
    let step = step.max(1) as u16;
    let top = 255 / step * step;
    let bpp = if alpha { 4 } else { 3 };
    samples
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if alpha && i % bpp == 3 {
                v
            } else {
                ((v as u16 + step / 2) / step * step).min(top) as u8
            }
        })
        .collect()
}

fn webp_decode(data: &[u8], w: u32, h: u32, alpha: bool) -> Result<Vec<u8>, CodecError> {
    wire::fence("libwebp decode", || {
        let (mut gw, mut gh) = (0i32, 0i32);
        // SAFETY: libwebp reads at most `data.len()` bytes.
        let ok = unsafe { libwebp_sys::WebPGetInfo(data.as_ptr(), data.len(), &mut gw, &mut gh) };
        if ok == 0 || gw as i64 != w as i64 || gh as i64 != h as i64 {
            return Err(wire::malformed("WebP header does not match the picture"));
        }
        let bpp = if alpha { 4 } else { 3 };
        let stride = w as usize * bpp;
        let mut out = vec![0u8; stride * h as usize];
        // SAFETY: `out` is exactly h rows of `stride` bytes and libwebp is told so; it writes
        // nothing beyond the buffer size it is given.
        let r = unsafe {
            if alpha {
                libwebp_sys::WebPDecodeRGBAInto(
                    data.as_ptr(),
                    data.len(),
                    out.as_mut_ptr(),
                    out.len(),
                    stride as i32,
                )
            } else {
                libwebp_sys::WebPDecodeRGBInto(
                    data.as_ptr(),
                    data.len(),
                    out.as_mut_ptr(),
                    out.len(),
                    stride as i32,
                )
            }
        };
        if r.is_null() {
            return Err(wire::malformed("WebP decoding failed"));
        }
        Ok(out)
    })
}

pub(crate) fn put_chunks(out: &mut Vec<u8>, chunks: &[Chunk]) {
    put_varint(out, chunks.len() as u64);
    for (ty, d) in chunks {
        out.extend_from_slice(ty);
        put_varint(out, d.len() as u64);
        out.extend_from_slice(d);
    }
}

pub(crate) fn get_chunks(r: &mut Reader<'_>, max: usize) -> Result<Vec<Chunk>, CodecError> {
    let n = r.len(max / 5 + 1)?;
    let mut v = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let ty: [u8; 4] = r
            .bytes(4)?
            .try_into()
            .map_err(|_| wire::malformed("chunk type"))?;
        let len = r.len(max)?;
        v.push((ty, r.bytes(len)?.to_vec()));
    }
    Ok(v)
}

/// The picture a payload holds (reconstructed pixels, original chunks).
fn decode_picture(payload: &[u8]) -> Result<Picture, CodecError> {
    let mut r = Reader::new(payload);
    if r.u8()? != 1 {
        return Err(wire::malformed("unknown lossy image payload version"));
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
    let webp = r.bytes(n)?;
    if r.remaining() != 0 {
        return Err(wire::malformed("trailing bytes"));
    }
    kind.check(ch, &before, &after)?;
    let alpha = ch == 2 || ch == 4;
    let rgb = webp_decode(webp, w, h, alpha)?;
    Ok(Picture {
        w,
        h,
        ch,
        color_type,
        pixels: from_webp_output(&rgb, ch),
        before,
        after,
        kind,
    })
}

impl Codec for ImageWebp {
    fn id(&self) -> super::CodecId {
        IMAGE_WEBP
    }

    fn name(&self) -> &'static str {
        "image-webp"
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

    /// `params.level`: the PSNR target in hundredths of a dB. The smallest WebP whose decoded
    /// pixels meet it (VP8 quality by binary search, then quantized VP8L steps).
    fn encode(
        &self,
        raw: &[u8],
        params: &EncodeParams,
        out: &mut Vec<u8>,
    ) -> Result<u32, CodecError> {
        check_whole_len(raw, MAX_LEN, "PNG ")?;
        let target = psnr_target(params)?;
        let pic = load_picture(raw)?;
        let (samples, alpha) = to_webp_input(&pic);
        let try_mode = |m: Mode| -> Result<Option<Vec<u8>>, CodecError> {
            let webp = match m {
                Mode::Quantized(step) => {
                    webp_encode(&quantize(&samples, step, alpha), pic.w, pic.h, alpha, m)?
                }
                Mode::Lossy(_) => webp_encode(&samples, pic.w, pic.h, alpha, m)?,
            };
            let back = from_webp_output(&webp_decode(&webp, pic.w, pic.h, alpha)?, pic.ch);
            Ok((psnr(&pic.pixels, &back) >= target).then_some(webp))
        };
        // Lossy VP8: the smallest quality meeting the target, by binary search (PSNR grows
        // with quality). Invariant: `hi` meets the target or is 101; below `lo` nothing did.
        let mut best: Option<(u32, Vec<u8>)> = None;
        let keep = |best: &mut Option<(u32, Vec<u8>)>, p: u32, w: Vec<u8>| {
            if best.as_ref().is_none_or(|b| w.len() < b.1.len()) {
                *best = Some((p, w));
            }
        };
        let (mut lo, mut hi) = (0u8, 101u8);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match try_mode(Mode::Lossy(mid))? {
                Some(w) => {
                    keep(&mut best, mid as u32, w);
                    hi = mid;
                }
                None => lo = mid + 1,
            }
            if lo == 101 {
                break;
            }
        }
        // Quantized VP8L when 4:2:0 cannot reach the target (or only at a high quality): the
        // coarsest step meeting the target, by binary search (PSNR falls as the step grows;
        // a uniform step s costs about 10·log10(12·255²/s²) dB).
        if best.as_ref().is_none_or(|(q, _)| *q >= 95) {
            const STEPS: [u8; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12];
            let (mut lo, mut hi) = (0usize, STEPS.len());
            // Invariant: STEPS[..lo] met the target (or lo = 0); STEPS[hi..] did not.
            let mut found: Option<(u8, Vec<u8>)> = None;
            while lo < hi {
                let mid = (lo + hi) / 2;
                match try_mode(Mode::Quantized(STEPS[mid]))? {
                    Some(w) => {
                        found = Some((STEPS[mid], w));
                        lo = mid + 1;
                    }
                    None => hi = mid,
                }
            }
            if let Some((step, w)) = found {
                keep(&mut best, 1000 + step as u32, w);
            }
        }
        let Some(best) = best else {
            return Err(CodecError::Failed(format!(
                "WebP cannot reach {target:.1} dB on this image"
            )));
        };
        out.clear();
        out.extend_from_slice(&[1, pic.kind as u8, pic.ch as u8, pic.color_type]);
        put_varint(out, pic.w as u64);
        put_varint(out, pic.h as u64);
        put_chunks(out, &pic.before);
        put_chunks(out, &pic.after);
        put_varint(out, best.1.len() as u64);
        out.extend_from_slice(&best.1);
        if out.len() >= raw.len() {
            return Err(CodecError::NotWorthIt);
        }
        Ok(best.0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus_png() -> Vec<u8> {
        super::super::testdata::sample("png")
    }

    /// A small synthetic photo-like picture: smooth shading, correlated channels, mild
    /// texture (what lossy coding is for).
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
                        200.0 + 40.0 * (fx * 0.05).cos() // alpha
                    } else {
                        base + c as f64 * 12.0 - fy * 0.3
                    };
                    pixels.push(v.clamp(0.0, 255.0) as u8);
                }
            }
        }
        let color_type = [0, 0, 4, 2, 6][ch];
        Picture {
            w,
            h,
            ch,
            color_type,
            pixels,
            before: vec![(*b"gAMA", vec![0, 0, 177, 143])],
            after: vec![(*b"tEXt", b"Comment\0idcfs".to_vec())],
            kind: Kind::Png,
        }
    }

    #[test]
    fn png_writer_reads_back_exactly() {
        for ch in 1..=4 {
            let p = synthetic(37, 23, ch);
            let png = write_png(&p);
            assert_eq!(read_png(&png).unwrap_or_else(|e| panic!("{e}")), p);
            assert_eq!(write_png(&p), png, "deterministic");
        }
    }

    #[test]
    fn meets_the_target_and_round_trips_deterministically() {
        for ch in 1..=4 {
            let png = write_png(&synthetic(64, 48, ch));
            for target in [30.0, 40.0] {
                let mut out = Vec::new();
                let p = EncodeParams::level((target * 100.0) as i32);
                let q = ImageWebp.encode(&png, &p, &mut out);
                let q = match q {
                    Ok(q) => q,
                    Err(CodecError::NotWorthIt) => continue,
                    Err(e) => panic!("ch {ch}: {e}"),
                };
                assert!(q <= 100 || (1001..=1012).contains(&q), "{q}");
                let served = write_png(&decode_picture(&out).unwrap_or_else(|e| panic!("{e}")));
                let mut back = Vec::new();
                ImageWebp
                    .decode(&out, q, served.len(), &mut back)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(back, served);
                let db = image_psnr(&png, &back).unwrap_or(0.0);
                assert!(db >= target, "ch {ch}: {db} < {target}");
                let got = read_png(&back).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(got.before, vec![(*b"gAMA", vec![0, 0, 177, 143])]);
                assert_eq!(got.after.len(), 1);
            }
        }
    }

    /// A frozen payload (tests/data/codec-golden/image-webp-v1.payload, written by
    /// `IDCFS_WRITE_GOLDEN=1`) must keep serving these exact bytes: a change in libwebp's
    /// decoder, the PNG writer or miniz_oxide's DEFLATE would change what readers of stored
    /// files get (and their `st_size`), and must fail here instead.
    #[test]
    fn golden_png_bytes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/codec-golden/image-webp-v1.payload"
        );
        if std::env::var_os("IDCFS_WRITE_GOLDEN").is_some() {
            let png = write_png(&synthetic(48, 32, 3));
            let mut payload = Vec::new();
            ImageWebp
                .encode(&png, &EncodeParams::level(3500), &mut payload)
                .unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(path, &payload).unwrap_or_else(|e| panic!("{e}"));
        }
        let payload = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut served = Vec::new();
        ImageWebp
            .decode(&payload, 0, GOLDEN_LEN, &mut served)
            .unwrap_or_else(|e| panic!("{e}"));
        let h = blake3::hash(&served).to_hex().to_string();
        assert_eq!(
            (served.len(), h.as_str()),
            (GOLDEN_LEN, GOLDEN_HASH),
            "served PNG bytes changed"
        );
        // Decoding on several threads at once gives the same bytes.
        let hashes: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut o = Vec::new();
                        ImageWebp
                            .decode(&payload, 0, GOLDEN_LEN, &mut o)
                            .map(|_| blake3::hash(&o).to_hex().to_string())
                            .unwrap_or_default()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        assert!(hashes.iter().all(|x| x == GOLDEN_HASH), "{hashes:?}");
    }

    const GOLDEN_LEN: usize = 1552;
    const GOLDEN_HASH: &str = "b449e6382c3e2cc44c222f6d83cd01d6a9553973f49c6d9b9472b021e72880a1";

    #[test]
    fn corpus_sample_and_refusals() {
        let png = corpus_png();
        let mut out = Vec::new();
        match ImageWebp.encode(&png, &EncodeParams::level(4000), &mut out) {
            Ok(_) => {
                let pic = decode_picture(&out).unwrap_or_else(|e| panic!("{e}"));
                let back = write_png(&pic);
                assert!(image_psnr(&png, &back).unwrap_or(0.0) >= 40.0);
            }
            Err(e) => eprintln!("corpus sample refused: {e}"),
        }
        // Not PNGs, or PNGs this codec leaves lossless.
        assert!(ImageWebp
            .encode(b"hello", &EncodeParams::level(4000), &mut out)
            .is_err());
        let mut pal = write_png(&synthetic(8, 8, 1));
        pal[8 + 8 + 9] = 3; // colour type 3 (palette) in IHDR
        assert!(read_png(&pal).is_err());
    }

    #[test]
    fn pnm_keeps_its_header_and_tail_and_meets_the_target() {
        for ch in [1usize, 3] {
            let p = synthetic(50, 40, ch);
            let mut pnm = format!(
                "P{}\n# made by a test\n50 40\n255\n",
                if ch == 1 { 5 } else { 6 }
            )
            .into_bytes();
            pnm.extend_from_slice(&p.pixels);
            pnm.extend_from_slice(b"trailing");
            let mut out = Vec::new();
            let q = ImageWebp
                .encode(&pnm, &EncodeParams::level(3800), &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
            let n = ImageWebp
                .decoded_len(&out, q)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or(0);
            assert_eq!(n, pnm.len(), "same size as the original");
            let mut back = Vec::new();
            ImageWebp
                .decode(&out, q, n, &mut back)
                .unwrap_or_else(|e| panic!("{e}"));
            let head = pnm.len() - p.pixels.len() - 8;
            assert_eq!(back[..head], pnm[..head]);
            assert!(back.ends_with(b"trailing"));
            assert!(image_psnr(&pnm, &back).unwrap_or(0.0) >= 38.0);
        }
        assert!(read_pnm(b"P6\n2 2\n65535\n").is_err());
        assert!(read_pnm(b"P6\n2 2\n255\nabc").is_err());
    }

    /// An uncompressed BMP of `p` (RGB or RGBA) as common writers make it: BITMAPINFOHEADER,
    /// 24 or 32 bits, rows bottom-up (or top-down), zero padding, `tail` after the pixels.
    pub(crate) fn make_bmp(p: &Picture, top_down: bool, tail: &[u8]) -> Vec<u8> {
        let mut rows = Vec::new();
        let q = Picture {
            kind: Kind::Bmp,
            ..p.clone()
        };
        bmp_rows(&q, top_down, &mut rows);
        let off = 14 + 40;
        let mut d = b"BM".to_vec();
        d.extend_from_slice(&((off + rows.len() + tail.len()) as u32).to_le_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&(off as u32).to_le_bytes());
        d.extend_from_slice(&40u32.to_le_bytes());
        d.extend_from_slice(&(p.w as i32).to_le_bytes());
        let h = if top_down { -(p.h as i32) } else { p.h as i32 };
        d.extend_from_slice(&h.to_le_bytes());
        d.extend_from_slice(&1u16.to_le_bytes());
        d.extend_from_slice(&((p.ch * 8) as u16).to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        d.extend_from_slice(&(rows.len() as u32).to_le_bytes());
        d.extend_from_slice(&[0x13, 0x0b, 0, 0, 0x13, 0x0b, 0, 0]);
        d.extend_from_slice(&[0; 8]);
        d.extend_from_slice(&rows);
        d.extend_from_slice(tail);
        d
    }

    /// An uncompressed baseline TIFF of `p` (grey or RGB) in strips of `rps` rows, in either
    /// byte order, with the IFD after the pixels (as libtiff writes it) and a description.
    pub(crate) fn make_tiff(p: &Picture, be: bool, rps: u32) -> Vec<u8> {
        let u16b = |v: u16| if be { v.to_be_bytes() } else { v.to_le_bytes() };
        let u32b = |v: u32| if be { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut d = if be {
            b"MM\0*".to_vec()
        } else {
            b"II*\0".to_vec()
        };
        d.extend_from_slice(&[0; 4]); // IFD offset, patched below
        let start = d.len() as u32;
        d.extend_from_slice(&p.pixels);
        let row = p.w * p.ch as u32;
        let strips: Vec<(u32, u32)> = (0..p.h.div_ceil(rps))
            .map(|i| {
                let rows = rps.min(p.h - i * rps);
                (start + i * rps * row, rows * row)
            })
            .collect();
        let mut extra = Vec::new(); // out-of-line values, after the IFD
        let desc = b"made by idcfs tests\0".to_vec();
        let n_entries = 11u16;
        if d.len() % 2 == 1 {
            d.push(0);
        }
        let ifd = d.len() as u32;
        let extra_at = ifd + 2 + 12 * n_entries as u32 + 4;
        let mut entries: Vec<(u16, u16, u32, Vec<u8>)> = Vec::new();
        let long_list = |vals: &[u32], extra: &mut Vec<u8>| -> Vec<u8> {
            if vals.len() == 1 {
                return u32b(vals[0]).to_vec();
            }
            let at = extra_at + extra.len() as u32;
            for v in vals {
                extra.extend_from_slice(&u32b(*v));
            }
            u32b(at).to_vec()
        };
        let short = |v: u16| {
            let mut b = u16b(v).to_vec();
            b.extend_from_slice(&[0, 0]);
            b
        };
        entries.push((256, 4, 1, u32b(p.w).to_vec()));
        entries.push((257, 4, 1, u32b(p.h).to_vec()));
        if p.ch == 1 {
            entries.push((258, 3, 1, short(8)));
        } else {
            let at = extra_at + extra.len() as u32;
            for _ in 0..3 {
                extra.extend_from_slice(&u16b(8));
            }
            entries.push((258, 3, 3, u32b(at).to_vec()));
        }
        entries.push((259, 3, 1, short(1)));
        entries.push((262, 3, 1, short(if p.ch == 1 { 1 } else { 2 })));
        let at = extra_at + extra.len() as u32;
        extra.extend_from_slice(&desc);
        entries.push((270, 2, desc.len() as u32, u32b(at).to_vec()));
        let offs: Vec<u32> = strips.iter().map(|s| s.0).collect();
        let v = long_list(&offs, &mut extra);
        entries.push((273, 4, offs.len() as u32, v));
        entries.push((277, 3, 1, short(p.ch as u16)));
        entries.push((278, 4, 1, u32b(rps).to_vec()));
        let counts: Vec<u32> = strips.iter().map(|s| s.1).collect();
        let v = long_list(&counts, &mut extra);
        entries.push((279, 4, counts.len() as u32, v));
        entries.push((284, 3, 1, short(1)));
        assert_eq!(entries.len(), n_entries as usize);
        d.extend_from_slice(&u16b(n_entries));
        for (tag, ty, count, val) in entries {
            d.extend_from_slice(&u16b(tag));
            d.extend_from_slice(&u16b(ty));
            d.extend_from_slice(&u32b(count));
            d.extend_from_slice(&val);
        }
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&extra);
        let o = u32b(ifd);
        d[4..8].copy_from_slice(&o);
        d
    }

    /// BMP (24-bit bottom-up, 32-bit top-down) and TIFF (grey and RGB, both byte orders,
    /// several strips) read as the pixels they hold, are served back in their own format
    /// with the original header and trailing bytes verbatim and the same size, and meet the
    /// target through WebP and AV1.
    #[test]
    fn bmp_and_tiff_round_trip_in_their_own_format() {
        let mut files = Vec::new();
        for (ch, top_down) in [(3usize, false), (4, true), (3, true)] {
            let mut p = synthetic(45, 30, ch);
            p.kind = Kind::Bmp;
            files.push((p.clone(), make_bmp(&p, top_down, b"")));
        }
        for (ch, be) in [(1usize, false), (3, true), (3, false), (1, true)] {
            let mut p = synthetic(41, 33, ch);
            p.kind = Kind::Tiff;
            files.push((p.clone(), make_tiff(&p, be, 8)));
        }
        for (p, file) in &files {
            let got = load_picture(file).unwrap_or_else(|e| panic!("{:?}: {e}", p.kind));
            assert_eq!((got.w, got.h, got.ch, got.kind), (p.w, p.h, p.ch, p.kind));
            assert_eq!(got.pixels, p.pixels);
            assert_eq!(
                &serve(&got),
                file,
                "{:?} served exactly when unchanged",
                p.kind
            );
            let codecs: [&dyn Codec; 2] = [&ImageWebp, &super::super::ImageAvif];
            for c in codecs {
                let mut out = Vec::new();
                let q = c
                    .encode(file, &EncodeParams::level(3600), &mut out)
                    .unwrap_or_else(|e| panic!("{} {:?}: {e}", c.name(), p.kind));
                let n = c
                    .decoded_len(&out, q)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or(0);
                assert_eq!(n, file.len(), "{} {:?}: same size", c.name(), p.kind);
                let mut back = Vec::new();
                c.decode(&out, q, n, &mut back)
                    .unwrap_or_else(|e| panic!("{e}"));
                let head = &got.before[0].1;
                assert_eq!(&back[..head.len()], &head[..], "header verbatim");
                assert!(back.ends_with(&got.after[0].1), "tail verbatim");
                let db = image_psnr(file, &back).unwrap_or(0.0);
                assert!(db >= 36.0, "{} {:?}: {db}", c.name(), p.kind);
            }
        }
    }

    /// Compressed, palette, 16-bit and odd layouts stay lossless: refused with an error.
    #[test]
    fn unsupported_bmp_and_tiff_are_refused() {
        let p = synthetic(20, 10, 3);
        let bmp = make_bmp(&p, false, b"");
        let mut rle = bmp.clone();
        rle[30] = 1; // BI_RLE8
        let mut b16 = bmp.clone();
        b16[28] = 16;
        let mut core = bmp.clone();
        core[14] = 12; // OS/2 core header
        let mut pad = make_bmp(&synthetic(21, 10, 3), false, b"");
        let row = 21 * 3;
        pad[54 + row] = 7; // non-zero row padding
        let tiff = make_tiff(&p, false, 4);
        let ifd = u32::from_le_bytes(tiff[4..8].try_into().unwrap_or_default()) as usize;
        // Entry 3 is Compression (259): LZW.
        let mut lzw = tiff.clone();
        lzw[ifd + 2 + 12 * 3 + 8] = 5;
        // Strips out of order: the first offset moved.
        let mut gap = tiff.clone();
        let e = ifd + 2 + 12 * 6 + 8;
        let at = u32::from_le_bytes(gap[e..e + 4].try_into().unwrap_or_default()) as usize;
        gap[at] ^= 1;
        let mut two_pages = tiff.clone();
        let next = ifd + 2 + 12 * 11;
        two_pages[next] = 8;
        for (what, f) in [
            ("rle", &rle),
            ("16-bit", &b16),
            ("core", &core),
            ("padding", &pad),
            ("lzw", &lzw),
            ("strips", &gap),
            ("pages", &two_pages),
        ] {
            assert!(load_picture(f).is_err(), "{what} accepted");
            let mut out = Vec::new();
            assert!(ImageWebp
                .encode(f, &EncodeParams::level(3000), &mut out)
                .is_err());
        }
        assert!(load_picture(&bmp).is_ok() && load_picture(&tiff).is_ok());
    }

    #[test]
    fn garbage_payloads_are_errors() {
        let png = write_png(&synthetic(40, 30, 3));
        let mut out = Vec::new();
        ImageWebp
            .encode(&png, &EncodeParams::level(3000), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut back = Vec::new();
        for cut in [0, 1, 5, out.len() / 2, out.len() - 1] {
            assert!(ImageWebp.decode(&out[..cut], 0, 1000, &mut back).is_err());
        }
        for i in (0..out.len()).step_by(7) {
            let mut bad = out.clone();
            bad[i] ^= 0x5a;
            let _ = ImageWebp.decode(&bad, 0, 1000, &mut back);
        }
    }
}
