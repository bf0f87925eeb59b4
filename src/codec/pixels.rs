//! Exact lossless coding of PNG image data (the inflated IDAT stream: per row one filter-type
//! byte, then the filtered bytes).
//!
//! Encoding unfilters every row (PNG filters 0–4) into samples, keeps the row's filter type,
//! and codes the samples with an adaptive binary range coder (16-bit probabilities, two
//! adaptation rates, LZMA-style carry handling):
//!
//! - channels in the order alpha, green, red, blue (grey+alpha: alpha, grey);
//! - per row and channel, the encoder picks one of 16 predictors (W, N, averages, LOCO-I MED,
//!   clamped gradient, Paeth, NE, NW, two rows up, ..., and "the last colour seen with this
//!   alpha value", which makes the arbitrary colours of invisible pixels cheap), optionally
//!   corrected by the green (grey) residual of the same pixel; the choice is coded per row;
//! - residuals are coded as zero flag, sign, unary exponent, one modelled mantissa bit and raw
//!   low bits, in contexts of: neighbouring residual magnitudes (quantized), local sample
//!   texture, the reference channel's residual, and the pixel's alpha class;
//! - where the neighbours' residuals were all zero and the neighbourhood is flat, one flag per
//!   pixel says "every sample equals its prediction" (fast through flat areas).
//!
//! Decoding reproduces the samples and re-applies each row's original filter, which gives back
//! the filtered bytes bit for bit (filtering is a pure function of the raw row, the previous
//! raw row and the type).
//!
//! Everything is integer arithmetic; the encoder and the decoder share one generic modelling
//! routine (`code_row`), so they cannot disagree on probabilities.
//!
//! Supported: non-interlaced, colour types 0 (grey), 2 (RGB), 4 (grey+alpha), 6 (RGBA) at bit
//! depths 8 and 16, and 3 (palette indices, one 8-bit channel) at depth 8. Anything else
//! (palette at 1/2/4 bits, grey below 8 bits, interlaced) is refused with `Err`; the caller
//! keeps the data generically compressed. The encoder does not compare sizes: the caller keeps
//! whichever form is smaller.
//!
//! Payload: one version byte, the range-coded stream, then a 32-bit digest of the filtered
//! data. Malformed payloads give `Err` (a truncated stream, an impossible filter type, a wrong
//! digest), never a panic; the decoder allocates only what the header and `expect_len` imply.

use super::CodecError;

/// The fields of a PNG IHDR chunk that matter here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ihdr {
    pub width: u32,
    pub height: u32,
    pub bit_depth: u8,
    pub color_type: u8,
    pub interlace: u8,
}

const PNG_SIG: [u8; 8] = [137, 80, 78, 71, 13, 10, 26, 10];
const VERSION: u8 = 1;

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// The IHDR of a whole PNG file (signature, then IHDR as the first chunk).
pub(crate) fn parse_ihdr(png: &[u8]) -> Option<Ihdr> {
    if png.get(..8)? != PNG_SIG {
        return None;
    }
    if be32(png.get(8..12)?)? != 13 || png.get(12..16)? != b"IHDR" {
        return None;
    }
    let d = png.get(16..29)?;
    Some(Ihdr {
        width: be32(&d[0..4])?,
        height: be32(&d[4..8])?,
        bit_depth: d[8],
        color_type: d[9],
        interlace: d[12],
    })
}

/// Geometry derived from an IHDR.
#[derive(Clone, Copy, Debug)]
struct Layout {
    w: usize,
    h: usize,
    /// Channels per pixel.
    ch: usize,
    /// Bits per sample (8 or 16).
    depth: u32,
    /// Bytes per complete pixel (the filters' "bpp").
    bpp: usize,
    /// Bytes per row without the filter-type byte.
    row_bytes: usize,
    /// Length of the filtered data: `h * (1 + row_bytes)`.
    total: usize,
}

fn unsupported(what: String) -> CodecError {
    CodecError::Failed(format!("png pixels: unsupported {what}"))
}

fn malformed(what: &str) -> CodecError {
    CodecError::Malformed(format!("png pixels: {what}"))
}

fn layout(h: &Ihdr) -> Result<Layout, CodecError> {
    if h.interlace != 0 {
        return Err(unsupported(format!("interlace method {}", h.interlace)));
    }
    let ch = match h.color_type {
        0 | 3 => 1,
        2 => 3,
        4 => 2,
        6 => 4,
        t => return Err(unsupported(format!("colour type {t}"))),
    };
    let depth_ok = match h.color_type {
        3 => h.bit_depth == 8,
        _ => h.bit_depth == 8 || h.bit_depth == 16,
    };
    if !depth_ok {
        return Err(unsupported(format!(
            "bit depth {} for colour type {}",
            h.bit_depth, h.color_type
        )));
    }
    if h.width == 0 || h.height == 0 {
        return Err(unsupported("empty image".to_string()));
    }
    let depth = u32::from(h.bit_depth);
    let bpp = ch * (depth as usize / 8);
    let w = h.width as usize;
    let hh = h.height as usize;
    let row_bytes = w
        .checked_mul(bpp)
        .ok_or_else(|| unsupported("size".to_string()))?;
    let total = row_bytes
        .checked_add(1)
        .and_then(|r| r.checked_mul(hh))
        .ok_or_else(|| unsupported("size".to_string()))?;
    // Row buffers hold (w + 2) pixels of i32 samples.
    w.checked_add(2)
        .and_then(|p| p.checked_mul(ch * 4))
        .ok_or_else(|| unsupported("size".to_string()))?;
    Ok(Layout {
        w,
        h: hh,
        ch,
        depth,
        bpp,
        row_bytes,
        total,
    })
}

