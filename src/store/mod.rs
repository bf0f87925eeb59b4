//! The block store: append-only pack files of self-describing records.
//!
//! The store knows a codec only as a number and a payload only as bytes; the metadata a record
//! commits is an opaque byte string that the index layer (`meta`) defines.
//!
//! ## Record format (little-endian)
//! The full description, with the metadata ops and the codec payloads, is `FORMAT.md`.
//! Version 2 (written by this build):
//! ```text
//!  0..4   magic "IDCR"
//!  4      version (2)
//!  5      flags: bit 0 = carries a block payload; other bits must be zero
//!  6..8   codec id (u16; 0 when no payload)
//!  8..16  sequence number (u64, strictly increasing across the whole store)
//! 16..20  meta length M (u32)
//! 20..24  payload length P (u32)
//! 24..28  raw (decoded) length of the block (u32)
//! 28..32  codec params (u32)
//! 32..48  blake3 of the raw block, first 16 bytes (checked after decoding)
//! 48..52  key id (u32; 0 = payload not encrypted)
//! 52..64  nonce (12 bytes; zero when not encrypted)
//! 64..80  blake3 of bytes 0..64 ++ meta ++ payload, first 16 bytes (checked on every read)
//! 80..    meta (M bytes, the tagged ops of `meta::wire`), then payload (P bytes)
//! ```
//! Version 1 (stores written before format 2; read, never written): the same fields up to
//! byte 48, then the checksum at 48..64 over bytes 0..48 ++ meta ++ payload, body from 64;
//! its meta is the frozen postcard encoding of `meta::v1`.
//!
//! Packs are named `XXXXXXXX.pack` (hex id) in the store's `journal/` directory (`packs/` in
//! format-1 stores; see `manifest`). Records never straddle packs.
//!
//! Invariants:
//! - A pack is only appended to while it is the active pack; once a newer pack exists it is
//!   sealed and never modified again, only deleted whole by compaction.
//! - A `Loc` names one whole record; locations are never reused while the pack exists, so a
//!   decoded-block cache keyed by `Loc` never needs invalidation.
//! - Only the tail of the active pack can be torn by a crash; recovery truncates it.

mod local;
mod log;
pub mod manifest;
mod mem;

pub use self::local::LocalDir;
pub use self::log::{PackLog, ScanEnd};
pub use self::mem::{Fault, MemBackend};

use serde::{Deserialize, Serialize};
use std::io;

pub type PackId = u32;

/// Where a record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Loc {
    pub pack: PackId,
    pub off: u64,
    pub len: u32,
}

/// Length of the version-2 header (the longest); a version-1 header is `HEADER_LEN_V1`.
pub const HEADER_LEN: usize = 80;
pub const HEADER_LEN_V1: usize = 64;
pub(crate) const MAGIC: &[u8; 4] = b"IDCR";
/// The record version this build writes.
pub const RECORD_VERSION: u8 = 2;
/// Flag bits a reader of this build understands; a record with any other bit is refused.
const KNOWN_FLAGS: u8 = 1;
/// Sanity bounds that keep a damaged length field from causing a huge allocation.
pub const MAX_META: u32 = 64 << 20;
pub const MAX_PAYLOAD: u32 = 512 << 20;

/// The codec-facing description of a stored block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub codec: u16,
    pub params: u32,
    pub raw_len: u32,
    pub raw_hash: [u8; 16],
}

/// How a record's payload is sealed (encryption); all zero for a plain record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seal {
    pub key_id: u32,
    pub nonce: [u8; 12],
}

/// One decoded record.
#[derive(Clone, Debug)]
pub struct Record {
    /// Record format version (1 or 2): says how `meta` is encoded.
    pub version: u8,
    pub seq: u64,
    pub seal: Seal,
    pub meta: Vec<u8>,
    pub block: Option<(BlockHeader, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("pack store I/O: {0}")]
    Io(#[from] io::Error),
    /// Data of a format this build does not know (written by a newer idcfs).
    #[error("unsupported format: {0}")]
    Unsupported(String),
}

impl StoreError {
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::Corrupt(_) | StoreError::Unsupported(_) => libc::EIO,
            StoreError::Io(e) => crate::error::io_errno(e),
        }
    }
}

