//! The metadata encoding of record version 2: a sequence of tagged ops with explicit, frozen
//! layouts (`FORMAT.md` describes them byte by byte).
//!
//! ```text
//! meta := op*                      (as many as the record's meta length holds)
//! op   := tag u8, len varint, body (len bytes)
//! ```
//! Integers are LEB128 varints (7 bits a byte, low group first, minimal length; signed ones
//! zigzag-mapped first), except hashes (16 raw bytes) and single-byte codes; byte strings are a
//! varint length and the bytes. Small numbers (inode numbers, sizes, counts) thus take a byte
//! or two: a small file's metadata is about half what fixed-width fields would take.
//!
//! Invariants:
//! - A tag never changes meaning and is never reused; an op that needs new fields gets a new
//!   tag. Bodies are fixed sequences of fields and must be consumed exactly, so a reader never
//!   guesses. Every value has exactly one encoding (overlong varints are refused).
//! - Tags 0x80..=0xFF are hints: a reader that does not know one skips it. Tags below 0x80 are
//!   critical: a reader that does not know one refuses the record (it was written by a newer
//!   idcfs) instead of applying part of it.
//! - Decoding is total: any byte string yields ops or an error, never a panic.

use super::{BlockRef, Dirent, Inode, Kind, Op, Ts};
use crate::error::{Error, Result};
use crate::store::Loc;

/// Op tags (frozen).
pub mod tag {
    pub const PUT_INODE: u8 = 1;
    pub const DEL_INODE: u8 = 2;
    pub const PUT_DIRENT: u8 = 3;
    pub const DEL_DIRENT: u8 = 4;
    pub const PUT_BLOCK: u8 = 5;
    pub const PUT_BLOCK_SHARED: u8 = 6;
    pub const REF_BLOCK: u8 = 7;
    pub const PUT_OBJECT: u8 = 8;
    pub const MOVE_OBJECT: u8 = 9;
    pub const SNAP_SHARED: u8 = 10;
    pub const DEL_BLOCKS: u8 = 11;
    pub const SET_XATTR: u8 = 12;
    pub const DEL_XATTR: u8 = 13;
    pub const ORPHAN: u8 = 14;
    pub const MOVE_BLOCK: u8 = 15;
    pub const CHECKPOINT_BEGIN: u8 = 16;
    pub const SNAP_BLOCK: u8 = 17;
    pub const CHECKPOINT_END: u8 = 18;
    /// Added in format 2 revision 1 (object deduplication).
    pub const PUT_OBJECT_SHARED: u8 = 19;
    pub const REF_OBJECT: u8 = 20;
    /// Added in format 2 revision 2 (lossy storage under policy).
    pub const PUT_LOSSY_OBJECT: u8 = 21;
    /// Added in format 2 revision 4: a zstd frame of more ops, spliced in where it stands
    /// (checkpoints are written so). Not an op itself: `decode` expands it.
    pub const PACKED: u8 = 22;
    /// The newest critical tag this build writes.
    pub const LAST: u8 = PACKED;
    /// First tag of the skippable (hint) range.
    pub const HINT: u8 = 0x80;
}

/// The frozen tag of an op.
pub fn op_tag(op: &Op) -> u8 {
    match op {
        Op::PutInode(_) => tag::PUT_INODE,
        Op::DelInode { .. } => tag::DEL_INODE,
        Op::PutDirent { .. } => tag::PUT_DIRENT,
        Op::DelDirent { .. } => tag::DEL_DIRENT,
        Op::PutBlock { .. } => tag::PUT_BLOCK,
        Op::PutBlockShared { .. } => tag::PUT_BLOCK_SHARED,
        Op::RefBlock { .. } => tag::REF_BLOCK,
        Op::PutObject { .. } => tag::PUT_OBJECT,
        Op::PutObjectShared { .. } => tag::PUT_OBJECT_SHARED,
        Op::RefObject { .. } => tag::REF_OBJECT,
        Op::PutLossyObject { .. } => tag::PUT_LOSSY_OBJECT,
        Op::MoveObject { .. } => tag::MOVE_OBJECT,
        Op::SnapShared { .. } => tag::SNAP_SHARED,
        Op::DelBlocks { .. } => tag::DEL_BLOCKS,
        Op::SetXattr { .. } => tag::SET_XATTR,
        Op::DelXattr { .. } => tag::DEL_XATTR,
        Op::Orphan { .. } => tag::ORPHAN,
        Op::MoveBlock { .. } => tag::MOVE_BLOCK,
        Op::CheckpointBegin => tag::CHECKPOINT_BEGIN,
        Op::SnapBlock { .. } => tag::SNAP_BLOCK,
        Op::CheckpointEnd { .. } => tag::CHECKPOINT_END,
    }
}