// ---------------------------------------------------------------------------------------------
// Adaptive binary range coder (LZMA-style carry handling, 16-bit probabilities, two rates).

/// Probability that the next bit is 0, as the mean of a fast and a slow estimate (1/65536).
#[derive(Clone, Copy)]
struct P {
    fast: u16,
    slow: u16,
}

impl P {
    const INIT: P = P {
        fast: 32768,
        slow: 32768,
    };

    #[inline(always)]
    fn p0(self) -> u32 {
        (u32::from(self.fast) + u32::from(self.slow)) >> 1
    }

    #[inline(always)]
    fn update(&mut self, bit: u32) {
        let (f, s) = (u32::from(self.fast), u32::from(self.slow));
        // Both stay within [1, 65535]: neither shift can reach 0 or 65536.
        if bit == 0 {
            self.fast = (f + ((65536 - f) >> 4)) as u16;
            self.slow = (s + ((65536 - s) >> 7)) as u16;
        } else {
            self.fast = (f - (f >> 4)) as u16;
            self.slow = (s - (s >> 7)) as u16;
        }
    }
}

const TOP: u32 = 1 << 24;

trait Coder {
    const ENC: bool;
    /// Codes `bit` (encoder) or returns the decoded bit (decoder ignores `bit`).
    fn bit(&mut self, p: &mut P, bit: u32) -> u32;
    /// An equiprobable bit.
    fn direct(&mut self, bit: u32) -> u32;
}

struct Encoder {
    low: u64,
    range: u32,
    cache: u8,
    cache_size: u64,
    out: Vec<u8>,
}

impl Encoder {
    fn new(out: Vec<u8>) -> Self {
        Encoder {
            low: 0,
            range: u32::MAX,
            cache: 0,
            cache_size: 1,
            out,
        }
    }

    fn shift_low(&mut self) {
        if (self.low as u32) < 0xFF00_0000 || (self.low >> 32) != 0 {
            let carry = (self.low >> 32) as u8;
            let mut temp = self.cache;
            loop {
                self.out.push(temp.wrapping_add(carry));
                temp = 0xFF;
                self.cache_size -= 1;
                if self.cache_size == 0 {
                    break;
                }
            }
            self.cache = ((self.low >> 24) & 0xFF) as u8;
        }
        self.cache_size += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    fn finish(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
        }
        self.out
    }
}

impl Coder for Encoder {
    const ENC: bool = true;

    #[inline(always)]
    fn bit(&mut self, p: &mut P, bit: u32) -> u32 {
        let bound = (self.range >> 16) * p.p0();
        if bit == 0 {
            self.range = bound;
        } else {
            self.low += u64::from(bound);
            self.range -= bound;
        }
        p.update(bit);
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
        bit
    }

    #[inline(always)]
    fn direct(&mut self, bit: u32) -> u32 {
        self.range >>= 1;
        if bit != 0 {
            self.low += u64::from(self.range);
        }
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
        bit
    }
}

struct Decoder<'a> {
    code: u32,
    range: u32,
    input: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn new(input: &'a [u8]) -> Result<Self, CodecError> {
        if input.len() < 5 || input[0] != 0 {
            return Err(malformed("range coder start"));
        }
        let mut code = 0u32;
        for &b in &input[1..5] {
            code = (code << 8) | u32::from(b);
        }
        Ok(Decoder {
            code,
            range: u32::MAX,
            input,
            pos: 5,
        })
    }

    #[inline(always)]
    fn next_byte(&mut self) -> u32 {
        let b = self.input.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        u32::from(b)
    }

    #[inline(always)]
    fn normalize(&mut self) {
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | self.next_byte();
        }
    }

    /// True when the decoder read past the end of its input (a truncated or corrupt stream).
    fn overran(&self) -> bool {
        self.pos > self.input.len()
    }
}

impl Coder for Decoder<'_> {
    const ENC: bool = false;

    #[inline(always)]
    fn bit(&mut self, p: &mut P, _bit: u32) -> u32 {
        let bound = (self.range >> 16) * p.p0();
        let bit = if self.code < bound {
            self.range = bound;
            0
        } else {
            self.code -= bound;
            self.range -= bound;
            1
        };
        p.update(bit);
        self.normalize();
        bit
    }

    #[inline(always)]
    fn direct(&mut self, _bit: u32) -> u32 {
        self.range >>= 1;
        let bit = if self.code >= self.range {
            self.code -= self.range;
            1
        } else {
            0
        };
        self.normalize();
        bit
    }
}

/// Codes an `nbits`-bit symbol MSB first through a binary tree of `1 << nbits` probabilities.
#[inline(always)]
fn tree<C: Coder>(c: &mut C, probs: &mut [P], nbits: u32, sym: u32) -> u32 {
    let mut m = 1usize;
    for i in (0..nbits).rev() {
        let b = match probs.get_mut(m) {
            Some(p) => c.bit(p, (sym >> i) & 1),
            None => 0,
        };
        m = (m << 1) | b as usize;
    }
    (m - (1 << nbits)) as u32
}

// ---------------------------------------------------------------------------------------------
// Modelling.

/// Activity buckets (quantized sum of neighbouring residual magnitudes).
const NQ: usize = 16;
/// Buckets of the local sample texture (|N-NW| + |N-NE| + |W-NW|).
const NT: usize = 6;
/// Alpha classes of a colour sample: opaque (or no alpha), transparent, partial.
const NA: usize = 3;
/// Buckets of the reference channel's residual magnitude at the same pixel.
const NCR: usize = 5;
/// Predictors (4 bits) times "add the reference channel's residual" (1 bit).
const NCHOICE: usize = 32;
/// Predictors.
const NPRED: u8 = 16;
/// Predictor: the last colour seen with the same alpha value (invisible pixels' colours).
const PRED_ALPHA_CACHE: u8 = 10;

