//! Context-mixing compression for text-like files at `level=archive`: a bitwise predictor
//! (`model`) mixing order-0..6, word, column and match models, driving a binary arithmetic
//! coder (`coder`). The approach of lpaq/paq, written for this project.
//!
//! Invariants:
//! - Params: bits 0–7 name the prior (0: none; else a `zstd-dict` dictionary id whose bytes
//!   the model is primed with before coding), bits 8–15 the model version. A version or a
//!   prior, once shipped, is never changed: old blocks must decode bit for bit.
//! - Decoding depends only on the payload, the params and the raw length, and uses integer
//!   arithmetic only: identical on every machine and thread count.
//! - Whole files up to `MAX_LEN`: the decoder's memory and time are bounded by it.

mod coder;
mod model;

use std::sync::OnceLock;

use self::model::Model;
use super::{Codec, CodecError, CodecId, EncodeParams, Granularity, CM, CM_BLOCK};

/// Model version 1: the predictor in `model.rs` as first shipped.
const VERSION: u32 = 1;

/// Largest file coded as one object (a cold read decodes it whole, at ~1 MB/s).
pub const MAX_LEN: usize = 8 << 20;

/// Chunks up to this length start from a copy of the whole primed model (its context tables
/// included); longer ones from its learned weights and maps only, with tables sized for them.
const SMALL: usize = 1 << 17;

/// Table sizes of the primed model (log2 buckets, log2 match slots).
const PRIMED_BITS: (u32, u32) = (18, 18);

/// The priors this build has: `zstd-dict` dictionary ids (their bytes are real text, source
/// and JSON from pinned packages outside the dev corpus; see models/dicts/train.sh).
const PRIORS: [u32; 3] = [super::DICT_TEXT, super::DICT_SOURCE, super::DICT_JSON];

/// The model after reading prior `id`, built once per process.
fn primed(id: u32) -> Result<&'static Model, CodecError> {
    static P: [OnceLock<Model>; PRIORS.len()] = [const { OnceLock::new() }; PRIORS.len()];
    let pos = PRIORS
        .iter()
        .position(|p| *p == id)
        .ok_or_else(|| CodecError::Malformed(format!("unknown context-mixing prior {id}")))?;
    let text = super::zstd_dict::dict_bytes(id)
        .ok_or_else(|| CodecError::Malformed(format!("prior {id} has no dictionary")))?;
    Ok(P[pos].get_or_init(|| {
        let mut m = Model::new(PRIMED_BITS.0, PRIMED_BITS.1);
        for &c in text {
            for i in (0..8).rev() {
                m.update((c as u32 >> i) & 1);
            }
        }
        m
    }))
}

/// The model a chunk of `len` bytes starts from.
fn start(len: usize, prior: u32) -> Result<Model, CodecError> {
    if prior == 0 {
        let (b, m) = Model::sizes_for(len);
        return Ok(Model::new(b, m));
    }
    let p = primed(prior)?;
    if len <= SMALL {
        return Ok(p.clone());
    }
    let (b, m) = Model::sizes_for(len);
    let mut fresh = Model::new(b, m);
    fresh.learn_from(p);
    Ok(fresh)
}

/// Encode `raw` with prior `prior` (0 or one of `PRIORS`).
pub(crate) fn compress(raw: &[u8], prior: u32, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let mut m = start(raw.len(), prior)?;
    let mut enc = coder::Encoder::new(out);
    for &c in raw {
        for i in (0..8).rev() {
            let bit = (c as u32 >> i) & 1;
            enc.encode(bit, m.p());
            m.update(bit);
        }
    }
    enc.finish();
    Ok(())
}

/// Decode `raw_len` bytes coded with prior `prior`.
pub(crate) fn decompress(
    payload: &[u8],
    prior: u32,
    raw_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let mut m = start(raw_len, prior)?;
    let mut dec = coder::Decoder::new(payload);
    out.reserve(raw_len);
    for _ in 0..raw_len {
        let mut c = 0u32;
        for _ in 0..8 {
            let bit = dec.decode(m.p());
            m.update(bit);
            c = (c << 1) | bit;
        }
        out.push(c as u8);
        if dec.overran() {
            return Err(CodecError::Malformed(
                "context-mixing payload truncated".into(),
            ));
        }
    }
    Ok(())
}

/// Encode with the prior `p.model` names (0 or a `zstd-dict` dictionary id); returns params.
fn encode_with(raw: &[u8], p: &EncodeParams, out: &mut Vec<u8>) -> Result<u32, CodecError> {
    out.clear();
    let prior = if PRIORS.contains(&p.model) {
        p.model
    } else {
        0
    };
    compress(raw, prior, out)?;
    if out.len() >= raw.len() {
        return Err(CodecError::NotWorthIt);
    }
    Ok(VERSION << 8 | prior)
}

fn decode_with(
    payload: &[u8],
    params: u32,
    raw_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    out.clear();
    if params >> 8 != VERSION {
        return Err(CodecError::Malformed(format!(
            "context-mixing model version {} is not known to this build",
            params >> 8
        )));
    }
    if raw_len > MAX_LEN {
        return Err(CodecError::Malformed(format!(
            "context-mixing object of {raw_len} bytes exceeds {MAX_LEN}"
        )));
    }
    decompress(payload, params & 0xff, raw_len, out)
}

/// Context mixing over a whole text-like file.
pub struct ContextMix;

