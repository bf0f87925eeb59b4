//! Learned lossy image storage (codec `image-learned`): an 8-bit RGB PNG's (or P6 PNM's)
//! pixels coded by a small scale-hyperprior network (`models/hp-dct-v2/`, whose transforms
//! start as colour + 8×8 DCT; `models/hp-int8-v1/` still decodes its payloads) run through ONNX
//! Runtime, entropy-coded by `constriction` from integer tables, and served back as a PNG of
//! the reconstructed pixels with the original's ancillary chunks (as `image-webp` does).
//!
//! Invariants:
//! - Decoding is exact and the same everywhere. The decoder-side networks (hyper-synthesis
//!   `h_s`, synthesis `g_s`) have integer weights, integer biases and integer activations
//!   bounded so that every product and partial sum of every convolution is an integer below
//!   2^24 in magnitude (checked per output channel when a model is loaded, `Layer::check`):
//!   float32 holds all of them exactly, so ONNX Runtime's result does not depend on the
//!   summation order (threads, SIMD, FMA, GEMM blocking). Requantization multiplies by a
//!   power of two, floors and clips: exact too. `reference` computes the same in i32, and
//!   decoding checks that ORT's outputs are integers in range (a runtime that broke exactness
//!   gives an error, never other bytes); without a runtime the reference decodes.
//! - The entropy coder's probabilities come only from the model's fixed-point tables
//!   (`int.bin`): 64 symmetric fixed-point tables (hp-int8-v1: quantized zero-mean Gaussians;
//!   hp-dct-v2: a Gaussian mixed with a little Laplace for heavier tails), indexed for y by
//!   `h_s`'s integer output (the scale index, shifted by an integer per quantization step) and
//!   for z by a fixed index per channel. No float enters decoding.
//! - A payload names its model by a BLAKE3 hash of the decoder-side files; models are never
//!   changed, a new one gets a new hash and old payloads keep decoding with the old model.
//!   A payload whose model this build lacks is an error naming the model (read as EIO).
//! - `encode` checks its own result: the payload decodes to pixels whose PSNR against the
//!   input meets the target, or it refuses (then `image-webp` or lossless storage applies).
//!   It needs the runtime (analysis transform); `availability` says so when it is absent.
//!
//! Payload (version 1): `1u8, model hash [32], kind u8 (1: PNG, 2: PNM), colour type u8 (2),
//! width varint, height varint, chunks-before, chunks-after (as image-webp), m u8 (the step
//! of y is m/4, 2..=8; 1..=8 in version 2), word count varint, ANS words (u32 LE)`. The ANS stream holds z
//! (channel, row, column order) then y (same order); symbols are value + table radius.
//! Version 2 adds, after m, `flags u8 (bit 0: adapted tables, bit 1: deblocking, bit 2: z's
//! tables adapted too), G u8
//! (block-context group), [strength u8 with bit 1], n varint, n × u16 LE channels
//! (increasing)`: those y channels are spatially predicted (`Dpcm`), with bit 0 the others'
//! tables are adapted to their context (`Adapt`), and with bit 1 the decoded pixels are
//! deblocked (`deblock`). All are integer-only, so the encoder and decoder walk the same
//! states; the encoder chooses them per channel and per picture when they pay (fewer bits, or
//! pixels closer to the original), and writes version 1 when it uses none.

use super::lossy_image::{
    deliver, get_chunks, load_picture, psnr, psnr_target, put_chunks, serve, Kind, Picture,
};
use super::wire::{self, put_varint, Reader};
use super::{check_whole_len, Codec, CodecError, EncodeParams, Granularity, IMAGE_LEARNED};
use constriction::stream::model::DefaultContiguousCategoricalEntropyModel;
use constriction::stream::stack::DefaultAnsCoder;
use constriction::stream::Decode;
use std::sync::{Arc, OnceLock};

const MAX_LEN: usize = 256 << 20;
/// Largest picture: the networks' activations take about 40 bytes per pixel.
const MAX_PIXELS: u64 = 8 << 20;
const MAX_SIDE: usize = 16383;
/// Pictures are padded (edges repeated) to a multiple of the hyperprior's stride.
const ALIGN: usize = 64;
/// Every product and partial sum stays below this (float32's exact integer range).
const EXACT: i64 = 1 << 24;
/// Quantization steps of y, m/4 for m in M_MIN..=M_MAX (finest first).
const M_MIN: u8 = 2;
const M_MAX: u8 = 8;
/// The finest step of payload version 2, 1/4 (FORMAT.md codec 13: scale-index offset
/// OFF[2] − 6, the step halved once more): without it the finest step reached only 0.6 bpp
/// on photos once the coding improved.
const M_FINE: u8 = 1;
/// The scale-index offset of halving the step: ln 2 / ln r for the table ladder σ_i = 0.11 ·
/// r^i, r = (256/0.11)^(1/63), rounded (5.63).
const HALF_STEP_OFFSET: i32 = 6;
/// Most y channels a model may have (a payload lists its predicted ones).
const MAX_Y_CH: usize = 4096;

pub struct LearnedImage {
    /// Known models, by hash; the last one encodes.
    models: Vec<Arc<Model>>,
}

/// The models shipped in this build, oldest first: each decodes the payloads that name it
/// (models never change, FORMAT.md 5.4); the last one encodes.
fn builtin() -> Result<Vec<Arc<Model>>, String> {
    static M: OnceLock<Result<Vec<Arc<Model>>, String>> = OnceLock::new();
    M.get_or_init(|| {
        let v1 = Model::parse(
            "hp-int8-v1",
            include_bytes!("../../models/hp-int8-v1/enc.onnx").to_vec(),
            include_bytes!("../../models/hp-int8-v1/hs.onnx").to_vec(),
            include_bytes!("../../models/hp-int8-v1/gs.onnx").to_vec(),
            include_bytes!("../../models/hp-int8-v1/int.bin"),
        )?;
        let v2 = Model::parse(
            "hp-dct-v2",
            include_bytes!("../../models/hp-dct-v2/enc.onnx").to_vec(),
            include_bytes!("../../models/hp-dct-v2/hs.onnx").to_vec(),
            include_bytes!("../../models/hp-dct-v2/gs.onnx").to_vec(),
            include_bytes!("../../models/hp-dct-v2/int.bin"),
        )?;
        Ok(vec![Arc::new(v1), Arc::new(v2)])
    })
    .clone()
}

impl Default for LearnedImage {
    fn default() -> Self {
        LearnedImage {
            models: builtin().unwrap_or_default(),
        }
    }
}

impl LearnedImage {
    /// A codec that knows exactly `models` (the last one encodes): tests of model
    /// immutability.
    #[cfg(test)]
    pub(crate) fn with_models(models: Vec<Arc<Model>>) -> Self {
        LearnedImage { models }
    }