#[derive(Clone, Copy)]
struct ResModel {
    zero: P,
    sign: [P; 27],
    exp: [P; 16],
    mant: [P; 16],
    /// Second mantissa bit, by exponent and first mantissa bit.
    mant2: [P; 32],
}

impl ResModel {
    const INIT: ResModel = ResModel {
        zero: P::INIT,
        sign: [P::INIT; 27],
        exp: [P::INIT; 16],
        mant: [P::INIT; 16],
        mant2: [P::INIT; 32],
    };
}

struct Model {
    res: Vec<ResModel>,
    /// Filter type (3-bit tree), by the previous row's filter type.
    filt: [[P; 8]; 8],
    /// Predictor choice (4-bit tree), by channel position and the previous row's choice.
    choice: Vec<[P; NCHOICE]>,
    /// "Every residual of this pixel is zero", by the number of such pixels just before.
    run: [P; 14],
}

impl Model {
    fn new(ch: usize) -> Self {
        Model {
            res: vec![ResModel::INIT; ch * NQ * NT * NCR * NA],
            filt: [[P::INIT; 8]; 8],
            choice: vec![[P::INIT; NCHOICE]; ch * NCHOICE],
            run: [P::INIT; 14],
        }
    }
}

#[inline(always)]
fn quant(a: u32) -> usize {
    if a < 4 {
        a as usize
    } else {
        let b = 31 - a.leading_zeros();
        let half = (a >> (b - 1)) & 1;
        ((2 * b + half) as usize).min(NQ - 1)
    }
}

#[inline(always)]
fn sgn3(e: i32) -> usize {
    match e.signum() {
        0 => 0,
        1 => 1,
        _ => 2,
    }
}

/// Codes one signed residual: zero flag, sign, unary exponent, one modelled mantissa bit, then
/// equiprobable bits. The decoder's result is bounded by `1 << depth` in magnitude.
#[inline(always)]
fn code_res<C: Coder>(c: &mut C, m: &mut ResModel, sctx: usize, val: i32, depth: u32) -> i32 {
    let mag = val.unsigned_abs();
    if c.bit(&mut m.zero, u32::from(mag != 0)) == 0 {
        return 0;
    }
    let neg = c.bit(&mut m.sign[sctx], u32::from(val < 0));
    let k_enc = 31u32.saturating_sub(mag.leading_zeros());
    let mut k = 0u32;
    while k < depth - 1 {
        if c.bit(&mut m.exp[k as usize], u32::from(k_enc > k)) == 0 {
            break;
        }
        k += 1;
    }
    let mut v = 1u32;
    if k >= 1 {
        let b = c.bit(&mut m.mant[k as usize], (mag >> (k - 1)) & 1);
        v = (v << 1) | b;
        if k >= 2 {
            let b = c.bit(
                &mut m.mant2[(k as usize) * 2 + (v & 1) as usize],
                (mag >> (k - 2)) & 1,
            );
            v = (v << 1) | b;
        }
        for i in (0..k.saturating_sub(2)).rev() {
            let b = c.direct((mag >> i) & 1);
            v = (v << 1) | b;
        }
    }
    if neg != 0 {
        -(v as i32)
    } else {
        v as i32
    }
}