impl Codec for ContextMix {
    fn id(&self) -> CodecId {
        CM
    }
    fn name(&self) -> &'static str {
        "context-mix"
    }
    fn granularity(&self) -> Granularity {
        Granularity::WholeFile { max_len: MAX_LEN }
    }
    /// `p.model` names the prior (0 or a `zstd-dict` dictionary id).
    fn encode(&self, raw: &[u8], p: &EncodeParams, out: &mut Vec<u8>) -> Result<u32, CodecError> {
        super::check_whole_len(raw, MAX_LEN, "context-mixing ")?;
        encode_with(raw, p, out)
    }
    fn decode(
        &self,
        payload: &[u8],
        params: u32,
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        decode_with(payload, params, raw_len, out)
    }
}

/// Context mixing over one block (same stream and params as `ContextMix`): each block of a
/// large file is coded on its own, so a random read decodes one block.
pub struct ContextMixBlock;

impl Codec for ContextMixBlock {
    fn id(&self) -> CodecId {
        CM_BLOCK
    }
    fn name(&self) -> &'static str {
        "context-mix-block"
    }
    /// `p.model` names the prior (0 or a `zstd-dict` dictionary id).
    fn encode(&self, raw: &[u8], p: &EncodeParams, out: &mut Vec<u8>) -> Result<u32, CodecError> {
        encode_with(raw, p, out)
    }
    fn decode(
        &self,
        payload: &[u8],
        params: u32,
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        decode_with(payload, params, raw_len, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(data: &[u8], prior: u32) -> usize {
        let c = ContextMix;
        let mut out = Vec::new();
        let params = c
            .encode(
                data,
                &EncodeParams {
                    level: 19,
                    model: prior,
                },
                &mut out,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let mut back = Vec::new();
        c.decode(&out, params, data.len(), &mut back)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(back == data);
        out.len()
    }

    /// The stored bits are a promise: the same input and prior must give these exact bytes
    /// on every machine and build (a change to the model needs a new version, not an edit),
    /// and decoding on several threads at once gives the same result.
    #[test]
    fn encoding_is_pinned_and_decoding_is_the_same_on_every_thread() {
        let mut inputs = super::super::testdata::samples("json");
        inputs.extend(super::super::testdata::samples("source"));
        let mut all = String::new();
        let mut coded = Vec::new();
        for (name, data) in &inputs {
            let prior = if name.ends_with(".json") {
                super::super::DICT_JSON
            } else {
                super::super::DICT_SOURCE
            };
            let mut out = Vec::new();
            let params = ContextMix
                .encode(
                    data,
                    &EncodeParams {
                        level: 19,
                        model: prior,
                    },
                    &mut out,
                )
                .unwrap_or_else(|e| panic!("{e}"));
            all.push_str(&format!(
                "{name} {params} {}\n",
                blake3::hash(&out).to_hex()
            ));
            coded.push((params, out, data.clone()));
        }
        assert_eq!(
            blake3::hash(all.as_bytes()).to_hex().to_string(),
            PINNED,
            "context-mixing output changed:\n{all}"
        );
        let coded = std::sync::Arc::new(coded);
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let coded = coded.clone();
                std::thread::spawn(move || {
                    coded.iter().all(|(params, out, data)| {
                        let mut back = Vec::new();
                        ContextMix
                            .decode(out, *params, data.len(), &mut back)
                            .is_ok()
                            && back == *data
                    })
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap_or(false));
        }
    }

    /// blake3 of the listing made by the test above with model version 1.
    const PINNED: &str = "a48c6dc6ec67cf94bcdcfd19e91ff277a57632aeaf1fa1000ba3d03b9db783a7";

    /// The block codec writes the same stream as the whole-file one (one block of a file).
    #[test]
    fn block_codec_matches_whole_file_codec_on_one_block() {
        let text = super::super::testdata::sample("text");
        let p = EncodeParams {
            level: 19,
            model: super::super::DICT_TEXT,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let pa = ContextMix
            .encode(&text, &p, &mut a)
            .unwrap_or_else(|e| panic!("{e}"));
        let pb = ContextMixBlock
            .encode(&text, &p, &mut b)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(pa == pb && a == b);
        let mut back = Vec::new();
        ContextMixBlock
            .decode(&b, pb, text.len(), &mut back)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(back == text);
        // A truncated payload is an error or wrong bytes (caught by the record hash), never
        // a panic; an unknown version is refused.
        let _ = ContextMixBlock.decode(&b[..b.len() / 2], pb, text.len(), &mut back);
        assert!(ContextMixBlock
            .decode(&b, 2 << 8 | pb & 0xff, text.len(), &mut back)
            .is_err());
    }

    #[test]
    fn roundtrips_text_and_binary_with_and_without_priors() {
        let text = super::super::testdata::sample("text");
        for prior in [0, super::super::DICT_TEXT, super::super::DICT_JSON] {
            let n = roundtrip(&text, prior);
            assert!(n < text.len() / 3, "prior {prior}: {n} of {}", text.len());
        }
        let mut noise = vec![0u8; 50_000];
        blake3::Hasher::new()
            .update(b"noise")
            .finalize_xof()
            .fill(&mut noise);
        let mut out = Vec::new();
        assert!(matches!(
            ContextMix.encode(
                &noise,
                &EncodeParams {
                    level: 19,
                    model: 0
                },
                &mut out
            ),
            Err(CodecError::NotWorthIt)
        ));
    }
}
