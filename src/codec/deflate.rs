//! Re-encoding of deflate containers (gzip, zip and its kin, PNG), whole file: each raw deflate
//! stream is replaced by its inflated bytes plus preflate-rs's reconstruction data, everything
//! else is kept verbatim, and the result is compressed with zstd -19.
//!
//! Invariants:
//! - `encode` returns `Ok` only after decoding its own payload and comparing it with the input
//!   byte for byte; any mismatch or parser doubt becomes `Err`, so the caller keeps a generic
//!   codec. The container parsers never need to understand a file fully: whatever they do not
//!   recognise is simply carried verbatim.
//! - `decode` checks every length against the payload and `raw_len` before using it, bounds the
//!   memory it may allocate by `raw_len` (see `plain_limit`), and fences preflate-rs (which has
//!   `unwrap`s inside) so that a corrupt payload gives `Err`, never a panic.
//!
//! Payload, format version 1 or 2 (varint = unsigned LEB128):
//! ```text
//! u8      version = 1 or 2
//! ...     one zstd frame, with its content size set, holding the body:
//! body:
//!   varint  op count, then the ops, each a tag byte and its fields:
//!     0 VERBATIM   varint n            emit the next n bytes of the verbatim area
//!     1 DEFLATE    varint p, varint c  emit the raw deflate stream that preflate-rs recreates
//!                                      from the next p bytes of the plain area and the next c
//!                                      bytes of the corrections area
//!     2 IDAT_BEGIN varint k, k x varint len
//!                                      from here on ops emit into a group buffer instead
//!     3 IDAT_END                       close the IDAT group: emit its buffer as k PNG chunks
//!                                      of the lengths given: u32 BE len, "IDAT", data, CRC-32
//!                                      of type and data
//!     4 PUSH                           open a nested group: ops emit into its buffer
//!     5 DEFLATE_POP varint c           close the nested group: emit the raw deflate stream
//!                                      preflate-rs recreates from the group's bytes as plain
//!                                      text and the next c bytes of the corrections area
//!   varint  verbatim area length V, varint corrections length C, varint plain length P
//!   V bytes verbatim area, C bytes corrections area, P bytes plain area
//! ```
//! Version 2 (written at effort 19 and above, what level max asks for) differs in one thing:
//! the corrections of every stream (each `c` bytes a DEFLATE or DEFLATE_POP op names) start
//! with a plain-coding tag byte, the preflate corrections following it: 0 = the stream's plain
//! text is as described above; 1 = the stream is a PNG's IDAT stream and its plain bytes are
//! the filtered scanlines coded by the PNG pixel coder, in the wrapper `deflate_tokens` uses
//! for its plain coding 1 (`image_plain`), which the decoder undoes before preflate-rs rebuilds
//! the stream. Preflate's corrections are far smaller than a re-searching model's side info
//! for the zlib-made streams most PNGs hold, and the pixel coder codes the scanlines about a
//! third smaller than zstd does, so together they are the smallest form for most PNGs.
//!
//! Groups nest (innermost last; at most `MAX_DEPTH` open); emitting always goes to the innermost
//! open group, or to the output. Nested groups let a container inside a stream (a .json.gz or
//! .png inside a wheel) be re-encoded in turn instead of being stored as opaque plain text.
//! Plain text from all streams sits together at the end so zstd sees it as one context. Every
//! area must be consumed exactly and the output must be exactly `raw_len` long.
//!
//! Containers recognised (from content, never a name):
//! - gzip: each member's header (RFC 1952 fields) and 8-byte trailer are verbatim, the deflate
//!   stream is re-encoded; concatenated members are handled one by one; trailing bytes verbatim.
//! - zip (also jar, wheel, docx/xlsx/odt, apk): local entries are walked from offset 0; each
//!   unencrypted method-8 entry's data is re-encoded, headers, stored entries, data descriptors
//!   and the central directory are verbatim. The walk stops (rest verbatim) at anything it
//!   cannot size, e.g. a stored entry with a data descriptor.
//! - PNG: the first run of IDAT chunks is joined; its 2-byte zlib header and the Adler-32 after
//!   the stream are verbatim; chunk lengths are kept, CRCs are recomputed on decode (a PNG whose
//!   IDAT CRCs are wrong is left alone).

use preflate_rs::{preflate_whole_deflate_stream, recreate_whole_deflate_stream, PreflateConfig};

use super::deflate_tokens::{image_plain, image_text, IMAGE_LEVEL, PLAIN_IMAGE};
use super::pixels::{self, Ihdr};
use super::wire::{fence, malformed, put_varint, zstd_compress, zstd_decompress, Reader};
use super::{Codec, CodecError, CodecId, EncodeParams, Granularity, DEFLATE};

/// Payload versions: 1 plain corrections, 2 each stream's corrections tagged with its plain
/// coding (`PLAIN_TEXT` or `PLAIN_IMAGE`).
const VERSION: u8 = 1;
const VERSION_TAGGED: u8 = 2;
/// Plain coding tag of version 2: the op's plain bytes are the stream's plain text.
const PLAIN_TEXT: u8 = 0;
const MAX_LEN: usize = 256 << 20;
const ZSTD_LEVEL: i32 = 19;

const OP_VERBATIM: u8 = 0;
const OP_DEFLATE: u8 = 1;
const OP_IDAT_BEGIN: u8 = 2;
const OP_IDAT_END: u8 = 3;
const OP_PUSH: u8 = 4;
const OP_DEFLATE_POP: u8 = 5;

