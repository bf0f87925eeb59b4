//! Codec choice: one pure function from (content class, effective policy, size, stage, codec
//! availability) to an ordered list of candidates, and the rules that decide whether an
//! encoding may be kept. The write path, recompression and the benchmarks all use it, so they
//! do and measure the same thing.
//!
//! Invariants:
//! - Candidates come strongest-first; the caller tries them in order, keeps the first one that
//!   passes `accept` and `pays` (per block: the smallest of the block candidates), and stores
//!   the data raw when none does. Raw is never listed: it is always the fallback.
//! - Only available codecs are listed: a codec that is disabled by configuration or whose
//!   runtime is missing is never chosen (it still decodes what was stored with it).
//! - Verification (`must_verify`, `accept`): every recompression candidate and every whole-file
//!   encoding is decoded and checked before it is stored. Write-path block encodings are not
//!   decoded (the writer must not wait for it): the raw-data hash in every record catches a bad
//!   encoding at read time, as EIO, never as wrong bytes.
//! - A lossless candidate is kept only when it decodes to the input bit for bit. A lossy one
//!   only where the policy permits its medium, and only when its decoded output meets the
//!   policy's quality target, measured by `accept` on the decoded output (images: PSNR over
//!   every sample; `q=N` means PSNR ≥ `image_psnr_target`; audio: `q` names the Opus bitrate,
//!   and the decoded file must keep the original's length, header and tail).
//! - A file whose content already is a lossy reconstruction (`FLAG_LOSSY`) is never lossily
//!   re-encoded (the recompressor drops lossy candidates for it).

use super::layout::BLOCK_U64;
use crate::classify::ContentClass as C;
use crate::codec::{
    CodecId, CM, CM_BLOCK, CM_MAX_LEN, DEFLATE, DEFLATE_TOKENS, DEFLATE_TOKENS_IMAGE_LEVEL,
    DICT_JSON, DICT_SOURCE, DICT_TEXT, EXEC, FLAC, IMAGE_AVIF, IMAGE_LEARNED, IMAGE_WEBP, JPEG,
    WAV_OPUS, XZ_RECODE, ZSTD, ZSTD_DICT, ZSTD_LONG,
};
use crate::policy::{Effective, Level, Medium, Quality};

/// Mount-wide settings that shape the candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// zstd level of the write path at levels balanced and above (`--zstd-level`).
    pub write_level: i32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning { write_level: 3 }
    }
}

/// When the choice is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The write path: cheap, never stalls the writer.
    Write,
    /// Background or requested recompression of a closed file: the strongest the policy allows.
    Recompress,
}

/// What the decoded output must be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fidelity {
    /// The input, bit for bit.
    Lossless,
    /// New content for the file, meeting the policy's quality target for the medium.
    Lossy { medium: Medium, target: Quality },
}

/// One codec to try, with what to ask of it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub codec: CodecId,
    /// Codec effort (zstd level).
    pub level: i32,
    /// Trained model or dictionary (0: the codec's default).
    pub model: u32,
    /// The codec takes the whole file as one object (else each block on its own).
    pub whole_file: bool,
    pub fidelity: Fidelity,
}

impl Candidate {
    fn block(codec: CodecId, level: i32, model: u32) -> Candidate {
        Candidate {
            codec,
            level,
            model,
            whole_file: false,
            fidelity: Fidelity::Lossless,
        }
    }

    fn whole(codec: CodecId, level: i32, model: u32) -> Candidate {
        Candidate {
            codec,
            level,
            model,
            whole_file: true,
            fidelity: Fidelity::Lossless,
        }
    }
}

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

/// Largest file the default level stores as one whole-file object when the object must be
/// decoded whole to read any part of it (LZMA2 for executables, long-window zstd for text):
/// a cold random read then costs at most this much decoding (~0.35 s for LZMA2 at ~90 MB/s).
pub const BALANCED_WHOLE_MAX: u64 = 32 << 20;