/// Frozen codes of file kinds.
fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::File => 1,
        Kind::Dir => 2,
        Kind::Symlink => 3,
        Kind::Fifo => 4,
        Kind::Socket => 5,
        Kind::CharDev => 6,
        Kind::BlockDev => 7,
    }
}

fn kind_of(c: u8) -> Result<Kind> {
    Ok(match c {
        1 => Kind::File,
        2 => Kind::Dir,
        3 => Kind::Symlink,
        4 => Kind::Fifo,
        5 => Kind::Socket,
        6 => Kind::CharDev,
        7 => Kind::BlockDev,
        _ => return Err(bad(format!("unknown file kind code {c}"))),
    })
}

fn bad(why: String) -> Error {
    Error::Corrupt(format!("record metadata: {why}"))
}

struct W(Vec<u8>);

/// Append `v` as an unsigned LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.u64(v.into());
    }
    fn u32(&mut self, v: u32) {
        self.u64(v.into());
    }
    fn u64(&mut self, v: u64) {
        put_varint(&mut self.0, v);
    }
    fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn hash(&mut self, h: &[u8; 16]) {
        self.0.extend_from_slice(h);
    }
    fn ts(&mut self, t: Ts) {
        self.i64(t.sec);
        self.u32(t.nsec);
    }
    fn loc(&mut self, l: &Loc) {
        self.u32(l.pack);
        self.u64(l.off);
        self.u32(l.len);
    }
    /// An object's block locations: count, then per block 0 (a hole) or 1 and a location.
    fn froms(&mut self, froms: &[Option<Loc>]) {
        self.u32(froms.len() as u32);
        for f in froms {
            match f {
                None => self.u8(0),
                Some(l) => {
                    self.u8(1);
                    self.loc(l);
                }
            }
        }
    }
    fn bref(&mut self, b: &BlockRef) {
        self.loc(&b.loc);
        self.u16(b.codec);
        self.u32(b.params);
        self.u32(b.raw_len);
        self.u32(b.stored);
        self.u8(u8::from(b.object));
    }
    fn inode(&mut self, i: &Inode) {
        self.u64(i.ino);
        self.u8(kind_code(i.kind));
        self.u16(i.perm);
        self.u32(i.uid);
        self.u32(i.gid);
        self.u32(i.nlink);
        self.u64(i.size);
        self.u32(i.rdev);
        self.ts(i.atime);
        self.ts(i.mtime);
        self.ts(i.ctime);
        self.ts(i.crtime);
        self.u64(i.parent);
        self.bytes(&i.target);
        self.u32(i.flags);
    }
}

