//! Content classification: decides, cheaply and from the bytes alone, what kind of data a block
//! or a file holds, so the codec selector can skip work that will not pay and pick a
//! format-aware codec where one applies. Names are never consulted.
//!
//! - `classify_block` (this file): per block, by sampling: zero / text / binary / incompressible.
//! - `classify_file` (`magic.rs`): per file, from its head: the format (magic numbers checked
//!   against header structure), else a text flavour, else the block classes.
//!
//! Invariants: classification never fails and never allocates in proportion to its input; it
//! samples or looks at a bounded head, so its cost is bounded per call.

mod magic;

pub use self::magic::{classify_file, MAX_HEAD};

/// What a block (or file) looks like. Persisted only as statistics labels. `classify_block`
/// only ever returns the first four; the others come from `classify_file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContentClass {
    /// All zero bytes: stored as a hole, no data at all.
    Zero,
    /// Mostly printable text (prose, markup without a more specific class).
    Text,
    /// Anything else that looks compressible.
    Binary,
    /// High-entropy data (compressed, encrypted, random): stored raw.
    Incompressible,
    /// Program source or scripts.
    Source,
    /// Lines that mostly start with timestamps.
    Log,
    Json,
    /// Delimited records (comma, tab, semicolon or pipe).
    Csv,
    /// XML and other angle-bracket markup.
    Xml,
    Jpeg,
    Png,
    Gif,
    Webp,
    Gzip,
    /// Zip and its kin: jar, wheel, apk, office documents.
    Zip,
    Pdf,
    /// RIFF/WAVE audio (any encoding; the FLAC codec takes integer PCM only).
    Wav,
    Aiff,
    Bmp,
    /// Netpbm: PBM, PGM, PPM, PAM.
    Pnm,
    Tiff,
    Elf,
    /// Windows PE executables and DLLs.
    Pe,
    Sqlite,
    Zstd,
    Xz,
    Bzip2,
    /// ISO base media: MP4, MOV, M4A, HEIF.
    Mp4,
    /// Matroska / WebM (EBML).
    Webm,
    /// Unix `ar` archives: Debian packages, static libraries.
    Ar,
}

impl ContentClass {
    pub fn name(self) -> &'static str {
        use ContentClass as C;
        match self {
            C::Zero => "zero",
            C::Text => "text",
            C::Binary => "binary",
            C::Incompressible => "incompressible",
            C::Source => "source",
            C::Log => "log",
            C::Json => "json",
            C::Csv => "csv",
            C::Xml => "xml",
            C::Jpeg => "jpeg",
            C::Png => "png",
            C::Gif => "gif",
            C::Webp => "webp",
            C::Gzip => "gzip",
            C::Zip => "zip",
            C::Pdf => "pdf",
            C::Wav => "wav",
            C::Aiff => "aiff",
            C::Bmp => "bmp",
            C::Pnm => "pnm",
            C::Tiff => "tiff",
            C::Elf => "elf",
            C::Pe => "pe",
            C::Sqlite => "sqlite",
            C::Zstd => "zstd",
            C::Xz => "xz",
            C::Bzip2 => "bzip2",
            C::Mp4 => "mp4",
            C::Webm => "webm",
            C::Ar => "ar",
        }
    }

    /// Formats whose data is already entropy-coded (and that no codec here re-encodes): a
    /// generic compressor will not gain on them.
    pub fn is_compressed_media(self) -> bool {
        use ContentClass as C;
        matches!(
            self,
            C::Gif | C::Webp | C::Zstd | C::Xz | C::Bzip2 | C::Mp4 | C::Webm
        )
    }
}

/// Bytes examined per sample window, and how many windows at most.
const WINDOW: usize = 64;
const MAX_WINDOWS: usize = 64;