    fn model(&self, id: &[u8; 32]) -> Result<&Arc<Model>, CodecError> {
        self.models.iter().find(|m| &m.id == id).ok_or_else(|| {
            let hex = hex(id);
            tracing::error!(
                model = %hex,
                "image-learned payload names model {hex}, which this build does not have: the file reads as EIO"
            );
            CodecError::Failed(format!("learned image model {hex} is missing"))
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One requantizing convolution of a decoder network: `out = clip(floor((Σ w·a + bias) ·
/// 2^-shift[c]), lo, hi)`, weights `[cout][cin][k][k]` (a transposed convolution's too).
#[derive(Clone, Debug)]
pub(crate) struct Layer {
    transposed: bool,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    outpad: usize,
    lo: i32,
    hi: i32,
    shift: Vec<i32>,
    bias: Vec<i32>,
    w: Vec<i32>,
}

impl Layer {
    /// Σ|w| of output channel `c` over the terms that can meet in one output: all of them
    /// for a convolution; for a transposed convolution, the largest sum over one output
    /// phase (kernel offsets congruent modulo the stride: an output position receives only
    /// those), so every partial sum of any summation order is a subset of that phase's terms.
    fn abs_weight_sum(&self, c: usize) -> i64 {
        let (k, s) = (self.k, self.stride);
        let kk = k * k;
        let w = &self.w[c * self.cin * kk..(c + 1) * self.cin * kk];
        let phases = if self.transposed { s.min(k) } else { 1 };
        let mut best = 0i64;
        for py in 0..phases {
            for px in 0..phases {
                let mut sum = 0i64;
                for ci in 0..self.cin {
                    for ky in 0..k {
                        for kx in 0..k {
                            let hit = !self.transposed || (ky % s == py && kx % s == px);
                            if hit {
                                sum += (w[(ci * k + ky) * k + kx] as i64).abs();
                            }
                        }
                    }
                }
                best = best.max(sum);
            }
        }
        best
    }

    /// The exactness bound for inputs of magnitude at most `amax`.
    fn check(&self, amax: i64) -> Result<(), String> {
        for c in 0..self.cout {
            let s = self.abs_weight_sum(c);
            if s * amax + (self.bias[c] as i64).abs() >= EXACT {
                return Err(format!("output channel {c} can exceed 2^24"));
            }
            if !(-30..=30).contains(&self.shift[c]) {
                return Err("shift out of range".into());
            }
        }
        Ok(())
    }

    fn out_size(&self, n: usize) -> Option<usize> {
        if self.transposed {
            ((n.checked_sub(1)?) * self.stride + self.k + self.outpad).checked_sub(2 * self.pad)
        } else {
            Some((n + 2 * self.pad).checked_sub(self.k)? / self.stride + 1)
        }
    }

    fn requant(&self, c: usize, acc: i32) -> i32 {
        let s = self.shift[c];
        let v = if s >= 0 { acc >> s } else { acc << -s };
        v.clamp(self.lo, self.hi)
    }
}

/// A CHW tensor of integers.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tensor {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub d: Vec<i32>,
}

/// The reference arithmetic of one layer (i32; the bound check makes overflow impossible).
fn layer_ref(l: &Layer, x: &Tensor) -> Result<Tensor, CodecError> {
    if x.c != l.cin {
        return Err(CodecError::Failed("layer input channels".into()));
    }
    let (oh, ow) = match (l.out_size(x.h), l.out_size(x.w)) {
        (Some(a), Some(b)) if a > 0 && b > 0 => (a, b),
        _ => return Err(CodecError::Failed("layer input too small".into())),
    };
    let (h, w, k, s, p) = (x.h, x.w, l.k, l.stride, l.pad);
    let mut out = vec![0i32; l.cout * oh * ow];
    for co in 0..l.cout {
        let a = &mut out[co * oh * ow..(co + 1) * oh * ow];
        a.fill(l.bias[co]);
        for ci in 0..l.cin {
            let xin = &x.d[ci * h * w..(ci + 1) * h * w];
            for ky in 0..k {
                for kx in 0..k {
                    let wv = l.w[((co * l.cin + ci) * k + ky) * k + kx];
                    if wv == 0 {
                        continue;
                    }
                    if l.transposed {
                        // Input (iy, ix) lands on output (iy·s + ky − p, ix·s + kx − p).
                        for iy in 0..h {
                            let Some(oy) = (iy * s + ky).checked_sub(p).filter(|&o| o < oh) else {
                                continue;
                            };
                            let row = &mut a[oy * ow..(oy + 1) * ow];
                            let xrow = &xin[iy * w..(iy + 1) * w];
                            for (ix, &v) in xrow.iter().enumerate() {
                                if let Some(ox) = (ix * s + kx).checked_sub(p).filter(|&o| o < ow) {
                                    row[ox] += wv * v;
                                }
                            }
                        }
                    } else {
                        // Output (oy, ox) reads input (oy·s + ky − p, ox·s + kx − p).
                        for oy in 0..oh {
                            let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&i| i < h) else {
                                continue;
                            };
                            let row = &mut a[oy * ow..(oy + 1) * ow];
                            let xrow = &xin[iy * w..(iy + 1) * w];
                            for (ox, r) in row.iter_mut().enumerate() {
                                if let Some(ix) = (ox * s + kx).checked_sub(p).filter(|&i| i < w) {
                                    *r += wv * xrow[ix];
                                }
                            }
                        }
                    }
                }
            }
        }
        for v in a.iter_mut() {
            *v = l.requant(co, *v);
        }
    }
    Ok(Tensor {
        c: l.cout,
        h: oh,
        w: ow,
        d: out,
    })
}

/// The reference implementation of a decoder network (`h_s` or `g_s`): what ONNX Runtime
/// must compute exactly.
pub(crate) fn reference(layers: &[Layer], x: &Tensor) -> Result<Tensor, CodecError> {
    let mut t = x.clone();
    for l in layers {
        t = layer_ref(l, &t)?;
    }
    Ok(t)
}

/// A learned image model: the analysis network (encoding only), the two integer decoder
/// networks as ONNX graphs and as integers, and the entropy tables.
pub(crate) struct Model {
    pub name: String,
    /// BLAKE3 over the hashes of hs.onnx, gs.onnx and int.bin: what payloads name.
    pub id: [u8; 32],
    pub enc: Vec<u8>,
    pub hs_onnx: Vec<u8>,
    pub gs_onnx: Vec<u8>,
    pub hs: Vec<Layer>,
    pub gs: Vec<Layer>,
    /// Per scale index: table radius r (symbols −r..=r) and its entropy model.
    tables: Vec<(i32, DefaultContiguousCategoricalEntropyModel)>,
    /// Per scale index: the cost in bits of each symbol −r..=r (the encoder's
    /// rate-distortion quantization; decoding never reads it).
    costs: Vec<Vec<f32>>,
    /// Per scale index: Σ |value| · probability (2^24 = one), exact: how predicted channels
    /// (payload version 2) pick their table without floats.
    mean_abs: Vec<u64>,
    /// Scale index of each z channel.
    z_index: Vec<u8>,
    /// Scale-index offset of the step m/4, for m = 2..=8.
    offsets: [i32; 7],
    /// Bounds of g_s's input |q·m| and of h_s's input |z|.
    t_max: i32,
    z_max: i32,
}

/// Little-endian reader of int.bin.
struct Le<'a>(&'a [u8]);

impl Le<'_> {
    fn u32(&mut self) -> Result<u32, String> {
        let (a, b) = self.0.split_at_checked(4).ok_or("int.bin is truncated")?;
        self.0 = b;
        Ok(u32::from_le_bytes([a[0], a[1], a[2], a[3]]))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(self.u32()? as i32)
    }
    fn n(&mut self, max: usize) -> Result<usize, String> {
        let v = self.u32()? as usize;
        if v > max {
            return Err(format!("int.bin: count {v} above {max}"));
        }
        Ok(v)
    }
    fn bytes(&mut self, n: usize) -> Result<&[u8], String> {
        let (a, b) = self.0.split_at_checked(n).ok_or("int.bin is truncated")?;
        self.0 = b;
        Ok(a)
    }
}

impl Model {
    /// Parse and check a model (int.bin's layout: models/hp-int8-v1/export.py, FORMAT.md).
    pub(crate) fn parse(
        name: &str,
        enc: Vec<u8>,
        hs_onnx: Vec<u8>,
        gs_onnx: Vec<u8>,
        int: &[u8],
    ) -> Result<Model, String> {
        let mut h = blake3::Hasher::new();
        h.update(blake3::hash(&hs_onnx).as_bytes());
        h.update(blake3::hash(&gs_onnx).as_bytes());
        h.update(blake3::hash(int).as_bytes());
        let id = *h.finalize().as_bytes();
        let mut r = Le(int);
        if r.bytes(8)? != b"IDCHP1\0\0" {
            return Err("int.bin: bad magic".into());
        }
        let levels = r.n(256)?;
        let mut tables = Vec::with_capacity(levels);
        let mut costs = Vec::with_capacity(levels);
        let mut mean_abs = Vec::with_capacity(levels);
        for _ in 0..levels {
            let radius = r.n(4096)?;
            let mut p = Vec::with_capacity(2 * radius + 1);
            for _ in 0..2 * radius + 1 {
                p.push(r.u32()?);
            }
            let m =
                DefaultContiguousCategoricalEntropyModel::from_nonzero_fixed_point_probabilities(
                    &p, false,
                )
                .map_err(|()| "int.bin: a probability table does not sum to 2^24".to_string())?;
            tables.push((radius as i32, m));
            costs.push(p.iter().map(|&f| 24.0 - (f.max(1) as f32).log2()).collect());
            mean_abs.push(
                p.iter()
                    .enumerate()
                    .map(|(s, &f)| s.abs_diff(radius) as u64 * f as u64)
                    .sum(),
            );
        }
        let nz = r.n(4096)?;
        let z_index = r.bytes(nz)?.to_vec();
        if z_index.iter().any(|&i| i as usize >= levels) {
            return Err("int.bin: z table index out of range".into());
        }
        if r.n(7)? != 7 {
            return Err("int.bin: expected 7 step offsets".into());
        }
        let mut offsets = [0i32; 7];
        for o in &mut offsets {
            *o = r.i32()?;
        }
        let t_max = r.i32()?;
        let z_max = r.i32()?;
        if !(1..=65535).contains(&t_max) || !(1..=65535).contains(&z_max) {
            return Err("int.bin: input bounds".into());
        }
        let nl = r.n(64)?;
        let (mut hs, mut gs) = (Vec::new(), Vec::new());
        for _ in 0..nl {
            let head = r.bytes(2)?;
            let (net, transposed) = (head[0], head[1] == 1);
            let cin = r.n(1024)?;
            let cout = r.n(1024)?;
            let k = r.n(15)?;
            let stride = r.n(8)?;
            let pad = r.n(15)?;
            let outpad = r.n(8)?;
            let (lo, hi) = (r.i32()?, r.i32()?);
            let mut shift = Vec::with_capacity(cout);
            for _ in 0..cout {
                shift.push(r.i32()?);
            }
            let mut bias = Vec::with_capacity(cout);
            for _ in 0..cout {
                bias.push(r.i32()?);
            }
            let mut w = Vec::with_capacity(cin * cout * k * k);
            for _ in 0..cin * cout * k * k {
                w.push(r.i32()?);
            }
            if stride == 0 || k == 0 || lo > hi {
                return Err("int.bin: layer shape".into());
            }
            let l = Layer {
                transposed,
                cin,
                cout,
                k,
                stride,
                pad,
                outpad,
                lo,
                hi,
                shift,
                bias,
                w,
            };
            match net {
                0 => hs.push(l),
                1 => gs.push(l),
                _ => return Err("int.bin: unknown network".into()),
            }
        }
        if !r.0.is_empty() {
            return Err("int.bin: trailing bytes".into());
        }
        // The exactness bound, layer by layer, from each network's input bound.
        for (layers, first) in [(&hs, z_max), (&gs, t_max)] {
            let mut amax = first as i64;
            for (i, l) in layers.iter().enumerate() {
                l.check(amax)
                    .map_err(|e| format!("int.bin: layer {i}: {e}"))?;
                amax = (l.lo as i64).abs().max((l.hi as i64).abs());
            }
        }
        let chain = |v: &[Layer]| v.windows(2).all(|p| p[0].cout == p[1].cin);
        let ok = chain(&hs)
            && chain(&gs)
            && hs.first().is_some_and(|l| l.cin == nz)
            && gs
                .first()
                .is_some_and(|l| Some(l.cin) == hs.last().map(|h| h.cout))
            && gs
                .last()
                .is_some_and(|l| l.cout == 3 && l.lo >= 0 && l.hi <= 255)
            && hs
                .last()
                .is_some_and(|l| l.lo >= 0 && (l.hi as usize) < levels);
        if !ok {
            return Err("int.bin: network shapes do not chain".into());
        }
        Ok(Model {
            name: name.to_string(),
            id,
            enc,
            hs_onnx,
            gs_onnx,
            hs,
            gs,
            tables,
            costs,
            mean_abs,
            z_index,
            offsets,
            t_max,
            z_max,
        })
    }

    /// Latent channels of y and z.
    fn y_ch(&self) -> usize {
        self.gs.first().map_or(0, |l| l.cin)
    }

    fn z_ch(&self) -> usize {
        self.z_index.len()
    }

    /// Table of each y element for step m/4, from h_s's output.
    fn y_tables(&self, scale_index: &[i32], m: u8) -> Vec<u8> {
        let off = match m.checked_sub(M_MIN) {
            Some(i) => self.offsets[(i as usize).min(self.offsets.len() - 1)],
            None => self.offsets[0] - HALF_STEP_OFFSET,
        };
        let top = self.tables.len() as i32 - 1;
        scale_index
            .iter()
            .map(|&i| (i - off).clamp(0, top) as u8)
            .collect()
    }
}

/// Which arithmetic runs the decoder networks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Engine {
    /// ONNX Runtime's shared session (or a private one with this many threads).
    Ort(Option<usize>),
    /// The i32 reference.
    Reference,
}

/// Run a decoder network (`gs`: synthesis, else hyper-synthesis) on integer input.
pub(crate) fn run_decoder(
    model: &Model,
    gs: bool,
    x: &Tensor,
    engine: Engine,
) -> Result<Tensor, CodecError> {
    let layers = if gs { &model.gs } else { &model.hs };
    let Engine::Ort(threads) = engine else {
        return reference(layers, x);
    };
    let rt = crate::neural::runtime().map_err(CodecError::Failed)?;
    let onnx = if gs { &model.gs_onnx } else { &model.hs_onnx };
    let input: Vec<f32> = x.d.iter().map(|&v| v as f32).collect();
    let outs = rt
        .run_f32_outputs(onnx, threads, &[1, x.c, x.h, x.w], input)
        .map_err(CodecError::Failed)?;
    let (shape, vals) = outs
        .into_iter()
        .next()
        .ok_or_else(|| CodecError::Failed("decoder network gave no output".into()))?;
    let (lo, hi) = layers.last().map_or((0, 0), |l| (l.lo, l.hi));
    let want: Vec<usize> = {
        let (mut h, mut w) = (x.h, x.w);
        for l in layers {
            h = l.out_size(h).unwrap_or(0);
            w = l.out_size(w).unwrap_or(0);
        }
        vec![1, layers.last().map_or(0, |l| l.cout), h, w]
    };
    if shape != want {
        return Err(CodecError::Failed(format!(
            "decoder network output shape {shape:?}, expected {want:?}"
        )));
    }
    // The graph computes integers exactly; anything else means the runtime broke that, and
    // serving it could change bytes between machines: refuse.
    let mut d = Vec::with_capacity(vals.len());
    for v in vals {
        if v.fract() != 0.0 || v < lo as f32 || v > hi as f32 {
            return Err(CodecError::Failed(format!(
                "decoder network output {v} is not an integer in {lo}..={hi}"
            )));
        }
        d.push(v as i32);
    }
    Ok(Tensor {
        c: want[1],
        h: want[2],
        w: want[3],
        d,
    })
}

/// The decoder's engine: ONNX Runtime when loaded (fast), the reference otherwise (same
/// integers, slower).
fn decode_engine() -> Engine {
    match crate::neural::loaded() {
        Some(Ok(_)) => Engine::Ort(None),
        _ => Engine::Reference,
    }
}

/// The encoder's rate-distortion weight at every step: a coefficient `u` (in quantization
/// steps) is coded as the integer `q` minimizing `(u − q)² + k · bits(q)`. The synthesis is
/// close to orthonormal, so squared error in steps is proportional to the pixels' squared
/// error at every step. Chosen on pictures that are neither training nor evaluation data
/// (BENCHMARKS.md §8.6: 0.06 beat 0, 0.12 and 0.2 at steps m ≥ 3; §8.7: at the finest step
/// too, once its AC channels were no longer spatially predicted: 0.04–0.06 beat 0 and 0.02,
/// 0.1 lost). Decoding does not depend on it.
const RDO_K: f32 = 0.06;

/// The weight that decides between a channel's hyperprior tables and spatial prediction
/// (about the slope `2 ln 2 · Δ²/12` of a uniform quantizer at high rate, in step² per bit).
const SELECT_K: f32 = 0.12;

