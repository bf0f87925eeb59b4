//! Metadata value types and the operations a journal record commits.

use crate::store::Loc;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    /// The S_IFMT bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDev => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
        }
    }

    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// A timestamp with nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Ts {
    pub sec: i64,
    pub nsec: u32,
}

impl Ts {
    pub fn now() -> Ts {
        Ts::from_system(SystemTime::now())
    }
    pub fn from_system(t: SystemTime) -> Ts {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Ts {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Ts {
                        sec: -(d.as_secs() as i64),
                        nsec: 0,
                    }
                } else {
                    Ts {
                        sec: -(d.as_secs() as i64) - 1,
                        nsec: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }
    pub fn to_system(self) -> SystemTime {
        let d = std::time::Duration::new(self.sec.unsigned_abs(), 0);
        let base = if self.sec >= 0 {
            UNIX_EPOCH + d
        } else {
            UNIX_EPOCH - d
        };
        base + std::time::Duration::from_nanos(self.nsec as u64)
    }
}

/// An inode as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub ino: Ino,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (mode & 0o7777).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub rdev: u32,
    pub atime: Ts,
    pub mtime: Ts,
    pub ctime: Ts,
    pub crtime: Ts,
    /// For directories: the parent directory (".."). For other kinds: the directory the
    /// inode was created in or last moved to (policy lookup; not a link count).
    pub parent: Ino,
    /// For symlinks: the target.
    pub target: Vec<u8>,
    /// Reserved for per-inode flags (policy, encryption) in later format revisions.
    pub flags: u32,
}

/// `Inode::flags` bit: the file's content was replaced by a lossy reconstruction. It is
/// never lossily re-encoded again (a write into it makes an ordinary lossless file; without
/// this bit, every rewrite would lose quality again). Bits 0..8 hold the content class.
pub const FLAG_LOSSY: u32 = 1 << 8;

/// A directory entry value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dirent {
    pub ino: Ino,
    pub kind: Kind,
    /// Stable readdir position: unique, increasing with creation.
    pub cookie: u64,
}

/// Where a logical block's data lives and how it is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    pub loc: Loc,
    pub codec: u16,
    /// Codec params of the encoding (the zstd level for zstd).
    pub params: u32,
    pub raw_len: u32,
    /// Payload bytes (what the codec produced), for statistics; for a block of a whole-file
    /// object, its share of the object's payload.
    pub stored: u32,
    /// The record holds a whole-file object; this block is the slice at `idx * BLOCK`.
    #[serde(default)]
    pub object: bool,
}

impl BlockRef {
    /// Record bytes attributed to this block: the whole record, or for a slice of a shared
    /// whole-file object, its share.
    pub fn record_share(&self) -> u64 {
        if self.object {
            self.stored as u64
        } else {
            self.loc.len as u64
        }
    }
}

/// Per-codec accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodecStats {
    pub blocks: u64,
    /// Raw bytes of the mapped blocks.
    pub logical: u64,
    /// Bytes the codec produced.
    pub payload: u64,
    /// Whole record bytes (payload plus record header and metadata).
    pub records: u64,
}

/// A record shared by deduplication: its hash and how many block map entries use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    pub hash: [u8; 16],
    pub refs: u64,
    pub bref: BlockRef,
}

/// Per-pack accounting: record bytes still referenced by the block map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackStats {
    pub live_bytes: u64,
    pub live_blocks: u64,
}

/// One metadata change. A journal record carries a list of these and is applied atomically.
/// Every op states its full result (no deltas), so replaying a record twice is harmless.
/// On disk each op has a frozen tag and layout (`wire`); the order here means nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutInode(Inode),
    /// Remove an inode with its blocks, xattrs and marks.
    DelInode {
        ino: Ino,
    },
    PutDirent {
        parent: Ino,
        name: Vec<u8>,
        ent: Dirent,
    },
    DelDirent {
        parent: Ino,
        name: Vec<u8>,
    },
    /// Map block `idx` of `ino` to the block payload of this very record.
    PutBlock {
        ino: Ino,
        idx: u64,
    },
    /// Like `PutBlock`, and offer the payload for deduplication (by its raw-data hash).
    PutBlockShared {
        ino: Ino,
        idx: u64,
    },
    /// Map block `idx` of `ino` to the existing shared record holding data with this hash.
    RefBlock {
        ino: Ino,
        idx: u64,
        hash: [u8; 16],
    },
    /// Map blocks `0..froms.len()` of `ino` to slices of this record's whole-file object, if
    /// every block still has the location in `froms` (None: a hole) — all or nothing.
    PutObject {
        ino: Ino,
        froms: Vec<Option<Loc>>,
    },
    /// `PutObject` for a file under `dedup=on`: the object is also registered as shared under
    /// its content hash (the record's raw hash), so identical files can reference it.
    PutObjectShared {
        ino: Ino,
        froms: Vec<Option<Loc>>,
    },
    /// A lossy whole-file object replaces the file's content: if the file still has size
    /// `old_size` and every block the location in `froms`, its blocks are unmapped, blocks
    /// `0..ceil(size / BLOCK)` map slices of this record's object (raw length `size`), the
    /// size becomes `size` and the inode gets `FLAG_LOSSY` — all or nothing.
    PutLossyObject {
        ino: Ino,
        froms: Vec<Option<Loc>>,
        old_size: u64,
        size: u64,
    },
    /// Map blocks `0..froms.len()` of `ino` to the slices of the shared whole-file object
    /// registered under `hash` (a file with identical content), if every block still has the
    /// location in `froms` — all or nothing. Carries no payload.
    RefObject {
        ino: Ino,
        hash: [u8; 16],
        froms: Vec<Option<Loc>>,
    },
    /// Compaction of a whole-file object: block `idx` of `ino` keeps its slice of the object,
    /// now at this record, if it still points at `from`.
    MoveObject {
        ino: Ino,
        idx: u64,
        from: Loc,
    },
    /// Snapshot entry: a shared record (its references follow as `SnapBlock`s).
    SnapShared {
        hash: [u8; 16],
        bref: BlockRef,
    },
    /// Unmap blocks `from..to` of `ino` (holes).
    DelBlocks {
        ino: Ino,
        from: u64,
        to: u64,
    },
    SetXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    DelXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    /// Mark or clear an unlinked-but-open inode, reclaimed at the next mount if still marked.
    Orphan {
        ino: Ino,
        on: bool,
    },
    /// Compaction or recompression: remap block `idx` of `ino` from `from` to this record's
    /// payload (which may be encoded differently), if it still points at `from`.
    MoveBlock {
        ino: Ino,
        idx: u64,
        from: Loc,
    },
    /// A full snapshot of the index follows (records until `CheckpointEnd`).
    CheckpointBegin,
    /// Snapshot entry: a block map entry as it was at the checkpoint.
    SnapBlock {
        ino: Ino,
        idx: u64,
        bref: BlockRef,
    },
    CheckpointEnd {
        begin_seq: u64,
    },
}
