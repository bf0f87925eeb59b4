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
//! A *sealed* record (key id ≠ 0, encrypted stores) keeps this header with codec, raw length,
//! params and raw hash zero, M = 0, flag bit 0 set, and P bytes of AES-256-GCM-SIV ciphertext
//! ending in its 16-byte tag; the plaintext is the inner header (flags, codec, params, raw
//! length, keyed raw hash, meta length: `SEALED_INNER` bytes), the meta and the payload. Its
//! associated data binds it to the store and to its location (`sealed_ad`), so a record
//! copied, swapped or replayed anywhere else fails authentication.
//!
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
pub mod object;

pub use self::local::LocalDir;
pub use self::log::{PackLog, ScanEnd};
pub use self::mem::{Fault, MemBackend};
pub use self::object::{ObjectBackend, ObjectConfig};

use crate::crypto::{StoreKey, TAG_LEN};
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
    /// Data of a format this build does not know (written by a newer idcfs), or sealed
    /// with a key this process does not hold.
    #[error("unsupported format: {0}")]
    Unsupported(String),
    /// A sealed record whose checksum holds but whose authentication fails: not a torn
    /// write (those break the checksum) but bytes altered, moved or replayed on purpose.
    #[error("record failed authentication: {0}")]
    Tampered(String),
}