/// Whether the encoder offers spatial prediction (`Dpcm`) to channel `c`: for hp-dct-v2
/// only its block-DC channels (4·64k + j), the brightnesses that zero-mean tables miss. Its
/// AC channels are zero-mean; offered prediction too, many chose it at the finest step because
/// the choice is made against the hyperprior's own tables, not the adapted ones that code
/// them in the end (BENCHMARKS.md §8.7: 18% more bits at m = 2 on the tuning pictures).
fn dpcm_candidate(model: &Model, c: usize) -> bool {
    !acp_model(model) || (c / 4).is_multiple_of(64)
}

/// How the encoder codes one y channel.
enum Chan {
    /// Spatially predicted: its (symbol, table) pairs and values.
    Predicted(Vec<(usize, usize)>, Vec<i32>),
    /// With the hyperprior's (possibly adapted) tables: its values.
    Hyper(Vec<i32>),
}

/// Encoder choices (decoding does not depend on them).
#[derive(Clone, Copy, Debug)]
struct EncodeOpts {
    /// Rate-distortion weight of `rdo_quant` (0: plain rounding; `None`: `RDO_K`).
    rdo: Option<f32>,
    /// Let channels choose spatial prediction (payload version 2).
    predict: bool,
    /// Let the hyperprior's tables adapt (payload version 2) when that is smaller.
    adapt: bool,
    /// Predict low AC frequencies from the block DCs (`ac_predict`, payload version 2).
    ac_predict: bool,
}

impl Default for EncodeOpts {
    fn default() -> Self {
        EncodeOpts {
            rdo: None,
            predict: true,
            adapt: true,
            ac_predict: true,
        }
    }
}

/// Rate-distortion quantization of one coefficient: among `round(u)`, one step nearer zero
/// and zero (all within `±r`), the one with the least `(u − q)² + k · bits(q)`, where
/// `costs` holds the bits of symbols `−rt..=rt`. `k = 0` is plain rounding.
fn rdo_quant(u: f32, rt: i32, r: i32, costs: &[f32], k: f32) -> i32 {
    let q0 = (u.round() as i32).clamp(-r, r);
    if k <= 0.0 || q0 == 0 {
        return q0;
    }
    let cost = |q: i32| {
        let e = u - q as f32;
        e * e
            + k * costs
                .get((q + rt) as usize)
                .copied()
                .unwrap_or(f32::INFINITY)
    };
    let q1 = q0 - q0.signum();
    let mut best = (cost(q0), q0);
    for q in [q1, 0] {
        let c = cost(q);
        if c < best.0 {
            best = (c, q);
        }
    }
    best.1
}

/// Latent sizes of a picture: (padded height, padded width).
fn padded(w: u32, h: u32) -> (usize, usize) {
    let up = |n: u32| (n as usize).div_ceil(ALIGN) * ALIGN;
    (up(h), up(w))
}

/// Context buckets of a predicted channel (by the neighbours' activity, log2).
const BUCKETS: usize = 8;
/// Adaptive statistics are halved when a bucket has seen this many elements.
const DPCM_RESET: u64 = 64;
/// Predicted values are kept within ±this (far beyond any step's range; bounds what a
/// hostile payload can build up).
const DPCM_MAX: i32 = 1 << 16;

/// Spatial prediction of one y channel (payload version 2, FORMAT.md codec 13): each element
/// is predicted from its decoded neighbours by the median edge detector of LOCO-I, and the
/// residual is coded with the table whose exact mean |value| first reaches the mean |residual|
/// seen so far in the element's activity bucket. Integers only, so encoder and decoder walk
/// the same states. Pays where the hyperprior's zero-mean tables are a poor fit, chiefly the
/// block-DC channels (one value per 16×16 area and colour).
struct Dpcm<'a> {
    model: &'a Model,
    w: usize,
    sum: [u64; BUCKETS],
    count: [u64; BUCKETS],
}

impl<'a> Dpcm<'a> {
    fn new(model: &'a Model, w: usize) -> Self {
        let mut sum = [1u64; BUCKETS];
        for (k, v) in sum.iter_mut().enumerate() {
            *v = (1u64 << k) / 2 + 1;
        }
        Dpcm {
            model,
            w,
            sum,
            count: [1; BUCKETS],
        }
    }

    /// Prediction and bucket of element `i` of `plane` (row-major, width `w`; elements
    /// before `i` decoded).
    fn context(&self, plane: &[i32], i: usize) -> (i32, usize) {
        let (w, row, col) = (self.w, i / self.w, i % self.w);
        let up = |j: usize| plane.get(j).copied().unwrap_or(0);
        let n = if row > 0 { up(i - w) } else { 0 };
        let a = if col > 0 { up(i - 1) } else { n };
        let b = if row > 0 { n } else { a };
        let c = if row > 0 && col > 0 { up(i - w - 1) } else { b };
        let d = if row > 0 && col + 1 < w {
            up(i - w + 1)
        } else {
            b
        };
        let pred = if c >= a.max(b) {
            a.min(b)
        } else if c <= a.min(b) {
            a.max(b)
        } else {
            a + b - c
        };
        let g = d.abs_diff(b) + b.abs_diff(c) + c.abs_diff(a);
        (pred, ((32 - g.leading_zeros()) as usize).min(BUCKETS - 1))
    }

    /// The table of bucket `k`: the first whose mean |value| is at least the bucket's mean
    /// |residual| (the widest when none is).
    fn table(&self, k: usize) -> usize {
        let (s, n) = (self.sum[k] as u128, self.count[k] as u128);
        let ma = &self.model.mean_abs;
        ma.iter()
            .position(|&v| v as u128 * n >= s << 24)
            .unwrap_or(ma.len().saturating_sub(1))
    }

    fn update(&mut self, k: usize, res: i32) {
        self.sum[k] += res.unsigned_abs() as u64;
        self.count[k] += 1;
        if self.count[k] >= DPCM_RESET {
            self.sum[k] = self.sum[k].div_ceil(2);
            self.count[k] /= 2;
        }
    }

    /// Code a plane whose wanted values are `want` (encoder): appends (symbol, table) pairs
    /// in decoding order and returns the values the decoder will see, their distortion
    /// against `u` and their cost in bits.
    fn encode(
        mut self,
        want: &[i32],
        u: &[f32],
        lim: i32,
        out: &mut Vec<(usize, usize)>,
    ) -> (Vec<i32>, f32, f32) {
        let wide = self.model.tables.len().saturating_sub(1);
        let rw = self.model.tables.get(wide).map_or(0, |t| t.0);
        let mut plane = Vec::with_capacity(want.len());
        let (mut dist, mut bits) = (0f32, 0f32);
        for (i, &q) in want.iter().enumerate() {
            let (pred, k) = self.context(&plane, i);
            let t = self.table(k);
            let r = self.model.tables[t].0;
            let res = q.clamp(-lim, lim) - pred;
            let got = if res.abs() < r {
                out.push(((res + r) as usize, t));
                bits += self.model.costs[t][(res + r) as usize];
                res
            } else {
                // Escape: the table's edge symbol, then the rest from the widest table.
                let edge = res.signum() * r;
                let e = (res - edge).clamp(-rw, rw);
                out.push(((edge + r) as usize, t));
                out.push(((e + rw) as usize, wide));
                bits += self.model.costs[t][(edge + r) as usize]
                    + self.model.costs[wide][(e + rw) as usize];
                edge + e
            };
            self.update(k, got);
            let v = (pred + got).clamp(-DPCM_MAX, DPCM_MAX);
            let e = u.get(i).copied().unwrap_or(0.0) - v as f32;
            dist += e * e;
            plane.push(v);
        }
        (plane, dist, bits)
    }

    /// Decode a plane of `len` elements.
    fn decode(
        mut self,
        len: usize,
        coder: &mut DefaultAnsCoder,
        plane: &mut Vec<i32>,
    ) -> Result<(), CodecError> {
        let bad = |_| wire::malformed("ANS stream");
        let wide = self.model.tables.len().saturating_sub(1);
        let start = plane.len();
        for i in 0..len {
            let (pred, k) = self.context(&plane[start..], i);
            let t = self.table(k);
            let (r, tm) = &self.model.tables[t];
            let mut res = coder.decode_symbol(tm).map_err(bad)? as i32 - r;
            if res.abs() == *r {
                let (rw, tw) = &self.model.tables[wide];
                res += coder.decode_symbol(tw).map_err(bad)? as i32 - rw;
            }
            self.update(k, res);
            plane.push((pred + res).clamp(-DPCM_MAX, DPCM_MAX));
        }
        Ok(())
    }
}

/// Neighbour buckets of `Adapt` (|left| + |above| in the element's own channel, capped).
const ADAPT_BUCKETS: usize = 6;
/// Block buckets of `Adapt` (Σ |value| of the earlier channels of the element's group at its
/// position: 0, 1–2, 3–8, more).
const BLOCK_BUCKETS: usize = 4;
/// Largest block-context group a payload may name.
const MAX_GROUP: usize = 64;
/// Weight of a table's own mean in its starting statistics, in elements.
const ADAPT_PRIOR: u64 = 4;
/// `Adapt` halves a context's statistics when it has seen this many elements.
const ADAPT_RESET: u64 = 256;

/// Context-adaptive correction of the hyperprior (payload version 2, flag bit 0). The
/// context of an element is its hyperprior table t, the activity of its causal neighbours
/// (left, above) in its own channel and, with a block group G > 0, the magnitude already
/// decoded at its position in the earlier channels c' ≡ c (mod G) — for hp-dct-v2 (G = 4)
/// the lower frequencies of the same 8×8 block, which JPEG-style coders know to predict the
/// higher ones. The element is coded with the first table whose exact mean |value| reaches
/// the context's mean |value| so far, which starts at table t's own. Integers only, so
/// encoder and decoder walk the same states.
struct Adapt<'a> {
    model: &'a Model,
    /// Channel width and size.
    w: usize,
    hw: usize,
    group: usize,
    sum: Vec<u64>,
    count: Vec<u64>,
    /// Per group and position: Σ |value| of the group's channels coded so far.
    acc: Vec<u32>,
    /// The current channel's values so far, and its group.
    plane: Vec<i32>,
    g: usize,
    /// Per position: Σ |value| of the earlier channels of the current run of `group`
    /// channels (for hp-dct-v2: the same frequency in the neighbouring blocks), and which
    /// run that is.
    sib: Vec<u32>,
    run: usize,
}

impl<'a> Adapt<'a> {
    fn new(model: &'a Model, w: usize, hw: usize, group: usize) -> Self {
        let per = ADAPT_BUCKETS * BLOCK_BUCKETS;
        let sum = model
            .mean_abs
            .iter()
            .flat_map(|&m| std::iter::repeat_n(m * ADAPT_PRIOR, per))
            .collect();
        Adapt {
            model,
            w: w.max(1),
            hw,
            group,
            sum,
            count: vec![ADAPT_PRIOR; model.mean_abs.len() * per],
            acc: vec![0; group * hw],
            plane: Vec::with_capacity(hw),
            g: 0,
            sib: vec![0; if group > 0 { hw } else { 0 }],
            run: usize::MAX,
        }
    }

    /// Start channel `c`.
    fn begin(&mut self, c: usize) {
        self.plane.clear();
        if self.group > 0 {
            self.g = c % self.group;
            if c / self.group != self.run {
                self.run = c / self.group;
                self.sib.fill(0);
            }
        }
    }

    /// Context of the channel's next element, whose hyperprior table is `t`.
    fn context(&self, t: u8) -> usize {
        let (i, w) = (self.plane.len(), self.w);
        let at = |j: usize| self.plane.get(j).map_or(0, |v| v.unsigned_abs());
        let left = if i % w > 0 { at(i - 1) } else { 0 };
        let up = if i >= w { at(i - w) } else { 0 };
        let sib = self.sib.get(i).copied().unwrap_or(0);
        let nb = match left
            .saturating_add(up)
            .saturating_add(sib.saturating_mul(2))
        {
            0 => 0,
            1 => 1,
            2 => 2,
            3..=4 => 3,
            5..=8 => 4,
            _ => 5,
        };
        let blk = match self.acc.get(self.g * self.hw + i) {
            None | Some(0) => 0,
            Some(1..=2) => 1,
            Some(3..=8) => 2,
            Some(_) => 3,
        };
        (t as usize * ADAPT_BUCKETS + nb) * BLOCK_BUCKETS + blk
    }

