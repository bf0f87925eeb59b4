//! Frozen decoder of record-version-1 metadata: the postcard encoding of `Vec<Op>` exactly as
//! main 09c972f wrote it (variant tags are positions in that enum, fields in declaration
//! order). Never change these types: stores written then must read the same forever. New
//! records are never written in this form (see `wire`).

use super::{BlockRef, Dirent, Inode, Kind, Op, Ts};
use crate::error::{Error, Result};
use crate::store::Loc;
use serde::Deserialize;

#[derive(Deserialize)]
enum KindV1 {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

#[derive(Deserialize)]
struct TsV1 {
    sec: i64,
    nsec: u32,
}

#[derive(Deserialize)]
struct LocV1 {
    pack: u32,
    off: u64,
    len: u32,
}

#[derive(Deserialize)]
struct InodeV1 {
    ino: u64,
    kind: KindV1,
    perm: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: u64,
    rdev: u32,
    atime: TsV1,
    mtime: TsV1,
    ctime: TsV1,
    crtime: TsV1,
    parent: u64,
    target: Vec<u8>,
    flags: u32,
}

#[derive(Deserialize)]
struct DirentV1 {
    ino: u64,
    kind: KindV1,
    cookie: u64,
}

#[derive(Deserialize)]
struct BlockRefV1 {
    loc: LocV1,
    codec: u16,
    params: u32,
    raw_len: u32,
    stored: u32,
    object: bool,
}

#[derive(Deserialize)]
enum OpV1 {
    PutInode(InodeV1),
    DelInode {
        ino: u64,
    },
    PutDirent {
        parent: u64,
        name: Vec<u8>,
        ent: DirentV1,
    },
    DelDirent {
        parent: u64,
        name: Vec<u8>,
    },
    PutBlock {
        ino: u64,
        idx: u64,
    },
    PutBlockShared {
        ino: u64,
        idx: u64,
    },
    RefBlock {
        ino: u64,
        idx: u64,
        hash: [u8; 16],
    },
    PutObject {
        ino: u64,
        froms: Vec<Option<LocV1>>,
    },
    MoveObject {
        ino: u64,
        idx: u64,
        from: LocV1,
    },
    SnapShared {
        hash: [u8; 16],
        bref: BlockRefV1,
    },
    DelBlocks {
        ino: u64,
        from: u64,
        to: u64,
    },
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    DelXattr {
        ino: u64,
        name: Vec<u8>,
    },
    Orphan {
        ino: u64,
        on: bool,
    },
    MoveBlock {
        ino: u64,
        idx: u64,
        from: LocV1,
    },
    CheckpointBegin,
    SnapBlock {
        ino: u64,
        idx: u64,
        bref: BlockRefV1,
    },
    CheckpointEnd {
        begin_seq: u64,
    },
}

impl From<KindV1> for Kind {
    fn from(k: KindV1) -> Kind {
        match k {
            KindV1::File => Kind::File,
            KindV1::Dir => Kind::Dir,
            KindV1::Symlink => Kind::Symlink,
            KindV1::Fifo => Kind::Fifo,
            KindV1::Socket => Kind::Socket,
            KindV1::CharDev => Kind::CharDev,
            KindV1::BlockDev => Kind::BlockDev,
        }
    }
}

impl From<TsV1> for Ts {
    fn from(t: TsV1) -> Ts {
        Ts {
            sec: t.sec,
            nsec: t.nsec,
        }
    }
}

impl From<LocV1> for Loc {
    fn from(l: LocV1) -> Loc {
        Loc {
            pack: l.pack,
            off: l.off,
            len: l.len,
        }
    }
}

impl From<BlockRefV1> for BlockRef {
    fn from(b: BlockRefV1) -> BlockRef {
        BlockRef {
            loc: b.loc.into(),
            codec: b.codec,
            params: b.params,
            raw_len: b.raw_len,
            stored: b.stored,
            object: b.object,
        }
    }
}

impl From<InodeV1> for Inode {
    fn from(i: InodeV1) -> Inode {
        Inode {
            ino: i.ino,
            kind: i.kind.into(),
            perm: i.perm,
            uid: i.uid,
            gid: i.gid,
            nlink: i.nlink,
            size: i.size,
            rdev: i.rdev,
            atime: i.atime.into(),
            mtime: i.mtime.into(),
            ctime: i.ctime.into(),
            crtime: i.crtime.into(),
            parent: i.parent,
            target: i.target,
            flags: i.flags,
        }
    }
}

impl From<OpV1> for Op {
    fn from(op: OpV1) -> Op {
        match op {
            OpV1::PutInode(i) => Op::PutInode(i.into()),
            OpV1::DelInode { ino } => Op::DelInode { ino },
            OpV1::PutDirent { parent, name, ent } => Op::PutDirent {
                parent,
                name,
                ent: Dirent {
                    ino: ent.ino,
                    kind: ent.kind.into(),
                    cookie: ent.cookie,
                },
            },
            OpV1::DelDirent { parent, name } => Op::DelDirent { parent, name },
            OpV1::PutBlock { ino, idx } => Op::PutBlock { ino, idx },
            OpV1::PutBlockShared { ino, idx } => Op::PutBlockShared { ino, idx },
            OpV1::RefBlock { ino, idx, hash } => Op::RefBlock { ino, idx, hash },
            OpV1::PutObject { ino, froms } => Op::PutObject {
                ino,
                froms: froms.into_iter().map(|f| f.map(Loc::from)).collect(),
            },
            OpV1::MoveObject { ino, idx, from } => Op::MoveObject {
                ino,
                idx,
                from: from.into(),
            },
            OpV1::SnapShared { hash, bref } => Op::SnapShared {
                hash,
                bref: bref.into(),
            },
            OpV1::DelBlocks { ino, from, to } => Op::DelBlocks { ino, from, to },
            OpV1::SetXattr { ino, name, value } => Op::SetXattr { ino, name, value },
            OpV1::DelXattr { ino, name } => Op::DelXattr { ino, name },
            OpV1::Orphan { ino, on } => Op::Orphan { ino, on },
            OpV1::MoveBlock { ino, idx, from } => Op::MoveBlock {
                ino,
                idx,
                from: from.into(),
            },
            OpV1::CheckpointBegin => Op::CheckpointBegin,
            OpV1::SnapBlock { ino, idx, bref } => Op::SnapBlock {
                ino,
                idx,
                bref: bref.into(),
            },
            OpV1::CheckpointEnd { begin_seq } => Op::CheckpointEnd { begin_seq },
        }
    }
}

/// Decode the metadata of a version-1 record.
pub fn decode(meta: &[u8]) -> Result<Vec<Op>> {
    let bad = |why: String| Error::Corrupt(format!("version-1 record metadata: {why}"));
    let (ops, rest): (Vec<OpV1>, &[u8]) =
        postcard::take_from_bytes(meta).map_err(|e| bad(e.to_string()))?;
    // The v1 writer encoded exactly one list: anything after it is damage.
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes after the ops", rest.len())));
    }
    let ops: Vec<Op> = ops.into_iter().map(Op::from).collect();
    for op in &ops {
        if let Op::PutInode(i) = op {
            if [i.atime, i.mtime, i.ctime, i.crtime]
                .iter()
                .any(|t| t.nsec >= 1_000_000_000)
            {
                return Err(bad("nanoseconds out of range".into()));
            }
        }
    }
    Ok(ops)
}