/// Hash of raw block data as recorded in headers.
pub fn raw_hash(data: &[u8]) -> [u8; 16] {
    let h = blake3::hash(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

/// Serialize a record (current version, not sealed).
pub fn encode_record(
    seq: u64,
    meta: &[u8],
    block: Option<(&BlockHeader, &[u8])>,
) -> Result<Vec<u8>, StoreError> {
    encode_record_sealed(seq, meta, block, Seal::default())
}

/// Serialize a record with the given seal (key id and nonce of an encrypted payload).
pub fn encode_record_sealed(
    seq: u64,
    meta: &[u8],
    block: Option<(&BlockHeader, &[u8])>,
    seal: Seal,
) -> Result<Vec<u8>, StoreError> {
    let payload_len = block.map_or(0, |(_, p)| p.len());
    if meta.len() > MAX_META as usize || payload_len > MAX_PAYLOAD as usize {
        return Err(StoreError::Corrupt(format!(
            "record too large: meta {} payload {payload_len}",
            meta.len()
        )));
    }
    let mut buf = Vec::with_capacity(HEADER_LEN + meta.len() + payload_len);
    buf.extend_from_slice(MAGIC);
    buf.push(RECORD_VERSION);
    buf.push(u8::from(block.is_some()));
    let (codec, params, raw_len, rh) = match block {
        Some((h, _)) => (h.codec, h.params, h.raw_len, h.raw_hash),
        None => (0, 0, 0, [0u8; 16]),
    };
    buf.extend_from_slice(&codec.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(payload_len as u32).to_le_bytes());
    buf.extend_from_slice(&raw_len.to_le_bytes());
    buf.extend_from_slice(&params.to_le_bytes());
    buf.extend_from_slice(&rh);
    buf.extend_from_slice(&seal.key_id.to_le_bytes());
    buf.extend_from_slice(&seal.nonce);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&buf[..64]);
    hasher.update(meta);
    if let Some((_, p)) = block {
        hasher.update(p);
    }
    buf.extend_from_slice(&hasher.finalize().as_bytes()[..16]);
    buf.extend_from_slice(meta);
    if let Some((_, p)) = block {
        buf.extend_from_slice(p);
    }
    Ok(buf)
}

/// Parsed fixed header: what a scanner needs before reading the body.
#[derive(Clone, Debug)]
pub struct RawHeader {
    pub version: u8,
    pub seq: u64,
    pub meta_len: u32,
    pub payload_len: u32,
    pub has_block: bool,
    bytes: [u8; HEADER_LEN],
}

/// Header length of a record that starts with `prefix` (at least 5 bytes), or why it is not
/// a record this build can read.
pub fn header_len(prefix: &[u8]) -> Result<usize, StoreError> {
    if prefix.len() < 5 || &prefix[0..4] != MAGIC {
        return Err(StoreError::Corrupt("bad record magic".into()));
    }
    match prefix[4] {
        1 => Ok(HEADER_LEN_V1),
        2 => Ok(HEADER_LEN),
        v => Err(StoreError::Corrupt(format!(
            "unknown record version {v} (this build reads versions 1 and 2)"
        ))),
    }
}

impl RawHeader {
    /// Parse the header at the start of `h` (which holds at least the header).
    pub fn parse(h: &[u8]) -> Result<RawHeader, StoreError> {
        let hl = header_len(h)?;
        if h.len() < hl {
            return Err(StoreError::Corrupt("short record header".into()));
        }
        let version = h[4];
        if h[5] & !KNOWN_FLAGS != 0 {
            // A feature of a newer writer (a torn write cannot set a flag bit): refuse, never
            // treat as a torn tail to cut.
            return Err(StoreError::Unsupported(format!(
                "record flags {:#x} name features this build does not know",
                h[5]
            )));
        }
        let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&h[8..16]);
        let meta_len = u32_at(16);
        let payload_len = u32_at(20);
        if meta_len > MAX_META || payload_len > MAX_PAYLOAD {
            return Err(StoreError::Corrupt("record length out of range".into()));
        }
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..hl].copy_from_slice(&h[..hl]);
        Ok(RawHeader {
            version,
            seq: u64::from_le_bytes(seq),
            meta_len,
            payload_len,
            has_block: h[5] & 1 == 1,
            bytes,
        })
    }

    /// Length of this record's header.
    pub fn header_len(&self) -> usize {
        if self.version == 1 {
            HEADER_LEN_V1
        } else {
            HEADER_LEN
        }
    }

    pub fn total_len(&self) -> u64 {
        self.header_len() as u64 + self.meta_len as u64 + self.payload_len as u64
    }

    /// Verify the body against the header checksum and build the record.
    pub fn finish(&self, body: &[u8]) -> Result<Record, StoreError> {
        let m = self.meta_len as usize;
        if body.len() != m + self.payload_len as usize {
            return Err(StoreError::Corrupt("record body length mismatch".into()));
        }
        let hl = self.header_len();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.bytes[..hl - 16]);
        hasher.update(body);
        if hasher.finalize().as_bytes()[..16] != self.bytes[hl - 16..hl] {
            return Err(StoreError::Corrupt("record checksum mismatch".into()));
        }
        let h = &self.bytes;
        let block = if self.has_block {
            let mut rh = [0u8; 16];
            rh.copy_from_slice(&h[32..48]);
            let hdr = BlockHeader {
                codec: u16::from_le_bytes([h[6], h[7]]),
                raw_len: u32::from_le_bytes([h[24], h[25], h[26], h[27]]),
                params: u32::from_le_bytes([h[28], h[29], h[30], h[31]]),
                raw_hash: rh,
            };
            Some((hdr, body[m..].to_vec()))
        } else {
            None
        };
        let mut seal = Seal::default();
        if self.version >= 2 {
            seal.key_id = u32::from_le_bytes([h[48], h[49], h[50], h[51]]);
            seal.nonce.copy_from_slice(&h[52..64]);
        }
        if seal.key_id != 0 {
            // Encrypted payloads come with the encryption feature; until then such a record
            // is refused rather than decoded as plain bytes.
            return Err(StoreError::Unsupported(format!(
                "record {} is sealed with key {}, and this build has no key support",
                self.seq, seal.key_id
            )));
        }
        Ok(Record {
            version: self.version,
            seq: self.seq,
            seal,
            meta: body[..m].to_vec(),
            block,
        })
    }
}