    fn table(&self, ctx: usize) -> usize {
        let (s, n) = (self.sum[ctx] as u128, self.count[ctx] as u128);
        let ma = &self.model.mean_abs;
        ma.iter()
            .position(|&v| v as u128 * n >= s)
            .unwrap_or(ma.len().saturating_sub(1))
    }

    /// Encoder: code `q` as the channel's next element, whose hyperprior table is `t`. Returns
    /// the table used and the value the decoder will hold (`q` clipped to its radius).
    fn encode(&mut self, t: u8, q: i32) -> (usize, i32) {
        let ctx = self.context(t);
        let tt = self.table(ctx);
        let r = self.model.tables[tt].0;
        let v = q.clamp(-r, r);
        self.push(ctx, v);
        (tt, v)
    }

    /// Decoder: the channel's next element, whose hyperprior table is `t`.
    fn decode(&mut self, t: u8, coder: &mut DefaultAnsCoder) -> Result<i32, CodecError> {
        let ctx = self.context(t);
        let (r, tm) = &self.model.tables[self.table(ctx)];
        let v = coder
            .decode_symbol(tm)
            .map_err(|_| wire::malformed("ANS stream"))? as i32
            - r;
        self.push(ctx, v);
        Ok(v)
    }

    /// Record the value `v` coded in context `ctx` as the channel's next element.
    fn push(&mut self, ctx: usize, v: i32) {
        self.sum[ctx] += (v.unsigned_abs() as u64) << 24;
        self.count[ctx] += 1;
        if self.count[ctx] >= ADAPT_RESET {
            self.sum[ctx] = self.sum[ctx].div_ceil(2);
            self.count[ctx] /= 2;
        }
        if let Some(a) = self.acc.get_mut(self.g * self.hw + self.plane.len()) {
            *a = a.saturating_add(v.unsigned_abs());
        }
        if let Some(a) = self.sib.get_mut(self.plane.len()) {
            *a = a.saturating_add(v.unsigned_abs());
        }
        self.plane.push(v);
    }
}

/// The block-context group of the encoding model (`Adapt`): hp-dct-v2 interleaves the 4
/// blocks of each 16×16 area, channel 4·(frequency) + block.
fn block_group(model: &Model) -> usize {
    if model.name == "hp-dct-v2" {
        4
    } else {
        0
    }
}

/// An element coded with its fixed table `t` or, with `adapt`, the adapted one: the table
/// used and the value the decoder will hold (`q` clipped to the table's radius).
fn encode_element(model: &Model, adapt: Option<&mut Adapt>, t: u8, q: i32) -> (usize, i32) {
    match adapt {
        Some(a) => a.encode(t, q),
        None => {
            let r = model.tables[t as usize].0;
            (t as usize, q.clamp(-r, r))
        }
    }
}

/// The decoder's side of `encode_element`.
fn decode_element(
    model: &Model,
    adapt: Option<&mut Adapt>,
    t: u8,
    coder: &mut DefaultAnsCoder,
) -> Result<i32, CodecError> {
    match adapt {
        Some(a) => a.decode(t, coder),
        None => {
            let (r, tm) = &model.tables[t as usize];
            Ok(coder
                .decode_symbol(tm)
                .map_err(|_| wire::malformed("ANS stream"))? as i32
                - r)
        }
    }
}

/// ANS-code z then the y symbols (each a symbol and its table, in decoding order; decoding
/// pops z first, which h_s needs for y's tables).
fn entropy_encode(
    model: &Model,
    zs: &[(usize, usize)],
    ys: &[(usize, usize)],
) -> Result<Vec<u32>, CodecError> {
    let fail = |_| CodecError::Failed("entropy coding failed".into());
    let mut coder = DefaultAnsCoder::new();
    let ys = ys.iter().map(|&(sym, t)| (sym, &model.tables[t].1));
    coder.encode_symbols_reverse(ys).map_err(fail)?;
    let zs = zs.iter().map(|&(sym, t)| (sym, &model.tables[t].1));
    coder.encode_symbols_reverse(zs).map_err(fail)?;
    coder
        .into_compressed()
        .map_err(|_| CodecError::Failed("entropy coding failed".into()))
}

/// Decode a payload's pixels (RGB, `w`×`h`) with `model`; the y channels listed in
/// `predicted` are spatially predicted (`Dpcm`).
fn decode_pixels(
    model: &Model,
    p: &Parsed,
    words: Vec<u32>,
    engine: Engine,
) -> Result<Vec<u8>, CodecError> {
    let (w, h, m) = (p.pic.w, p.pic.h, p.m);
    let (ph, pw) = padded(w, h);
    let (zh, zw) = (ph / 64, pw / 64);
    let (yh, yw) = (ph / 16, pw / 16);
    let mut coder = DefaultAnsCoder::from_compressed(words)
        .map_err(|_| wire::malformed("ANS stream ends with a zero word"))?;
    let zc = model.z_ch();
    let mut z = Vec::with_capacity(zc * zh * zw);
    let mut adapt_z = p.adapt_z.then(|| Adapt::new(model, zw, zh * zw, 0));
    for c in 0..zc {
        let t = model.z_index[c];
        if let Some(a) = adapt_z.as_mut() {
            a.begin(c);
        }
        for _ in 0..zh * zw {
            z.push(decode_element(model, adapt_z.as_mut(), t, &mut coder)?);
        }
    }
    let si = run_decoder(
        model,
        false,
        &Tensor {
            c: zc,
            h: zh,
            w: zw,
            d: z,
        },
        engine,
    )?;
    if (si.c, si.h, si.w) != (model.y_ch(), yh, yw) {
        return Err(CodecError::Failed("hyper-synthesis output size".into()));
    }
    let tabs = model.y_tables(&si.d, m);
    let hw = yh * yw;
    let mut predicted = vec![false; model.y_ch()];
    for &c in &p.predicted {
        *predicted
            .get_mut(c as usize)
            .ok_or_else(|| wire::malformed("predicted channel"))? = true;
    }
    let mut q = Vec::with_capacity(tabs.len());
    let mut adapt = p.adaptive.then(|| Adapt::new(model, yw, hw, p.group));
    for (c, tabs) in tabs.chunks(hw.max(1)).enumerate() {
        if predicted[c] {
            Dpcm::new(model, yw).decode(hw, &mut coder, &mut q)?;
            continue;
        }
        if let Some(a) = adapt.as_mut() {
            a.begin(c);
        }
        for &ti in tabs {
            q.push(decode_element(model, adapt.as_mut(), ti, &mut coder)?);
        }
    }
    let mut t: Vec<i32> = q
        .iter()
        .map(|&q| (q.saturating_mul(m as i32)).clamp(-model.t_max, model.t_max))
        .collect();
    if p.ac_predict {
        if !acp_model(model) || t.len() != model.y_ch() * hw {
            return Err(wire::malformed("AC prediction for a model without it"));
        }
        for k in 0..3 {
            let dc = &t[256 * k * hw..(256 * k + 4) * hw];
            for (c, plane) in ac_predict(dc, k, yh, yw) {
                for (i, pred) in plane.into_iter().enumerate() {
                    let v = pred.saturating_add(q[c * hw + i].saturating_mul(m as i32));
                    t[c * hw + i] = v.clamp(-model.t_max, model.t_max);
                }
            }
        }
    }
    let px = run_decoder(
        model,
        true,
        &Tensor {
            c: model.y_ch(),
            h: yh,
            w: yw,
            d: t,
        },
        engine,
    )?;
    if (px.c, px.h, px.w) != (3, ph, pw) {
        return Err(CodecError::Failed("synthesis output size".into()));
    }
    let (w, h) = (w as usize, h as usize);
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                out.push(px.d[(c * ph + y) * pw + x] as u8);
            }
        }
    }
    deblock(&mut out, w, h, p.deblock);
    Ok(out)
}

/// AC prediction from the block DCs (payload version 2, flag bit 3; FORMAT.md codec 13;
/// hp-dct-v2 only). At coarse steps most low-frequency coefficients of a smooth area round
/// to zero, although its neighbours' DCs already say which way it slopes; predicting them
/// from the DCs (known before any AC of their colour) saved 5–7% of the bits on the tuning
/// pictures. The 5 frequencies f = 8u + v with u + v ≤ 2 of every block and colour are
/// predicted.
const ACP_FREQ: [usize; 5] = [1, 2, 8, 9, 16];
/// Fixed-point precision of `ACP_W`.
const ACP_SHIFT: u32 = 12;
/// Weights ·2^12 per colour, frequency (as `ACP_FREQ`) and neighbour block (above-left,
/// above, above-right, left, right, below-left, below, below-right) of the neighbour's DC
/// minus the block's own: least squares on 4 tuning pictures (BENCHMARKS.md §8.7) with the
/// DCs quantized at m = 4, then × 0.8 (shrunk: on the tuning pictures 0.8 beat 0.6 and 1).
/// Frozen: other weights would be a new flag bit.
const ACP_W: [[[i64; 8]; 5]; 3] = [
    [
        [31, -64, 42, 508, -556, -25, 51, -35],
        [6, -9, -25, 230, 248, -14, -13, -22],
        [42, 497, -29, -52, 46, 27, -523, -12],
        [126, -26, -83, -43, -46, -77, -46, 132],
        [-10, 236, -15, 3, 5, -23, 234, 4],
    ],
    [
        [24, 13, -26, 472, -484, -16, 78, -62],
        [6, -21, 10, 157, 155, 9, -34, 11],
        [33, 468, -13, -50, 37, 19, -476, -35],
        [116, -19, -98, -13, -22, -100, -31, 120],
        [17, 157, 17, -35, -24, 2, 149, 3],
    ],
    [
        [35, 64, -106, 358, -359, 74, 14, -70],
        [11, -32, 18, 108, 117, 19, -27, 2],
        [64, 348, 60, 7, 9, -81, -324, -70],
        [66, 16, -80, 16, 33, -82, 18, 53],
        [6, 102, 2, -9, -8, 2, 96, 1],
    ],
];

/// Whether `model` has hp-dct-v2's channel layout, which `ACP_W` is fitted to.
fn acp_model(model: &Model) -> bool {
    model.name == "hp-dct-v2" && model.y_ch() == 768
}

/// The predictions (g_s input units) of colour `k`'s predicted channels, from `dc`, the
/// values of its 4 DC channels 256k..256k+4 (each `yh`×`yw`: the 2×2 Haar of the four block
/// DCs of every 16×16 area): `(channel, plane)` pairs. Exact integers: 2·DC of block j is
/// Σ_i ±dc_i (the Haar's signs), a missing neighbour repeats the nearest block.
fn ac_predict(dc: &[i32], k: usize, yh: usize, yw: usize) -> Vec<(usize, Vec<i32>)> {
    const SIGN: [[i64; 4]; 4] = [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]];
    let hw = yh * yw;
    let (gh, gw) = (2 * yh, 2 * yw);
    let mut dc2 = vec![0i64; gh * gw];
    for (by, row) in dc2.chunks_mut(gw.max(1)).enumerate() {
        for (bx, v) in row.iter_mut().enumerate() {
            let (i, j) = ((by / 2) * yw + bx / 2, 2 * (by % 2) + bx % 2);
            *v = (0..4)
                .map(|q| SIGN[q][j] * dc.get(q * hw + i).copied().unwrap_or(0) as i64)
                .sum();
        }
    }
    let mut out: Vec<(usize, Vec<i32>)> = ACP_FREQ
        .iter()
        .flat_map(|&f| (0..4).map(move |j| (4 * (64 * k + f) + j, vec![0i32; hw])))
        .collect();
    for by in 0..gh {
        for bx in 0..gw {
            let centre = dc2[by * gw + bx];
            let mut d = [0i64; 8];
            let mut n = 0;
            for dy in [-1isize, 0, 1] {
                for dx in [-1isize, 0, 1] {
                    if dy == 0 && dx == 0 {
                        continue;
                    }
                    let y = by.saturating_add_signed(dy).min(gh - 1);
                    let x = bx.saturating_add_signed(dx).min(gw - 1);
                    d[n] = dc2[y * gw + x] - centre;
                    n += 1;
                }
            }
            let (i, j) = ((by / 2) * yw + bx / 2, 2 * (by % 2) + bx % 2);
            for (fi, w) in ACP_W[k].iter().enumerate() {
                let acc: i64 = w.iter().zip(&d).map(|(w, d)| w * d).sum();
                // Weights ·2^12 on 2·DC differences; round half up.
                let p = (acc + (1 << ACP_SHIFT)) >> (ACP_SHIFT + 1);
                out[fi * 4 + j].1[i] = p.clamp(-(1 << 20), 1 << 20) as i32;
            }
        }
    }
    out
}

