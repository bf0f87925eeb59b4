//! zstd with a trained dictionary, for small text-like files (one block), where a generic
//! compressor has too little data to learn from. The dictionaries are built by
//! `models/dicts/train.sh` from real files of Debian and PyPI packages and compiled into the
//! binary.
//!
//! Invariants:
//! - The block params are the dictionary id in bits 0–15 (also written in every frame, so
//!   zstd itself refuses a frame paired with the wrong dictionary) and the zstd level used in
//!   bits 16–23 (informative: recompression skips blocks already at its level).
//! - A shipped dictionary is never changed or removed, and its id is never reused: blocks
//!   written by any earlier build must decode. A retrained dictionary gets a new id.
//! - Decoding writes at most `raw_len` bytes.

use std::sync::OnceLock;

use zstd::dict::DecoderDictionary;

use super::{Codec, CodecError, CodecId, EncodeParams, ZSTD_DICT};

/// Prose and documentation (text and log classes).
pub const DICT_TEXT: u32 = 1;
/// Program source in common languages.
pub const DICT_SOURCE: u32 = 2;
/// JSON documents.
pub const DICT_JSON: u32 = 3;

/// The zstd level recorded in a zstd-dict block's params.
pub fn level_of(params: u32) -> u32 {
    params >> 16 & 0xff
}

/// How a zstd-dict block is shown to users: `zstd-dict:<dictionary>:<level>`.
pub fn describe(params: u32) -> String {
    let name = match params & 0xffff {
        DICT_TEXT => "text".to_string(),
        DICT_SOURCE => "source".to_string(),
        DICT_JSON => "json".to_string(),
        other => format!("dict{other}"),
    };
    format!("zstd-dict:{name}:{}", level_of(params))
}

/// Every dictionary this build can decode, by id (ids fit in 16 bits).
const DICTS: [(u32, &[u8]); 3] = [
    (DICT_TEXT, include_bytes!("../../models/dicts/text.zdict")),
    (
        DICT_SOURCE,
        include_bytes!("../../models/dicts/source.zdict"),
    ),
    (DICT_JSON, include_bytes!("../../models/dicts/json.zdict")),
];

fn dict(id: u32) -> Result<(usize, &'static [u8]), CodecError> {
    DICTS
        .iter()
        .position(|(i, _)| *i == id)
        .map(|p| (p, DICTS[p].1))
        .ok_or_else(|| CodecError::Malformed(format!("unknown zstd dictionary id {id}")))
}

/// The bytes of dictionary `id` (also the prior of the context-mixing codec).
pub(crate) fn dict_bytes(id: u32) -> Option<&'static [u8]> {
    dict(id).ok().map(|(_, b)| b)
}