/// Containers inside deflate streams are walked this deep (a .gz in a zip is depth 1).
const MAX_NEST: usize = 2;
/// Groups the decoder accepts open at once: each nesting level may add a nested group and an
/// IDAT group.
const MAX_DEPTH: usize = 2 * MAX_NEST + 2;

/// Most inflated bytes a file of `raw_len` bytes may expand to: enough for real archives
/// (text deflates about 4-10x), small enough that a zip bomb or a corrupt payload cannot take
/// the machine's memory. The decoder applies the same bound, so never lower it.
pub(super) fn plain_limit(raw_len: usize) -> usize {
    raw_len
        .saturating_mul(64)
        .saturating_add(1 << 20)
        .min(1 << 30)
}

/// Streams shorter than this are not worth preflate's fixed overhead (a few dozen bytes of
/// parameters per stream).
const MIN_STREAM: usize = 64;

pub struct Deflate;

impl Codec for Deflate {
    fn id(&self) -> CodecId {
        DEFLATE
    }
    fn name(&self) -> &'static str {
        "deflate-preflate"
    }
    fn granularity(&self) -> Granularity {
        Granularity::WholeFile { max_len: MAX_LEN }
    }

    fn encode(&self, raw: &[u8], p: &EncodeParams, out: &mut Vec<u8>) -> Result<u32, CodecError> {
        out.clear();
        super::check_whole_len(raw, MAX_LEN, "")?;
        let Some(kind) = Container::sniff(raw) else {
            return Err(CodecError::Failed("not gzip, zip or PNG".into()));
        };
        // PNG pixels are coded as images (version 2) only at the strongest effort: the pixel
        // coder decodes at ~6 MB/s of PNG, preflate at ~1 MB/s anyway.
        let images = p.level >= IMAGE_LEVEL;
        // Fast path: skip preflate's own per-stream verification and check the whole file at
        // the end instead. Only if that fails, redo with verification so that a stream
        // preflate cannot rebuild falls back to verbatim instead of failing the file.
        let mut last_err = None;
        for verify in [false, true] {
            let mut recoder = Preflate {
                verify,
                images,
                png: None,
            };
            let b = build(raw, kind, &mut recoder);
            if b.streams == 0 {
                return Err(CodecError::NotWorthIt);
            }
            let payload = b.finish(if images { VERSION_TAGGED } else { VERSION })?;
            if payload.len() >= raw.len() {
                return Err(CodecError::NotWorthIt);
            }
            let mut check = Vec::new();
            match self.decode(&payload, 0, raw.len(), &mut check) {
                Ok(()) if check == raw => {
                    *out = payload;
                    return Ok(0);
                }
                Ok(()) => last_err = Some(CodecError::Failed("round trip differs".into())),
                Err(e) => last_err = Some(CodecError::Failed(format!("round trip: {e}"))),
            }
        }
        Err(last_err.unwrap_or(CodecError::NotWorthIt))
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
        let (version, body) = split_payload(payload, raw_len)?;
        *out = decode_body(version, &body, raw_len)?;
        Ok(())
    }
}

/// A payload's version byte and its body, uncompressed: for a container that compresses the
/// bodies of many members together (`xz_recode`), where the inflated text of one helps code
/// the others.
pub(super) fn split_payload(payload: &[u8], raw_len: usize) -> Result<(u8, Vec<u8>), CodecError> {
    let (&version, frame) = payload
        .split_first()
        .ok_or_else(|| malformed("empty payload"))?;
    // Body = verbatim + corrections + plain. Verbatim bytes come from the file or from
    // nested inflated data, plain bytes are within plain_limit, and corrections are at most
    // half the deflate data they describe (the encoder refuses larger), so this bounds it.
    let body_limit = raw_len
        .saturating_add(plain_limit(raw_len))
        .saturating_mul(2)
        .saturating_add(1 << 16);
    Ok((version, zstd_decompress(frame, body_limit)?))
}

/// The file rebuilt from a payload's version byte and uncompressed body (`split_payload`).
pub(super) fn decode_body(version: u8, body: &[u8], raw_len: usize) -> Result<Vec<u8>, CodecError> {
    if raw_len > MAX_LEN {
        return Err(malformed("length above the codec limit"));
    }
    let tagged = match version {
        VERSION => false,
        VERSION_TAGGED => true,
        _ => return Err(malformed("unknown deflate payload version")),
    };
    let out = run(body, raw_len, tagged)?;
    CodecError::check_len(out.len(), raw_len)?;
    Ok(out)
}

/// Executes the body's ops (`tagged`: version 2, each stream's corrections start with its
/// plain coding). Every length is checked against what is left before use.
fn run(body: &[u8], raw_len: usize, tagged: bool) -> Result<Vec<u8>, CodecError> {
    let mut r = Reader::new(body);
    let head = Head::parse(&mut r, raw_len, body.len())?;
    let verbatim = r.bytes(head.verbatim)?;
    let corr = r.bytes(head.corr)?;
    let plain = r.bytes(head.plain)?;
    if r.remaining() != 0 {
        return Err(malformed("bytes after the plain area"));
    }
    execute(
        head.ops,
        verbatim,
        corr,
        plain,
        raw_len,
        &mut |text, corr, limit| {
            if !tagged {
                return recreate(text, corr);
            }
            match corr.split_first() {
                Some((&PLAIN_TEXT, c)) => recreate(text, c),
                Some((&PLAIN_IMAGE, c)) => recreate(&image_text(text, limit)?, c),
                _ => Err(malformed("unknown plain coding")),
            }
        },
    )
}