/// Strengths the encoder tries for `deblock`, beside 0 (off).
const DEBLOCK_TRIES: [u8; 9] = [4, 8, 12, 16, 20, 24, 32, 40, 48];

/// Smooth the 8×8 block edges of interleaved RGB pixels (`w`×`h`) with strength `s` (payload
/// version 2, flag bit 1; FORMAT.md codec 13): each colour plane, first every vertical edge
/// (x = 8, 16, …, each row), then every horizontal one, with a filter in the manner of
/// H.264's normal-strength loop filter, in integers. The encoder picks `s` by measuring the
/// result against the original, so a picture it does not help keeps `s = 0`.
fn deblock(px: &mut [u8], w: usize, h: usize, s: u8) {
    if s == 0 || px.len() != w * h * 3 {
        return;
    }
    let s = s as i32;
    for c in 0..3 {
        // Vertical edges: samples along a row are 3 apart; horizontal ones: 3·w apart.
        for (len, lines, along, across) in [(w, h, 3, 3 * w), (h, w, 3 * w, 3)] {
            for line in 0..lines {
                let base = line * across + c;
                for e in (8..len).step_by(8) {
                    let at = |k: usize| base + k * along;
                    let g = |k: usize| px[at(k)] as i32;
                    let (p2, p1, p0, q0) = (g(e - 3), g(e - 2), g(e - 1), g(e));
                    let q1 = if e + 1 < len { g(e + 1) } else { q0 };
                    let q2 = if e + 2 < len { g(e + 2) } else { q1 };
                    if (p0 - q0).abs() >= 4 * s || (p1 - p0).abs() >= s || (q1 - q0).abs() >= s {
                        continue;
                    }
                    let d = (((q0 - p0) * 4 + (p1 - q1) + 4) >> 3).clamp(-s, s);
                    let avg = (p0 + q0 + 1) >> 1;
                    px[at(e - 1)] = (p0 + d).clamp(0, 255) as u8;
                    px[at(e)] = (q0 - d).clamp(0, 255) as u8;
                    if (p2 - p0).abs() < s {
                        px[at(e - 2)] =
                            (p1 + ((p2 + avg - 2 * p1) >> 1).clamp(-s, s)).clamp(0, 255) as u8;
                    }
                    if e + 1 < len && (q2 - q0).abs() < s {
                        px[at(e + 1)] =
                            (q1 + ((q2 + avg - 2 * q1) >> 1).clamp(-s, s)).clamp(0, 255) as u8;
                    }
                }
            }
        }
    }
}

/// A parsed payload.
struct Parsed {
    id: [u8; 32],
    pic: Picture,
    m: u8,
    /// Spatially predicted y channels (version 2; increasing).
    predicted: Vec<u16>,
    /// The other y channels' tables are adapted (`Adapt`; version 2, flag bit 0), with this
    /// block-context group (0: none).
    adaptive: bool,
    group: usize,
    /// `deblock` strength (version 2, flag bit 1; 0: none).
    deblock: u8,
    /// z's tables are adapted too (`Adapt` without block context; version 2, flag bit 2).
    adapt_z: bool,
    /// Low AC frequencies are predicted from the block DCs (`ac_predict`; version 2, flag
    /// bit 3).
    ac_predict: bool,
    words: Vec<u32>,
}

fn parse_payload(payload: &[u8]) -> Result<Parsed, CodecError> {
    let mut r = Reader::new(payload);
    let version = r.u8()?;
    if !(1..=2).contains(&version) {
        return Err(wire::malformed("unknown learned image payload version"));
    }
    let id: [u8; 32] = r
        .bytes(32)?
        .try_into()
        .map_err(|_| wire::malformed("model hash"))?;
    // Version 1 holds PNGs and PNMs only (the encoder refuses other kinds).
    let kind = match Kind::from_byte(r.u8()?)? {
        k @ (Kind::Png | Kind::Pnm) => k,
        _ => return Err(wire::malformed("unknown learned image payload kind")),
    };
    if r.u8()? != 2 {
        return Err(wire::malformed("colour type"));
    }
    let w = r.len(MAX_SIDE)? as u32;
    let h = r.len(MAX_SIDE)? as u32;
    let (ph, pw) = padded(w, h);
    if w == 0 || h == 0 || (ph * pw) as u64 > MAX_PIXELS {
        return Err(wire::malformed("picture size"));
    }
    let before = get_chunks(&mut r, payload.len())?;
    let after = get_chunks(&mut r, payload.len())?;
    let m = r.u8()?;
    let finest = if version == 2 { M_FINE } else { M_MIN };
    if !(finest..=M_MAX).contains(&m) {
        return Err(wire::malformed("quantization step"));
    }
    let mut predicted = Vec::new();
    let mut adaptive = false;
    let mut group = 0;
    let mut deblock = 0;
    let mut adapt_z = false;
    let mut ac_predict = false;
    if version == 2 {
        let flags = r.u8()?;
        if flags > 15 {
            return Err(wire::malformed("unknown learned image flags"));
        }
        adaptive = flags & 1 == 1;
        adapt_z = flags & 4 == 4;
        ac_predict = flags & 8 == 8;
        group = r.u8()? as usize;
        if group > MAX_GROUP || (group > 0 && !adaptive) {
            return Err(wire::malformed("block context group"));
        }
        if flags & 2 == 2 {
            deblock = r.u8()?;
            if deblock == 0 {
                return Err(wire::malformed("deblocking strength"));
            }
        }
        let n = r.len(MAX_Y_CH)?;
        for _ in 0..n {
            let b = r.bytes(2)?;
            let c = u16::from_le_bytes([b[0], b[1]]);
            if predicted.last().is_some_and(|&l| l >= c) {
                return Err(wire::malformed("predicted channels out of order"));
            }
            predicted.push(c);
        }
    }
    let n = r.len(payload.len() / 4)?;
    let words = r
        .bytes(n * 4)?
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if r.remaining() != 0 {
        return Err(wire::malformed("trailing bytes"));
    }
    kind.check(3, &before, &after)?;
    Ok(Parsed {
        id,
        pic: Picture {
            w,
            h,
            ch: 3,
            color_type: 2,
            pixels: Vec::new(),
            before,
            after,
            kind,
        },
        m,
        predicted,
        adaptive,
        group,
        deblock,
        adapt_z,
        ac_predict,
        words,
    })
}

impl LearnedImage {
    /// The picture a payload holds, its pixels computed by `engine` (with `fallback`, by the
    /// reference when the runtime fails).
    pub(crate) fn decode_with(
        &self,
        payload: &[u8],
        engine: Engine,
        fallback: bool,
    ) -> Result<Picture, CodecError> {
        let p = parse_payload(payload)?;
        let model = self.model(&p.id)?;
        let pixels = match decode_pixels(model, &p, p.words.clone(), engine) {
            // The runtime failed (or broke exactness): the reference computes the same
            // integers, so the bytes served are still the right ones.
            Err(e @ CodecError::Failed(_)) if fallback && engine != Engine::Reference => {
                tracing::warn!(
                    "image-learned: ONNX Runtime decoding failed ({e}); decoding with the integer reference"
                );
                decode_pixels(model, &p, p.words.clone(), Engine::Reference)?
            }
            r => r?,
        };
        let mut pic = p.pic;
        pic.pixels = pixels;
        Ok(pic)
    }

