//! xz streams inside a file (a `.tar.xz`, the members of a Debian package) rebuilt exactly from
//! their plain content, so that content can be stored better than xz stores it (whole file,
//! `max`/`archive` only). xz rarely shrinks JPEG or PNG data; a package of wallpapers is a
//! tar of such files inside xz. Here the tar's JPEG members are coded by lepton (codec 2), its
//! PNG, gzip and zip members by the deflate recoder (codec 3), PCM WAV by FLAC (codec 4), and
//! everything else (the file around the streams, tar headers, other members) by one xz stream
//! of its own, at preset 6 extreme, behind the x86 branch filter when that is smaller (members
//! that xz codes well stay together there: coding each executable on its own loses what they
//! share).
//!
//! Rebuilding a stream means running liblzma's encoder over the plain content with the
//! settings the original encoder used (preset, integrity check, single- or multi-threaded
//! block size), found by trial at encode time and kept only when the output is identical to
//! the original, byte for byte. liblzma's output for given settings has been the same from xz
//! 5.0 to 5.8; the bundled liblzma version is pinned in Cargo.lock and a frozen payload
//! (`tests/data/codec-golden/xz-recode-v1.payload`) proves that the build rebuilds it.
//!
//! Payload (version 1; varints are LEB128):
//! ```text
//! u8 version = 1
//! varint n_streams
//! per stream:
//!   varint gap          outer bytes before the stream (after the previous one), taken from rest
//!   u8     preset       bits 0-3 level 0..=6, bit 7 extreme
//!   u8     check        liblzma check id: 0 none, 1 CRC32, 4 CRC64, 10 SHA-256
//!   varint block_size   0: single-threaded encoder; else the multi-threaded encoder's block size
//!   varint xz_len       the stream's length in the file
//!   varint plain_len
//!   varint n_members
//!   per member:
//!     varint skip       plain bytes before the member (after the previous one), taken from rest
//!     varint len
//!     u16 LE codec      2 (JPEG), 3 (DEFLATE) or 4 (FLAC)
//!     u32 LE params     the codec's params; for DEFLATE its payload version byte (1 or 2)
//!     varint p, then p bytes: the codec's payload (JPEG, FLAC); for DEFLATE the p bytes are
//!                       in the rest instead: the codec's body (what its zstd frame holds)
//! rest: one xz stream holding, in order, every byte not in a member (the gaps, each stream's
//!       plain bytes around its members, the file's tail after the last stream) and, right
//!       after the plain bytes before it, each DEFLATE member's body. The bodies hold the
//!       members' inflated text, so xz codes the man pages of a package together.
//! ```
//!
//! Invariants:
//! - `encode` verifies its own round trip (decodes its payload and compares).
//! - `encode` inflates at most 16x the file plus 1 MiB (`MAX_EXPANSION`): an xz bomb is refused.
//! - `decode` never holds more than `MAX_PLAIN` bytes of plain content nor writes more than
//!   `raw_len` bytes, refuses presets above 6 (encoder memory) and member codecs other than 2,
//!   3 and 4, and returns `Malformed` when a rebuilt stream's length differs from the recorded one.
//! - Decoding is slow (liblzma's encoder: ~2 MB/s of plain content per core), hence cold levels only.

use liblzma::stream::{
    Action, Check, Filters, LzmaOptions, MtStreamBuilder, Status, Stream, PRESET_EXTREME,
};

use super::deflate;
use super::wire::{malformed, put_varint, Reader};
use super::{
    Codec, CodecError, CodecId, Deflate, EncodeParams, Flac, Granularity, Jpeg, DEFLATE, FLAC,
    JPEG, XZ_RECODE,
};

const VERSION: u8 = 1;
const MAX_LEN: usize = 256 << 20;
/// All streams' plain content together, and the rest stream.
const MAX_PLAIN: usize = 256 << 20;
/// At encode, the plain content may be at most this many times the file (plus `PLAIN_SLACK`):
/// a small hostile file that inflates to gigabytes (an "xz bomb") is refused after reading
/// only that much, instead of holding the recompression worker for minutes. Real packages
/// and tarballs inflate 2-10x.
const MAX_EXPANSION: usize = 16;
const PLAIN_SLACK: usize = 1 << 20;
/// Presets 7-9 need 190-670 MiB of encoder memory on every read: such streams stay as they are.
const MAX_PRESET: u32 = 6;
/// Tar members smaller than this stay in the rest stream (a codec's overhead would eat the gain).
const MIN_MEMBER: usize = 1024;
const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";
/// Threads for rebuilding a multi-block stream: liblzma's multi-threaded output depends on
/// the block size, never on the thread count.
const REBUILD_THREADS: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Settings {
    preset: u32,
    extreme: bool,
    check: u8,
    /// 0: the single-threaded encoder.
    block_size: u64,
}