/// The prior (trained initial state) of the context-mixing codec for a text-like class: the
/// class's dictionary, whose bytes are real files of that kind.
pub fn cm_prior(class: C) -> Option<u32> {
    match class {
        C::Text | C::Log | C::Csv | C::Xml => Some(DICT_TEXT),
        C::Source => Some(DICT_SOURCE),
        C::Json => Some(DICT_JSON),
        _ => None,
    }
}

/// The format-aware whole-file codecs for a file of this class and size at `level`, with the
/// effort and model to ask of each, strongest first. Every codec listed at `balanced` (the default)
/// decodes at 20 MB/s of output per core or more (BENCHMARKS.md); slower ones are only for
/// data declared cold (`max`, `archive`).
fn whole_file_codecs(class: Option<C>, size: u64, level: Level) -> Vec<(CodecId, i32, u32)> {
    if level < Level::Balanced {
        return Vec::new();
    }
    let cold = level >= Level::Max;
    let Some(class) = class else {
        return Vec::new();
    };
    // Context mixing decodes at ~0.9 MB/s: only for data declared archive, and only up to
    // the size a cold read may decode whole. The smaller of it and the max level's codecs wins.
    let mut v = Vec::new();
    if level == Level::Archive && size <= CM_MAX_LEN as u64 {
        if let Some(prior) = cm_prior(class) {
            v.push((CM, 19, prior));
        }
    }
    let rest = match class {
        C::Jpeg => vec![(JPEG, 19)],
        C::Wav => vec![(FLAC, 19)],
        // Rebuilding deflate streams decodes at ~12 MB/s of gzip/zip (deflate-tokens; PNG
        // with pixel coding ~2-6 MB/s) or 1-9 MB/s (preflate; PNG with pixel coding < 1
        // MB/s), below the default level's
        // 20 MB/s (BENCHMARKS.md 6.1): only for data declared cold. Both are tried; the
        // smaller wins.
        C::Png | C::Gzip | C::Zip if cold => {
            vec![(DEFLATE_TOKENS, DEFLATE_TOKENS_IMAGE_LEVEL), (DEFLATE, 19)]
        }
        // LZMA2 behind a branch filter decodes at ~90 MB/s, slower than zstd but fast enough
        // for the default level up to a size.
        C::Elf | C::Pe if cold || size <= BALANCED_WHOLE_MAX => vec![(EXEC, 19)],
        // xz containers rebuilt by running xz's encoder (~2 MB/s per core): cold data only.
        C::Xz | C::Ar if cold => vec![(XZ_RECODE, 19)],
        // Text-like files: one zstd frame over the whole file, except small files with a
        // dictionary for their class, which do better with it (per block).
        C::Text | C::Source | C::Log | C::Json | C::Csv | C::Xml
            if (cold || size <= BALANCED_WHOLE_MAX) && dict_for(Some(class), size).is_none() =>
        {
            vec![(ZSTD_LONG, 19)]
        }
        _ => Vec::new(),
    };
    v.extend(rest.into_iter().map(|(id, effort)| (id, effort, 0)));
    v
}

/// The medium a lossy policy key governs for this class (rasters stored losslessly today,
/// PCM audio); JPEG and compressed formats are never re-encoded lossily.
pub fn medium_of(class: Option<C>) -> Option<Medium> {
    match class? {
        C::Png | C::Bmp | C::Pnm | C::Tiff => Some(Medium::Image),
        C::Wav | C::Aiff => Some(Medium::Audio),
        _ => None,
    }
}

/// The PSNR (dB) an image must keep under `quality`: `psnr=DB` as given; `q=N` (1..=100)
/// maps linearly to 20 + N/4 dB (q=100: 45 dB, q=80: 40 dB, q=60: 35 dB, q=40: 30 dB).
pub fn image_psnr_target(quality: Quality) -> f32 {
    match quality {
        Quality::Psnr(db) => db,
        Quality::Q(n) => 20.0 + n as f32 / 4.0,
    }
}