/// The ops and area lengths at the start of a body (shared with `deflate_tokens`).
pub(super) struct Head {
    pub(super) ops: Vec<Op>,
    pub(super) verbatim: usize,
    pub(super) corr: usize,
    pub(super) plain: usize,
}

impl Head {
    /// Parses the op list and the three area lengths; `body_len` bounds every count.
    pub(super) fn parse(
        r: &mut Reader,
        raw_len: usize,
        body_len: usize,
    ) -> Result<Head, CodecError> {
        let n_ops = r.len(body_len)?;
        // Ops are parsed up front so the area lengths (which follow them) are known.
        let mut ops = Vec::with_capacity(n_ops.min(1 << 16));
        for _ in 0..n_ops {
            let op = match r.u8()? {
                OP_VERBATIM => Op::Verbatim(r.len(raw_len)?),
                OP_DEFLATE => Op::Deflate {
                    plain: r.len(body_len)?,
                    corr: r.len(body_len)?,
                },
                OP_IDAT_BEGIN => {
                    let k = r.len(raw_len / 12 + 1)?;
                    let mut lens = Vec::with_capacity(k.min(1 << 16));
                    for _ in 0..k {
                        lens.push(r.len(raw_len)?);
                    }
                    Op::IdatBegin(lens)
                }
                OP_IDAT_END => Op::IdatEnd,
                OP_PUSH => Op::Push,
                OP_DEFLATE_POP => Op::DeflatePop {
                    corr: r.len(body_len)?,
                },
                _ => return Err(malformed("unknown op")),
            };
            ops.push(op);
        }
        Ok(Head {
            ops,
            verbatim: r.len(body_len)?,
            corr: r.len(body_len)?,
            plain: r.len(body_len)?,
        })
    }
}

/// Rebuilds a deflate stream from its plain text and its side data (preflate corrections
/// or `deflate_tokens` side info); the stream may not exceed the given length.
pub(super) type Recreate<'a> = dyn FnMut(&[u8], &[u8], usize) -> Result<Vec<u8>, CodecError> + 'a;

/// Executes ops over the three areas, rebuilding each deflate stream with `recreate`.
pub(super) fn execute(
    ops: Vec<Op>,
    verbatim: &[u8],
    corr: &[u8],
    plain: &[u8],
    raw_len: usize,
    recreate: &mut Recreate,
) -> Result<Vec<u8>, CodecError> {
    let mut verbatim = Reader::new(verbatim);
    let mut corr = Reader::new(corr);
    let mut plain = Reader::new(plain);
    let mut out = Vec::with_capacity(raw_len);
    // Open groups, innermost last: IDAT groups (with their chunk lengths) and nested
    // containers (whose bytes become the plain text of a deflate stream).
    let mut stack: Vec<(Frame, Vec<u8>)> = Vec::new();
    // Nested buffers hold inflated data, so they may exceed raw_len, but not plain_limit.
    let nested_limit = plain_limit(raw_len).saturating_add(raw_len);
    for op in ops {
        match op {
            Op::Verbatim(n) => {
                let bytes = verbatim.bytes(n)?;
                sink(&mut out, &mut stack).extend_from_slice(bytes);
            }
            Op::Deflate { plain: p, corr: c } => {
                let stream = recreate(plain.bytes(p)?, corr.bytes(c)?, nested_limit)?;
                sink(&mut out, &mut stack).extend_from_slice(&stream);
            }
            Op::IdatBegin(lens) => push(&mut stack, Frame::Idat(lens))?,
            Op::Push => push(&mut stack, Frame::Nested)?,
            Op::DeflatePop { corr: c } => {
                let Some((Frame::Nested, text)) = stack.pop() else {
                    return Err(malformed("deflate pop without a nested group"));
                };
                let stream = recreate(&text, corr.bytes(c)?, nested_limit)?;
                sink(&mut out, &mut stack).extend_from_slice(&stream);
            }
            Op::IdatEnd => {
                let Some((Frame::Idat(lens), data)) = stack.pop() else {
                    return Err(malformed("IDAT end without begin"));
                };
                let total: usize = lens.iter().sum();
                if total != data.len() {
                    return Err(malformed("IDAT group length mismatch"));
                }
                let dst = sink(&mut out, &mut stack);
                let mut off = 0;
                for len in lens {
                    let len32 = u32::try_from(len).map_err(|_| malformed("IDAT chunk too long"))?;
                    let chunk = &data[off..off + len];
                    off += len;
                    dst.extend_from_slice(&len32.to_be_bytes());
                    let crc_start = dst.len();
                    dst.extend_from_slice(b"IDAT");
                    dst.extend_from_slice(chunk);
                    let crc = crc32(&dst[crc_start..]);
                    dst.extend_from_slice(&crc.to_be_bytes());
                }
            }
        }
        // Checked after every op so a hostile payload cannot grow the output without bound.
        let pending: usize = stack.iter().map(|f| f.1.len()).sum();
        if out.len() > raw_len || pending > nested_limit {
            return Err(malformed("output longer than recorded"));
        }
    }
    if !stack.is_empty() {
        return Err(malformed("unterminated group"));
    }
    if verbatim.remaining() + corr.remaining() + plain.remaining() != 0 {
        return Err(malformed("unused payload bytes"));
    }
    Ok(out)
}

fn recreate(text: &[u8], corrections: &[u8]) -> Result<Vec<u8>, CodecError> {
    fence("preflate recreate", || {
        recreate_whole_deflate_stream(text, corrections)
            .map_err(|e| CodecError::Malformed(format!("preflate: {e}")))
    })
}