struct R<'a> {
    b: &'a [u8],
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.b.len() {
            return Err(bad("op body truncated".into()));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let v = self.u64()?;
        u16::try_from(v).map_err(|_| bad(format!("{v} does not fit 16 bits")))
    }
    fn u32(&mut self) -> Result<u32> {
        let v = self.u64()?;
        u32::try_from(v).map_err(|_| bad(format!("{v} does not fit 32 bits")))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err(bad("varint overflows 64 bits".into()));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(bad("overlong varint".into()));
                }
                return Ok(v);
            }
        }
        // Unreachable: the tenth byte either ends the varint or was refused above.
        Err(bad("varint longer than 10 bytes".into()))
    }
    fn i64(&mut self) -> Result<i64> {
        let z = self.u64()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }
    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(bad(format!("boolean byte {v}"))),
        }
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| bad(format!("length {n}")))?;
        Ok(self.take(n)?.to_vec())
    }
    fn hash(&mut self) -> Result<[u8; 16]> {
        self.arr()
    }
    fn ts(&mut self) -> Result<Ts> {
        let sec = self.i64()?;
        let nsec = self.u32()?;
        if nsec >= 1_000_000_000 {
            return Err(bad(format!("nanoseconds {nsec} out of range")));
        }
        Ok(Ts { sec, nsec })
    }
    fn loc(&mut self) -> Result<Loc> {
        Ok(Loc {
            pack: self.u32()?,
            off: self.u64()?,
            len: self.u32()?,
        })
    }
    fn froms(&mut self) -> Result<Vec<Option<Loc>>> {
        let n = self.u32()? as usize;
        // Each entry takes at least one byte: bound the allocation by what is there.
        if n > self.b.len() {
            return Err(bad(format!("object with {n} blocks in a short body")));
        }
        let mut froms = Vec::with_capacity(n);
        for _ in 0..n {
            froms.push(match self.u8()? {
                0 => None,
                1 => Some(self.loc()?),
                v => return Err(bad(format!("object entry flag {v}"))),
            });
        }
        Ok(froms)
    }
    fn bref(&mut self) -> Result<BlockRef> {
        Ok(BlockRef {
            loc: self.loc()?,
            codec: self.u16()?,
            params: self.u32()?,
            raw_len: self.u32()?,
            stored: self.u32()?,
            object: self.bool()?,
        })
    }
    fn inode(&mut self) -> Result<Inode> {
        Ok(Inode {
            ino: self.u64()?,
            kind: kind_of(self.u8()?)?,
            perm: self.u16()?,
            uid: self.u32()?,
            gid: self.u32()?,
            nlink: self.u32()?,
            size: self.u64()?,
            rdev: self.u32()?,
            atime: self.ts()?,
            mtime: self.ts()?,
            ctime: self.ts()?,
            crtime: self.ts()?,
            parent: self.u64()?,
            target: self.bytes()?,
            flags: self.u32()?,
        })
    }
}

fn encode_body(op: &Op, w: &mut W) {
    match op {
        Op::PutInode(i) => w.inode(i),
        Op::DelInode { ino } => w.u64(*ino),
        Op::PutDirent { parent, name, ent } => {
            w.u64(*parent);
            w.bytes(name);
            w.u64(ent.ino);
            w.u8(kind_code(ent.kind));
            w.u64(ent.cookie);
        }
        Op::DelDirent { parent, name } => {
            w.u64(*parent);
            w.bytes(name);
        }
        Op::PutBlock { ino, idx } | Op::PutBlockShared { ino, idx } => {
            w.u64(*ino);
            w.u64(*idx);
        }
        Op::RefBlock { ino, idx, hash } => {
            w.u64(*ino);
            w.u64(*idx);
            w.hash(hash);
        }
        Op::PutObject { ino, froms } | Op::PutObjectShared { ino, froms } => {
            w.u64(*ino);
            w.froms(froms);
        }
        Op::RefObject { ino, hash, froms } => {
            w.u64(*ino);
            w.hash(hash);
            w.froms(froms);
        }
        Op::PutLossyObject {
            ino,
            froms,
            old_size,
            size,
        } => {
            w.u64(*ino);
            w.froms(froms);
            w.u64(*old_size);
            w.u64(*size);
        }
        Op::MoveObject { ino, idx, from } | Op::MoveBlock { ino, idx, from } => {
            w.u64(*ino);
            w.u64(*idx);
            w.loc(from);
        }
        Op::SnapShared { hash, bref } => {
            w.hash(hash);
            w.bref(bref);
        }
        Op::DelBlocks { ino, from, to } => {
            w.u64(*ino);
            w.u64(*from);
            w.u64(*to);
        }
        Op::SetXattr { ino, name, value } => {
            w.u64(*ino);
            w.bytes(name);
            w.bytes(value);
        }
        Op::DelXattr { ino, name } => {
            w.u64(*ino);
            w.bytes(name);
        }
        Op::Orphan { ino, on } => {
            w.u64(*ino);
            w.u8(u8::from(*on));
        }
        Op::CheckpointBegin => {}
        Op::SnapBlock { ino, idx, bref } => {
            w.u64(*ino);
            w.u64(*idx);
            w.bref(bref);
        }
        Op::CheckpointEnd { begin_seq } => w.u64(*begin_seq),
    }
}