fn check_of(id: u8) -> Result<Check, CodecError> {
    Ok(match id {
        0 => Check::None,
        1 => Check::Crc32,
        4 => Check::Crc64,
        10 => Check::Sha256,
        _ => return Err(malformed("unknown xz check")),
    })
}

fn encoder(s: &Settings) -> Result<Stream, CodecError> {
    if s.preset > MAX_PRESET {
        return Err(malformed("xz preset above 6"));
    }
    let preset = s.preset | if s.extreme { PRESET_EXTREME } else { 0 };
    let check = check_of(s.check)?;
    let r = if s.block_size == 0 {
        Stream::new_easy_encoder(preset, check)
    } else {
        MtStreamBuilder::new()
            .preset(preset)
            .check(check)
            .threads(REBUILD_THREADS)
            .block_size(s.block_size)
            .encoder()
    };
    r.map_err(|e| CodecError::Failed(format!("xz encoder: {e}")))
}

/// Run `s` over `input`, handing each piece of output to `sink`; `sink` returning false stops
/// early (`Ok(false)`).
fn drive(
    s: &mut Stream,
    input: &[u8],
    mut sink: impl FnMut(&[u8]) -> bool,
) -> Result<bool, CodecError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut fed = 0usize;
    loop {
        buf.clear();
        let before = s.total_in() as usize;
        let status = s
            .process_vec(&input[fed..], &mut buf, Action::Finish)
            .map_err(|e| CodecError::Failed(format!("xz: {e}")))?;
        fed += s.total_in() as usize - before;
        if !buf.is_empty() && !sink(&buf) {
            return Ok(false);
        }
        match status {
            Status::StreamEnd => return Ok(true),
            Status::MemNeeded if buf.len() < buf.capacity() => {
                return Err(malformed("xz stream truncated"))
            }
            _ => {}
        }
    }
}

/// Whether encoding `plain` with `s` gives exactly `want` (stops at the first difference).
fn rebuilds(plain: &[u8], s: &Settings, want: &[u8]) -> bool {
    let Ok(mut enc) = encoder(s) else {
        return false;
    };
    let mut pos = 0usize;
    let done = drive(&mut enc, plain, |piece| {
        let ok = want.get(pos..pos + piece.len()) == Some(piece);
        pos += piece.len();
        ok
    });
    matches!(done, Ok(true)) && pos == want.len()
}

/// The most plain content `encode` inflates from a file of `len` bytes.
fn plain_budget(len: usize) -> usize {
    len.saturating_mul(MAX_EXPANSION)
        .saturating_add(PLAIN_SLACK)
        .min(MAX_PLAIN)
}

/// A cheap test before a full trial: the first block's LZMA2 data (after the stream and block
/// headers) starts as a raw LZMA2 encoder with `s`'s preset makes it. Single- and
/// multi-threaded encoders code each block exactly so, and a multi-threaded trial costs a whole
/// block (up to 24 MiB at preset 6) before its first byte of output.
fn block_prefix_matches(plain: &[u8], s: &Settings, xz: &[u8]) -> bool {
    const PREFIX: usize = 64 << 10;
    let Some(&hsize) = xz.get(12) else {
        return false;
    };
    let Some(data) = xz.get(12 + (usize::from(hsize) + 1) * 4..) else {
        return false;
    };
    let preset = s.preset | if s.extreme { PRESET_EXTREME } else { 0 };
    let Ok(opts) = LzmaOptions::new_preset(preset) else {
        return false;
    };
    let mut f = Filters::new();
    f.lzma2(&opts);
    let Ok(mut enc) = Stream::new_raw_encoder(&f) else {
        return false;
    };
    let block = if s.block_size == 0 {
        plain
    } else {
        &plain[..plain.len().min(s.block_size as usize)]
    };
    let mut pos = 0usize;
    let mut same = true;
    let _ = drive(&mut enc, block, |piece| {
        let n = piece.len().min(data.len().saturating_sub(pos));
        same = data.get(pos..pos + n) == piece.get(..n);
        pos += piece.len();
        same && pos < PREFIX
    });
    same
}