#[inline(always)]
fn paeth(a: i32, b: i32, c: i32) -> i32 {
    let p = a + b - c;
    let pa = (p - a).abs();
    let pb = (p - b).abs();
    let pc = (p - c).abs();
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

/// Neighbouring samples of one channel.
#[derive(Clone, Copy)]
struct Nb {
    w: i32,
    n: i32,
    nw: i32,
    ne: i32,
    /// Two rows up, and two rows up one pixel left.
    nn: i32,
    wnn: i32,
}

impl Nb {
    #[inline(always)]
    fn at(cur: &[i32], prev: &[i32], prev2: &[i32], i: usize, ch: usize) -> Nb {
        Nb {
            w: cur[i - ch],
            n: prev[i],
            nw: prev[i - ch],
            ne: prev[i + ch],
            nn: prev2[i],
            wnn: prev2[i - ch],
        }
    }
}

/// Predictor `p` (0..16); `cached` is the alpha-cache value (predictor 10).
#[inline(always)]
fn predict(p: u8, nb: Nb, cached: i32, maxv: i32) -> i32 {
    let Nb {
        w,
        n,
        nw,
        ne,
        nn,
        wnn,
    } = nb;
    match p {
        0 => w,
        1 => n,
        2 => (w + n) >> 1,
        3 => {
            // LOCO-I median edge detector.
            let (lo, hi) = if w < n { (w, n) } else { (n, w) };
            if nw >= hi {
                lo
            } else if nw <= lo {
                hi
            } else {
                w + n - nw
            }
        }
        4 => (w + n - nw).clamp(0, maxv),
        5 => paeth(w, n, nw),
        6 => (w + ne) >> 1,
        7 => 0,
        8 => nn,
        9 => (w + nn - wnn).clamp(0, maxv),
        PRED_ALPHA_CACHE => cached,
        11 => ne,
        12 => nw,
        13 => (n + nw) >> 1,
        14 => (n + ne) >> 1,
        _ => (w + n + nw + ne + 2) >> 2,
    }
}

/// Row buffers shared by the encoder and the decoder. Rows hold `w + 2` pixels: pixel `x` of
/// channel `c` is at `(x + 1) * ch + c`; the pads repeat the edge pixels of the row above.
struct Rows {
    l: Layout,
    maxv: i32,
    /// Coding order of the channels (alpha, then green first for RGB/RGBA).
    order: [usize; 4],
    /// The channel whose residual corrects the others' predictions (green or grey).
    refc: usize,
    /// The alpha channel, if any.
    alpha: Option<usize>,
    cur: Vec<i32>,
    prev: Vec<i32>,
    prev2: Vec<i32>,
    /// Last colour seen per alpha value (`alpha_key * ch + channel`), when there is alpha.
    acache: Vec<i32>,
    ecur: Vec<i32>,
    eprev: Vec<i32>,
    /// Per padded pixel: some channel had a non-zero residual (this row, previous row).
    zcur: Vec<bool>,
    zprev: Vec<bool>,
    prev_filter: usize,
    prev_choice: [u8; 4],
}

impl Rows {
    fn new(l: Layout) -> Self {
        let n = (l.w + 2) * l.ch;
        // Alpha first (its value is a context of the colour), then green, red, blue.
        let (order, refc) = match l.ch {
            4 => ([3, 1, 0, 2], 1),
            3 => ([1, 0, 2, 3], 1),
            2 => ([1, 0, 2, 3], 0),
            _ => ([0, 1, 2, 3], 0),
        };
        Rows {
            l,
            maxv: ((1u32 << l.depth) - 1) as i32,
            order,
            refc,
            alpha: match l.ch {
                4 => Some(3),
                2 => Some(1),
                _ => None,
            },
            cur: vec![0; n],
            prev: vec![0; n],
            prev2: vec![0; n],
            acache: vec![0; 256 * l.ch],
            ecur: vec![0; n],
            eprev: vec![0; n],
            zcur: vec![false; l.w + 2],
            zprev: vec![false; l.w + 2],
            prev_filter: 0,
            prev_choice: [0; 4],
        }
    }

    /// Sets the pads for the row about to be coded.
    fn pad(&mut self) {
        let ch = self.l.ch;
        let w = self.l.w;
        for c in 0..ch {
            let first = self.prev[ch + c];
            let last = self.prev[w * ch + c];
            self.prev[c] = first;
            self.prev[(w + 1) * ch + c] = last;
            self.cur[c] = first;
            self.prev2[c] = self.prev2[ch + c];
        }
    }

    /// Position of the reference channel in the coding order.
    fn refpos(&self) -> usize {
        self.order.iter().position(|&c| c == self.refc).unwrap_or(0)
    }

    fn advance(&mut self) {
        std::mem::swap(&mut self.prev2, &mut self.prev);
        std::mem::swap(&mut self.cur, &mut self.prev);
        std::mem::swap(&mut self.ecur, &mut self.eprev);
        std::mem::swap(&mut self.zcur, &mut self.zprev);
    }

    /// Encoder: picks per channel the predictor (and cross-channel flag) with the smallest
    /// estimated cost over the current row. `cur` must hold the row's samples (pads set).
    fn choose(&self) -> [u8; 4] {
        let l = &self.l;
        let ch = l.ch;
        let mut choices = [0u8; 4];
        let mut eref = vec![0i32; l.w];
        let refpos = self.refpos();
        // What the alpha cache predicts at each sample of this row.
        let mut cached = vec![0i32; l.w * ch];
        if let Some(a) = self.alpha {
            let mut cache = self.acache.clone();
            let shift = l.depth - 8;
            for x in 0..l.w {
                let base = (x + 1) * ch;
                let key = ((self.cur[base + a] >> shift) & 255) as usize * ch;
                for c in 0..ch {
                    if c != a {
                        cached[x * ch + c] = cache[key + c];
                    }
                    cache[key + c] = self.cur[base + c];
                }
            }
        }
        for (j, &cidx) in self.order.iter().enumerate().take(ch) {
            let mut best = (u64::MAX, 0u8);
            let ncross = if j > refpos { 2 } else { 1 };
            for cross in 0..ncross {
                for p in 0..NPRED {
                    if p == PRED_ALPHA_CACHE && self.alpha.is_none_or(|a| a == cidx) {
                        continue;
                    }
                    let mut cost = 0u64;
                    for x in 0..l.w {
                        let i = (x + 1) * ch + cidx;
                        let nb = Nb::at(&self.cur, &self.prev, &self.prev2, i, ch);
                        let mut pred = predict(p, nb, cached[x * ch + cidx], self.maxv);
                        if cross != 0 {
                            pred = (pred + eref[x]).clamp(0, self.maxv);
                        }
                        let e = wrap(self.cur[i] - pred, l.depth);
                        cost += u64::from(est_cost(e));
                    }
                    if cost < best.0 {
                        best = (cost, p | (cross << 4));
                    }
                }
            }
            choices[j] = best.1;
            if cidx == self.refc {
                let p = best.1 & 15;
                for (x, r) in eref.iter_mut().enumerate() {
                    let i = (x + 1) * ch + cidx;
                    let nb = Nb::at(&self.cur, &self.prev, &self.prev2, i, ch);
                    let pred = predict(p, nb, cached[x * ch + cidx], self.maxv);
                    *r = wrap(self.cur[i] - pred, l.depth);
                }
            }
        }
        choices
    }
}

/// `e` reduced modulo `2^depth` into `[-2^(depth-1), 2^(depth-1))`.
#[inline(always)]
fn wrap(e: i32, depth: u32) -> i32 {
    let m = (1i32 << depth) - 1;
    let half = 1i32 << (depth - 1);
    let r = e & m;
    if r >= half {
        r - (1 << depth)
    } else {
        r
    }
}

#[inline(always)]
fn est_cost(e: i32) -> u32 {
    if e == 0 {
        0
    } else {
        1 + 2 * (32 - e.unsigned_abs().leading_zeros())
    }
}

/// Codes one row: its filter type, its predictor choices, then every sample. The encoder passes
/// the real values (and `cur` filled); the decoder gets them back (`cur` filled by decoding).
fn code_row<C: Coder>(
    c: &mut C,
    m: &mut Model,
    r: &mut Rows,
    filt: &mut u8,
    choices: &mut [u8; 4],
) -> Result<(), CodecError> {
    let l = r.l;
    let ch = l.ch;
    let f = tree(c, &mut m.filt[r.prev_filter], 3, u32::from(*filt));
    if f > 4 {
        return Err(malformed("filter type"));
    }
    *filt = f as u8;
    r.prev_filter = f as usize;
    for (j, (choice, prev)) in choices.iter_mut().zip(&mut r.prev_choice).enumerate() {
        if j == ch {
            break;
        }
        let probs = &mut m.choice[j * NCHOICE + usize::from(*prev)];
        let s = tree(c, probs, 5, u32::from(*choice)) as u8;
        *choice = s;
        *prev = s;
    }
    r.pad();
    let maxv = r.maxv;
    let depth = l.depth;
    let order = r.order;
    let refc = r.refc;
    let refpos = r.refpos();
    let alpha = r.alpha;
    let gshift = depth - 8;
    let Rows {
        cur,
        prev,
        prev2,
        acache,
        ecur,
        eprev,
        zcur,
        zprev,
        ..
    } = r;
    let mut x = 0;
    // At a pixel whose coded neighbours all had zero residuals, one flag tells whether all its
    // residuals are zero (then its samples are the predictions); its context is the number of
    // such pixels just before it.
    let mut run = 0usize;
    while x < l.w {
        let px = x + 1;
        if !(zcur[px - 1] | zprev[px - 1] | zprev[px] | zprev[px + 1]) {
            let base = px * ch;
            let same = if C::ENC {
                order[..ch]
                    .iter()
                    .zip(choices.iter())
                    .all(|(&cidx, &choice)| {
                        cur[base + cidx]
                            == pred_at(
                                cur,
                                prev,
                                prev2,
                                acache,
                                alpha,
                                cidx,
                                base,
                                ch,
                                choice & 15,
                                gshift,
                                maxv,
                            )
                    })
            } else {
                false
            };
            let rc = match run {
                0 => 0,
                1 => 1,
                2..=3 => 2,
                4..=7 => 3,
                8..=15 => 4,
                16..=63 => 5,
                _ => 6,
            };
            let flat = (0..ch).all(|c| {
                let i = base + c;
                let n = prev[i];
                n == prev[i - ch] && n == prev[i + ch] && cur[i - ch] == prev[i - ch]
            });
            if flat && c.bit(&mut m.run[rc], u32::from(same)) == 1 {
                if !C::ENC {
                    for (&cidx, &choice) in order[..ch].iter().zip(choices.iter()) {
                        cur[base + cidx] = pred_at(
                            cur,
                            prev,
                            prev2,
                            acache,
                            alpha,
                            cidx,
                            base,
                            ch,
                            choice & 15,
                            gshift,
                            maxv,
                        );
                    }
                }
                run_fill(cur, ecur, zcur, acache, alpha, base, ch, gshift);
                run += 1;
                x += 1;
                continue;
            }
        }
        run = 0;
        let base = px * ch;
        let ri = base + refc;
        let mut any = 0;
        for j in 0..ch {
            let i = base + order[j];
            let choice = choices[j];
            let p = choice & 15;
            let nb = Nb::at(cur, prev, prev2, i, ch);
            let mut pred = pred_at(
                cur, prev, prev2, acache, alpha, order[j], base, ch, p, gshift, maxv,
            );
            // Alpha is coded first: for the colour channels it is already known here.
            let ac = match alpha {
                Some(a) if a != order[j] => match cur[base + a] {
                    v if v == maxv => 0,
                    0 => 1,
                    _ => 2,
                },
                _ => 0,
            };
            let (eref, cr) = if j <= refpos {
                (0, 0)
            } else {
                let e = ecur[ri];
                let cr = match e.unsigned_abs() {
                    0 => 0,
                    1 => 1,
                    2..=3 => 2,
                    4..=10 => 3,
                    _ => 4,
                };
                (e, cr)
            };
            if choice & 16 != 0 {
                pred = (pred + eref).clamp(0, maxv);
            }
            let ew = ecur[i - ch];
            let en = eprev[i];
            // West-west residual (none at the first pixel).
            let eww = if x >= 1 {
                ecur[i - 2 * ch].unsigned_abs()
            } else {
                0
            };
            let a = ((ew.unsigned_abs() + en.unsigned_abs() + eref.unsigned_abs()) * 2
                + eprev[i - ch].unsigned_abs()
                + eprev[i + ch].unsigned_abs()
                + eww
                + 1)
                >> 1;
            let q = quant(a);
            let Nb { w, n, nw, ne, .. } = nb;
            let g = ((n - nw).unsigned_abs() + (n - ne).unsigned_abs() + (w - nw).unsigned_abs())
                >> gshift;
            let t = match g {
                0 => 0,
                1 => 1,
                2..=3 => 2,
                4..=8 => 3,
                9..=24 => 4,
                _ => 5,
            };
            let sctx = (sgn3(ew) * 3 + sgn3(en)) * 3 + sgn3(eref);
            let rm = &mut m.res[(((j * NQ + q) * NT + t) * NCR + cr) * NA + ac];
            let val = if C::ENC {
                wrap(cur[i] - pred, depth)
            } else {
                0
            };
            let e = code_res(c, rm, sctx, val, depth);
            if !C::ENC {
                cur[i] = (pred + e) & maxv;
            }
            ecur[i] = e;
            any |= e;
        }
        zcur[px] = any != 0;
        if let Some(a) = alpha {
            let key = ((cur[base + a] >> gshift) & 255) as usize * ch;
            acache[key..key + ch].copy_from_slice(&cur[base..base + ch]);
        }
        x += 1;
    }
    Ok(())
}

/// The spatial (or alpha-cache) prediction of channel `cidx` of the pixel at `base`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pred_at(
    cur: &[i32],
    prev: &[i32],
    prev2: &[i32],
    acache: &[i32],
    alpha: Option<usize>,
    cidx: usize,
    base: usize,
    ch: usize,
    p: u8,
    gshift: u32,
    maxv: i32,
) -> i32 {
    let nb = Nb::at(cur, prev, prev2, base + cidx, ch);
    let cached = match alpha {
        Some(a) if p == PRED_ALPHA_CACHE && a != cidx => {
            let key = ((cur[base + a] >> gshift) & 255) as usize;
            acache[key * ch + cidx]
        }
        _ => 0,
    };
    predict(p, nb, cached, maxv)
}