/// Encode ops as version-2 record metadata.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(64 * ops.len()));
    let mut body = W(Vec::with_capacity(64));
    for op in ops {
        body.0.clear();
        encode_body(op, &mut body);
        w.u8(op_tag(op));
        w.u64(body.0.len() as u64);
        w.0.extend_from_slice(&body.0);
    }
    w.0
}

fn decode_body(t: u8, r: &mut R<'_>) -> Result<Option<Op>> {
    Ok(Some(match t {
        tag::PUT_INODE => Op::PutInode(r.inode()?),
        tag::DEL_INODE => Op::DelInode { ino: r.u64()? },
        tag::PUT_DIRENT => Op::PutDirent {
            parent: r.u64()?,
            name: r.bytes()?,
            ent: Dirent {
                ino: r.u64()?,
                kind: kind_of(r.u8()?)?,
                cookie: r.u64()?,
            },
        },
        tag::DEL_DIRENT => Op::DelDirent {
            parent: r.u64()?,
            name: r.bytes()?,
        },
        tag::PUT_BLOCK => Op::PutBlock {
            ino: r.u64()?,
            idx: r.u64()?,
        },
        tag::PUT_BLOCK_SHARED => Op::PutBlockShared {
            ino: r.u64()?,
            idx: r.u64()?,
        },
        tag::REF_BLOCK => Op::RefBlock {
            ino: r.u64()?,
            idx: r.u64()?,
            hash: r.hash()?,
        },
        tag::PUT_OBJECT => {
            let ino = r.u64()?;
            Op::PutObject {
                ino,
                froms: r.froms()?,
            }
        }
        tag::PUT_OBJECT_SHARED => {
            let ino = r.u64()?;
            Op::PutObjectShared {
                ino,
                froms: r.froms()?,
            }
        }
        tag::PUT_LOSSY_OBJECT => {
            let ino = r.u64()?;
            let froms = r.froms()?;
            Op::PutLossyObject {
                ino,
                froms,
                old_size: r.u64()?,
                size: r.u64()?,
            }
        }
        tag::REF_OBJECT => {
            let ino = r.u64()?;
            let hash = r.hash()?;
            Op::RefObject {
                ino,
                hash,
                froms: r.froms()?,
            }
        }
        tag::MOVE_OBJECT => Op::MoveObject {
            ino: r.u64()?,
            idx: r.u64()?,
            from: r.loc()?,
        },
        tag::SNAP_SHARED => Op::SnapShared {
            hash: r.hash()?,
            bref: r.bref()?,
        },
        tag::DEL_BLOCKS => Op::DelBlocks {
            ino: r.u64()?,
            from: r.u64()?,
            to: r.u64()?,
        },
        tag::SET_XATTR => Op::SetXattr {
            ino: r.u64()?,
            name: r.bytes()?,
            value: r.bytes()?,
        },
        tag::DEL_XATTR => Op::DelXattr {
            ino: r.u64()?,
            name: r.bytes()?,
        },
        tag::ORPHAN => Op::Orphan {
            ino: r.u64()?,
            on: r.bool()?,
        },
        tag::MOVE_BLOCK => Op::MoveBlock {
            ino: r.u64()?,
            idx: r.u64()?,
            from: r.loc()?,
        },
        tag::CHECKPOINT_BEGIN => Op::CheckpointBegin,
        tag::SNAP_BLOCK => Op::SnapBlock {
            ino: r.u64()?,
            idx: r.u64()?,
            bref: r.bref()?,
        },
        tag::CHECKPOINT_END => Op::CheckpointEnd {
            begin_seq: r.u64()?,
        },
        t if t >= tag::HINT => return Ok(None),
        t => {
            return Err(Error::Store(crate::store::StoreError::Unsupported(format!(
                "record metadata holds op tag {t}, which this build does not know (written by a newer idcfs)"
            ))))
        }
    }))
}