/// Digested decoder dictionaries, built once per process on first use.
fn decoder_dict(id: u32) -> Result<&'static DecoderDictionary<'static>, CodecError> {
    static DDICTS: [OnceLock<DecoderDictionary<'static>>; DICTS.len()] =
        [const { OnceLock::new() }; DICTS.len()];
    let (pos, bytes) = dict(id)?;
    Ok(DDICTS[pos].get_or_init(|| DecoderDictionary::copy(bytes)))
}

pub struct ZstdDict;

impl Codec for ZstdDict {
    fn id(&self) -> CodecId {
        ZSTD_DICT
    }
    fn name(&self) -> &'static str {
        "zstd-dict"
    }
    /// `p.model` names the dictionary (one of the `DICT_*` ids).
    fn encode(&self, raw: &[u8], p: &EncodeParams, out: &mut Vec<u8>) -> Result<u32, CodecError> {
        out.clear();
        let (_, bytes) = dict(p.model)
            .map_err(|_| CodecError::Failed(format!("no zstd dictionary with id {}", p.model)))?;
        let level = p.level.clamp(1, 22);
        // A few contexts per thread, each kept with its dictionary loaded at its level:
        // digesting a dictionary costs more than compressing a small file with it, and the
        // write path alternates levels (1 when behind, the policy's otherwise) and classes.
        type Ctx = ((u32, i32), zstd::bulk::Compressor<'static>);
        const KEEP: usize = 4;
        thread_local! {
            static CCTX: std::cell::RefCell<Vec<Ctx>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        CCTX.with(|ctxs| {
            let mut ctxs = ctxs.borrow_mut();
            let key = (p.model, level);
            match ctxs.iter().position(|(k, _)| *k == key) {
                // Most recently used first.
                Some(i) => ctxs[..=i].rotate_right(1),
                None => {
                    let c = zstd::bulk::Compressor::with_dictionary(level, bytes)
                        .map_err(|e| CodecError::Failed(e.to_string()))?;
                    ctxs.truncate(KEEP - 1);
                    ctxs.insert(0, (key, c));
                }
            }
            let (_, c) = ctxs
                .first_mut()
                .ok_or_else(|| CodecError::Failed("no zstd context".into()))?;
            c.compress_to_buffer(raw, out)
                .map_err(|e| CodecError::Failed(e.to_string()))
        })?;
        if out.len() >= raw.len() {
            return Err(CodecError::NotWorthIt);
        }
        Ok(p.model | (level as u32) << 16)
    }
    fn decode(
        &self,
        payload: &[u8],
        params: u32,
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        out.clear();
        let dd = decoder_dict(params & 0xffff)?;
        let mut d = zstd::bulk::Decompressor::with_prepared_dictionary(dd)
            .map_err(|e| CodecError::Failed(e.to_string()))?;
        out.reserve(raw_len);
        // Decoding into spare capacity never reallocates: a frame claiming more than raw_len
        // fails instead of allocating.
        let n = d
            .decompress_to_buffer(payload, out)
            .map_err(|e| CodecError::Malformed(e.to_string()))?;
        CodecError::check_len(n, raw_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testdata::samples;

    /// The smallest real JSON sample (a few KiB: the files dictionaries are for).
    fn small_json() -> Vec<u8> {
        samples("json")
            .into_iter()
            .map(|(_, b)| b)
            .min_by_key(|b| b.len())
            .unwrap_or_default()
    }

    fn enc(raw: &[u8], level: i32, model: u32) -> Result<(u32, Vec<u8>), CodecError> {
        let mut out = Vec::new();
        let p = ZstdDict.encode(raw, &EncodeParams { level, model }, &mut out)?;
        Ok((p, out))
    }

    #[test]
    fn every_dictionary_loads_and_has_its_id() {
        for (id, bytes) in DICTS {
            // A zstd dictionary starts with its magic, then its id (little endian).
            assert_eq!(bytes[..4], [0x37, 0xa4, 0x30, 0xec], "dict {id}");
            assert_eq!(
                u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
                id
            );
            assert!(decoder_dict(id).is_ok());
        }
    }

    #[test]
    fn small_json_round_trips_and_beats_plain_zstd() {
        let raw = small_json();
        let (params, out) = enc(&raw, 19, DICT_JSON).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((params & 0xffff, level_of(params)), (DICT_JSON, 19));
        let mut back = Vec::new();
        ZstdDict
            .decode(&out, params, raw.len(), &mut back)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, raw);
        let plain = zstd::bulk::compress(&raw, 19).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.len() < plain.len(),
            "dict {} vs plain {}",
            out.len(),
            plain.len()
        );
    }

    #[test]
    fn wrong_dictionary_or_length_is_an_error() {
        let raw = small_json();
        let (params, out) = enc(&raw, 9, DICT_JSON).unwrap_or_else(|e| panic!("{e}"));
        let mut back = Vec::new();
        ZstdDict
            .decode(&out, params, raw.len(), &mut back)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, raw);
        assert!(ZstdDict
            .decode(&out, DICT_SOURCE, raw.len(), &mut back)
            .is_err());
        assert!(ZstdDict.decode(&out, 99, raw.len(), &mut back).is_err());
        assert!(ZstdDict
            .decode(&out, params, raw.len() - 1, &mut back)
            .is_err());
        assert!(ZstdDict
            .decode(&out[..out.len() / 2], params, raw.len(), &mut back)
            .is_err());
        assert!(enc(&raw, 9, 0).is_err(), "model 0 names no dictionary");
    }
}