fn push(stack: &mut Vec<(Frame, Vec<u8>)>, f: Frame) -> Result<(), CodecError> {
    if stack.len() >= MAX_DEPTH {
        return Err(malformed("groups nested too deep"));
    }
    stack.push((f, Vec::new()));
    Ok(())
}

fn sink<'a>(out: &'a mut Vec<u8>, stack: &'a mut [(Frame, Vec<u8>)]) -> &'a mut Vec<u8> {
    match stack.last_mut() {
        Some((_, buf)) => buf,
        None => out,
    }
}

pub(super) enum Frame {
    Idat(Vec<usize>),
    Nested,
}

pub(super) enum Op {
    Verbatim(usize),
    Deflate { plain: usize, corr: usize },
    IdatBegin(Vec<usize>),
    IdatEnd,
    Push,
    DeflatePop { corr: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Container {
    Gzip,
    Zip,
    Png,
}

impl Container {
    pub(super) fn sniff(d: &[u8]) -> Option<Container> {
        if d.starts_with(&[0x1f, 0x8b, 0x08]) {
            Some(Container::Gzip)
        } else if d.starts_with(b"PK\x03\x04") {
            Some(Container::Zip)
        } else if d.starts_with(PNG_SIG) {
            Some(Container::Png)
        } else {
            None
        }
    }
}

const PNG_SIG: &[u8] = b"\x89PNG\r\n\x1a\n";

/// What a codec does with one raw deflate stream found by the walker.
pub(super) trait Recoder {
    /// Analyses the raw deflate stream at the start of `data`: `None` if it cannot be
    /// re-encoded (the walker keeps it verbatim), else its re-encoding, whose plain text is at
    /// most `budget` bytes.
    fn recode(&mut self, data: &[u8], budget: usize) -> Option<Recoded>;
    /// The walker is about to hand over the IDAT stream of the PNG file `png` (`None`: the
    /// streams that follow are not a PNG's). Recoders that code images may use it.
    fn png(&mut self, _png: Option<&[u8]>) {}
}

/// A re-encoded deflate stream: it covered `used` bytes, inflates to `text`, and is rebuilt
/// from `text` and `side`.
pub(super) struct Recoded {
    pub(super) used: usize,
    pub(super) text: Vec<u8>,
    pub(super) side: Vec<u8>,
}

/// Codec 3's recoder: preflate-rs reconstruction data as the side data.
struct Preflate {
    verify: bool,
    /// Version 2: tag every stream's corrections and code PNG scanlines as images.
    images: bool,
    /// Header of the PNG whose IDAT stream comes next.
    png: Option<Ihdr>,
}

impl Recoder for Preflate {
    fn recode(&mut self, data: &[u8], budget: usize) -> Option<Recoded> {
        let config = PreflateConfig {
            max_chain_length: 4096,
            plain_text_limit: budget,
            verify_compression: self.verify,
        };
        let (res, plain) = fence("preflate", || {
            preflate_whole_deflate_stream(data, &config)
                .map_err(|e| CodecError::Failed(e.to_string()))
        })
        .ok()?;
        let used = res.compressed_size;
        // Corrections this large mean the stream came from an encoder preflate does not model:
        // verbatim is as good and cheaper to decode. It also keeps the decoder's body bound.
        if used == 0 || used > data.len() || res.corrections.len() > used / 2 {
            return None;
        }
        let text = plain.text();
        if !self.images {
            return Some(Recoded {
                used,
                text: text.to_vec(),
                side: res.corrections,
            });
        }
        let (tag, text) = match self.png.as_ref().and_then(|h| image_plain(text, h)) {
            Some(wrapped) => (PLAIN_IMAGE, wrapped),
            None => (PLAIN_TEXT, text.to_vec()),
        };
        let mut side = Vec::with_capacity(res.corrections.len() + 1);
        side.push(tag);
        side.extend_from_slice(&res.corrections);
        Some(Recoded { used, text, side })
    }

    fn png(&mut self, png: Option<&[u8]>) {
        self.png = png.and_then(pixels::parse_ihdr);
    }
}

/// Accumulates ops and areas while a container is walked.
pub(super) struct Builder<'r> {
    pub(super) ops: Vec<Op>,
    pub(super) verbatim: Vec<u8>,
    pub(super) corr: Vec<u8>,
    pub(super) plain: Vec<u8>,
    /// Deflate streams re-encoded so far.
    pub(super) streams: usize,
    /// Inflated bytes still allowed (`plain_limit`).
    budget: usize,
    recoder: &'r mut dyn Recoder,
}

/// Enough of a `Builder`'s state to undo everything recorded after it.
struct Checkpoint {
    ops: usize,
    last_verbatim: Option<usize>,
    verbatim: usize,
    corr: usize,
    plain: usize,
    streams: usize,
    budget: usize,
}

impl Builder<'_> {
    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            ops: self.ops.len(),
            last_verbatim: match self.ops.last() {
                Some(Op::Verbatim(n)) => Some(*n),
                _ => None,
            },
            verbatim: self.verbatim.len(),
            corr: self.corr.len(),
            plain: self.plain.len(),
            streams: self.streams,
            budget: self.budget,
        }
    }

    fn rollback(&mut self, c: Checkpoint) {
        self.ops.truncate(c.ops);
        if let (Some(Op::Verbatim(n)), Some(was)) = (self.ops.last_mut(), c.last_verbatim) {
            *n = was; // verbatim() may have grown the last op in place
        }
        self.verbatim.truncate(c.verbatim);
        self.corr.truncate(c.corr);
        self.plain.truncate(c.plain);
        self.streams = c.streams;
        self.budget = c.budget;
    }

    fn verbatim(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.verbatim.extend_from_slice(bytes);
        if let Some(Op::Verbatim(n)) = self.ops.last_mut() {
            *n += bytes.len();
        } else {
            self.ops.push(Op::Verbatim(bytes.len()));
        }
    }

    /// Tries to re-encode the raw deflate stream at the start of `data`. On success records it
    /// and returns how many bytes of `data` it covers; on failure records nothing. When the
    /// inflated data is itself a container (a .gz or .png inside a zip, say), that container
    /// is walked too, up to `MAX_NEST` levels, so its own streams get re-encoded.
    fn stream(&mut self, data: &[u8], depth: usize) -> Option<usize> {
        if data.len() < MIN_STREAM || self.budget == 0 {
            return None;
        }
        let res = self.recoder.recode(data, self.budget)?;
        let used = res.used;
        let text = &res.text[..];
        if used == 0 || used > data.len() {
            return None;
        }
        if text.len() > self.budget {
            return None;
        }
        self.budget -= text.len();
        if depth < MAX_NEST {
            if let Some(kind) = Container::sniff(text) {
                let cp = self.checkpoint();
                let before = self.streams;
                self.ops.push(Op::Push);
                let done = walk(kind, text, self, depth + 1);
                self.verbatim(&text[done..]);
                if self.streams > before {
                    self.ops.push(Op::DeflatePop {
                        corr: res.side.len(),
                    });
                    self.corr.extend_from_slice(&res.side);
                    self.streams += 1;
                    return Some(used);
                }
                self.rollback(cp);
            }
        }
        self.ops.push(Op::Deflate {
            plain: text.len(),
            corr: res.side.len(),
        });
        self.corr.extend_from_slice(&res.side);
        self.plain.extend_from_slice(text);
        self.streams += 1;
        Some(used)
    }

    fn finish(self, version: u8) -> Result<Vec<u8>, CodecError> {
        let mut body = self.head();
        body.extend_from_slice(&self.verbatim);
        body.extend_from_slice(&self.corr);
        body.extend_from_slice(&self.plain);
        let mut out = vec![version];
        out.extend_from_slice(&zstd_compress(&body, ZSTD_LEVEL)?);
        Ok(out)
    }

    /// The op list and the three area lengths (what `Head::parse` reads).
    pub(super) fn head(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(16 * self.ops.len() + 32);
        put_varint(&mut body, self.ops.len() as u64);
        for op in &self.ops {
            match op {
                Op::Verbatim(n) => {
                    body.push(OP_VERBATIM);
                    put_varint(&mut body, *n as u64);
                }
                Op::Deflate { plain, corr } => {
                    body.push(OP_DEFLATE);
                    put_varint(&mut body, *plain as u64);
                    put_varint(&mut body, *corr as u64);
                }
                Op::IdatBegin(lens) => {
                    body.push(OP_IDAT_BEGIN);
                    put_varint(&mut body, lens.len() as u64);
                    for l in lens {
                        put_varint(&mut body, *l as u64);
                    }
                }
                Op::IdatEnd => body.push(OP_IDAT_END),
                Op::Push => body.push(OP_PUSH),
                Op::DeflatePop { corr } => {
                    body.push(OP_DEFLATE_POP);
                    put_varint(&mut body, *corr as u64);
                }
            }
        }
        put_varint(&mut body, self.verbatim.len() as u64);
        put_varint(&mut body, self.corr.len() as u64);
        put_varint(&mut body, self.plain.len() as u64);
        body
    }
}