/// Bookkeeping for a pixel inside a zero run: zero residuals, alpha cache.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn run_fill(
    cur: &[i32],
    ecur: &mut [i32],
    zcur: &mut [bool],
    acache: &mut [i32],
    alpha: Option<usize>,
    base: usize,
    ch: usize,
    gshift: u32,
) {
    ecur[base..base + ch].fill(0);
    zcur[base / ch] = false;
    if let Some(a) = alpha {
        let key = ((cur[base + a] >> gshift) & 255) as usize * ch;
        acache[key..key + ch].copy_from_slice(&cur[base..base + ch]);
    }
}

// ---------------------------------------------------------------------------------------------
// PNG filters.

#[inline(always)]
fn paeth_u8(a: u8, b: u8, c: u8) -> u8 {
    paeth(i32::from(a), i32::from(b), i32::from(c)) as u8
}

/// Reverses filter `f` on `row` in place, given the previous raw row.
fn unfilter(f: u8, row: &mut [u8], prev: &[u8], bpp: usize) -> Result<(), CodecError> {
    let n = row.len();
    match f {
        0 => {}
        1 => {
            for i in bpp..n {
                row[i] = row[i].wrapping_add(row[i - bpp]);
            }
        }
        2 => {
            for (r, &p) in row.iter_mut().zip(prev) {
                *r = r.wrapping_add(p);
            }
        }
        3 => {
            for i in 0..n {
                let a = if i >= bpp { u16::from(row[i - bpp]) } else { 0 };
                row[i] = row[i].wrapping_add(((a + u16::from(prev[i])) >> 1) as u8);
            }
        }
        4 => {
            for i in 0..n {
                let (a, c) = if i >= bpp {
                    (row[i - bpp], prev[i - bpp])
                } else {
                    (0, 0)
                };
                row[i] = row[i].wrapping_add(paeth_u8(a, prev[i], c));
            }
        }
        _ => return Err(CodecError::Failed(format!("png pixels: filter type {f}"))),
    }
    Ok(())
}