/// Encode `plain` with `s`, refusing output longer than `limit`.
fn rebuild(plain: &[u8], s: &Settings, limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut enc = encoder(s)?;
    let mut out = Vec::with_capacity(limit.min(plain.len() + 4096));
    let fit = drive(&mut enc, plain, |piece| {
        if out.len() + piece.len() > limit {
            return false;
        }
        out.extend_from_slice(piece);
        true
    })?;
    if !fit {
        return Err(malformed("rebuilt xz stream longer than recorded"));
    }
    Ok(out)
}

/// The rest as one xz stream: preset 6 extreme, or behind the x86 branch filter when it holds
/// an ELF file and that is smaller.
fn rest_stream(rest: &[u8]) -> Result<Vec<u8>, CodecError> {
    let plain = rebuild(
        rest,
        &Settings {
            preset: 6,
            extreme: true,
            check: 1,
            block_size: 0,
        },
        MAX_PLAIN,
    )?;
    if !rest.windows(4).any(|w| w == b"\x7fELF") {
        return Ok(plain);
    }
    let failed = |e: liblzma::stream::Error| CodecError::Failed(format!("xz encoder: {e}"));
    let opts = LzmaOptions::new_preset(6 | PRESET_EXTREME).map_err(failed)?;
    let mut f = Filters::new();
    f.x86();
    f.lzma2(&opts);
    let mut enc = Stream::new_stream_encoder(&f, Check::Crc32).map_err(failed)?;
    let mut bcj = Vec::new();
    drive(&mut enc, rest, |p| {
        bcj.extend_from_slice(p);
        bcj.len() < plain.len()
    })?;
    Ok(if bcj.len() < plain.len() { bcj } else { plain })
}

/// Decode the one xz stream at the start of `data`: its plain content and its length in `data`.
fn unxz(data: &[u8], limit: usize) -> Result<(Vec<u8>, usize), CodecError> {
    // Flags 0 (not CONCATENATED): stop at the end of the first stream, whatever follows.
    let mut s = Stream::new_stream_decoder(u64::MAX, 0)
        .map_err(|e| CodecError::Failed(format!("xz decoder: {e}")))?;
    let mut out = Vec::new();
    let fit = drive(&mut s, data, |piece| {
        if out.len() + piece.len() > limit {
            return false;
        }
        out.extend_from_slice(piece);
        true
    })?;
    if !fit {
        return Err(CodecError::NotWorthIt);
    }
    Ok((out, s.total_in() as usize))
}

/// The settings candidates for the stream `xz` (its header says the check and, in the first
/// block header, whether sizes are stored: only the multi-threaded encoder stores them).
fn candidates(xz: &[u8]) -> Vec<Settings> {
    let (Some(&check), Some(&hsize)) = (xz.get(7), xz.get(12)) else {
        return Vec::new();
    };
    let mut block_sizes = vec![0u64];
    // Block header: size byte, flags (0x40 compressed size, 0x80 uncompressed size), varints.
    if hsize != 0 {
        if let Some(&flags) = xz.get(13) {
            if flags & 0x80 != 0 {
                let mut r = Reader::new(xz.get(14..).unwrap_or(&[]));
                if flags & 0x40 != 0 {
                    let _ = r.varint();
                }
                block_sizes = Vec::new();
                if let Ok(usize_) = r.varint() {
                    block_sizes.push(usize_);
                }
                // A single block smaller than the encoder's default block size (3x the
                // dictionary, at least 1 MiB) is what an encoder at its default wrote.
                block_sizes.push(1 << 20);
                for p in 0..=MAX_PRESET {
                    let dict: u64 = match p {
                        0 => 256 << 10,
                        1 => 1 << 20,
                        2 => 2 << 20,
                        3 | 4 => 4 << 20,
                        _ => 8 << 20,
                    };
                    block_sizes.push((3 * dict).max(1 << 20));
                }
                block_sizes.dedup();
            }
        }
    }
    let mut v = Vec::new();
    // xz's default preset first, then the rest, each plain then extreme.
    for preset in [6, 9, 0, 1, 2, 3, 4, 5, 7, 8] {
        if preset > MAX_PRESET {
            continue;
        }
        for extreme in [false, true] {
            for &block_size in &block_sizes {
                v.push(Settings {
                    preset,
                    extreme,
                    check,
                    block_size,
                });
            }
        }
    }
    v
}