    /// Encode `pic` with the newest model at the coarsest step meeting `target` dB (or, with
    /// `fixed`, at that step whatever its PSNR: rate-distortion measurements).
    fn encode_picture(
        &self,
        pic: &Picture,
        target: f64,
        fixed: Option<u8>,
        opts: EncodeOpts,
    ) -> Result<(u8, Vec<u8>), CodecError> {
        let model = self
            .models
            .last()
            .ok_or_else(|| CodecError::Failed("no learned image model".into()))?;
        let rt = match crate::neural::loaded() {
            Some(Ok(rt)) => rt,
            _ => return Err(CodecError::Failed("ONNX Runtime is not loaded".into())),
        };
        let (w, h) = (pic.w as usize, pic.h as usize);
        let (ph, pw) = padded(pic.w, pic.h);
        // Edges repeated into the padding; float input in [0, 1], planar.
        let mut x = vec![0f32; 3 * ph * pw];
        for y in 0..ph {
            let sy = y.min(h - 1);
            for xx in 0..pw {
                let sx = xx.min(w - 1);
                for c in 0..3 {
                    x[(c * ph + y) * pw + xx] = pic.pixels[(sy * w + sx) * 3 + c] as f32 / 255.0;
                }
            }
        }
        let outs = rt
            .run_f32_outputs(&model.enc, None, &[1, 3, ph, pw], x)
            .map_err(CodecError::Failed)?;
        let (yc, zc) = (model.y_ch(), model.z_ch());
        let (yh, yw, zh, zw) = (ph / 16, pw / 16, ph / 64, pw / 64);
        let [(ys, y), (zs, z)] = <[_; 2]>::try_from(outs)
            .map_err(|_| CodecError::Failed("analysis network outputs".into()))?;
        if ys != [1, yc, yh, yw] || zs != [1, zc, zh, zw] {
            return Err(CodecError::Failed("analysis network output shapes".into()));
        }
        let zq: Vec<i32> = z
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let r = model.tables[model.z_index[i / (zh * zw)] as usize].0;
                (v.round() as i32).clamp(-r.min(model.z_max), r.min(model.z_max))
            })
            .collect();
        // z's symbols with its fixed tables, or adapted ones when that is smaller and no
        // value must be clipped to an adapted table (z feeds h_s: it must not change).
        let code_z = |adaptive: bool| -> Option<(Vec<(usize, usize)>, f32)> {
            let mut a = adaptive.then(|| Adapt::new(model, zw, zh * zw, 0));
            let (mut syms, mut bits) = (Vec::with_capacity(zq.len()), 0f32);
            for (c, zc) in zq.chunks((zh * zw).max(1)).enumerate() {
                let t = model.z_index[c];
                if let Some(a) = a.as_mut() {
                    a.begin(c);
                }
                for &q in zc {
                    let (tt, v) = encode_element(model, a.as_mut(), t, q);
                    if v != q {
                        return None;
                    }
                    let sym = (v + model.tables[tt].0) as usize;
                    bits += model.costs[tt][sym];
                    syms.push((sym, tt));
                }
            }
            Some((syms, bits))
        };
        let (zs, adapt_z) = match (code_z(false), opts.adapt.then(|| code_z(true)).flatten()) {
            (Some((_, bf)), Some((adapted, ba))) if ba < bf => (adapted, true),
            (Some((fixed, _)), _) => (fixed, false),
            _ => return Err(CodecError::Failed("z out of its tables' range".into())),
        };
        let si = run_decoder(
            model,
            false,
            &Tensor {
                c: zc,
                h: zh,
                w: zw,
                d: zq.clone(),
            },
            Engine::Ort(None),
        )?;
        let hw = yh * yw;
        let group = block_group(model);
        let try_m = |m: u8| -> Result<(Vec<u8>, f64), CodecError> {
            let tabs = model.y_tables(&si.d, m);
            let step = m as f32 / 4.0;
            let lim = model.t_max / m as i32;
            // Per channel, the hyperprior's tables or spatial prediction, whichever costs
            // less distortion + k · bits.
            let kq = opts.rdo.unwrap_or(RDO_K);
            let k = if kq > 0.0 { kq } else { SELECT_K };
            let mut chans: Vec<Chan> = Vec::new();
            let mut predicted = Vec::new();
            // Each channel's values in steps, less its AC prediction (kept for the second
            // pass, which must not move the DCs the predictions came from).
            let acp = opts.ac_predict && acp_model(model);
            let mut us: Vec<Vec<f32>> = Vec::with_capacity(yc);
            let mut preds: Vec<Vec<i32>> = vec![Vec::new(); yc];
            for (c, (ych, tc)) in y.chunks(hw.max(1)).zip(tabs.chunks(hw.max(1))).enumerate() {
                if acp && c % 256 == 4 {
                    let k = c / 256;
                    let mut dc = Vec::with_capacity(4 * hw);
                    for ch in &chans[256 * k..256 * k + 4] {
                        let qs = match ch {
                            Chan::Predicted(_, v) | Chan::Hyper(v) => v,
                        };
                        dc.extend(
                            qs.iter().map(|&q| {
                                q.saturating_mul(m as i32).clamp(-model.t_max, model.t_max)
                            }),
                        );
                    }
                    for (pc, plane) in ac_predict(&dc, k, yh, yw) {
                        preds[pc] = plane;
                    }
                }
                let u: Vec<f32> = match preds.get(c).filter(|p| !p.is_empty()) {
                    Some(p) => ych
                        .iter()
                        .zip(p)
                        .map(|(&v, &p)| v / step - p as f32 / m as f32)
                        .collect(),
                    None => ych.iter().map(|&v| v / step).collect(),
                };
                us.push(u.clone());
                let (mut hp, mut j_hp) = (Vec::with_capacity(hw), 0f32);
                for (&u, &t) in u.iter().zip(tc) {
                    let (rt, costs) = (model.tables[t as usize].0, &model.costs[t as usize]);
                    let q = rdo_quant(u, rt, rt.min(lim), costs, kq);
                    let e = u - q as f32;
                    j_hp += e * e + k * costs[(q + rt) as usize];
                    hp.push(q);
                }
                if opts.predict && predicted.len() < MAX_Y_CH && dpcm_candidate(model, c) {
                    let want: Vec<i32> = u.iter().map(|&v| v.round() as i32).collect();
                    let mut syms = Vec::with_capacity(hw);
                    let (plane, dist, bits) =
                        Dpcm::new(model, yw).encode(&want, &u, lim, &mut syms);
                    if dist + k * bits < j_hp {
                        predicted.push(c as u16);
                        chans.push(Chan::Predicted(syms, plane));
                        continue;
                    }
                }
                chans.push(Chan::Hyper(hp));
            }
            // The hyperprior's tables as they are, or adapted, whichever costs fewer bits.
            // Returns the symbols, their bits and the table of each hyperprior-coded element.
            let code = |adaptive: bool, chans: &[Chan]| {
                let mut ys = Vec::with_capacity(y.len());
                let mut used = Vec::with_capacity(y.len());
                let mut bits = 0f32;
                let mut adapt = adaptive.then(|| Adapt::new(model, yw, hw, group));
                for (c, (ch, tc)) in chans.iter().zip(tabs.chunks(hw.max(1))).enumerate() {
                    let qs = match ch {
                        Chan::Predicted(syms, _) => {
                            ys.extend_from_slice(syms);
                            continue;
                        }
                        Chan::Hyper(qs) => qs,
                    };
                    // What the decoder will hold: a value beyond an adapted table's radius
                    // is clipped (rare; the verification below measures it).
                    if let Some(a) = adapt.as_mut() {
                        a.begin(c);
                    }
                    for (&q, &t) in qs.iter().zip(tc) {
                        let (tt, v) = encode_element(model, adapt.as_mut(), t, q);
                        let sym = (v + model.tables[tt].0) as usize;
                        bits += model.costs[tt][sym];
                        ys.push((sym, tt));
                        used.push(tt);
                    }
                }
                (ys, bits, used)
            };
            let (ys_static, b_static, _) = code(false, &chans);
            let (mut ys, mut adaptive) = (ys_static, false);
            if opts.adapt {
                let (ys_adapt, b_adapt, used) = code(true, &chans);
                if b_adapt < b_static {
                    ys = ys_adapt;
                    adaptive = true;
                    // The quantization chose with the hyperprior's own tables' costs; once
                    // more with the adapted tables' (which then adapt again), kept when
                    // distortion + k · bits is lower.
                    if kq > 0.0 {
                        let mut tt = used.iter();
                        let (mut d1, mut d2) = (0f32, 0f32);
                        let again: Vec<Chan> = chans
                            .iter()
                            .zip(&us)
                            .enumerate()
                            .map(|(c, (ch, uc))| match ch {
                                Chan::Predicted(s, v) => Chan::Predicted(s.clone(), v.clone()),
                                Chan::Hyper(qs) => Chan::Hyper(
                                    uc.iter()
                                        .zip(qs)
                                        .map(|(&u, &q0)| {
                                            let t = tt.next().copied().unwrap_or(0);
                                            if acp && c % 256 < 4 {
                                                return q0;
                                            }
                                            let (rt, costs) = (model.tables[t].0, &model.costs[t]);
                                            let q = rdo_quant(u, rt, rt.min(lim), costs, kq);
                                            d1 += (u - q0 as f32).powi(2);
                                            d2 += (u - q as f32).powi(2);
                                            q
                                        })
                                        .collect(),
                                ),
                            })
                            .collect();
                        let (ys2, b2, _) = code(true, &again);
                        if d2 + k * b2 < d1 + k * b_adapt {
                            ys = ys2;
                        }
                    }
                }
            }
            let words = entropy_encode(model, &zs, &ys)?;
            // The payload with deblocking strength `s`.
            let build = |s: u8| {
                let v2 = adaptive || adapt_z || acp || !predicted.is_empty() || s > 0 || m < M_MIN;
                let mut out = Vec::new();
                out.push(if v2 { 2u8 } else { 1 });
                out.extend_from_slice(&model.id);
                out.extend_from_slice(&[pic.kind as u8, 2]);
                put_varint(&mut out, pic.w as u64);
                put_varint(&mut out, pic.h as u64);
                put_chunks(&mut out, &pic.before);
                put_chunks(&mut out, &pic.after);
                out.push(m);
                if v2 {
                    out.push(
                        adaptive as u8
                            | if s > 0 { 2 } else { 0 }
                            | if adapt_z { 4 } else { 0 }
                            | if acp { 8 } else { 0 },
                    );
                    out.push(if adaptive { group as u8 } else { 0 });
                    if s > 0 {
                        out.push(s);
                    }
                    put_varint(&mut out, predicted.len() as u64);
                    for c in &predicted {
                        out.extend_from_slice(&c.to_le_bytes());
                    }
                }
                put_varint(&mut out, words.len() as u64);
                for wd in &words {
                    out.extend_from_slice(&wd.to_le_bytes());
                }
                out
            };
            // The payload as a reader will see it, without deblocking; then the strength
            // that brings the served pixels closest to the original. Decoding with strength
            // s is `deblock` of exactly these pixels, so what is served is what was checked.
            let out = build(0);
            let p = parse_payload(&out)?;
            let back = decode_pixels(model, &p, p.words.clone(), Engine::Ort(None))?;
            let mut best = (psnr(&pic.pixels, &back), 0u8);
            for s in DEBLOCK_TRIES {
                let mut px = back.clone();
                deblock(&mut px, pic.w as usize, pic.h as usize, s);
                let db = psnr(&pic.pixels, &px);
                if db > best.0 {
                    best = (db, s);
                }
            }
            let (db, s) = best;
            Ok((if s > 0 { build(s) } else { out }, db))
        };
        if let Some(m) = fixed {
            return Ok((m, try_m(m.clamp(M_FINE, M_MAX))?.0));
        }
        // The coarsest step meeting the target, by binary search (PSNR falls as m grows).
        // Invariant: steps below `lo` met it (best holds the last one met); `hi` and above
        // did not or are untried.
        let (mut lo, mut hi) = (M_FINE, M_MAX + 1);
        let mut best = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (payload, db) = try_m(mid)?;
            if db >= target {
                best = Some((mid, payload));
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if let Some((m, _)) = &best {
            tracing::debug!(model = %model.name, step = m, "learned image coding meets {target:.1} dB");
        }
        best.ok_or_else(|| {
            CodecError::Failed(format!(
                "the learned codec cannot reach {target:.1} dB on this image"
            ))
        })
    }
}

impl Codec for LearnedImage {
    fn id(&self) -> super::CodecId {
        IMAGE_LEARNED
    }

    fn name(&self) -> &'static str {
        "image-learned"
    }

    fn is_lossless(&self) -> bool {
        false
    }

    fn availability(&self) -> Result<(), String> {
        builtin().map_err(|e| format!("learned image model: {e}"))?;
        match crate::neural::loaded() {
            Some(Ok(_)) => Ok(()),
            Some(Err(why)) => Err(format!("needs ONNX Runtime, which did not load: {why}")),
            None => Err("needs ONNX Runtime, not loaded yet".into()),
        }
    }

    fn granularity(&self) -> Granularity {
        Granularity::WholeFile { max_len: MAX_LEN }
    }

    fn decoded_len(&self, payload: &[u8], _params: u32) -> Result<Option<usize>, CodecError> {
        Ok(Some(
            serve(&self.decode_with(payload, decode_engine(), true)?).len(),
        ))
    }

    /// `params.level`: the PSNR target in hundredths of a dB. Params returned: the step m.
    fn encode(
        &self,
        raw: &[u8],
        params: &EncodeParams,
        out: &mut Vec<u8>,
    ) -> Result<u32, CodecError> {
        check_whole_len(raw, MAX_LEN, "PNG ")?;
        let target = psnr_target(params)?;
        let pic = load_picture(raw)?;
        if pic.ch != 3 || !matches!(pic.kind, Kind::Png | Kind::Pnm) {
            return Err(CodecError::Failed(
                "the learned codec takes RGB PNGs and PNMs only".into(),
            ));
        }
        let (ph, pw) = padded(pic.w, pic.h);
        if (ph * pw) as u64 > MAX_PIXELS {
            return Err(CodecError::Failed("picture too large".into()));
        }
        let (m, payload) = self.encode_picture(&pic, target, None, EncodeOpts::default())?;
        if payload.len() >= raw.len() {
            return Err(CodecError::NotWorthIt);
        }
        *out = payload;
        Ok(m as u32)
    }

    fn decode(
        &self,
        payload: &[u8],
        _params: u32,
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        deliver(
            &self.decode_with(payload, decode_engine(), true)?,
            raw_len,
            out,
        )
    }
}

/// Rate-distortion measurements (`examples/learned_rd.rs`): encode at a fixed step, decode.
#[doc(hidden)]
pub mod bench {
    use super::*;

    /// Load ONNX Runtime (one intra-op thread) or say why not.
    pub fn init() -> Result<(), String> {
        crate::neural::init(&crate::neural::RuntimeOptions::default()).map(|_| ())
    }

    /// The payload of an RGB PNG at step `m`/4 (1..=8) with the built-in model, the
    /// rate-distortion weight `rdo` (`None`: the codec's own; 0: plain rounding) and spatial
    /// prediction on or off.
    pub fn encode_step(
        raw: &[u8],
        m: u8,
        rdo: Option<f32>,
        predict: bool,
        ac_predict: bool,
    ) -> Result<Vec<u8>, CodecError> {
        let pic = load_picture(raw)?;
        if pic.ch != 3 {
            return Err(CodecError::Failed("RGB only".into()));
        }
        Ok(LearnedImage::default()
            .encode_picture(
                &pic,
                0.0,
                Some(m),
                EncodeOpts {
                    rdo,
                    predict,
                    adapt: predict,
                    ac_predict,
                },
            )?
            .1)
    }