/// Classify a block by sampling it (at most 4 KiB is examined).
pub fn classify_block(data: &[u8]) -> ContentClass {
    if is_zero(data) {
        return ContentClass::Zero;
    }
    let mut hist = [0u32; 256];
    let mut n = 0u32;
    let windows = data.len().div_ceil(WINDOW).clamp(1, MAX_WINDOWS);
    let stride = (data.len() / windows).max(WINDOW);
    let mut off = 0;
    while off < data.len() {
        for &b in &data[off..(off + WINDOW).min(data.len())] {
            hist[b as usize] += 1;
            n += 1;
        }
        off += stride;
    }
    let printable: u32 = hist[0x20..0x7f].iter().sum::<u32>()
        + hist[b'\n' as usize]
        + hist[b'\t' as usize]
        + hist[b'\r' as usize];
    if printable as f64 >= 0.95 * n as f64 {
        return ContentClass::Text;
    }
    // Shannon entropy of the sampled byte histogram, in bits per byte. A small sample
    // underestimates entropy, so the threshold scales with the sample size.
    let nf = n as f64;
    let entropy: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / nf;
            -p * p.log2()
        })
        .sum();
    let max_bits = nf.log2().min(8.0);
    if entropy >= max_bits - 0.35 && n >= 1024 {
        ContentClass::Incompressible
    } else {
        ContentClass::Binary
    }
}

/// True when every byte is zero (chunked so the compiler can vectorize it).
pub fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |a, &b| a | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// Every class in the order of its persisted id (id = position + 1; 0 = not classified).
/// Append only: the ids are stored in inode flags.
pub const ALL_CLASSES: [ContentClass; 30] = {
    use ContentClass as C;
    [
        C::Zero,
        C::Text,
        C::Binary,
        C::Incompressible,
        C::Source,
        C::Log,
        C::Json,
        C::Csv,
        C::Xml,
        C::Jpeg,
        C::Png,
        C::Gif,
        C::Webp,
        C::Gzip,
        C::Zip,
        C::Pdf,
        C::Wav,
        C::Aiff,
        C::Bmp,
        C::Pnm,
        C::Tiff,
        C::Elf,
        C::Pe,
        C::Sqlite,
        C::Zstd,
        C::Xz,
        C::Bzip2,
        C::Mp4,
        C::Webm,
        C::Ar,
    ]
};

/// The content class recorded in an inode's flags (low byte; 0 = not classified yet).
pub fn class_of_flags(flags: u32) -> Option<ContentClass> {
    let id = (flags & 0xff) as usize;
    id.checked_sub(1).and_then(|i| ALL_CLASSES.get(i)).copied()
}

pub fn class_name_of_flags(flags: u32) -> &'static str {
    class_of_flags(flags).map_or("unclassified", |c| c.name())
}

/// The flags byte for a class (see `class_of_flags`).
pub fn class_flag(c: ContentClass) -> u32 {
    ALL_CLASSES
        .iter()
        .position(|&x| x == c)
        .map_or(0, |i| i as u32 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_ids_round_trip() {
        for c in ALL_CLASSES {
            assert_eq!(class_of_flags(class_flag(c)), Some(c));
        }
        assert_eq!(class_of_flags(0), None);
        assert_eq!(class_of_flags(200), None);
    }

    #[test]
    fn classes() {
        assert_eq!(classify_block(&[0u8; 131072]), ContentClass::Zero);
        let text = "fn main() { println!(\"hello\"); }\n".repeat(4000);
        assert_eq!(classify_block(text.as_bytes()), ContentClass::Text);
        // xorshift noise
        let mut x = 0x9e3779b97f4a7c15u64;
        let noise: Vec<u8> = (0..131072)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(classify_block(&noise), ContentClass::Incompressible);
        let bin: Vec<u8> = (0..131072u32)
            .map(|i| if i % 3 == 0 { (i % 7) as u8 } else { 0 })
            .collect();
        assert_eq!(classify_block(&bin), ContentClass::Binary);
        assert!(!is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }
}