/// Byte ranges (start, len) of tar members worth a format codec, in order, with the codec.
fn members(plain: &[u8]) -> Vec<(usize, usize, CodecId)> {
    let mut v = Vec::new();
    if plain.get(257..262) != Some(b"ustar") {
        return member_of_whole(plain);
    }
    let mut off = 0usize;
    while let Some(h) = plain.get(off..off + 512) {
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let Some(size) = tar_size(&h[124..136]) else {
            break;
        };
        let data = off + 512;
        let Some(end) = data.checked_add(size).filter(|&e| e <= plain.len()) else {
            break;
        };
        // Regular files only ('0' or NUL, and contiguous files '7').
        if matches!(h[156], b'0' | 0 | b'7') && size >= MIN_MEMBER {
            if let Some(codec) = codec_for(&plain[data..end]) {
                v.push((data, size, codec));
            }
        }
        off = data + size.div_ceil(512) * 512;
    }
    v
}

/// Plain content that is not a tar: one member if it is a format a codec takes.
fn member_of_whole(plain: &[u8]) -> Vec<(usize, usize, CodecId)> {
    match codec_for(plain) {
        Some(c) if plain.len() >= MIN_MEMBER => vec![(0, plain.len(), c)],
        _ => Vec::new(),
    }
}

fn codec_for(data: &[u8]) -> Option<CodecId> {
    if data.starts_with(b"\xff\xd8\xff") {
        Some(JPEG)
    } else if data.starts_with(b"\x89PNG\r\n\x1a\n")
        || data.starts_with(b"\x1f\x8b\x08")
        || data.starts_with(b"PK\x03\x04")
    {
        Some(DEFLATE)
    } else if data.starts_with(b"RIFF") && data.get(8..12) == Some(b"WAVE") {
        Some(FLAC)
    } else {
        None
    }
}

/// A tar size field: octal digits (NUL/space terminated) or GNU base-256.
fn tar_size(f: &[u8]) -> Option<usize> {
    if f.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return usize::try_from(v).ok();
    }
    let mut v: u64 = 0;
    let mut any = false;
    for &b in f {
        match b {
            b'0'..=b'7' => {
                v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
                any = true;
            }
            b' ' if !any => {}
            0 | b' ' => break,
            _ => return None,
        }
    }
    usize::try_from(v).ok()
}

/// A member's encoding: params, and the bytes that go into the head (JPEG, FLAC: the
/// payload) or, for DEFLATE, into the rest stream (the body; params = its version byte).
fn member_encode(codec: CodecId, data: &[u8]) -> Option<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let p = EncodeParams::level(19);
    let params = match codec {
        JPEG => Jpeg.encode(data, &p, &mut out).ok()?,
        DEFLATE => Deflate.encode(data, &p, &mut out).ok()?,
        FLAC => Flac.encode(data, &p, &mut out).ok()?,
        _ => return None,
    };
    // The codec's own payload size decides, also for DEFLATE, whose body is then coded with
    // everything else in the rest (usually smaller still).
    if out.len() >= data.len() {
        return None;
    }
    if codec == DEFLATE {
        let (version, body) = deflate::split_payload(&out, data.len()).ok()?;
        return Some((u32::from(version), body));
    }
    Some((params, out))
}

fn member_decode(
    codec: CodecId,
    input: &[u8],
    params: u32,
    len: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(len);
    match codec {
        JPEG => Jpeg.decode(input, params, len, &mut out)?,
        DEFLATE => {
            let version = u8::try_from(params).map_err(|_| malformed("bad deflate version"))?;
            out = deflate::decode_body(version, input, len)?;
        }
        FLAC => Flac.decode(input, params, len, &mut out)?,
        _ => return Err(malformed("member codec not allowed")),
    }
    CodecError::check_len(out.len(), len)?;
    Ok(out)
}

struct Member<'a> {
    skip: usize,
    len: usize,
    codec: CodecId,
    params: u32,
    /// Bytes of the member's input (in the head, or for DEFLATE in the rest).
    plen: usize,
    /// The input, when it is in the head.
    payload: &'a [u8],
}

/// A member ready to decode: its codec's input, wherever it was stored.
struct Job<'a> {
    codec: CodecId,
    input: &'a [u8],
    params: u32,
    len: usize,
}

/// One member's decoding, filled in by whichever thread took it.
type Slot = std::sync::Mutex<Option<Result<Vec<u8>, CodecError>>>;