    /// The served PNG of a payload (ONNX Runtime's engine).
    pub fn decode(payload: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(serve(&LearnedImage::default().decode_with(
            payload,
            Engine::Ort(None),
            true,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neural::tests::runtime_required;

    /// What the frozen version-2 payload decodes to: PNG length and BLAKE3.
    const GOLDEN_V2: (usize, &str) = (
        67785,
        "cdde29b6b627f169528031e4f2a88b2e0c6bbb282d6d1c2122d97ddce369f048",
    );
    /// The same for the payload at m = 1.
    const GOLDEN_V2_M1: (usize, &str) = (
        200412,
        "982b299b19a78962ad116192fadb20e2d81b02d991c805034f4c93b59f850951",
    );
    /// The same for the payload with AC prediction.
    const GOLDEN_V2_ACP: (usize, &str) = (
        126535,
        "57a7ee8c694bb522914b646d492530d186f939716b664a314764f31f208dd44c",
    );

    fn photo(name: &str) -> Vec<u8> {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/photo/");
        std::fs::read(format!("{p}{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// A built-in model by name.
    fn named(name: &str) -> Arc<Model> {
        builtin()
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no built-in model {name}"))
    }

    /// The first model (hp-int8-v1).
    fn model() -> Arc<Model> {
        named("hp-int8-v1")
    }

    /// Deterministic pseudo-random integers in −r..=r (xorshift).
    fn ints(n: usize, r: i32, mut seed: u64) -> Vec<i32> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % (2 * r as u64 + 1)) as i32 - r
            })
            .collect()
    }

    /// ONNX Runtime on one and on two intra-op threads, and on the shared session, gives
    /// exactly the integer reference's outputs, for inputs at the bounds' extremes (the
    /// largest partial sums the export check allows) and for typical ones.
    #[test]
    fn ort_on_1_and_2_threads_equals_the_integer_reference() {
        runtime_required("ort_on_1_and_2_threads_equals_the_integer_reference");
        for m in builtin().unwrap_or_else(|e| panic!("{e}")) {
            ort_equals_reference(&m);
        }
    }

    fn ort_equals_reference(m: &Model) {
        let (zc, yc) = (m.z_ch(), m.y_ch());
        let cases = [
            (
                false,
                Tensor {
                    c: zc,
                    h: 3,
                    w: 5,
                    d: ints(zc * 15, m.z_max, 1),
                },
            ),
            (
                false,
                Tensor {
                    c: zc,
                    h: 2,
                    w: 4,
                    d: ints(zc * 8, 3, 2),
                },
            ),
            (
                true,
                Tensor {
                    c: yc,
                    h: 6,
                    w: 9,
                    d: ints(yc * 54, m.t_max, 3),
                },
            ),
            (
                true,
                Tensor {
                    c: yc,
                    h: 8,
                    w: 12,
                    d: ints(yc * 96, 24, 4),
                },
            ),
        ];
        for (gs, x) in &cases {
            let want = run_decoder(m, *gs, x, Engine::Reference).unwrap_or_else(|e| panic!("{e}"));
            let (lo, hi) = {
                let l = if *gs { &m.gs } else { &m.hs };
                l.last().map(|l| (l.lo, l.hi)).unwrap_or_default()
            };
            // Not a degenerate output (all clipped to one value).
            let (mn, mx) = want
                .d
                .iter()
                .fold((i32::MAX, i32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            assert!(
                mn < mx && mn >= lo && mx <= hi,
                "gs={gs}: outputs {mn}..{mx}"
            );
            for eng in [
                Engine::Ort(Some(1)),
                Engine::Ort(Some(2)),
                Engine::Ort(None),
            ] {
                let got = run_decoder(m, *gs, x, eng).unwrap_or_else(|e| panic!("{eng:?}: {e}"));
                assert!(
                    got == want,
                    "{}: gs={gs}: {eng:?} differs from the reference",
                    m.name
                );
            }
        }
    }

    /// With each built-in model: a real photo (not in the training set) encodes under a 25 dB
    /// target (hp-int8-v1 reaches about 27.7 dB on it at its finest step), and its payload
    /// decodes to the same picture with ORT on 1 and 2 threads and with the reference; the
    /// served PNG meets the target and the codec's length and bytes agree.
    #[test]
    fn photo_round_trip_is_identical_across_engines_and_meets_the_target() {
        runtime_required("photo_round_trip_is_identical_across_engines");
        for m in builtin().unwrap_or_else(|e| panic!("{e}")) {
            photo_round_trip(LearnedImage::with_models(vec![m]));
        }
    }

    fn photo_round_trip(c: LearnedImage) {
        let raw = photo("skimage_data_chelsea.png");
        let mut payload = Vec::new();
        let m = c
            .encode(&raw, &EncodeParams::level(2500), &mut payload)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!((M_FINE as u32..=M_MAX as u32).contains(&m));
        assert!(
            payload.len() * 3 < raw.len(),
            "{} vs {}",
            payload.len(),
            raw.len()
        );
        let a = c
            .decode_with(&payload, Engine::Ort(Some(1)), false)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = c
            .decode_with(&payload, Engine::Ort(Some(2)), false)
            .unwrap_or_else(|e| panic!("{e}"));
        let r = c
            .decode_with(&payload, Engine::Reference, false)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(a == b && a == r, "decoded pictures differ between engines");
        let png = serve(&a);
        let db = super::super::image_psnr(&raw, &png).unwrap_or_else(|| panic!("not a PNG"));
        assert!(db >= 25.0, "PSNR {db}");
        let n = c.decoded_len(&payload, m).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, Some(png.len()));
        let mut out = Vec::new();
        c.decode(&payload, m, png.len(), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out == png);
        // Malformed payloads are errors, not panics.
        for cut in [0, 1, 33, payload.len() / 2, payload.len() - 1] {
            assert!(c
                .decode_with(&payload[..cut], Engine::Reference, false)
                .is_err());
        }
    }

    /// Spatial prediction and adapted tables decode to exactly what the encoder walked,
    /// escapes included (residuals far beyond every table's radius), without ONNX Runtime.
    #[test]
    fn predicted_and_adapted_planes_round_trip_through_ans() {
        let m = named("hp-dct-v2");
        let (w, h) = (37, 11);
        let mut want = ints(w * h, 3, 7);
        for (i, v) in want.iter_mut().enumerate() {
            // Edges of up to 200 steps: escapes to the widest table.
            *v += [0, 200, -150, 40][(i / 9) % 4];
        }
        let u: Vec<f32> = want.iter().map(|&v| v as f32 + 0.2).collect();
        let mut syms = Vec::new();
        let (plane, dist, bits) = Dpcm::new(&m, w).encode(&want, &u, 255, &mut syms);
        assert_eq!(plane, want, "values within the limit are coded exactly");
        assert!((dist - 0.04 * (w * h) as f32).abs() < 0.1 && bits > 0.0);
        // Then six adapted channels (block group 4: the second run of 4 sees the first's
        // block sums), as the decoder reads y: the predicted channel first.
        let hw = w * h;
        let tabs: Vec<u8> = ints(6 * hw, 20, 9)
            .iter()
            .map(|&t| (t + 30) as u8)
            .collect();
        let vals = ints(6 * hw, 2, 11);
        let mut adapt = Adapt::new(&m, w, hw, 4);
        let mut coded = Vec::new();
        for (c, (vc, tc)) in vals.chunks(hw).zip(tabs.chunks(hw)).enumerate() {
            adapt.begin(c);
            for (&q, &t) in vc.iter().zip(tc) {
                let (tt, v) = adapt.encode(t, q);
                syms.push(((v + m.tables[tt].0) as usize, tt));
                coded.push(v);
            }
        }
        let words = entropy_encode(&m, &[], &syms).unwrap_or_else(|e| panic!("{e}"));
        let mut coder = DefaultAnsCoder::from_compressed(words).unwrap_or_else(|_| panic!("ans"));
        let mut back = Vec::new();
        Dpcm::new(&m, w)
            .decode(w * h, &mut coder, &mut back)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, plane);
        let mut adapt = Adapt::new(&m, w, hw, 4);
        let mut got = Vec::new();
        for (c, tc) in tabs.chunks(hw).enumerate() {
            adapt.begin(c);
            for &t in tc {
                got.push(
                    adapt
                        .decode(t, &mut coder)
                        .unwrap_or_else(|e| panic!("{e}")),
                );
            }
        }
        assert_eq!(got, coded);
        assert_eq!(got, vals, "small values fit every table");
    }

    /// Where a payload's step byte m is (the version-2 flags follow it).
    fn m_offset(payload: &[u8]) -> usize {
        let mut r = Reader::new(payload);
        r.bytes(1 + 32 + 2).unwrap_or_else(|e| panic!("{e}"));
        r.len(MAX_SIDE).unwrap_or_else(|e| panic!("{e}"));
        r.len(MAX_SIDE).unwrap_or_else(|e| panic!("{e}"));
        get_chunks(&mut r, payload.len()).unwrap_or_else(|e| panic!("{e}"));
        get_chunks(&mut r, payload.len()).unwrap_or_else(|e| panic!("{e}"));
        payload.len() - r.remaining()
    }

    /// How a frozen payload is written (under IDCFS_WRITE_GOLDEN=1) from the chelsea photo.
    enum Write {
        /// Never again: frozen.
        No,
        /// At this fixed step.
        Step(u8),
    }

    /// Decode the frozen payload at `path` (written as `write` says) with the integer
    /// reference and ONNX Runtime on 1 and 2 threads: the same PNG, `want`, every time.
    /// Returns the parsed payload.
    fn golden(path: &str, want: (usize, &str), write: Write) -> Parsed {
        let c = LearnedImage::default();
        if std::env::var_os("IDCFS_WRITE_GOLDEN").is_some() {
            let raw = photo("skimage_data_chelsea.png");
            let payload = match write {
                Write::No => None,
                Write::Step(m) => {
                    let pic = load_picture(&raw).unwrap_or_else(|e| panic!("{e}"));
                    let (_, payload) = c
                        .encode_picture(&pic, 0.0, Some(m), EncodeOpts::default())
                        .unwrap_or_else(|e| panic!("{e}"));
                    Some(payload)
                }
            };
            if let Some(payload) = payload {
                std::fs::write(path, &payload).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let payload = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let p = parse_payload(&payload).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hex(&p.id), hex(&named("hp-dct-v2").id));
        for engine in [
            Engine::Reference,
            Engine::Ort(Some(1)),
            Engine::Ort(Some(2)),
        ] {
            let png = serve(
                &c.decode_with(&payload, engine, false)
                    .unwrap_or_else(|e| panic!("{e}")),
            );
            assert_eq!(
                (png.len(), blake3::hash(&png).to_hex().as_str()),
                want,
                "{path} {engine:?}"
            );
        }
        // An unknown version is refused, not guessed.
        let mut bad = payload.clone();
        bad[0] = 3;
        assert!(c.decode_with(&bad, Engine::Reference, false).is_err());
        p
    }

    /// A frozen version-2 payload of 2026-12-01 (model hp-dct-v2, spatially predicted
    /// channels, adapted tables, deblocking, no AC prediction) decodes to the same PNG
    /// forever. Frozen: no longer rewritten (what the encoder writes now is below).
    #[test]
    fn golden_v2_payload_decodes_to_pinned_bytes() {
        runtime_required("golden_v2_payload_decodes_to_pinned_bytes");
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/codec-golden/image-learned-v2.payload"
        );
        let p = golden(path, GOLDEN_V2, Write::No);
        assert!(p.adaptive && p.group == 4 && !p.predicted.is_empty());
        assert!(p.deblock > 0, "the frozen payload exercises deblocking");
        assert!(p.adapt_z, "and z's adapted tables");
        assert!(!p.ac_predict);
    }

    /// A payload with AC prediction (flag bit 3), as the encoder wrote it at df41e30: frozen
    /// the same way.
    #[test]
    fn golden_v2_acp_payload_decodes_to_pinned_bytes() {
        runtime_required("golden_v2_acp_payload_decodes_to_pinned_bytes");
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/codec-golden/image-learned-v2-acp.payload"
        );
        let p = golden(path, GOLDEN_V2_ACP, Write::No);
        assert!(p.ac_predict && p.adaptive && p.deblock > 0);
        // A flag bit this build does not know is refused.
        let mut bad = std::fs::read(path).unwrap_or_else(|e| panic!("{e}"));
        let flags_at = m_offset(&bad) + 1;
        assert_eq!(bad[flags_at] & 8, 8, "the flags byte");
        bad[flags_at] |= 16;
        assert!(parse_payload(&bad).is_err());
    }

    /// The finest step, m = 1, exists in payload version 2 only: it decodes identically with
    /// the reference and ONNX Runtime, to a better picture than m = 2; a version-1 payload
    /// claiming it is refused.
    #[test]
    fn finest_step_is_version_2_only_and_decodes_exactly() {
        runtime_required("finest_step_is_version_2_only_and_decodes_exactly");
        let c = LearnedImage::default();
        let pic =
            load_picture(&photo("skimage_data_chelsea.png")).unwrap_or_else(|e| panic!("{e}"));
        let fine = |m: u8, opts: EncodeOpts| {
            c.encode_picture(&pic, 0.0, Some(m), opts)
                .unwrap_or_else(|e| panic!("{e}"))
                .1
        };
        let p1 = fine(1, EncodeOpts::default());
        assert_eq!(p1[0], 2);
        assert_eq!(parse_payload(&p1).unwrap_or_else(|e| panic!("{e}")).m, 1);
        let px = |payload: &[u8], engine| {
            c.decode_with(payload, engine, false)
                .unwrap_or_else(|e| panic!("{e}"))
                .pixels
        };
        let r1 = px(&p1, Engine::Reference);
        assert_eq!(r1, px(&p1, Engine::Ort(Some(2))));
        let r2 = px(&fine(2, EncodeOpts::default()), Engine::Reference);
        assert!(psnr(&pic.pixels, &r1) > psnr(&pic.pixels, &r2) + 1.0);
        // The same payload rewritten as version 1 (its version-2 fields after m dropped):
        // refused for m = 1 alone, since with m = 2 it parses.
        let m_at = m_offset(&p1);
        assert_eq!(p1[m_at], 1);
        let parsed = parse_payload(&p1).unwrap_or_else(|e| panic!("{e}"));
        let mut n = Vec::new();
        put_varint(&mut n, parsed.predicted.len() as u64);
        let v2_fields = 2 + usize::from(parsed.deblock > 0) + n.len() + 2 * parsed.predicted.len();
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&p1[1..=m_at]);
        v1.extend_from_slice(&p1[m_at + 1 + v2_fields..]);
        assert!(parse_payload(&v1).is_err());
        v1[m_at] = 2;
        assert!(parse_payload(&v1).is_ok());
    }

    /// A payload at the finest step, m = 1 (version 2 only), with everything the encoder
    /// writes today: frozen the same way.
    #[test]
    fn golden_v2_m1_payload_decodes_to_pinned_bytes() {
        runtime_required("golden_v2_m1_payload_decodes_to_pinned_bytes");
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/codec-golden/image-learned-v2-m1.payload"
        );
        let p = golden(path, GOLDEN_V2_M1, Write::Step(1));
        assert!(p.m == 1 && p.ac_predict && p.adaptive && p.adapt_z);
        assert!(
            p.predicted.iter().all(|&c| (c / 4) % 64 == 0),
            "DC channels only"
        );
    }