/// Largest expansion of one `PACKED` op (the record metadata limit).
const MAX_PACKED: u64 = 64 << 20;

/// `ops` encoded as record metadata holding one `PACKED` op (a zstd frame of their plain
/// encoding) when that is smaller, else their plain encoding. For large, repetitive lists
/// (checkpoints restate every inode, name and block: a few times smaller packed).
pub fn encode_packed(ops: &[Op]) -> Vec<u8> {
    let plain = encode(ops);
    let Ok(z) = zstd::bulk::compress(&plain, 3) else {
        return plain;
    };
    let mut w = W(Vec::with_capacity(z.len() + 11));
    w.u8(tag::PACKED);
    w.u64(z.len() as u64);
    w.0.extend_from_slice(&z);
    if w.0.len() < plain.len() {
        w.0
    } else {
        plain
    }
}

/// The expansion of a `PACKED` body: the plain encoding of its ops, at most `MAX_PACKED`.
fn unpack(body: &[u8]) -> Result<Vec<u8>> {
    use std::io::Read;
    let dec =
        zstd::stream::read::Decoder::new(body).map_err(|e| bad(format!("packed ops: {e}")))?;
    let mut out = Vec::new();
    dec.take(MAX_PACKED + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("packed ops: {e}")))?;
    if out.len() as u64 > MAX_PACKED {
        return Err(bad("packed ops expand past the metadata limit".into()));
    }
    Ok(out)
}

/// The tags of the ops `meta` holds at its top level (`PACKED` itself, not what it holds).
pub fn top_tags(meta: &[u8]) -> Result<Vec<u8>> {
    let mut r = R { b: meta };
    let mut tags = Vec::new();
    while !r.b.is_empty() {
        let t = r.u8()?;
        let len = r.u64()?;
        let len = usize::try_from(len).map_err(|_| bad(format!("op length {len}")))?;
        r.take(len)?;
        tags.push(t);
    }
    Ok(tags)
}

/// Decode version-2 record metadata.
pub fn decode(meta: &[u8]) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    decode_into(meta, true, &mut ops)?;
    Ok(ops)
}

