//! Which codec a file's content class gets at a policy level: the one place that maps classes
//! to format-aware codecs and trained dictionaries (recompression uses it; so do the
//! benchmarks, so they measure what the filesystem does).
//!
//! Invariant: only lossless codecs are named here; every choice is a candidate that the
//! caller verifies and keeps only when it is smaller than what is stored.

use super::layout::BLOCK_U64;
use crate::classify::ContentClass as C;
use crate::codec::{
    CodecId, DEFLATE, DICT_JSON, DICT_SOURCE, DICT_TEXT, EXEC, FLAC, JPEG, ZSTD_LONG,
};
use crate::policy::Level;

/// The trained zstd dictionary for a file of this class and size, if one was measured to help:
/// small (one-block) text, source and JSON (see models/dicts/train.sh and BENCHMARKS.md).
pub fn dict_for(class: Option<C>, size: u64) -> Option<u32> {
    if size > BLOCK_U64 {
        return None;
    }
    match class? {
        C::Text | C::Log => Some(DICT_TEXT),
        C::Source => Some(DICT_SOURCE),
        C::Json => Some(DICT_JSON),
        _ => None,
    }
}

/// The whole-file codec for a file of this class and size at `level`, if any.
pub fn whole_file_codec(class: Option<C>, size: u64, level: Level) -> Option<CodecId> {
    match class? {
        C::Jpeg => Some(JPEG),
        C::Wav => Some(FLAC),
        // Rebuilding a deflate stream runs at ~1 MB/s, inline in the first read after a cache
        // miss: only for data declared cold (max, archive).
        C::Png | C::Gzip | C::Zip if level >= Level::Max => Some(DEFLATE),
        // Executables are cold at these levels too: LZMA2 behind a branch filter decodes at
        // ~90 MB/s, slower than zstd.
        C::Elf | C::Pe if level >= Level::Max => Some(EXEC),
        // Text-like files: one zstd frame over the whole file, except small files with a
        // dictionary for their class, which do better with it (per block).
        C::Text | C::Source | C::Log | C::Json | C::Csv | C::Xml
            if level >= Level::Max && dict_for(class, size).is_none() =>
        {
            Some(ZSTD_LONG)
        }
        _ => None,
    }
}