    /// AC prediction from the block DCs: a flat picture predicts nothing; a horizontal
    /// ramp of DCs predicts the first horizontal frequency (brighter to the right: negative,
    /// as the DCT's first basis falls left to right) and nothing vertical.
    #[test]
    fn ac_prediction_follows_the_dc_slope() {
        let (yh, yw) = (3, 4);
        let hw = yh * yw;
        for k in 0..3 {
            let flat = vec![100i32; 4 * hw]
                .iter()
                .enumerate()
                .map(|(i, &v)| if i < hw { v } else { 0 })
                .collect::<Vec<_>>();
            for (_, plane) in ac_predict(&flat, k, yh, yw) {
                assert!(plane.iter().all(|&p| p == 0));
            }
            // Block DC = 40·(block column): Haar channel 0 = 2·mean, channel 1 = the
            // left/right difference of each 16×16 area.
            let mut ramp = vec![0i32; 4 * hw];
            for a in 0..yh {
                for b in 0..yw {
                    let (l, r) = (40 * (2 * b) as i32, 40 * (2 * b + 1) as i32);
                    ramp[a * yw + b] = l + r;
                    ramp[hw + a * yw + b] = l - r;
                }
            }
            let preds = ac_predict(&ramp, k, yh, yw);
            assert_eq!(preds.len(), 20);
            for (c, plane) in preds {
                let f = (c / 4) % 64;
                assert_eq!(c / 256, k);
                // Away from the left and right edges (where the ramp stops).
                let inner: Vec<i32> = (0..hw)
                    .filter(|i| {
                        let col = 2 * (i % yw) + (c % 4) % 2;
                        col > 0 && col < 2 * yw - 1
                    })
                    .map(|i| plane[i])
                    .collect();
                match f {
                    1 => assert!(inner.iter().all(|&p| p < -5), "{inner:?}"),
                    8 | 9 => assert!(inner.iter().all(|&p| p.abs() <= 2), "{f} {inner:?}"),
                    _ => {}
                }
            }
        }
    }

    /// Deblocking smooths small steps at 8×8 edges, keeps real edges and flat areas, touches
    /// nothing off the edges, and is a no-op at strength 0.
    #[test]
    fn deblocking_smooths_block_edges_only() {
        let (w, h) = (24, 16);
        // Vertical stripes 8 wide: levels 100, 104 (a block step) and 200 (a real edge).
        let level = |x: usize| [100u8, 104, 200][x / 8];
        let pic: Vec<u8> = (0..w * h).flat_map(|i| [level(i % w); 3]).collect();
        let mut same = pic.clone();
        deblock(&mut same, w, h, 0);
        assert_eq!(same, pic);
        let mut out = pic.clone();
        deblock(&mut out, w, h, 8);
        let at = |v: &[u8], x: usize, y: usize| v[(y * w + x) * 3 + 1];
        for y in 0..h {
            // p0, q0 move towards each other by Δ = 2; p1, q1 by 1.
            assert_eq!(
                [6, 7, 8, 9].map(|x| at(&out, x, y)),
                [101, 102, 102, 103],
                "row {y}"
            );
            // |p0 − q0| = 96 ≥ 4·8: a real edge stays.
            assert_eq!([15, 16].map(|x| at(&out, x, y)), [104, 200]);
            for x in (0..5).chain(11..14).chain(18..24) {
                assert_eq!(
                    at(&out, x, y),
                    at(&pic, x, y),
                    "({x}, {y}) is off the edges"
                );
            }
        }
        // Horizontal edges of a flat-by-rows picture: the same filter down the columns.
        let t: Vec<u8> = (0..w * h).flat_map(|i| [level(i / w); 3]).collect();
        let mut o = t.clone();
        deblock(&mut o, w, h, 8);
        assert_eq!(
            [6, 7, 8, 9].map(|y| o[(y * w + 3) * 3]),
            [101, 102, 102, 103]
        );
    }

    /// The shipped model never changes: payloads name it by this hash.
    #[test]
    fn builtin_model_hash_is_pinned() {
        assert_eq!(
            hex(&model().id),
            "dc0b858d88fb33b3f27d96bf361f140df9823f58d64e30cd572c3282971b7d76"
        );
    }

    /// hp-dct-v2 never changes either, and the registry holds both models, v2 last (it
    /// encodes).
    #[test]
    fn builtin_v2_model_hash_is_pinned() {
        assert_eq!(hex(&named("hp-dct-v2").id), V2_HASH);
        let names: Vec<String> = LearnedImage::default()
            .models
            .iter()
            .map(|m| m.name.clone())
            .collect();
        assert_eq!(names, ["hp-int8-v1", "hp-dct-v2"]);
    }

    const V2_HASH: &str = "2c2e42a47625fb79201f2a3fba6059f389de101af08f4119cc3940e60c92a61b";

    /// A payload written by hp-int8-v1 (a build before v2 shipped) decodes, to the same
    /// picture, with this build's registry, and this build encodes with v2.
    #[test]
    fn v1_payload_still_decodes_after_v2_ships() {
        runtime_required("v1_payload_still_decodes_after_v2_ships");
        let raw = photo("skimage_data_coffee.png");
        let old = LearnedImage::with_models(vec![model()]);
        let mut p1 = Vec::new();
        let m1 = old
            .encode(&raw, &EncodeParams::level(2200), &mut p1)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&p1[1..33], &model().id[..]);
        let want = serve(
            &old.decode_with(&p1, Engine::Reference, false)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let now = LearnedImage::default();
        let mut out = Vec::new();
        now.decode(&p1, m1, want.len(), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out == want, "v1's payload decodes differently after v2");
        let mut p2 = Vec::new();
        now.encode(&raw, &EncodeParams::level(2200), &mut p2)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hex(&p2[1..33]), V2_HASH, "new payloads name v2");
    }

    /// A block written by model A still decodes, to the same bytes, after model B ships
    /// (B encodes from then on); a build without A refuses A's payload naming A.
    #[test]
    fn models_are_immutable_and_a_missing_model_is_named() {
        runtime_required("models_are_immutable_and_a_missing_model_is_named");
        let a = model();
        // Model B: A's networks with another z prior (a different model: its tables differ).
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/models/hp-int8-v1/");
        let read = |f: &str| std::fs::read(format!("{dir}{f}")).unwrap_or_else(|e| panic!("{e}"));
        let mut int = read("int.bin");
        let nz_at = {
            let mut r = Le(&int[8..]);
            let levels = r.n(256).unwrap_or_else(|e| panic!("{e}"));
            for _ in 0..levels {
                let radius = r.n(4096).unwrap_or_else(|e| panic!("{e}"));
                r.bytes(4 * (2 * radius + 1))
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            int.len() - r.0.len()
        };
        for i in 0..a.z_ch() {
            let v = &mut int[nz_at + 4 + i];
            *v = (*v + 3).min(63);
        }
        let b = Arc::new(
            Model::parse(
                "test-b",
                read("enc.onnx"),
                read("hs.onnx"),
                read("gs.onnx"),
                &int,
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        assert_ne!(a.id, b.id);
        let raw = photo("skimage_data_coffee.png");
        let only_a = LearnedImage::with_models(vec![a.clone()]);
        let mut pa = Vec::new();
        let ma = only_a
            .encode(&raw, &EncodeParams::level(2200), &mut pa)
            .unwrap_or_else(|e| panic!("{e}"));
        let want = only_a
            .decode_with(&pa, Engine::Ort(None), false)
            .unwrap_or_else(|e| panic!("{e}"));
        let both = LearnedImage::with_models(vec![a.clone(), b.clone()]);
        let mut pb = Vec::new();
        both.encode(&raw, &EncodeParams::level(2200), &mut pb)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&pb[1..33], &b.id[..], "the newest model encodes");
        assert_eq!(&pa[1..33], &a.id[..]);
        let got = both
            .decode_with(&pa, Engine::Ort(None), false)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            got == want,
            "model A's block decodes the same after B ships"
        );
        let only_b = LearnedImage::with_models(vec![b]);
        let mut out = Vec::new();
        let err = only_b
            .decode(&pa, ma, serve(&want).len(), &mut out)
            .err()
            .unwrap_or_else(|| panic!("decoded without its model"));
        assert!(err.to_string().contains(&hex(&a.id)), "{err}");
    }
}