/// Where pack bytes live. A local directory today; an object store later (sealed packs are
/// immutable and read by ranges, which is what object stores do well).
pub trait PackBackend: Send + Sync {
    /// Existing pack ids, ascending.
    fn list(&self) -> io::Result<Vec<PackId>>;
    fn len(&self, pack: PackId) -> io::Result<u64>;
    /// Fill `buf` from `off`; a short pack is an `UnexpectedEof` error.
    fn read_at(&self, pack: PackId, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Open a pack for appending (created if missing), positioned at its end.
    fn open_append(&self, pack: PackId) -> io::Result<Box<dyn PackAppender>>;
    fn remove(&self, pack: PackId) -> io::Result<()>;
    /// Make pack creation and removal durable (directory fsync).
    fn sync_dir(&self) -> io::Result<()>;
}

/// The writable end of the active pack.
pub trait PackAppender: Send + Sync {
    fn append(&self, bytes: &[u8]) -> io::Result<()>;
    fn sync(&self) -> io::Result<()>;
    fn truncate(&self, len: u64) -> io::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip_and_corruption() {
        let payload = b"compressed bytes".to_vec();
        let hdr = BlockHeader {
            codec: 1,
            params: 3,
            raw_len: 100,
            raw_hash: raw_hash(b"raw"),
        };
        let rec =
            encode_record(42, b"meta", Some((&hdr, &payload))).unwrap_or_else(|e| panic!("{e}"));
        let h = RawHeader::parse(&rec).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.total_len(), rec.len() as u64);
        assert_eq!(h.version, RECORD_VERSION);
        let r = h
            .finish(&rec[HEADER_LEN..])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.seq, 42);
        assert_eq!(r.meta, b"meta");
        assert_eq!(r.block, Some((hdr, payload)));
        for i in [0usize, 5, 10, 40, 50, 60, 70, 80, rec.len() - 1] {
            let mut bad = rec.clone();
            bad[i] ^= 0x40;
            let res = RawHeader::parse(&bad).and_then(|h| h.finish(&bad[HEADER_LEN..]));
            assert!(res.is_err(), "flip at {i} not detected");
        }
    }
}