/// Applies filter `f` to the raw row `raw` (previous raw row `prev`), appending to `out`.
fn filter(f: u8, raw: &[u8], prev: &[u8], bpp: usize, out: &mut Vec<u8>) {
    let n = raw.len();
    match f {
        1 => {
            out.extend_from_slice(&raw[..bpp.min(n)]);
            for i in bpp..n {
                out.push(raw[i].wrapping_sub(raw[i - bpp]));
            }
        }
        2 => out.extend(raw.iter().zip(prev).map(|(&r, &p)| r.wrapping_sub(p))),
        3 => {
            for i in 0..n {
                let a = if i >= bpp { u16::from(raw[i - bpp]) } else { 0 };
                out.push(raw[i].wrapping_sub(((a + u16::from(prev[i])) >> 1) as u8));
            }
        }
        4 => {
            for i in 0..n {
                let (a, c) = if i >= bpp {
                    (raw[i - bpp], prev[i - bpp])
                } else {
                    (0, 0)
                };
                out.push(raw[i].wrapping_sub(paeth_u8(a, prev[i], c)));
            }
        }
        _ => out.extend_from_slice(raw),
    }
}

// ---------------------------------------------------------------------------------------------
// Public entry points.

/// Filtered scanlines -> compact payload. `Err` when the image kind is unsupported or the data
/// is not valid filtered scanlines for `h`. Does not compare sizes: the caller keeps the
/// smaller of this and its generic compression.
pub(crate) fn encode_idat_plain(filtered: &[u8], h: &Ihdr) -> Result<Vec<u8>, CodecError> {
    let l = layout(h)?;
    if filtered.len() != l.total {
        return Err(CodecError::Failed(format!(
            "png pixels: {} filtered bytes, {} expected",
            filtered.len(),
            l.total
        )));
    }
    let mut out = Vec::with_capacity(l.total / 4 + 16);
    out.push(VERSION);
    let mut enc = Encoder::new(out);
    let mut m = Model::new(l.ch);
    let mut r = Rows::new(l);
    let mut prev_raw = vec![0u8; l.row_bytes];
    let mut raw = vec![0u8; l.row_bytes];
    let stride = l.row_bytes + 1;
    for row in filtered.chunks_exact(stride) {
        let mut f = row[0];
        raw.copy_from_slice(&row[1..]);
        unfilter(f, &mut raw, &prev_raw, l.bpp)?;
        load_samples(&raw, &mut r.cur, l);
        r.pad();
        let mut choices = r.choose();
        code_row(&mut enc, &mut m, &mut r, &mut f, &mut choices)?;
        r.advance();
        std::mem::swap(&mut raw, &mut prev_raw);
    }
    let mut out = enc.finish();
    out.extend_from_slice(&checksum(filtered).to_le_bytes());
    Ok(out)
}