/// Walks `raw` as a container of `kind`, re-encoding its deflate streams with `recoder`.
pub(super) fn build<'r>(raw: &[u8], kind: Container, recoder: &'r mut dyn Recoder) -> Builder<'r> {
    let mut b = Builder {
        ops: Vec::new(),
        verbatim: Vec::new(),
        corr: Vec::new(),
        plain: Vec::new(),
        streams: 0,
        budget: plain_limit(raw.len()),
        recoder,
    };
    let done = walk(kind, raw, &mut b, 0);
    b.verbatim(&raw[done..]);
    b
}

/// Records `raw` from its start: returns the offset up to which it has been recorded (the
/// caller records the rest verbatim).
fn walk(kind: Container, raw: &[u8], b: &mut Builder, depth: usize) -> usize {
    match kind {
        Container::Gzip => walk_gzip(raw, b, depth),
        Container::Zip => walk_zip(raw, b, depth),
        Container::Png => walk_png(raw, b, depth),
    }
}

fn le16(d: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?) as usize)
}
fn le32(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}
fn be32(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

/// Length of the gzip member header at the start of `d` (RFC 1952 section 2.3), if valid.
fn gzip_header_len(d: &[u8]) -> Option<usize> {
    if !d.starts_with(&[0x1f, 0x8b, 0x08]) {
        return None;
    }
    let flg = *d.get(3)?;
    if flg & 0xe0 != 0 {
        return None; // reserved bits set: not a gzip member we understand
    }
    let mut pos = 10;
    if flg & 0x04 != 0 {
        pos += 2 + le16(d, pos)?;
    }
    for bit in [0x08, 0x10] {
        if flg & bit != 0 {
            let nul = d.get(pos..)?.iter().position(|&c| c == 0)?;
            pos += nul + 1;
        }
    }
    if flg & 0x02 != 0 {
        pos += 2;
    }
    (pos <= d.len()).then_some(pos)
}

/// Walks gzip members (header verbatim, stream, 8-byte trailer verbatim).
fn walk_gzip(raw: &[u8], b: &mut Builder, depth: usize) -> usize {
    let mut p = 0;
    while let Some(h) = gzip_header_len(&raw[p..]) {
        b.verbatim(&raw[p..p + h]);
        p += h;
        let Some(used) = b.stream(&raw[p..], depth) else {
            break;
        };
        p += used;
        let trailer = (raw.len() - p).min(8);
        b.verbatim(&raw[p..p + trailer]);
        p += trailer;
    }
    p
}

/// Walks zip local entries from offset 0 until something it cannot size.
fn walk_zip(raw: &[u8], b: &mut Builder, depth: usize) -> usize {
    let mut p = 0;
    while raw[p..].starts_with(b"PK\x03\x04") {
        let (Some(flags), Some(method), Some(csize), Some(nlen), Some(xlen)) = (
            le16(raw, p + 6),
            le16(raw, p + 8),
            le32(raw, p + 18),
            le16(raw, p + 26),
            le16(raw, p + 28),
        ) else {
            break;
        };
        let data = p + 30 + nlen + xlen;
        if data > raw.len() {
            break;
        }
        let encrypted = flags & 1 != 0;
        // Sizes in the local header are unknown with a data descriptor (bit 3) or zip64.
        let known = (flags & 8 == 0 && csize != u32::MAX)
            .then_some(csize as usize)
            .filter(|&n| n <= raw.len() - data);
        if method == 8 && !encrypted {
            b.verbatim(&raw[p..data]);
            let limit = known.map_or(raw.len(), |n| data + n);
            match (b.stream(&raw[data..limit], depth), known) {
                (Some(used), Some(n)) => {
                    b.verbatim(&raw[data + used..data + n]);
                    p = data + n;
                }
                (Some(used), None) => {
                    let end = data + used;
                    let Some(q) = after_descriptor(raw, end) else {
                        return end;
                    };
                    b.verbatim(&raw[end..q]);
                    p = q;
                }
                (None, Some(n)) => {
                    b.verbatim(&raw[data..data + n]);
                    p = data + n;
                }
                (None, None) => return data,
            }
        } else {
            let Some(n) = known else { break };
            b.verbatim(&raw[p..data + n]);
            p = data + n;
        }
    }
    p
}

/// Where the next zip record starts after a deflate stream ending at `end` when sizes follow
/// in a data descriptor: optionally signed, 32- or 64-bit sizes (12, 16, 20 or 24 bytes).
fn after_descriptor(raw: &[u8], end: usize) -> Option<usize> {
    [12usize, 16, 20, 24]
        .into_iter()
        .map(|n| end + n)
        .find(|&q| {
            let s = raw.get(q..q + 4);
            s == Some(b"PK\x03\x04") || s == Some(b"PK\x01\x02") || s == Some(b"PK\x06\x06")
        })
}

/// Joins the first run of IDAT chunks and re-encodes its zlib stream.
fn walk_png(raw: &[u8], b: &mut Builder, depth: usize) -> usize {
    let mut p = PNG_SIG.len();
    let mut run: Vec<(usize, usize)> = Vec::new(); // (data offset, length) of each IDAT
    while let (Some(len), Some(kind)) = (be32(raw, p), raw.get(p + 4..p + 8)) {
        let len = len as usize;
        let Some(crc) = be32(raw, p + 8 + len) else {
            break;
        };
        if kind == b"IDAT" {
            if crc32(&raw[p + 4..p + 8 + len]) != crc {
                return 0; // we recompute IDAT CRCs, so a wrong one could not be rebuilt
            }
            run.push((p + 8, len));
        } else if !run.is_empty() {
            break;
        }
        if kind == b"IEND" {
            break;
        }
        p += 12 + len;
    }
    let Some(&(first, _)) = run.first() else {
        return 0;
    };
    let joined: Vec<u8> = run
        .iter()
        .flat_map(|&(o, l)| raw[o..o + l].iter().copied())
        .collect();
    // zlib header: deflate, no preset dictionary, check bits valid (RFC 1950).
    let zlib_ok = joined.len() > 2
        && joined[0] & 0x0f == 8
        && joined[1] & 0x20 == 0
        && (u16::from(joined[0]) << 8 | u16::from(joined[1])) % 31 == 0;
    if !zlib_ok {
        return 0;
    }
    let cp = b.checkpoint();
    b.verbatim(&raw[..first - 8]);
    b.ops
        .push(Op::IdatBegin(run.iter().map(|&(_, l)| l).collect()));
    b.verbatim(&joined[..2]);
    b.recoder.png(Some(raw));
    let streamed = b.stream(&joined[2..], depth);
    b.recoder.png(None);
    let Some(used) = streamed else {
        b.rollback(cp);
        return 0;
    };
    b.verbatim(&joined[2 + used..]);
    b.ops.push(Op::IdatEnd);
    let (last, len) = run[run.len() - 1];
    last + len + 4
}

/// CRC-32 (ISO-HDLC, as PNG and zip use), table-driven.
fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &x| {
        t[((c ^ u32::from(x)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testdata::{sample, samples};

    fn p() -> EncodeParams {
        EncodeParams::level(0)
    }

    fn roundtrip(class: &str) -> (usize, usize) {
        let (mut raw_total, mut enc_total) = (0, 0);
        for (name, raw) in samples(class) {
            let mut enc = Vec::new();
            let r = Deflate.encode(&raw, &p(), &mut enc);
            eprintln!(
                "{name}: {} -> {:?}",
                raw.len(),
                r.as_ref().map(|_| enc.len())
            );
            match r {
                Ok(_) => {
                    let mut dec = Vec::new();
                    Deflate
                        .decode(&enc, 0, raw.len(), &mut dec)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(dec == raw, "{name}: not bit exact");
                    raw_total += raw.len();
                    enc_total += enc.len();
                }
                Err(CodecError::NotWorthIt) => {}
                Err(e) => panic!("{name}: {e}"),
            }
        }
        (raw_total, enc_total)
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn gzip_samples_roundtrip_and_shrink() {
        let (raw, enc) = roundtrip("gzip");
        assert!(raw > 0 && enc < raw, "{enc} !< {raw}");
    }

    #[test]
    fn zip_sample_roundtrips_and_shrinks() {
        let (raw, enc) = roundtrip("zip");
        assert!(raw > 0 && enc < raw, "{enc} !< {raw}");
    }

    #[test]
    fn png_samples_roundtrip() {
        let (raw, enc) = roundtrip("png");
        assert!(raw > 0 && enc < raw, "{enc} !< {raw}");
    }

    /// At effort 19 (level max) PNG scanlines are coded as images (payload version 2): every
    /// sample still rebuilds exactly, and the pictures cost less than as zstd'd scanlines.
    #[test]
    fn png_pixels_are_image_coded_at_max_and_rebuild_exactly() {
        let (mut v1_total, mut v2_total, mut imaged) = (0, 0, 0);
        for (name, raw) in samples("png") {
            let mut v1 = Vec::new();
            let mut v2 = Vec::new();
            // A tiny PNG (a few hundred bytes) does not pay at either version.
            if let Err(CodecError::NotWorthIt) = Deflate.encode(&raw, &p(), &mut v1) {
                continue;
            }
            Deflate
                .encode(&raw, &EncodeParams::level(19), &mut v2)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((v1[0], v2[0]), (VERSION, VERSION_TAGGED), "{name}");
            for enc in [&v1, &v2] {
                let mut dec = Vec::new();
                Deflate
                    .decode(enc, 0, raw.len(), &mut dec)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(dec == raw, "{name}: not bit exact");
            }
            let body = zstd_decompress(&v2[1..], 1 << 24).unwrap_or_else(|e| panic!("{e}"));
            let mut r = Reader::new(&body);
            let head = Head::parse(&mut r, raw.len(), body.len()).unwrap_or_else(|e| panic!("{e}"));
            let corr = &body[body.len() - head.plain - head.corr..body.len() - head.plain];
            if corr.first() == Some(&PLAIN_IMAGE) {
                imaged += 1;
            }
            v1_total += v1.len();
            v2_total += v2.len();
        }
        assert!(imaged >= 2, "only {imaged} PNGs image coded");
        assert!(v2_total < v1_total, "{v2_total} !< {v1_total}");
    }

    /// A frozen version 2 payload (tests/data/codec-golden/deflate-v2-png.payload, written by
    /// `IDCFS_WRITE_GOLDEN=1`) of a sample PNG must keep rebuilding that exact file: the pixel
    /// coder, its wrapper and preflate-rs's rebuild are all part of the format.
    #[test]
    fn golden_v2_png_payload_rebuilds_the_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/codec-golden/deflate-v2-png.payload"
        );
        let (_, raw) = samples("png")
            .into_iter()
            .find(|(n, _)| n.contains("grub-4x3"))
            .unwrap_or_else(|| panic!("sample grub-4x3 missing"));
        if std::env::var_os("IDCFS_WRITE_GOLDEN").is_some() {
            let mut payload = Vec::new();
            Deflate
                .encode(&raw, &EncodeParams::level(19), &mut payload)
                .unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(path, &payload).unwrap_or_else(|e| panic!("{e}"));
        }
        let payload = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(payload[0], VERSION_TAGGED);
        let body = zstd_decompress(&payload[1..], 1 << 24).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            payload.len() < raw.len(),
            "golden payload not smaller than its file"
        );
        let mut dec = Vec::new();
        Deflate
            .decode(&payload, 0, raw.len(), &mut dec)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(dec == raw, "golden payload no longer rebuilds the file");
        // An unknown plain-coding tag is refused, not guessed at.
        let mut r = Reader::new(&body);
        let head = Head::parse(&mut r, raw.len(), body.len()).unwrap_or_else(|e| panic!("{e}"));
        let at = body.len() - head.plain - head.corr;
        assert_eq!(body[at], PLAIN_IMAGE, "golden stream not image coded");
        let mut bad = body.clone();
        bad[at] = 7;
        let mut forged = vec![VERSION_TAGGED];
        forged.extend_from_slice(&zstd_compress(&bad, 3).unwrap_or_else(|e| panic!("{e}")));
        assert!(Deflate.decode(&forged, 0, raw.len(), &mut dec).is_err());
    }

    #[test]
    fn concatenated_gzip_members_and_trailing_bytes_roundtrip() {
        let mut raw = Vec::new();
        for (_, g) in samples("gzip") {
            raw.extend_from_slice(&g);
        }
        raw.extend_from_slice(b"\0\0junk after the last member");
        let mut enc = Vec::new();
        Deflate.encode(&raw, &p(), &mut enc).unwrap();
        let mut dec = Vec::new();
        Deflate.decode(&enc, 0, raw.len(), &mut dec).unwrap();
        assert!(dec == raw);
    }

    /// A gzip member made here at run time around a real .gz file, its deflate stream being
    /// stored blocks (RFC 1951 BTYPE 00, which need no compressor): a container in a container.
    fn gzip_of_stored(inner: &[u8]) -> Vec<u8> {
        let mut g = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        let chunks: Vec<&[u8]> = inner.chunks(65535).collect();
        for (i, c) in chunks.iter().enumerate() {
            g.push(u8::from(i + 1 == chunks.len()));
            let n = c.len() as u16;
            g.extend_from_slice(&n.to_le_bytes());
            g.extend_from_slice(&(!n).to_le_bytes());
            g.extend_from_slice(c);
        }
        g.extend_from_slice(&crc32(inner).to_le_bytes());
        g.extend_from_slice(&(inner.len() as u32).to_le_bytes());
        g
    }

    #[test]
    fn container_inside_a_stream_is_walked_too() {
        let (_, inner) = samples("gzip")
            .into_iter()
            .max_by_key(|(_, b)| b.len())
            .unwrap();
        let outer = gzip_of_stored(&inner);
        let mut recoder = Preflate {
            verify: true,
            images: false,
            png: None,
        };
        let b = build(&outer, Container::Gzip, &mut recoder);
        assert!(
            b.ops.iter().any(|o| matches!(o, Op::Push)),
            "nested walk not used"
        );
        assert_eq!(b.streams, 2);
        let mut enc = Vec::new();
        Deflate.encode(&outer, &p(), &mut enc).unwrap();
        let mut dec = Vec::new();
        Deflate.decode(&enc, 0, outer.len(), &mut dec).unwrap();
        assert!(dec == outer);
        // Nesting pays: the inner stream is re-encoded instead of kept as opaque plain text.
        let mut flat = Vec::new();
        Deflate.encode(&inner, &p(), &mut flat).unwrap();
        assert!(enc.len() < inner.len() && enc.len() <= flat.len() + 64);
    }

    #[test]
    fn truncated_containers_roundtrip_or_refuse() {
        // Truncations made here at run time: the walkers must stop cleanly, and an Ok must
        // still be exact.
        for class in ["gzip", "zip", "png"] {
            let raw = sample(class);
            for cut in [raw.len() / 3, raw.len() - 5, 40] {
                let t = &raw[..cut];
                let mut enc = Vec::new();
                if Deflate.encode(t, &p(), &mut enc).is_ok() {
                    let mut dec = Vec::new();
                    Deflate.decode(&enc, 0, t.len(), &mut dec).unwrap();
                    assert!(dec == t, "{class} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn png_with_bad_idat_crc_is_left_alone() {
        let mut raw = sample("png");
        let first_idat = raw.windows(4).position(|w| w == b"IDAT").unwrap();
        let len = be32(&raw, first_idat - 4).unwrap() as usize;
        raw[first_idat + 4 + len] ^= 1; // flip a CRC bit
        let mut enc = Vec::new();
        assert!(Deflate.encode(&raw, &p(), &mut enc).is_err());
    }

    #[test]
    fn other_formats_are_refused() {
        let mut enc = Vec::new();
        for class in ["jpeg", "wav", "text", "elf"] {
            assert!(
                Deflate.encode(&sample(class), &p(), &mut enc).is_err(),
                "{class}"
            );
        }
        assert!(Deflate.encode(b"", &p(), &mut enc).is_err());
    }

    #[test]
    fn corrupt_payloads_decode_to_err() {
        let raw = sample("gzip");
        let mut enc = Vec::new();
        Deflate.encode(&raw, &p(), &mut enc).unwrap();
        let mut dec = Vec::new();
        assert!(Deflate.decode(&enc, 0, raw.len() - 1, &mut dec).is_err());
        assert!(Deflate.decode(&enc, 0, raw.len() + 1, &mut dec).is_err());
        for cut in [0, 1, 5, enc.len() / 2, enc.len() - 1] {
            assert!(Deflate.decode(&enc[..cut], 0, raw.len(), &mut dec).is_err());
        }
        let mut bad = enc.clone();
        bad[0] = 9;
        assert!(Deflate.decode(&bad, 0, raw.len(), &mut dec).is_err());
    }

    #[test]
    fn hostile_bodies_decode_to_err() {
        // Hand-made bodies (valid zstd frames) that lie about lengths and structure.
        let frame = |body: &[u8]| {
            let mut v = vec![VERSION];
            v.extend_from_slice(&zstd_compress(body, 1).unwrap());
            v
        };
        let cases: Vec<Vec<u8>> = vec![
            vec![],                                               // no op count
            vec![1, OP_VERBATIM, 5, 5, 0, 0, 1, 2, 3],            // verbatim area too short
            vec![1, 9, 0, 0, 0],                                  // unknown op
            vec![1, OP_IDAT_END, 0, 0, 0],                        // end without begin
            vec![1, OP_IDAT_BEGIN, 1, 4, 0, 0, 0],                // unterminated group
            vec![1, OP_DEFLATE, 3, 3, 0, 3, 3, 1, 2, 3, 4, 5, 6], // garbage corrections
            vec![0, 0, 0, 0, 7],                                  // trailing byte
            vec![
                1,
                OP_VERBATIM,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x80,
                0x7f,
            ],
        ];
        let mut dec = Vec::new();
        for (i, body) in cases.iter().enumerate() {
            assert!(
                Deflate.decode(&frame(body), 0, 3, &mut dec).is_err(),
                "case {i}"
            );
        }
        // A valid body, declared as a longer file than it produces, and vice versa.
        let ok = frame(&[1, OP_VERBATIM, 3, 3, 0, 0, b'a', b'b', b'c']);
        Deflate.decode(&ok, 0, 3, &mut dec).unwrap();
        assert_eq!(dec, b"abc");
        assert!(Deflate.decode(&ok, 0, 4, &mut dec).is_err());
        assert!(Deflate.decode(&ok, 0, 2, &mut dec).is_err());
    }
}