/// Decode a stream's members, on up to `REBUILD_THREADS` threads (they are independent, and
/// the slow ones, PNG pixels and lepton, are single-threaded).
fn decode_members(members: &[Job]) -> Result<Vec<Vec<u8>>, CodecError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Slot> = members
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    let work = || loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(m) = members.get(i) else { break };
        let r = member_decode(m.codec, m.input, m.params, m.len);
        if let Ok(mut slot) = results[i].lock() {
            *slot = Some(r);
        }
    };
    let threads = (REBUILD_THREADS as usize).min(members.len());
    std::thread::scope(|sc| {
        for _ in 1..threads {
            sc.spawn(work);
        }
        work();
    });
    results
        .into_iter()
        .map(|slot| match slot.into_inner() {
            Ok(Some(r)) => r,
            _ => Err(CodecError::Failed("member decoder thread failed".into())),
        })
        .collect()
}

pub struct XzRecode;

impl Codec for XzRecode {
    fn id(&self) -> CodecId {
        XZ_RECODE
    }
    fn name(&self) -> &'static str {
        "xz-recode"
    }
    fn granularity(&self) -> Granularity {
        Granularity::WholeFile { max_len: MAX_LEN }
    }

    fn encode(
        &self,
        raw: &[u8],
        _params: &EncodeParams,
        out: &mut Vec<u8>,
    ) -> Result<u32, CodecError> {
        super::check_whole_len(raw, MAX_LEN, "")?;
        out.clear();
        out.push(VERSION);
        let mut head = Vec::new();
        let mut rest = Vec::new();
        let mut n_streams = 0u64;
        let mut plain_total = 0usize;
        let mut gained = false;
        let mut pos = 0usize; // outer bytes consumed (in rest or as streams)
        let mut scan = 0usize;
        while let Some(i) = raw[scan..]
            .windows(XZ_MAGIC.len())
            .position(|w| w == XZ_MAGIC)
        {
            let at = scan + i;
            let budget = plain_budget(raw.len()).saturating_sub(plain_total);
            let Ok((plain, xz_len)) = unxz(&raw[at..], budget) else {
                scan = at + 1;
                continue;
            };
            let xz = &raw[at..at + xz_len];
            let found = candidates(xz)
                .into_iter()
                .filter(|s| block_prefix_matches(&plain, s, xz))
                .find(|s| rebuilds(&plain, s, xz));
            let Some(s) = found else {
                tracing::debug!(at, xz_len, "xz stream not rebuilt by any preset: kept");
                scan = at + xz_len;
                continue;
            };
            plain_total += plain.len();
            n_streams += 1;
            put_varint(&mut head, (at - pos) as u64);
            rest.extend_from_slice(&raw[pos..at]);
            head.push(s.preset as u8 | if s.extreme { 0x80 } else { 0 });
            head.push(s.check);
            put_varint(&mut head, s.block_size);
            put_varint(&mut head, xz_len as u64);
            put_varint(&mut head, plain.len() as u64);
            let mut coded = Vec::new();
            let mut ppos = 0usize;
            for (start, len, codec) in members(&plain) {
                if let Some((params, bytes)) = member_encode(codec, &plain[start..start + len]) {
                    rest.extend_from_slice(&plain[ppos..start]);
                    if codec == DEFLATE {
                        rest.extend_from_slice(&bytes);
                    }
                    coded.push((start - ppos, len, codec, params, bytes));
                    ppos = start + len;
                }
            }
            rest.extend_from_slice(&plain[ppos..]);
            put_varint(&mut head, coded.len() as u64);
            for (skip, len, codec, params, bytes) in coded {
                gained = true;
                put_varint(&mut head, skip as u64);
                put_varint(&mut head, len as u64);
                head.extend_from_slice(&codec.to_le_bytes());
                head.extend_from_slice(&params.to_le_bytes());
                put_varint(&mut head, bytes.len() as u64);
                if codec != DEFLATE {
                    head.extend_from_slice(&bytes);
                }
            }
            pos = at + xz_len;
            scan = pos;
        }
        if n_streams == 0 {
            return Err(CodecError::Failed(
                "no xz stream this build rebuilds exactly".into(),
            ));
        }
        rest.extend_from_slice(&raw[pos..]);
        put_varint(out, n_streams);
        out.extend_from_slice(&head);
        out.extend_from_slice(&rest_stream(&rest)?);
        // Without a member coded, the gain can only come from the rest's extreme preset.
        if out.len() >= raw.len() || (!gained && out.len() + raw.len() / 100 >= raw.len()) {
            return Err(CodecError::NotWorthIt);
        }
        let mut back = Vec::new();
        self.decode(out, 0, raw.len(), &mut back)?;
        if back != raw {
            return Err(CodecError::Failed("xz-recode round trip differs".into()));
        }
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
            return Err(malformed("file longer than the codec's limit"));
        }
        let mut r = Reader::new(payload);
        if r.u8()? != VERSION {
            return Err(malformed("unknown xz-recode version"));
        }
        let n_streams = r.varint()?;
        if n_streams == 0 || n_streams > raw_len as u64 {
            return Err(malformed("bad stream count"));
        }
        // Parse the head first: the rest stream follows it.
        struct Xs<'a> {
            gap: usize,
            s: Settings,
            xz_len: usize,
            plain_len: usize,
            members: Vec<Member<'a>>,
        }
        let mut streams = Vec::new();
        let mut plain_total = 0usize;
        for _ in 0..n_streams {
            let gap = r.len(raw_len)?;
            let p = r.u8()?;
            let s = Settings {
                preset: u32::from(p & 0x0f),
                extreme: p & 0x80 != 0,
                check: r.u8()?,
                block_size: r.varint()?,
            };
            if p & 0x70 != 0 || s.preset > MAX_PRESET {
                return Err(malformed("bad xz preset"));
            }
            // The multi-threaded encoder buffers a block per thread.
            if s.block_size > MAX_PLAIN as u64 {
                return Err(malformed("xz block size above the plain limit"));
            }
            check_of(s.check)?;
            let xz_len = r.len(raw_len)?;
            let plain_len = r.len(MAX_PLAIN - plain_total)?;
            plain_total += plain_len;
            let n = r.varint()?;
            if n > plain_len as u64 {
                return Err(malformed("bad member count"));
            }
            let mut members = Vec::new();
            let mut used = 0usize;
            for _ in 0..n {
                let skip = r.len(plain_len - used)?;
                used += skip;
                let len = r.len(plain_len - used)?;
                used += len;
                let c = r.bytes(2)?;
                let codec = u16::from_le_bytes([c[0], c[1]]);
                let pb = r.bytes(4)?;
                let params = u32::from_le_bytes([pb[0], pb[1], pb[2], pb[3]]);
                // A DEFLATE body is in the rest, and bounded as the codec bounds it.
                let plen = if codec == DEFLATE {
                    r.len(MAX_PLAIN)?
                } else {
                    r.len(payload.len())?
                };
                members.push(Member {
                    skip,
                    len,
                    codec,
                    params,
                    plen,
                    payload: if codec == DEFLATE {
                        &[]
                    } else {
                        r.bytes(plen)?
                    },
                });
            }
            streams.push(Xs {
                gap,
                s,
                xz_len,
                plain_len,
                members,
            });
        }
        // The rest holds the file's bytes outside the streams, the streams' plain bytes
        // outside members and the DEFLATE members' bodies: never more than this.
        let bodies: usize = streams
            .iter()
            .flat_map(|st| st.members.iter())
            .filter(|m| m.codec == DEFLATE)
            .map(|m| m.plen)
            .fold(0usize, |a, b| a.saturating_add(b));
        let rest_max = raw_len
            .saturating_add(plain_total)
            .saturating_add(bodies)
            .min(MAX_PLAIN);
        let (rest, _) =
            unxz(r.rest(), rest_max).map_err(|e| malformed(&format!("rest stream: {e}")))?;
        let mut rr = Reader::new(&rest);
        out.reserve(raw_len);
        for st in streams {
            out.extend_from_slice(rr.bytes(st.gap)?);
            let mut skips = Vec::with_capacity(st.members.len());
            let mut jobs = Vec::with_capacity(st.members.len());
            for m in &st.members {
                skips.push(rr.bytes(m.skip)?);
                jobs.push(Job {
                    codec: m.codec,
                    input: if m.codec == DEFLATE {
                        rr.bytes(m.plen)?
                    } else {
                        m.payload
                    },
                    params: m.params,
                    len: m.len,
                });
            }
            let decoded = decode_members(&jobs)?;
            let mut plain = Vec::with_capacity(st.plain_len);
            for (skip, d) in skips.into_iter().zip(decoded) {
                plain.extend_from_slice(skip);
                plain.extend_from_slice(&d);
            }
            let tail = st
                .plain_len
                .checked_sub(plain.len())
                .ok_or_else(|| malformed("members overrun the stream"))?;
            plain.extend_from_slice(rr.bytes(tail)?);
            let xz = rebuild(&plain, &st.s, st.xz_len)?;
            if xz.len() != st.xz_len {
                return Err(malformed("rebuilt xz stream has the wrong length"));
            }
            if out.len() + xz.len() > raw_len {
                return Err(malformed("output longer than recorded"));
            }
            out.extend_from_slice(&xz);
        }
        out.extend_from_slice(rr.rest());
        CodecError::check_len(out.len(), raw_len)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xz(data: &[u8], preset: u32, block_size: u64) -> Vec<u8> {
        rebuild(
            data,
            &Settings {
                preset,
                extreme: false,
                check: 4,
                block_size,
            },
            usize::MAX,
        )
        .unwrap()
    }

    fn tar_member(name: &str, data: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let mut v = h;
        v.extend_from_slice(data);
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    fn sample_tar() -> Vec<u8> {
        let mut t = tar_member("a.jpg", &super::super::testdata::sample("jpeg"));
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("line {i} of some text\n").into_bytes())
            .collect();
        t.extend(tar_member("b.txt", &text));
        t.extend(tar_member("c.png", &super::super::testdata::sample("png")));
        t.extend(vec![0u8; 1024]);
        t
    }

    #[test]
    fn multithreaded_output_does_not_depend_on_threads() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 / 13) as u8).collect();
        let s = Settings {
            preset: 1,
            extreme: false,
            check: 4,
            block_size: 1 << 20,
        };
        let two = rebuild(&data, &s, usize::MAX).unwrap();
        let mut one = MtStreamBuilder::new()
            .preset(1)
            .check(Check::Crc64)
            .threads(1)
            .block_size(1 << 20)
            .encoder()
            .unwrap();
        let mut v = Vec::new();
        drive(&mut one, &data, |p| {
            v.extend_from_slice(p);
            true
        })
        .unwrap();
        assert_eq!(v, two);
        assert!(rebuilds(&data, &s, &two));
        assert!(!rebuilds(&data, &Settings { preset: 2, ..s }, &two));
    }

    #[test]
    fn a_deb_like_file_with_a_tar_xz_round_trips_and_members_are_coded() {
        let tar = sample_tar();
        for (preset, bs) in [(6, 0), (6, 24 << 20), (2, 1 << 20), (0, 0)] {
            let mut file =
                b"!<arch>\ndebian-binary   1342943816  0     0     100644  4         `\n2.0\n"
                    .to_vec();
            file.extend_from_slice(
                b"data.tar.xz     1342943816  0     0     100644  0         `\n",
            );
            file.extend(xz(&tar, preset, bs));
            file.extend_from_slice(b"\ntrailer");
            let mut out = Vec::new();
            XzRecode
                .encode(&file, &EncodeParams::level(19), &mut out)
                .unwrap_or_else(|e| panic!("preset {preset} bs {bs}: {e}"));
            assert!(out.len() < file.len());
            let mut back = Vec::new();
            XzRecode.decode(&out, 0, file.len(), &mut back).unwrap();
            assert!(back == file);
            // Corruption anywhere is an error or a different length, never a panic; the
            // engine's checksum catches the rest.
            for i in (0..out.len()).step_by(out.len() / 97 + 1) {
                let mut bad = out.clone();
                bad[i] ^= 0x55;
                let _ = XzRecode.decode(&bad, 0, file.len(), &mut back);
            }
            assert!(XzRecode
                .decode(&out[..out.len() / 2], 0, file.len(), &mut back)
                .is_err());
        }
    }

    #[test]
    fn refuses_files_without_a_rebuildable_stream() {
        let mut out = Vec::new();
        assert!(XzRecode
            .encode(b"just text, no xz here", &EncodeParams::level(19), &mut out)
            .is_err());
        // Preset 9 is not rebuilt (encoder memory), so the stream is refused.
        let tar = sample_tar();
        let mut enc = Stream::new_easy_encoder(9, Check::Crc64).unwrap();
        let mut x9 = Vec::new();
        drive(&mut enc, &tar, |p| {
            x9.extend_from_slice(p);
            true
        })
        .unwrap();
        assert!(XzRecode
            .encode(&x9, &EncodeParams::level(19), &mut out)
            .is_err());
        // A damaged stream is not a stream: refused too.
        let mut x6 = xz(&tar, 6, 0);
        let n = x6.len();
        x6[n / 2] ^= 1;
        assert!(XzRecode
            .encode(&x6, &EncodeParams::level(19), &mut out)
            .is_err());
    }

    /// A frozen file and payload (tests/data/codec-golden/xz-recode-v1.raw and .payload,
    /// written by `IDCFS_WRITE_GOLDEN=1`): an ar archive holding a tar.xz of a JPEG, a PNG and
    /// text made by the single-threaded encoder at preset 6, then the same tar by the
    /// multi-threaded encoder at preset 2 with 64 KiB blocks. The payload must keep rebuilding
    /// that exact file: liblzma's encoder output is part of the format.
    #[test]
    fn golden_v1_payload_rebuilds_the_file() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/codec-golden/");
        let (raw_path, payload_path) = (
            format!("{dir}xz-recode-v1.raw"),
            format!("{dir}xz-recode-v1.payload"),
        );
        if std::env::var_os("IDCFS_WRITE_GOLDEN").is_some() {
            let find = |class: &str, name: &str| {
                super::super::testdata::samples(class)
                    .into_iter()
                    .find(|(n, _)| n.contains(name))
                    .map(|(_, b)| b)
                    .unwrap_or_else(|| panic!("sample {name} missing"))
            };
            let mut tar = tar_member("a.jpg", &find("jpeg", "softwaves"));
            tar.extend(tar_member("b.png", &find("png", "grub-4x3")));
            let text: Vec<u8> = (0..2_000u32)
                .flat_map(|i| format!("line {i} of some text\n").into_bytes())
                .collect();
            tar.extend(tar_member("c.txt", &text));
            tar.extend(vec![0u8; 1024]);
            let mut file = b"!<arch>\n".to_vec();
            file.extend(xz(&tar, 6, 0));
            file.extend_from_slice(b"\nbetween\n");
            file.extend(xz(&tar, 2, 64 << 10));
            let mut payload = Vec::new();
            XzRecode
                .encode(&file, &EncodeParams::level(19), &mut payload)
                .unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(&raw_path, &file).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(&payload_path, &payload).unwrap_or_else(|e| panic!("{e}"));
        }
        let raw = std::fs::read(&raw_path).unwrap_or_else(|e| panic!("{raw_path}: {e}"));
        let payload =
            std::fs::read(&payload_path).unwrap_or_else(|e| panic!("{payload_path}: {e}"));
        assert_eq!(payload[0], VERSION);
        assert!(payload.len() < raw.len(), "golden payload not smaller");
        let mut dec = Vec::new();
        XzRecode
            .decode(&payload, 0, raw.len(), &mut dec)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(dec == raw, "golden payload no longer rebuilds the file");
        // Both streams were taken, and in the first both the JPEG and the PNG member.
        let mut r = Reader::new(&payload[1..]);
        assert_eq!(r.varint().ok(), Some(2));
        let _gap = r.varint();
        assert_eq!(r.u8().ok(), Some(6), "preset");
        assert_eq!(r.u8().ok(), Some(4), "check");
        assert_eq!(r.varint().ok(), Some(0), "single-threaded");
        let (_xz_len, _plain_len) = (r.varint(), r.varint());
        assert_eq!(r.varint().ok(), Some(2), "members");
        // And this build still encodes the file to something that rebuilds it.
        let mut again = Vec::new();
        XzRecode
            .encode(&raw, &EncodeParams::level(19), &mut again)
            .unwrap_or_else(|e| panic!("{e}"));
        XzRecode
            .decode(&again, 0, raw.len(), &mut dec)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(dec == raw);
    }

    #[test]
    fn an_xz_bomb_is_refused_without_inflating_it() {
        // 64 MiB of zeros in a few KiB of xz: refused once the plain content passes 16x the
        // file plus 1 MiB, long before 64 MiB.
        let zeros = vec![0u8; 64 << 20];
        let bomb = xz(&zeros, 6, 0);
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        let budget = plain_budget(bomb.len());
        assert!(budget < 2 << 20, "{budget}");
        assert!(matches!(unxz(&bomb, budget), Err(CodecError::NotWorthIt)));
        let mut out = Vec::new();
        assert!(XzRecode
            .encode(&bomb, &EncodeParams::level(19), &mut out)
            .is_err());
    }

    #[test]
    fn tar_sizes_parse() {
        assert_eq!(tar_size(b"00000001000\0"), Some(512));
        assert_eq!(tar_size(b"     1000 \0\0"), Some(512));
        assert_eq!(
            tar_size(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0]),
            Some(512)
        );
        assert_eq!(tar_size(b"0000000900\0\0"), None);
    }
}