impl StoreError {
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::Corrupt(_) | StoreError::Unsupported(_) | StoreError::Tampered(_) => {
                libc::EIO
            }
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

/// Serialize a plain record (current version, not sealed).
pub fn encode_record(
    seq: u64,
    meta: &[u8],
    block: Option<(&BlockHeader, &[u8])>,
) -> Result<Vec<u8>, StoreError> {
    encode_plain(seq, meta, block)
}

/// Serialize a plain record (key id 0).
fn encode_plain(
    seq: u64,
    meta: &[u8],
    block: Option<(&BlockHeader, &[u8])>,
) -> Result<Vec<u8>, StoreError> {
    let payload_len = block.map_or(0, |(_, p)| p.len());
    if meta.len() > MAX_META as usize || payload_len > MAX_PAYLOAD as usize {
        return Err(StoreError::Corrupt(format!(
            "record too large: meta {} payload {payload_len}",
            meta.len()
        )));
    }
    let mut buf = Vec::with_capacity(HEADER_LEN + meta.len() + payload_len);
    let (codec, params, raw_len, rh) = match block {
        Some((h, _)) => (h.codec, h.params, h.raw_len, h.raw_hash),
        None => (0, 0, 0, [0u8; 16]),
    };
    push_header(
        &mut buf,
        u8::from(block.is_some()),
        codec,
        seq,
        meta.len() as u32,
        payload_len as u32,
        raw_len,
        params,
        &rh,
        Seal::default(),
    );
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

/// Header bytes 0..64 (without the checksum).
#[allow(clippy::too_many_arguments)]
fn push_header(
    buf: &mut Vec<u8>,
    flags: u8,
    codec: u16,
    seq: u64,
    meta_len: u32,
    payload_len: u32,
    raw_len: u32,
    params: u32,
    rh: &[u8; 16],
    seal: Seal,
) {
    buf.extend_from_slice(MAGIC);
    buf.push(RECORD_VERSION);
    buf.push(flags);
    buf.extend_from_slice(&codec.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&meta_len.to_le_bytes());
    buf.extend_from_slice(&payload_len.to_le_bytes());
    buf.extend_from_slice(&raw_len.to_le_bytes());
    buf.extend_from_slice(&params.to_le_bytes());
    buf.extend_from_slice(rh);
    buf.extend_from_slice(&seal.key_id.to_le_bytes());
    buf.extend_from_slice(&seal.nonce);
}

/// Plaintext header inside a sealed record: flags 1, codec 2, params 4, raw length 4,
/// raw hash 16, meta length 4.
pub const SEALED_INNER: usize = 31;

/// Length of the record `encode` makes for this meta and payload.
pub fn record_len(meta_len: usize, payload_len: usize, sealed: bool) -> u64 {
    let body = if sealed {
        SEALED_INNER + meta_len + payload_len + TAG_LEN
    } else {
        meta_len + payload_len
    };
    (HEADER_LEN + body) as u64
}

/// Associated data of a sealed record at `pack`/`off`: the store, the location and the
/// header up to and including the key id (the nonce is the AEAD's own input).
fn sealed_ad(key: &StoreKey, pack: PackId, off: u64, header: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(16 + 16 + 12 + 52);
    ad.extend_from_slice(b"idcfs record v2\0");
    ad.extend_from_slice(&key.store_id);
    ad.extend_from_slice(&pack.to_le_bytes());
    ad.extend_from_slice(&off.to_le_bytes());
    ad.extend_from_slice(&header[..52]);
    ad
}

/// Serialize a record to be appended at `pack`/`off`: sealed under `key` when given, plain
/// otherwise.
pub fn encode(
    seq: u64,
    meta: &[u8],
    block: Option<(&BlockHeader, &[u8])>,
    key: Option<&StoreKey>,
    pack: PackId,
    off: u64,
) -> Result<Vec<u8>, StoreError> {
    let Some(key) = key else {
        return encode_plain(seq, meta, block);
    };
    let payload = block.map_or(&[][..], |(_, p)| p);
    let body_len = SEALED_INNER + meta.len() + payload.len() + TAG_LEN;
    if meta.len() > MAX_META as usize || body_len > MAX_PAYLOAD as usize {
        return Err(StoreError::Corrupt(format!(
            "record too large: meta {} payload {}",
            meta.len(),
            payload.len()
        )));
    }
    let mut buf = Vec::with_capacity(HEADER_LEN + body_len);
    // Header with a zero nonce first: the associated data covers bytes 0..52.
    push_header(
        &mut buf,
        1,
        0,
        seq,
        0,
        body_len as u32,
        0,
        0,
        &[0; 16],
        Seal {
            key_id: key.key_id,
            nonce: [0; 12],
        },
    );
    let ad = sealed_ad(key, pack, off, &buf);
    buf.extend_from_slice(&[0u8; 16]); // checksum, filled below
    let (codec, params, raw_len, rh) = match block {
        Some((h, _)) => (h.codec, h.params, h.raw_len, h.raw_hash),
        None => (0, 0, 0, [0u8; 16]),
    };
    let inner = HEADER_LEN;
    buf.push(u8::from(block.is_some()));
    buf.extend_from_slice(&codec.to_le_bytes());
    buf.extend_from_slice(&params.to_le_bytes());
    buf.extend_from_slice(&raw_len.to_le_bytes());
    buf.extend_from_slice(&rh);
    buf.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    buf.extend_from_slice(meta);
    buf.extend_from_slice(payload);
    let (nonce, tag) = key
        .seal(crate::crypto::Purpose::Record, &ad, &mut buf[inner..])
        .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))?;
    buf.extend_from_slice(&tag);
    buf[52..64].copy_from_slice(&nonce);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&buf[..64]);
    hasher.update(&buf[HEADER_LEN..]);
    let sum = hasher.finalize();
    buf[64..80].copy_from_slice(&sum.as_bytes()[..16]);
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

    /// Verify the body against the header checksum (framing only: a sealed record's content
    /// is not authenticated by this).
    pub fn verify(&self, body: &[u8]) -> Result<(), StoreError> {
        if body.len() != self.meta_len as usize + self.payload_len as usize {
            return Err(StoreError::Corrupt("record body length mismatch".into()));
        }
        let hl = self.header_len();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.bytes[..hl - 16]);
        hasher.update(body);
        if hasher.finalize().as_bytes()[..16] != self.bytes[hl - 16..hl] {
            return Err(StoreError::Corrupt("record checksum mismatch".into()));
        }
        Ok(())
    }

    /// The key id of a version-2 record (0: plain).
    pub fn key_id(&self) -> u32 {
        if self.version >= 2 {
            let h = &self.bytes;
            u32::from_le_bytes([h[48], h[49], h[50], h[51]])
        } else {
            0
        }
    }

    /// Verify the body against the header checksum and build the record. A sealed record
    /// is opened with `key` and must authenticate at `pack`/`off`.
    pub fn finish(
        &self,
        body: &[u8],
        key: Option<&StoreKey>,
        pack: PackId,
        off: u64,
    ) -> Result<Record, StoreError> {
        self.verify(body)?;
        let m = self.meta_len as usize;
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
            return self.unseal(body, seal, key, pack, off);
        }
        if key.is_some() {
            // An encrypted store holds only sealed records: a plain one was put there (or a
            // sealed one downgraded by zeroing its key id) to inject unauthenticated metadata.
            return Err(StoreError::Tampered(format!(
                "record {} at pack {pack} offset {off} is not sealed, in an encrypted store",
                self.seq
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

impl RawHeader {
    /// Open a sealed record (its checksum already verified).
    fn unseal(
        &self,
        body: &[u8],
        seal: Seal,
        key: Option<&StoreKey>,
        pack: PackId,
        off: u64,
    ) -> Result<Record, StoreError> {
        let key = match key {
            Some(k) if k.key_id == seal.key_id => k,
            Some(k) => {
                return Err(StoreError::Unsupported(format!(
                    "record {} is sealed with key {}, the store key is {}",
                    self.seq, seal.key_id, k.key_id
                )))
            }
            // Never decoded as plain bytes: a locked store, or a build without the key.
            None => {
                return Err(StoreError::Unsupported(format!(
                    "record {} is encrypted (key {}) and the store is not unlocked",
                    self.seq, seal.key_id
                )))
            }
        };
        let h = &self.bytes;
        let tampered = |why: &str| {
            StoreError::Tampered(format!(
                "record {} at pack {pack} offset {off}: {why}",
                self.seq
            ))
        };
        if self.version != 2
            || self.meta_len != 0
            || !self.has_block
            || h[6..8] != [0, 0]
            || h[24..48].iter().any(|&b| b != 0)
            || body.len() < SEALED_INNER + TAG_LEN
        {
            return Err(tampered("malformed sealed header"));
        }
        let ad = sealed_ad(key, pack, off, &h[..]);
        let (ct, tag) = body.split_at(body.len() - TAG_LEN);
        let mut plain = ct.to_vec();
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        key.open(
            crate::crypto::Purpose::Record,
            &seal.nonce,
            &ad,
            &mut plain,
            &t,
        )
        .map_err(|_| tampered("authentication failed (altered, moved or replayed)"))?;
        let p = &plain;
        let u32_at = |o: usize| u32::from_le_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]);
        let flags = p[0];
        let meta_len = u32_at(27) as usize;
        if flags & !1 != 0 || meta_len > p.len() - SEALED_INNER {
            return Err(tampered("malformed inner header"));
        }
        let meta = p[SEALED_INNER..SEALED_INNER + meta_len].to_vec();
        if flags & 1 == 0 && p.len() != SEALED_INNER + meta_len {
            return Err(tampered("payload bytes in a record without a block"));
        }
        let block = if flags & 1 == 1 {
            let mut rh = [0u8; 16];
            rh.copy_from_slice(&p[11..27]);
            Some((
                BlockHeader {
                    codec: u16::from_le_bytes([p[1], p[2]]),
                    params: u32_at(3),
                    raw_len: u32_at(7),
                    raw_hash: rh,
                },
                p[SEALED_INNER + meta_len..].to_vec(),
            ))
        } else {
            None
        };
        Ok(Record {
            version: self.version,
            seq: self.seq,
            seal,
            meta,
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
    /// `pack` is sealed: the log starts a newer pack and never appends to it again. It must
    /// be durable where the backend keeps data first (a remote backend then uploads it in
    /// the background). The local backend only syncs it.
    fn seal(&self, _pack: PackId, app: &dyn PackAppender) -> io::Result<()> {
        app.sync()
    }
    /// Whether `pack` is sealed for good: opening the log then starts a new pack after it
    /// instead of appending (an uploaded object cannot grow).
    fn is_sealed(&self, _pack: PackId) -> bool {
        false
    }
    /// Wait until everything synced so far is durable in the backend's final home (an
    /// object store), within the backend's own time bound. `strict` ignores a weaker
    /// setting (`--fsync=local`): compaction needs it before deleting old packs. A failure
    /// loses nothing (the data stays in the local cache and is retried) and is not a reason
    /// to turn the journal read-only.
    fn persist(&self, _strict: bool) -> io::Result<()> {
        Ok(())
    }
    /// Unmount: make everything durable in the final home and release the backend (a
    /// writer lease). Called once, after the last append.
    fn close(&self) -> io::Result<()> {
        Ok(())
    }
    /// What `idcfs status` shows of a remote backend (None: a local directory).
    fn status(&self) -> Option<BackendStatus> {
        None
    }
    /// How long a writer of `n` new bytes should wait before they are taken in: the
    /// backpressure of a backend that drains slower than writers fill it (an object store's
    /// upload backlog). Applied where data enters the filesystem, outside every lock, so
    /// other operations never wait behind it. Zero for a local directory.
    fn admit_delay(&self, _n: u64) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// The state of a remote pack backend, for `idcfs status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Where the packs go (e.g. `s3://bucket/prefix`).
    pub location: String,
    /// Sealed packs waiting for upload, and their bytes.
    pub upload_queue: u64,
    pub upload_queue_bytes: u64,
    /// Bytes of the active pack not yet durable remotely.
    pub unpersisted_bytes: u64,
    /// Local read cache use and limit.
    pub cache_bytes: u64,
    pub cache_limit: u64,
    /// The last remote operation succeeded.
    pub healthy: bool,
    pub last_error: Option<String>,
    pub puts: u64,
    pub gets: u64,
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
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
            .finish(&rec[HEADER_LEN..], None, 1, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.seq, 42);
        assert_eq!(r.meta, b"meta");
        assert_eq!(r.block, Some((hdr, payload)));
        for i in [0usize, 5, 10, 40, 50, 60, 70, 80, rec.len() - 1] {
            let mut bad = rec.clone();
            bad[i] ^= 0x40;
            let res = RawHeader::parse(&bad).and_then(|h| h.finish(&bad[HEADER_LEN..], None, 1, 0));
            assert!(res.is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn sealed_record_roundtrip_binding_and_tampering() {
        let key = StoreKey::from_master(&[9; 32], [8; 16], 1);
        let payload = b"compressed secret bytes".to_vec();
        let hdr = BlockHeader {
            codec: 2,
            params: 7,
            raw_len: 100,
            raw_hash: key.content_hash(b"raw"),
        };
        let rec = encode(
            5,
            b"file-name.txt",
            Some((&hdr, &payload)),
            Some(&key),
            3,
            4096,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rec.len() as u64, record_len(13, payload.len(), true));
        assert!(!rec.windows(9).any(|w| w == b"file-name"));
        assert!(!rec.windows(6).any(|w| w == b"secret"));
        let h = RawHeader::parse(&rec).unwrap_or_else(|e| panic!("{e}"));
        let body = &rec[HEADER_LEN..];
        let r = h
            .finish(body, Some(&key), 3, 4096)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.meta, b"file-name.txt");
        assert_eq!(r.block, Some((hdr, payload)));
        // Another location (moved, swapped, replayed elsewhere): authentication fails.
        assert!(matches!(
            h.finish(body, Some(&key), 3, 0),
            Err(StoreError::Tampered(_))
        ));
        assert!(matches!(
            h.finish(body, Some(&key), 4, 4096),
            Err(StoreError::Tampered(_))
        ));
        // No key, or another store's key: never read as plain bytes.
        assert!(matches!(
            h.finish(body, None, 3, 4096),
            Err(StoreError::Unsupported(_))
        ));
        let other = StoreKey::from_master(&[9; 32], [7; 16], 1);
        assert!(h.finish(body, Some(&other), 3, 4096).is_err());
        // A plain record in an encrypted store is refused (no unauthenticated metadata).
        let plain = encode_record(6, b"injected", None).unwrap_or_else(|e| panic!("{e}"));
        let hp = RawHeader::parse(&plain).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            hp.finish(&plain[HEADER_LEN..], Some(&key), 3, 0),
            Err(StoreError::Tampered(_))
        ));
        // A flipped ciphertext byte with a recomputed checksum is tampering, not a torn write.
        let mut bad = rec.clone();
        bad[HEADER_LEN + 3] ^= 1;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&bad[..64]);
        hasher.update(&bad[HEADER_LEN..]);
        let sum = hasher.finalize();
        bad[64..80].copy_from_slice(&sum.as_bytes()[..16]);
        let h = RawHeader::parse(&bad).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            h.finish(&bad[HEADER_LEN..], Some(&key), 3, 4096),
            Err(StoreError::Tampered(_))
        ));
    }
}