/// The lossy whole-file candidates for a file of `class` under `policy` (recompression only,
/// only where the policy names the file's medium). Tried before the lossless ones; the
/// smallest verified encoding of all wins.
fn lossy_codecs(class: Option<C>, policy: &Effective) -> Vec<Candidate> {
    let Some(medium) = medium_of(class) else {
        return Vec::new();
    };
    let Some(&target) = policy.lossy.get(&medium) else {
        return Vec::new();
    };
    match medium {
        // PNG, binary PNM, uncompressed BMP and TIFF have a reader and writer here (the
        // codecs refuse the variants they cannot serve back, which stay lossless). WebP,
        // AV1 and the learned codec all try; the smallest verified one wins.
        Medium::Image if matches!(class, Some(C::Png | C::Pnm | C::Bmp | C::Tiff)) => {
            [IMAGE_WEBP, IMAGE_AVIF, IMAGE_LEARNED]
                .into_iter()
                .map(|codec| Candidate {
                    codec,
                    level: (image_psnr_target(target) * 100.0).round() as i32,
                    model: 0,
                    whole_file: true,
                    fidelity: Fidelity::Lossy { medium, target },
                })
                .collect()
        }
        // Opus takes its quality as a bitrate (`codec::opus_bitrate`); WAV and plain AIFF.
        Medium::Audio if matches!(class, Some(C::Wav | C::Aiff)) => match target {
            Quality::Q(q) => vec![Candidate {
                codec: WAV_OPUS,
                level: q as i32,
                model: 0,
                whole_file: true,
                fidelity: Fidelity::Lossy { medium, target },
            }],
            Quality::Psnr(_) => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Candidates for a file of `class` and `size` under `policy` at `stage`, strongest first.
/// `available` says whether a codec may be used to encode now.
pub fn candidates(
    class: Option<C>,
    policy: &Effective,
    size: u64,
    stage: Stage,
    tuning: &Tuning,
    available: &dyn Fn(CodecId) -> bool,
) -> Vec<Candidate> {
    let level = match (stage, policy.level) {
        (Stage::Write, Level::Off) => None,
        (Stage::Write, Level::Fast) => Some(1),
        (Stage::Write, _) => Some(tuning.write_level),
        (Stage::Recompress, l) => l.recompress_zstd(),
    };
    let Some(level) = level else {
        return Vec::new();
    };
    if class == Some(C::Incompressible) || class == Some(C::Zero) {
        return Vec::new();
    }
    let mut v = Vec::new();
    if stage == Stage::Recompress {
        v.extend(lossy_codecs(class, policy));
        for (id, effort, model) in whole_file_codecs(class, size, policy.level) {
            v.push(Candidate::whole(id, effort, model));
        }
    }
    // Files too large for one context-mixing object: context mixing per block, each block
    // starting from the class's prior (a cold read decodes one block, ~0.15 s).
    if stage == Stage::Recompress && policy.level == Level::Archive && size > CM_MAX_LEN as u64 {
        if let Some(prior) = class.and_then(cm_prior) {
            v.push(Candidate::block(CM_BLOCK, 19, prior));
        }
    }
    if let Some(d) = dict_for(class, size) {
        v.push(Candidate::block(ZSTD_DICT, level, d));
    }
    v.push(Candidate::block(ZSTD, level, 0));
    v.retain(|c| available(c.codec));
    // Per-block context mixing beats one long-window zstd frame over text: where it applies,
    // the whole-file frame (tried first, and kept when it pays) must not pre-empt it.
    if v.iter().any(|c| c.codec == CM_BLOCK) {
        v.retain(|c| c.codec != ZSTD_LONG);
    }
    v
}

/// Whether an encoding by `c` at `stage` must be decoded and `accept`ed before it is stored.
pub fn must_verify(c: &Candidate, stage: Stage) -> bool {
    stage == Stage::Recompress || c.whole_file || c.fidelity != Fidelity::Lossless
}

/// Whether an encoding of `raw` whose decoding gave `decoded` may be kept under `fidelity`.
pub fn accept(fidelity: Fidelity, raw: &[u8], decoded: &[u8]) -> bool {
    match fidelity {
        Fidelity::Lossless => decoded == raw,
        Fidelity::Lossy {
            medium: Medium::Image,
            target,
        } => crate::codec::image_psnr(raw, decoded)
            .is_some_and(|db| db >= image_psnr_target(target) as f64),
        // Audio quality is set by the bitrate `q` maps to; what is checked is that the result
        // is the same WAV around new samples (length, header and tail).
        Fidelity::Lossy {
            medium: Medium::Audio,
            ..
        } => crate::codec::audio_matches_layout(raw, decoded),
    }
}

/// Whether a block encoding of `out_len` bytes pays for its decoding cost over storing
/// `raw_len` bytes raw: it must save at least 1/32.
pub fn pays(raw_len: usize, out_len: usize) -> bool {
    out_len < raw_len - raw_len / 32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pol(level: Level) -> Effective {
        Effective {
            level,
            ..Effective::default()
        }
    }

    fn all(_: CodecId) -> bool {
        true
    }

    fn ids(v: &[Candidate]) -> Vec<(CodecId, i32, bool)> {
        v.iter().map(|c| (c.codec, c.level, c.whole_file)).collect()
    }

    const SMALL: u64 = 10_000;
    const BIG: u64 = 1 << 20;

    #[test]
    fn table() {
        use Level::*;
        use Stage::*;
        type Case = (Option<C>, Level, u64, Stage, Vec<(CodecId, i32, bool)>);
        let cases: Vec<Case> = vec![
            // Write path: the level's zstd, a dictionary first for small text-like files.
            (
                Some(C::Binary),
                Balanced,
                BIG,
                Write,
                vec![(ZSTD, 3, false)],
            ),
            (Some(C::Binary), Fast, BIG, Write, vec![(ZSTD, 1, false)]),
            (Some(C::Binary), Off, BIG, Write, vec![]),
            (
                Some(C::Json),
                Balanced,
                SMALL,
                Write,
                vec![(ZSTD_DICT, 3, false), (ZSTD, 3, false)],
            ),
            (Some(C::Json), Balanced, BIG, Write, vec![(ZSTD, 3, false)]),
            (Some(C::Jpeg), Max, BIG, Write, vec![(ZSTD, 3, false)]),
            (Some(C::Incompressible), Max, BIG, Write, vec![]),
            (None, Balanced, BIG, Write, vec![(ZSTD, 3, false)]),
            // Recompression: whole-file codec first where the level allows it.
            (
                Some(C::Jpeg),
                Balanced,
                BIG,
                Recompress,
                vec![(JPEG, 19, true), (ZSTD, 9, false)],
            ),
            (
                Some(C::Wav),
                Balanced,
                BIG,
                Recompress,
                vec![(FLAC, 19, true), (ZSTD, 9, false)],
            ),
            (
                Some(C::Png),
                Balanced,
                BIG,
                Recompress,
                vec![(ZSTD, 9, false)],
            ),
            (
                Some(C::Png),
                Max,
                BIG,
                Recompress,
                vec![
                    (DEFLATE_TOKENS, 19, true),
                    (DEFLATE, 19, true),
                    (ZSTD, 19, false),
                ],
            ),
            (
                Some(C::Zip),
                Archive,
                BIG,
                Recompress,
                vec![
                    (DEFLATE_TOKENS, 19, true),
                    (DEFLATE, 19, true),
                    (ZSTD, 19, false),
                ],
            ),
            (
                Some(C::Elf),
                Balanced,
                BIG,
                Recompress,
                vec![(EXEC, 19, true), (ZSTD, 9, false)],
            ),
            (
                Some(C::Elf),
                Balanced,
                BALANCED_WHOLE_MAX + 1,
                Recompress,
                vec![(ZSTD, 9, false)],
            ),
            (
                Some(C::Elf),
                Max,
                BALANCED_WHOLE_MAX + 1,
                Recompress,
                vec![(EXEC, 19, true), (ZSTD, 19, false)],
            ),
            (
                Some(C::Text),
                Balanced,
                BIG,
                Recompress,
                vec![(ZSTD_LONG, 19, true), (ZSTD, 9, false)],
            ),
            (
                Some(C::Elf),
                Max,
                BIG,
                Recompress,
                vec![(EXEC, 19, true), (ZSTD, 19, false)],
            ),
            (
                Some(C::Text),
                Max,
                BIG,
                Recompress,
                vec![(ZSTD_LONG, 19, true), (ZSTD, 19, false)],
            ),
            (
                Some(C::Text),
                Max,
                SMALL,
                Recompress,
                vec![(ZSTD_DICT, 19, false), (ZSTD, 19, false)],
            ),
            (
                Some(C::Source),
                Balanced,
                SMALL,
                Recompress,
                vec![(ZSTD_DICT, 9, false), (ZSTD, 9, false)],
            ),
            // Archive: context mixing first for text-like files up to its size limit.
            (
                Some(C::Json),
                Archive,
                SMALL,
                Recompress,
                vec![(CM, 19, true), (ZSTD_DICT, 19, false), (ZSTD, 19, false)],
            ),
            (
                Some(C::Text),
                Archive,
                BIG,
                Recompress,
                vec![(CM, 19, true), (ZSTD_LONG, 19, true), (ZSTD, 19, false)],
            ),
            (
                Some(C::Text),
                Archive,
                CM_MAX_LEN as u64 + 1,
                Recompress,
                vec![(CM_BLOCK, 19, false), (ZSTD, 19, false)],
            ),
            (Some(C::Text), Archive, BIG, Write, vec![(ZSTD, 3, false)]),
            (Some(C::Jpeg), Fast, BIG, Recompress, vec![]),
            (Some(C::Jpeg), Off, BIG, Recompress, vec![]),
        ];
        for (class, level, size, stage, want) in cases {
            let got = ids(&candidates(
                class,
                &pol(level),
                size,
                stage,
                &Tuning::default(),
                &all,
            ));
            assert_eq!(got, want, "{class:?} {level:?} {size} {stage:?}");
        }
    }

    #[test]
    fn unavailable_codecs_are_never_listed() {
        let no_jpeg = |id: CodecId| id != JPEG;
        let t = Tuning::default();
        let got = ids(&candidates(
            Some(C::Jpeg),
            &pol(Level::Max),
            BIG,
            Stage::Recompress,
            &t,
            &no_jpeg,
        ));
        assert_eq!(got, vec![(ZSTD, 19, false)]);
        let none = |_: CodecId| false;
        assert!(candidates(
            Some(C::Text),
            &pol(Level::Max),
            SMALL,
            Stage::Write,
            &t,
            &none
        )
        .is_empty());
        // The mount's write level applies from balanced up, not to fast.
        let t9 = Tuning { write_level: 9 };
        let got = candidates(
            Some(C::Binary),
            &pol(Level::Max),
            BIG,
            Stage::Write,
            &t9,
            &all,
        );
        assert_eq!(ids(&got), vec![(ZSTD, 9, false)]);
        let got = candidates(
            Some(C::Binary),
            &pol(Level::Fast),
            BIG,
            Stage::Write,
            &t9,
            &all,
        );
        assert_eq!(ids(&got), vec![(ZSTD, 1, false)]);
    }

    #[test]
    fn lossy_candidates_only_where_the_policy_names_the_medium() {
        let cands = |class, p: &Effective, stage| {
            candidates(Some(class), p, BIG, stage, &Tuning::default(), &all)
        };
        let mut p = pol(Level::Balanced);
        // No lossy key: every candidate is lossless.
        assert!(cands(C::Png, &p, Stage::Recompress)
            .iter()
            .all(|c| c.fidelity == Fidelity::Lossless));
        p.lossy.insert(Medium::Image, Quality::Psnr(40.0));
        let v = cands(C::Png, &p, Stage::Recompress);
        assert_eq!(v[0].codec, IMAGE_WEBP);
        assert_eq!(v[0].level, 4000);
        assert!(v[0].whole_file);
        assert_eq!(
            v[0].fidelity,
            Fidelity::Lossy {
                medium: Medium::Image,
                target: Quality::Psnr(40.0)
            }
        );
        assert_eq!((v[1].codec, v[1].level), (IMAGE_AVIF, 4000));
        assert_eq!((v[2].codec, v[2].level), (IMAGE_LEARNED, 4000));
        assert!(v[3..].iter().all(|c| c.fidelity == Fidelity::Lossless));
        // Never on the write path, never for JPEG, and never for an unavailable codec.
        assert!(cands(C::Png, &p, Stage::Write)
            .iter()
            .all(|c| c.fidelity == Fidelity::Lossless));
        assert_eq!(cands(C::Pnm, &p, Stage::Recompress)[0].codec, IMAGE_WEBP);
        assert_eq!(cands(C::Bmp, &p, Stage::Recompress)[0].codec, IMAGE_WEBP);
        assert_eq!(cands(C::Tiff, &p, Stage::Recompress)[1].codec, IMAGE_AVIF);
        assert!(cands(C::Jpeg, &p, Stage::Recompress)
            .iter()
            .all(|c| c.fidelity == Fidelity::Lossless));
        assert!(cands(C::Wav, &p, Stage::Recompress)
            .iter()
            .all(|c| c.fidelity == Fidelity::Lossless));
        p.lossy.insert(Medium::Audio, Quality::Q(50));
        let v = cands(C::Wav, &p, Stage::Recompress);
        assert_eq!((v[0].codec, v[0].level), (WAV_OPUS, 50));
        assert_eq!((v[1].codec, v[1].fidelity), (FLAC, Fidelity::Lossless));
        let no_webp = |id| id != IMAGE_WEBP;
        assert!(candidates(
            Some(C::Png),
            &p,
            BIG,
            Stage::Recompress,
            &Tuning::default(),
            &no_webp
        )
        .iter()
        .all(|c| c.codec != IMAGE_WEBP));
        // Without ONNX Runtime the learned codec is unavailable and WebP still applies.
        let no_learned = |id| id != IMAGE_LEARNED;
        let v = candidates(
            Some(C::Png),
            &p,
            BIG,
            Stage::Recompress,
            &Tuning::default(),
            &no_learned,
        );
        assert_eq!(v[0].codec, IMAGE_WEBP);
        assert_eq!(v[1].codec, IMAGE_AVIF);
        assert!(v.iter().all(|c| c.codec != IMAGE_LEARNED));
        // q=N maps to a PSNR target.
        p.lossy.insert(Medium::Image, Quality::Q(80));
        assert_eq!(cands(C::Png, &p, Stage::Recompress)[0].level, 4000);
        assert_eq!(image_psnr_target(Quality::Q(100)), 45.0);
        assert_eq!(image_psnr_target(Quality::Q(40)), 30.0);
        assert_eq!(medium_of(Some(C::Png)), Some(Medium::Image));
        assert_eq!(medium_of(Some(C::Jpeg)), None);
    }

    #[test]
    fn acceptance_rules() {
        assert!(accept(Fidelity::Lossless, b"abc", b"abc"));
        assert!(!accept(Fidelity::Lossless, b"abc", b"abd"));
        let lossy = Fidelity::Lossy {
            medium: Medium::Image,
            target: Quality::Psnr(40.0),
        };
        // Not PNGs: no quality can be measured, so nothing is accepted.
        assert!(!accept(lossy, b"abc", b"abc"));
        let audio = Fidelity::Lossy {
            medium: Medium::Audio,
            target: Quality::Q(90),
        };
        assert!(!accept(audio, b"abc", b"abc"), "not a WAV");
        let zstd = Candidate::block(ZSTD, 3, 0);
        assert!(!must_verify(&zstd, Stage::Write));
        assert!(must_verify(&zstd, Stage::Recompress));
        assert!(must_verify(&Candidate::whole(JPEG, 19, 0), Stage::Write));
        assert!(pays(1024, 991));
        assert!(!pays(1024, 992));
    }
}