/// A fast 32-bit digest of the filtered data, stored after the coded stream so that a corrupt
/// payload is reported as `Err` instead of decoding to wrong bytes.
fn checksum(data: &[u8]) -> u32 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = data.len() as u64 ^ K;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(K).rotate_left(29);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(K).rotate_left(29);
    }
    h ^= h >> 32;
    h = h.wrapping_mul(K);
    (h >> 32) as u32
}

/// Inverse of `encode_idat_plain`; `expect_len` is the length of the filtered data.
pub(crate) fn decode_idat_plain(
    payload: &[u8],
    h: &Ihdr,
    expect_len: usize,
) -> Result<Vec<u8>, CodecError> {
    let l = layout(h)?;
    if expect_len != l.total {
        return Err(CodecError::Length {
            got: l.total,
            want: expect_len,
        });
    }
    match payload.first() {
        Some(&VERSION) => {}
        _ => return Err(malformed("version")),
    }
    if payload.len() < 1 + 5 + 4 {
        return Err(malformed("too short"));
    }
    let (stream, sum) = payload[1..].split_at(payload.len() - 5);
    let mut dec = Decoder::new(stream)?;
    let mut m = Model::new(l.ch);
    let mut r = Rows::new(l);
    let mut prev_raw = vec![0u8; l.row_bytes];
    let mut raw = vec![0u8; l.row_bytes];
    let mut out = Vec::with_capacity(l.total);
    for _ in 0..l.h {
        let mut f = 0u8;
        let mut choices = [0u8; 4];
        code_row(&mut dec, &mut m, &mut r, &mut f, &mut choices)?;
        if dec.overran() {
            return Err(malformed("truncated"));
        }
        store_samples(&r.cur, &mut raw, l);
        out.push(f);
        filter(f, &raw, &prev_raw, l.bpp, &mut out);
        r.advance();
        std::mem::swap(&mut raw, &mut prev_raw);
    }
    CodecError::check_len(out.len(), l.total)?;
    if sum != checksum(&out).to_le_bytes() {
        return Err(malformed("checksum"));
    }
    Ok(out)
}

fn load_samples(raw: &[u8], cur: &mut [i32], l: Layout) {
    let dst = &mut cur[l.ch..(l.w + 1) * l.ch];
    if l.depth == 8 {
        for (d, &s) in dst.iter_mut().zip(raw) {
            *d = i32::from(s);
        }
    } else {
        for (d, s) in dst.iter_mut().zip(raw.chunks_exact(2)) {
            *d = i32::from(u16::from_be_bytes([s[0], s[1]]));
        }
    }
}