/// Decode `meta` onto `ops`; a `PACKED` op is expanded in place, one level deep only.
fn decode_into(meta: &[u8], outer: bool, ops: &mut Vec<Op>) -> Result<()> {
    let mut r = R { b: meta };
    while !r.b.is_empty() {
        let t = r.u8()?;
        let len = r.u64()?;
        let len = usize::try_from(len).map_err(|_| bad(format!("op length {len}")))?;
        let mut body = R { b: r.take(len)? };
        if t == tag::PACKED {
            if !outer {
                return Err(bad("packed ops inside packed ops".into()));
            }
            decode_into(&unpack(body.b)?, false, ops)?;
            continue;
        }
        if let Some(op) = decode_body(t, &mut body)? {
            if !body.b.is_empty() {
                return Err(bad(format!(
                    "op tag {t} has {} bytes past its fields",
                    body.b.len()
                )));
            }
            ops.push(op);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn packed_ops_expand_in_place_and_only_one_level_deep() {
        // A checkpoint-like list: many similar inodes and names.
        let mut ops = vec![Op::CheckpointBegin];
        for op in every_op().into_iter().cycle().take(3000) {
            ops.push(op);
        }
        let plain = encode(&ops);
        let packed = encode_packed(&ops);
        assert_eq!(packed[0], tag::PACKED, "the list is packed");
        assert!(
            packed.len() * 4 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(decode(&packed).unwrap(), ops);
        assert_eq!(top_tags(&packed).unwrap(), vec![tag::PACKED]);
        // Beside plain ops, in order.
        let mut mixed = encode(&ops[..1]);
        mixed.extend_from_slice(&packed);
        assert_eq!(decode(&mixed).unwrap().len(), ops.len() + 1);
        // What does not shrink stays plain.
        let one = vec![Op::DelInode { ino: 38 }];
        assert_eq!(encode_packed(&one), encode(&one));
        // Packed inside packed is refused.
        let z = zstd::bulk::compress(&packed, 3).unwrap();
        let mut nested = vec![tag::PACKED];
        let mut w = W(Vec::new());
        w.u64(z.len() as u64);
        nested.extend_from_slice(&w.0);
        nested.extend_from_slice(&z);
        assert!(decode(&nested).is_err());
        // A frame that expands past the metadata limit is refused, not allocated.
        let bomb = zstd::bulk::compress(&vec![0u8; (MAX_PACKED + 1) as usize], 3).unwrap();
        let mut m = vec![tag::PACKED];
        let mut w = W(Vec::new());
        w.u64(bomb.len() as u64);
        m.extend_from_slice(&w.0);
        m.extend_from_slice(&bomb);
        assert!(decode(&m).is_err());
        // Damaged frames are errors, never garbage ops.
        let mut bad = packed.clone();
        let n = bad.len();
        bad[n / 2] ^= 0x55;
        assert!(decode(&bad).map_or(true, |d| d != ops));
    }

    /// One op of every kind, with non-trivial field values.
    pub(crate) fn every_op() -> Vec<Op> {
        let loc = Loc {
            pack: 7,
            off: 1 << 33,
            len: 4242,
        };
        let bref = BlockRef {
            loc,
            codec: 3,
            params: 19,
            raw_len: 131072,
            stored: 999,
            object: true,
        };
        let inode = Inode {
            ino: 99,
            kind: Kind::Symlink,
            perm: 0o4755,
            uid: 1000,
            gid: 100,
            nlink: 3,
            size: 5 << 40,
            rdev: 0x0801,
            atime: Ts { sec: -5, nsec: 1 },
            mtime: Ts {
                sec: 1_700_000_000,
                nsec: 999_999_999,
            },
            ctime: Ts { sec: 0, nsec: 0 },
            crtime: Ts { sec: 1, nsec: 2 },
            parent: 1,
            target: b"../x".to_vec(),
            flags: 0xdead,
        };
        vec![
            Op::PutInode(inode),
            Op::DelInode { ino: 5 },
            Op::PutDirent {
                parent: 1,
                name: b"n\xffame".to_vec(),
                ent: Dirent {
                    ino: 9,
                    kind: Kind::BlockDev,
                    cookie: 77,
                },
            },
            Op::DelDirent {
                parent: 2,
                name: b"x".to_vec(),
            },
            Op::PutBlock { ino: 3, idx: 4 },
            Op::PutBlockShared { ino: 3, idx: 5 },
            Op::RefBlock {
                ino: 3,
                idx: 6,
                hash: [7; 16],
            },
            Op::PutObject {
                ino: 8,
                froms: vec![Some(loc), None, Some(loc)],
            },
            Op::MoveObject {
                ino: 8,
                idx: 1,
                from: loc,
            },
            Op::PutObjectShared {
                ino: 9,
                froms: vec![None, Some(loc)],
            },
            Op::RefObject {
                ino: 10,
                hash: [3; 16],
                froms: vec![Some(loc), None],
            },
            Op::PutLossyObject {
                ino: 11,
                froms: vec![Some(loc), None],
                old_size: 200_000,
                size: 150_001,
            },
            Op::SnapShared {
                hash: [1; 16],
                bref,
            },
            Op::DelBlocks {
                ino: 3,
                from: 1,
                to: u64::MAX,
            },
            Op::SetXattr {
                ino: 3,
                name: b"user.a".to_vec(),
                value: vec![0; 300],
            },
            Op::DelXattr {
                ino: 3,
                name: b"user.a".to_vec(),
            },
            Op::Orphan { ino: 4, on: true },
            Op::MoveBlock {
                ino: 3,
                idx: 4,
                from: loc,
            },
            Op::CheckpointBegin,
            Op::SnapBlock {
                ino: 3,
                idx: 4,
                bref,
            },
            Op::CheckpointEnd { begin_seq: 12 },
        ]
    }

    #[test]
    fn every_op_round_trips_with_its_own_tag() {
        let ops = every_op();
        let mut tags: Vec<u8> = ops.iter().map(op_tag).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), ops.len(), "tags are distinct");
        let enc = encode(&ops);
        assert_eq!(decode(&enc).unwrap_or_else(|e| panic!("{e}")), ops);
        for op in &ops {
            let one = encode(std::slice::from_ref(op));
            assert_eq!(one[0], op_tag(op));
        }
    }

    #[test]
    fn frozen_layout_of_a_put_dirent() {
        // Byte for byte, as FORMAT.md documents it: a change here breaks every store.
        let op = Op::PutDirent {
            parent: 1,
            name: b"ab".to_vec(),
            ent: Dirent {
                ino: 2,
                kind: Kind::Dir,
                cookie: 3,
            },
        };
        // tag 3, body length 7: parent 1, name length 2, "ab", ino 2, kind 2 (dir), cookie 3.
        let want: Vec<u8> = vec![3, 7, 1, 2, b'a', b'b', 2, 2, 3];
        assert_eq!(encode(&[op]), want);
        // Varints: 300 = 0xac 0x02; zigzag(-1) = 1; u64::MAX takes 10 bytes.
        let mut w = W(Vec::new());
        w.u64(300);
        w.i64(-1);
        w.u64(u64::MAX);
        assert_eq!(&w.0[..3], &[0xac, 0x02, 0x01]);
        assert_eq!(w.0.len(), 13);
        let mut r = R { b: &w.0 };
        assert_eq!(r.u64().ok(), Some(300));
        assert_eq!(r.i64().ok(), Some(-1));
        assert_eq!(r.u64().ok(), Some(u64::MAX));
        // Overlong and overflowing encodings are refused.
        assert!(R { b: &[0x80, 0x00] }.u64().is_err());
        assert!(R { b: &[0xff; 10] }.u64().is_err());
        assert!(R {
            b: &[0x80, 0x80, 0x04]
        }
        .u16()
        .is_err());
    }

    #[test]
    fn damaged_metadata_is_an_error_never_a_panic() {
        let ops = every_op();
        let enc = encode(&ops);
        // Where each op ends in the encoding.
        let mut ends = Vec::new();
        let mut at = 0;
        for op in &ops {
            at += encode(std::slice::from_ref(op)).len();
            ends.push(at);
        }
        for cut in 0..enc.len() {
            // A prefix that ends at an op boundary decodes to those ops; any other fails.
            match ends.iter().position(|&e| e == cut) {
                Some(i) => assert_eq!(decode(&enc[..cut]).ok().as_deref(), Some(&ops[..=i])),
                None if cut == 0 => assert_eq!(decode(&enc[..0]).ok(), Some(vec![])),
                None => assert!(
                    decode(&enc[..cut]).is_err(),
                    "prefix of {cut} bytes decoded"
                ),
            }
        }
        for i in 0..enc.len() {
            let mut b = enc.clone();
            b[i] ^= 0xa5;
            let _ = decode(&b);
        }
        assert!(decode(&enc[..enc.len() - 1]).is_err());
        let mut trailing = encode(&[Op::DelInode { ino: 1 }]);
        trailing[1] = 2; // body length 2 > 1 byte of fields
        trailing.push(0);
        assert!(decode(&trailing).is_err());
    }

    #[test]
    fn unknown_critical_tags_are_refused_and_hints_skipped() {
        let mut hint = vec![0x90u8, 3];
        hint.extend_from_slice(b"xyz");
        hint.extend_from_slice(&encode(&[Op::DelInode { ino: 4 }]));
        assert_eq!(
            decode(&hint).unwrap_or_else(|e| panic!("{e}")),
            vec![Op::DelInode { ino: 4 }]
        );
        let crit = vec![0x40u8, 0];
        let err = decode(&crit)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("newer idcfs"), "{err}");
    }
}
