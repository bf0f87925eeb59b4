//! Engine types ↔ fuser types. No logic.

use crate::engine::{Attr, TimeSet};
use crate::error::Error;
use crate::meta::{Kind, Ts};
use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};

pub fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

pub fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

pub fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Ts::from_system(t)),
    }
}

pub fn attr_of(a: &Attr) -> FileAttr {
    let i = &a.inode;
    FileAttr {
        ino: INodeNo(i.ino),
        size: i.size,
        blocks: a.blocks,
        atime: i.atime.to_system(),
        mtime: i.mtime.to_system(),
        ctime: i.ctime.to_system(),
        crtime: i.crtime.to_system(),
        kind: file_type(i.kind),
        perm: i.perm,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: crate::engine::layout::BLOCK as u32,
        flags: 0,
    }
}