fn store_samples(cur: &[i32], raw: &mut [u8], l: Layout) {
    let src = &cur[l.ch..(l.w + 1) * l.ch];
    if l.depth == 8 {
        for (d, &s) in raw.iter_mut().zip(src) {
            *d = s as u8;
        }
    } else {
        for (d, &s) in raw.chunks_exact_mut(2).zip(src) {
            d.copy_from_slice(&(s as u16).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 32) as u32
        }
    }

    fn ihdr(w: u32, h: u32, bit_depth: u8, color_type: u8) -> Ihdr {
        Ihdr {
            width: w,
            height: h,
            bit_depth,
            color_type,
            interlace: 0,
        }
    }

    /// Raw rows (no filter bytes) mixing a gradient, noise, flat areas and alpha runs.
    fn raw_image(h: &Ihdr, seed: u64) -> Vec<Vec<u8>> {
        let l = layout(h).expect("layout");
        let mut rng = Rng(seed | 1);
        let maxv = (1u32 << l.depth) - 1;
        (0..l.h)
            .map(|y| {
                let mut row = Vec::with_capacity(l.row_bytes);
                for x in 0..l.w {
                    for c in 0..l.ch {
                        let v = match (x / 4 + y / 3 + c) % 4 {
                            0 => 0,
                            1 => (x * 7 + y * 3 + c * 50) as u32 & maxv,
                            2 => rng.next() & maxv,
                            _ => maxv - (rng.next() & 3),
                        };
                        if l.depth == 8 {
                            row.push(v as u8);
                        } else {
                            row.extend_from_slice(&(v as u16).to_be_bytes());
                        }
                    }
                }
                row
            })
            .collect()
    }

    /// Filters every row, with filter type `y % 5` (all five present from 5 rows on).
    fn filtered_image(h: &Ihdr, seed: u64) -> Vec<u8> {
        let l = layout(h).expect("layout");
        let rows = raw_image(h, seed);
        let mut out = Vec::new();
        let zero = vec![0u8; l.row_bytes];
        for (y, row) in rows.iter().enumerate() {
            let f = (y % 5) as u8;
            out.push(f);
            let prev = if y == 0 { &zero } else { &rows[y - 1] };
            filter(f, row, prev, l.bpp, &mut out);
        }
        out
    }

    fn round_trip(h: &Ihdr, filtered: &[u8]) -> Vec<u8> {
        let payload = encode_idat_plain(filtered, h).expect("encode");
        let back = decode_idat_plain(&payload, h, filtered.len()).expect("decode");
        assert!(back == filtered, "round trip differs for {h:?}");
        payload
    }

    const KINDS: [(u8, u8); 9] = [
        (0, 8),
        (2, 8),
        (3, 8),
        (4, 8),
        (6, 8),
        (0, 16),
        (2, 16),
        (4, 16),
        (6, 16),
    ];

    #[test]
    fn round_trips_every_supported_kind_and_filter() {
        for (ct, bd) in KINDS {
            for (w, hh) in [(1, 1), (1, 7), (7, 1), (13, 11), (33, 17), (64, 6)] {
                let h = ihdr(w, hh, bd, ct);
                let f = filtered_image(&h, u64::from(w * 31 + hh) ^ u64::from(ct));
                if hh >= 5 {
                    for t in 0..5u8 {
                        let stride = layout(&h).expect("layout").row_bytes + 1;
                        assert!(f.chunks(stride).any(|r| r[0] == t));
                    }
                }
                round_trip(&h, &f);
            }
        }
    }

    #[test]
    fn round_trips_unfiltered_byte_soup() {
        // Filtered bytes need not come from a sensible image: any bytes with valid filter types
        // must come back exactly.
        let mut rng = Rng(99);
        for (ct, bd) in KINDS {
            let h = ihdr(9, 8, bd, ct);
            let l = layout(&h).expect("layout");
            let mut f = Vec::new();
            for y in 0..l.h {
                f.push((y % 5) as u8);
                f.extend((0..l.row_bytes).map(|_| rng.next() as u8));
            }
            round_trip(&h, &f);
        }
    }

    #[test]
    fn smooth_image_compresses() {
        let h = ihdr(200, 100, 8, 2);
        let l = layout(&h).expect("layout");
        let mut f = Vec::new();
        for y in 0..l.h {
            f.push(0);
            for x in 0..l.w {
                f.extend_from_slice(&[(x / 2) as u8, (y * 2) as u8, ((x + y) / 3) as u8]);
            }
        }
        let p = round_trip(&h, &f);
        assert!(p.len() * 20 < f.len(), "{} of {}", p.len(), f.len());
    }

    #[test]
    fn invisible_colours_follow_alpha() {
        // Nearly transparent pixels whose colour is a function of their alpha value: the
        // alpha-cache predictor makes them cheap. Both depths, both alpha colour types.
        for (ct, bd) in [(6u8, 8u8), (6, 16), (4, 8), (4, 16)] {
            let h = ihdr(120, 40, bd, ct);
            let l = layout(&h).expect("layout");
            let mut rng = Rng(3);
            let mut f = Vec::new();
            for _ in 0..l.h {
                f.extend_from_slice(&[0u8]); // filter type None
                for _ in 0..l.w {
                    let a = rng.next() % 3;
                    let mut px = [0u32; 4];
                    for (c, v) in px.iter_mut().enumerate().take(l.ch) {
                        *v = (a * 97 + c as u32 * 31) % 256;
                    }
                    px[l.ch - 1] = a;
                    for &v in &px[..l.ch] {
                        if bd == 8 {
                            f.push(v as u8);
                        } else {
                            f.extend_from_slice(&(v as u16 * 257).to_be_bytes());
                        }
                    }
                }
            }
            let p = round_trip(&h, &f);
            let pixels = l.w * l.h;
            // 16-bit alpha jumps of 257 cost their low mantissa bits raw; the colours stay cheap.
            let bound = if bd == 8 { pixels * 3 / 8 } else { pixels * 2 };
            assert!(p.len() < bound, "{ct}/{bd}: {} bytes", p.len());
        }
    }

    #[test]
    fn refuses_unsupported_and_inconsistent_input() {
        let ok = ihdr(4, 4, 8, 2);
        let f = filtered_image(&ok, 1);
        let mut inter = ok;
        inter.interlace = 1;
        assert!(encode_idat_plain(&f, &inter).is_err());
        assert!(encode_idat_plain(&f, &ihdr(4, 4, 4, 3)).is_err());
        assert!(encode_idat_plain(&f, &ihdr(4, 4, 16, 3)).is_err());
        assert!(encode_idat_plain(&f, &ihdr(4, 4, 8, 5)).is_err());
        assert!(encode_idat_plain(&f, &ihdr(0, 4, 8, 2)).is_err());
        assert!(encode_idat_plain(&f[..f.len() - 1], &ok).is_err());
        let mut bad = f.clone();
        bad[0] = 5;
        assert!(encode_idat_plain(&bad, &ok).is_err());
        assert!(encode_idat_plain(&f, &ihdr(u32::MAX, u32::MAX, 16, 6)).is_err());
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let h = ihdr(21, 9, 8, 6);
        let f = filtered_image(&h, 7);
        let p = round_trip(&h, &f);
        // Wrong length or header.
        assert!(decode_idat_plain(&p, &h, f.len() + 1).is_err());
        assert!(decode_idat_plain(&p, &ihdr(22, 9, 8, 6), f.len()).is_err());
        assert!(decode_idat_plain(&[], &h, f.len()).is_err());
        // Every truncation.
        for n in 0..p.len() {
            assert!(
                decode_idat_plain(&p[..n], &h, f.len()).is_err(),
                "cut at {n}"
            );
        }
        // Bit flips: an error, or (a flip in bits the decoder never looks at) the same bytes.
        for i in 0..p.len() {
            for bit in [0, 3, 7] {
                let mut q = p.clone();
                q[i] ^= 1 << bit;
                match decode_idat_plain(&q, &h, f.len()) {
                    Err(_) => {}
                    Ok(back) => assert!(back == f, "flip {i}:{bit} decoded to other bytes"),
                }
            }
        }
        // Garbage.
        let mut rng = Rng(5);
        for len in [1usize, 5, 10, 40, 400] {
            let mut g: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            g[0] = VERSION;
            if len > 1 {
                g[1] = 0;
            }
            assert!(decode_idat_plain(&g, &h, f.len()).is_err());
        }
    }

    #[test]
    fn parses_ihdr() {
        let mut png = PNG_SIG.to_vec();
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(b"IHDR");
        png.extend_from_slice(&300u32.to_be_bytes());
        png.extend_from_slice(&200u32.to_be_bytes());
        png.extend_from_slice(&[8, 6, 0, 0, 0]);
        png.extend_from_slice(&[0; 4]);
        assert_eq!(parse_ihdr(&png), Some(ihdr(300, 200, 8, 6)));
        assert_eq!(parse_ihdr(&png[..20]), None);
        png[1] = b'Q';
        assert_eq!(parse_ihdr(&png), None);
    }
}
