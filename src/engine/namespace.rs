//! Names and inode metadata: lookup, create, link, unlink, rename, readdir, setattr, xattrs.
//!
//! Invariants: every mutation here runs under the namespace lock and commits one journal
//! record, so each operation (rename over an existing file included) is atomic on disk.
//! Directory nlink = 2 + number of subdirectories; a directory's `parent` is its "..".

use super::layout::MAX_FILE_SIZE;
use super::{check_name, Attr, DirEntry, Engine};
use crate::error::{Error, Result};
use crate::meta::{Dirent, Ino, Inode, Kind, Op, Ts, ROOT_INO};
use crate::policy::POLICY_XATTR;
use std::sync::atomic::Ordering;

/// The namespace's own state: the lock every name and inode-metadata change runs under, and
/// the inode number and readdir cookie allocators.
///
/// Invariant: numbers are handed out increasing and never reused while the store exists
/// (the index keeps the highest used, so a reopen continues above them).
pub(super) struct Names {
    lock: parking_lot::Mutex<()>,
    next_ino: std::sync::atomic::AtomicU64,
    next_cookie: std::sync::atomic::AtomicU64,
}

impl Names {
    pub(super) fn new(next_ino: Ino, next_cookie: u64) -> Names {
        Names {
            lock: parking_lot::Mutex::new(()),
            next_ino: next_ino.into(),
            next_cookie: next_cookie.into(),
        }
    }

    /// Serialize a namespace change (held across its journal commit).
    pub(super) fn lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.lock.lock()
    }

    fn alloc_ino(&self) -> Ino {
        self.next_ino.fetch_add(1, Ordering::Relaxed)
    }

    fn alloc_cookie(&self) -> u64 {
        self.next_cookie.fetch_add(1, Ordering::Relaxed)
    }

    /// Inode numbers handed out so far (the root included).
    pub(super) fn inodes_allocated(&self) -> u64 {
        self.next_ino.load(Ordering::Relaxed).saturating_sub(1)
    }
}

/// Largest xattr name and value (the kernel's limits).
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_SIZE_MAX: usize = 65536;

#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    Now,
    At(Ts),
}

impl TimeSet {
    fn resolve(self, now: Ts) -> Ts {
        match self {
            TimeSet::Now => now,
            TimeSet::At(t) => t,
        }
    }
}

/// The fields of a setattr request.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Ts>,
    /// Clear set-user-ID, and set-group-ID where the group may execute, of a non-directory
    /// (chown, a truncate or write by a caller without CAP_FSETID): the FUSE layer asks the
    /// kernel to leave this to the filesystem (`FUSE_HANDLE_KILLPRIV_V2`), which saves the
    /// kernel an attribute refresh before each chown and a capability lookup on every write.
    pub kill_suid: bool,
}

/// Who is asking (for ownership of new inodes).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Engine {
    fn dir_inode(&self, ino: Ino) -> Result<Inode> {
        let i = self.j.index.inode(ino)?.ok_or(Error::NotFound)?;
        if i.kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        Ok(i)
    }

    /// The current inode, with buffered data committed first when the file is live, so a
    /// logged copy never claims a size its blocks do not back.
    fn load_inode(&self, ino: Ino) -> Result<Inode> {
        let st = self.files.lock().get(&ino).cloned();
        if let Some(st) = st {
            match self.drain_with(&st, false) {
                Ok(()) => {
                    if let Some(a) = st.inner_attr() {
                        return Ok(a);
                    }
                }
                // Data that cannot be stored now (no space; the error stays with the file for
                // its writer) must not block unlink or rename: the logged inode is the one the
                // stored blocks back; the live state catches up at its next drain.
                Err(e) => tracing::debug!(ino, "namespace change with data still buffered: {e}"),
            }
        }
        self.j.index.inode(ino)?.ok_or(Error::NotFound)
    }

    /// Mirror namespace-owned fields (nlink, ctime, parent) into a live file state.
    fn sync_live(&self, i: &Inode) {
        let st = self.files.lock().get(&i.ino).cloned();
        if let Some(st) = st {
            st.set_ns_fields(i);
        }
    }

    fn alloc_cookie(&self) -> u64 {
        self.ns.alloc_cookie()
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        if name.len() > 255 {
            return Err(Error::NameTooLong);
        }
        self.dir_inode(parent)?;
        let d = self.j.index.dirent(parent, name)?.ok_or(Error::NotFound)?;
        self.getattr(d.ino)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let i = self.j.index.inode(ino)?.ok_or(Error::NotFound)?;
        if i.kind != Kind::Symlink {
            return Err(Error::Invalid("not a symlink"));
        }
        Ok(i.target)
    }

    /// Create a non-directory or directory inode named `name` in `parent`.
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: Kind,
        mode: u32,
        rdev: u32,
        target: &[u8],
        who: Caller,
    ) -> Result<Attr> {
        check_name(name)?;
        let _ns = self.ns.lock();
        let mut pdir = self.dir_inode(parent)?;
        if pdir.nlink == 0 {
            return Err(Error::NotFound);
        }
        if self.j.index.dirent(parent, name)?.is_some() {
            return Err(Error::Exists);
        }
        let now = Ts::now();
        let mut perm = (mode & 0o7777) as u16;
        let mut gid = who.gid;
        // BSD group semantics under a setgid directory; subdirectories inherit the bit.
        if pdir.perm & libc::S_ISGID as u16 != 0 {
            gid = pdir.gid;
            if kind == Kind::Dir {
                perm |= libc::S_ISGID as u16;
            }
        }
        if kind == Kind::Symlink {
            perm = 0o777;
        }
        let ino = self.ns.alloc_ino();
        let inode = Inode {
            ino,
            kind,
            perm,
            uid: who.uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: if kind == Kind::Symlink {
                target.len() as u64
            } else {
                0
            },
            rdev,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            parent,
            target: target.to_vec(),
            flags: 0,
        };
        pdir.mtime = now;
        pdir.ctime = now;
        if kind == Kind::Dir {
            pdir.nlink += 1;
        }
        let ent = Dirent {
            ino,
            kind,
            cookie: self.alloc_cookie(),
        };
        self.j.commit(
            &[
                Op::PutInode(inode.clone()),
                Op::PutDirent {
                    parent,
                    name: name.to_vec(),
                    ent,
                },
                Op::PutInode(pdir),
            ],
            None,
        )?;
        Ok(Attr { inode, blocks: 0 })
    }

    /// create(2): a new regular file, opened.
    pub fn create(&self, parent: Ino, name: &[u8], mode: u32, who: Caller) -> Result<Attr> {
        let a = self.mknod(parent, name, Kind::File, mode, 0, &[], who)?;
        self.open_file(a.inode.ino)?;
        Ok(a)
    }

    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Attr> {
        check_name(newname)?;
        let _ns = self.ns.lock();
        let mut pdir = self.dir_inode(newparent)?;
        if pdir.nlink == 0 {
            return Err(Error::NotFound);
        }
        let mut i = self.load_inode(ino)?;
        if i.kind == Kind::Dir {
            return Err(Error::NotPermitted("hard links to directories"));
        }
        if i.nlink == 0 {
            return Err(Error::NotFound);
        }
        if i.nlink >= 65000 {
            return Err(Error::TooManyLinks);
        }
        if self.j.index.dirent(newparent, newname)?.is_some() {
            return Err(Error::Exists);
        }
        let now = Ts::now();
        i.nlink += 1;
        i.ctime = now;
        pdir.mtime = now;
        pdir.ctime = now;
        let ent = Dirent {
            ino,
            kind: i.kind,
            cookie: self.alloc_cookie(),
        };
        self.j.commit(
            &[
                Op::PutInode(i.clone()),
                Op::PutDirent {
                    parent: newparent,
                    name: newname.to_vec(),
                    ent,
                },
                Op::PutInode(pdir),
            ],
            None,
        )?;
        self.sync_live(&i);
        self.getattr(ino)
    }

    /// Ops that drop one link of `i` (already decremented by the caller); deletes the inode
    /// when no link and no open handle remains.
    fn unlink_ops(&self, i: &Inode, ops: &mut Vec<Op>) -> bool {
        if i.nlink > 0 || i.kind == Kind::Dir {
            if i.kind == Kind::Dir {
                ops.push(Op::DelInode { ino: i.ino });
                return true;
            }
            ops.push(Op::PutInode(i.clone()));
            return false;
        }
        let open = self
            .files
            .lock()
            .get(&i.ino)
            .is_some_and(|st| st.opens() > 0);
        if open {
            ops.push(Op::PutInode(i.clone()));
            ops.push(Op::Orphan {
                ino: i.ino,
                on: true,
            });
            false
        } else {
            ops.push(Op::DelInode { ino: i.ino });
            true
        }
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let _ns = self.ns.lock();
        let mut pdir = self.dir_inode(parent)?;
        let d = self.j.index.dirent(parent, name)?.ok_or(Error::NotFound)?;
        if d.kind == Kind::Dir {
            return Err(Error::IsDir);
        }
        let mut i = self.load_inode(d.ino)?;
        let now = Ts::now();
        i.nlink = i.nlink.saturating_sub(1);
        i.ctime = now;
        pdir.mtime = now;
        pdir.ctime = now;
        let mut ops = vec![
            Op::DelDirent {
                parent,
                name: name.to_vec(),
            },
            Op::PutInode(pdir),
        ];
        let deleted = self.unlink_ops(&i, &mut ops);
        self.commit_freeing(&ops, None)?;
        if deleted {
            self.kill_state(i.ino);
        } else {
            self.sync_live(&i);
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(Error::Invalid("rmdir ."));
        }
        let _ns = self.ns.lock();
        let mut pdir = self.dir_inode(parent)?;
        let d = self.j.index.dirent(parent, name)?.ok_or(Error::NotFound)?;
        if d.kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        if !self.j.index.dir_is_empty(d.ino)? {
            return Err(Error::NotEmpty);
        }
        let now = Ts::now();
        pdir.nlink = pdir.nlink.saturating_sub(1);
        pdir.mtime = now;
        pdir.ctime = now;
        self.commit_freeing(
            &[
                Op::DelDirent {
                    parent,
                    name: name.to_vec(),
                },
                Op::DelInode { ino: d.ino },
                Op::PutInode(pdir),
            ],
            None,
        )?;
        Ok(())
    }

    /// True when `dir` is `anc` or lies below it.
    fn is_within(&self, dir: Ino, anc: Ino) -> Result<bool> {
        let mut cur = dir;
        for _ in 0..100_000 {
            if cur == anc {
                return Ok(true);
            }
            if cur == ROOT_INO {
                return Ok(false);
            }
            cur = self.j.index.inode(cur)?.ok_or(Error::NotFound)?.parent;
        }
        Err(Error::Corrupt(
            "directory parent chain does not reach the root".into(),
        ))
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        check_name(newname)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace)
        {
            return Err(Error::Invalid("rename flags"));
        }
        let _ns = self.ns.lock();
        self.dir_inode(parent)?;
        let mut np = self.dir_inode(newparent)?;
        if np.nlink == 0 {
            return Err(Error::NotFound);
        }
        let src = self.j.index.dirent(parent, name)?.ok_or(Error::NotFound)?;
        let dst = self.j.index.dirent(newparent, newname)?;
        let now = Ts::now();
        if exchange {
            let dst = dst.ok_or(Error::NotFound)?;
            return self.rename_exchange(parent, name, src, newparent, newname, dst, now);
        }
        if let Some(dst) = dst {
            if noreplace {
                return Err(Error::Exists);
            }
            if dst.ino == src.ino {
                return Ok(());
            }
        }
        if src.kind == Kind::Dir && self.is_within(newparent, src.ino)? {
            return Err(Error::Invalid("cannot move a directory into itself"));
        }
        let mut ops = vec![Op::DelDirent {
            parent,
            name: name.to_vec(),
        }];
        let mut deleted = None;
        let mut live = Vec::new();
        let mut dst_was_dir = false;
        if let Some(dst) = dst {
            match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
                (true, false) => return Err(Error::NotDir),
                (false, true) => return Err(Error::IsDir),
                (true, true) if !self.j.index.dir_is_empty(dst.ino)? => {
                    return Err(Error::NotEmpty)
                }
                _ => {}
            }
            dst_was_dir = dst.kind == Kind::Dir;
            let mut di = self.load_inode(dst.ino)?;
            di.nlink = if dst_was_dir {
                0
            } else {
                di.nlink.saturating_sub(1)
            };
            di.ctime = now;
            if self.unlink_ops(&di, &mut ops) {
                deleted = Some(di.ino);
            } else {
                live.push(di);
            }
        }
        ops.push(Op::PutDirent {
            parent: newparent,
            name: newname.to_vec(),
            ent: Dirent {
                ino: src.ino,
                kind: src.kind,
                cookie: self.alloc_cookie(),
            },
        });
        let mut si = self.load_inode(src.ino)?;
        si.ctime = now;
        // Files remember the directory they live in too: their policy comes from it.
        si.parent = newparent;
        if src.kind == Kind::Dir {
            self.policy_changed();
        }
        ops.push(Op::PutInode(si.clone()));
        live.push(si);
        if parent == newparent {
            np.mtime = now;
            np.ctime = now;
            if dst_was_dir {
                np.nlink = np.nlink.saturating_sub(1);
            }
            ops.push(Op::PutInode(np));
        } else {
            let mut op = self.dir_inode(parent)?;
            op.mtime = now;
            op.ctime = now;
            np.mtime = now;
            np.ctime = now;
            if src.kind == Kind::Dir {
                op.nlink = op.nlink.saturating_sub(1);
                if !dst_was_dir {
                    np.nlink += 1;
                }
            } else if dst_was_dir {
                np.nlink = np.nlink.saturating_sub(1);
            }
            ops.push(Op::PutInode(op));
            ops.push(Op::PutInode(np));
        }
        self.commit_freeing(&ops, None)?;
        if let Some(ino) = deleted {
            self.kill_state(ino);
        }
        for i in &live {
            self.sync_live(i);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn rename_exchange(
        &self,
        p1: Ino,
        n1: &[u8],
        a: Dirent,
        p2: Ino,
        n2: &[u8],
        b: Dirent,
        now: Ts,
    ) -> Result<()> {
        if a.ino == b.ino {
            return Ok(());
        }
        if a.kind == Kind::Dir && self.is_within(p2, a.ino)? {
            return Err(Error::Invalid("cannot move a directory into itself"));
        }
        if b.kind == Kind::Dir && self.is_within(p1, b.ino)? {
            return Err(Error::Invalid("cannot move a directory into itself"));
        }
        let mut ops = vec![
            Op::PutDirent {
                parent: p1,
                name: n1.to_vec(),
                ent: Dirent {
                    ino: b.ino,
                    kind: b.kind,
                    cookie: self.alloc_cookie(),
                },
            },
            Op::PutDirent {
                parent: p2,
                name: n2.to_vec(),
                ent: Dirent {
                    ino: a.ino,
                    kind: a.kind,
                    cookie: self.alloc_cookie(),
                },
            },
        ];
        let mut ai = self.load_inode(a.ino)?;
        let mut bi = self.load_inode(b.ino)?;
        ai.ctime = now;
        bi.ctime = now;
        if p1 != p2 {
            ai.parent = p2;
            bi.parent = p1;
            self.policy_changed();
            let mut d1 = self.dir_inode(p1)?;
            let mut d2 = self.dir_inode(p2)?;
            let (da, db) = (
                u32::from(ai.kind == Kind::Dir),
                u32::from(bi.kind == Kind::Dir),
            );
            d1.nlink = d1.nlink + db - da;
            d2.nlink = d2.nlink + da - db;
            for d in [&mut d1, &mut d2] {
                d.mtime = now;
                d.ctime = now;
            }
            ops.push(Op::PutInode(d1));
            ops.push(Op::PutInode(d2));
        } else {
            let mut d = self.dir_inode(p1)?;
            d.mtime = now;
            d.ctime = now;
            ops.push(Op::PutInode(d));
        }
        ops.push(Op::PutInode(ai.clone()));
        ops.push(Op::PutInode(bi.clone()));
        self.commit_freeing(&ops, None)?;
        self.sync_live(&ai);
        self.sync_live(&bi);
        Ok(())
    }

    /// Entries after position `offset` ("." is 1, ".." is 2, then entry cookies).
    pub fn readdir(&self, ino: Ino, offset: u64, limit: usize) -> Result<Vec<DirEntry>> {
        let dir = self.dir_inode(ino)?;
        let mut out = Vec::new();
        if offset < 1 {
            out.push(DirEntry {
                ino,
                kind: Kind::Dir,
                name: b".".to_vec(),
                offset: 1,
            });
        }
        if offset < 2 {
            out.push(DirEntry {
                ino: dir.parent,
                kind: Kind::Dir,
                name: b"..".to_vec(),
                offset: 2,
            });
        }
        for (cookie, name, d) in self.j.index.readdir(ino, offset.max(2), limit)? {
            out.push(DirEntry {
                ino: d.ino,
                kind: d.kind,
                name,
                offset: cookie,
            });
        }
        Ok(out)
    }

    /// `readdir` with each entry's attributes (the kernel caches them with the names, so a
    /// walk of the tree needs no lookup per name). An entry removed meanwhile is left out.
    pub fn readdir_plus(
        &self,
        ino: Ino,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<(DirEntry, Attr)>> {
        let mut out = Vec::new();
        for e in self.readdir(ino, offset, limit)? {
            match self.getattr(e.ino) {
                Ok(a) => out.push((e, a)),
                Err(Error::NotFound) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(out)
    }

    pub fn setattr(&self, ino: Ino, sa: &SetAttr) -> Result<Attr> {
        let _ns = self.ns.lock();
        if let Some(size) = sa.size {
            let i = self.j.index.inode(ino)?.ok_or(Error::NotFound)?;
            match i.kind {
                Kind::File => {}
                Kind::Dir => return Err(Error::IsDir),
                _ => return Err(Error::Invalid("truncate of a special file")),
            }
            if size > MAX_FILE_SIZE {
                return Err(Error::FileTooBig);
            }
            self.truncate(ino, size, sa.mtime.is_none())?;
        }
        let others = sa.mode.is_some()
            || sa.uid.is_some()
            || sa.gid.is_some()
            || sa.atime.is_some()
            || sa.mtime.is_some()
            || sa.ctime.is_some();
        // A kill alone (a write or truncate) changes and journals only a file that has the
        // bits; with other changes (chown) clearing absent bits costs nothing, so no lookup.
        let kill = sa.kill_suid
            && (others || {
                let i = self.getattr(ino)?.inode;
                i.kind != Kind::Dir && i.perm & (libc::S_ISUID | libc::S_ISGID) as u16 != 0
            });
        if others || kill {
            let now = Ts::now();
            let apply = |i: &mut Inode| {
                if kill && i.kind != Kind::Dir {
                    i.perm &= !(libc::S_ISUID as u16);
                    if i.perm & libc::S_IXGRP as u16 != 0 {
                        i.perm &= !(libc::S_ISGID as u16);
                    }
                }
                if let Some(m) = sa.mode {
                    i.perm = (m & 0o7777) as u16;
                }
                if let Some(u) = sa.uid {
                    i.uid = u;
                }
                if let Some(g) = sa.gid {
                    i.gid = g;
                }
                if let Some(t) = sa.atime {
                    i.atime = t.resolve(now);
                }
                if let Some(t) = sa.mtime {
                    i.mtime = t.resolve(now);
                }
                i.ctime = sa.ctime.unwrap_or(now);
            };
            // A live file keeps the change in memory with its other pending attributes; it
            // is journaled with the file's next flush (at close, fsync or within seconds).
            self.check_writable()?;
            let st = self.files.lock().get(&ino).cloned();
            let done = match st {
                Some(st) => st.defer_attr(apply),
                None => false,
            };
            if !done {
                let mut i = self.j.index.inode(ino)?.ok_or(Error::NotFound)?;
                apply(&mut i);
                self.j.commit(&[Op::PutInode(i)], None)?;
            }
        }
        self.getattr(ino)
    }

    pub fn fallocate(&self, ino: Ino, off: u64, len: u64, mode: i32) -> Result<()> {
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let end = off.checked_add(len).ok_or(Error::FileTooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(Error::FileTooBig);
        }
        let grow = |e: &Engine| -> Result<()> {
            let size = e.getattr(ino)?.inode.size;
            if !keep && end > size {
                let _ns = e.ns.lock();
                e.truncate(ino, end, true)?;
            }
            Ok(())
        };
        match mode & !libc::FALLOC_FL_KEEP_SIZE {
            // Allocation is meaningless for compressed storage: only the size changes.
            0 => grow(self),
            libc::FALLOC_FL_PUNCH_HOLE if keep => self.zero_range(ino, off, len),
            libc::FALLOC_FL_ZERO_RANGE => {
                self.zero_range(ino, off, len)?;
                grow(self)
            }
            _ => Err(Error::Unsupported("fallocate mode")),
        }
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if let Some(v) = self.virtual_xattr(ino, name)? {
            return Ok(v);
        }
        self.j.index.inode(ino)?.ok_or(Error::NotFound)?;
        self.j.index.xattr(ino, name)?.ok_or(Error::NoAttr)
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        self.j.index.inode(ino)?.ok_or(Error::NotFound)?;
        let mut out = Vec::new();
        for n in self.j.index.xattr_names(ino)? {
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        if name.is_empty() {
            return Err(Error::Invalid("empty attribute name"));
        }
        if name.len() > XATTR_NAME_MAX {
            return Err(Error::Range);
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(Error::TooBig("attribute values are limited to 64 KiB"));
        }
        let mut value = value.to_vec();
        let is_policy = name == POLICY_XATTR;
        if is_policy {
            // Validated and stored in canonical form; an empty policy removes the attribute.
            let p = self.set_policy(ino, &value)?.unwrap_or_default();
            if p.is_empty() {
                let _ns = self.ns.lock();
                if self.j.index.xattr(ino, name)?.is_some() {
                    self.change_with_ctime(
                        ino,
                        Op::DelXattr {
                            ino,
                            name: name.to_vec(),
                        },
                    )?;
                }
                self.policy_changed();
                return Ok(());
            }
            value = p.to_string().into_bytes();
        } else if name.starts_with(VIRTUAL_PREFIX) {
            return self.virtual_setxattr(ino, name);
        }
        let _ns = self.ns.lock();
        let exists = self.j.index.xattr(ino, name)?.is_some();
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(Error::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(Error::NoAttr);
        }
        self.change_with_ctime(
            ino,
            Op::SetXattr {
                ino,
                name: name.to_vec(),
                value,
            },
        )?;
        if is_policy {
            self.policy_changed();
        }
        Ok(())
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let _ns = self.ns.lock();
        if self.j.index.xattr(ino, name)?.is_none() {
            return Err(Error::NoAttr);
        }
        self.change_with_ctime(
            ino,
            Op::DelXattr {
                ino,
                name: name.to_vec(),
            },
        )?;
        if name == POLICY_XATTR {
            self.policy_changed();
        }
        Ok(())
    }

    /// Commit `op` together with the inode's new ctime.
    fn change_with_ctime(&self, ino: Ino, op: Op) -> Result<()> {
        let mut i = self.load_inode(ino)?;
        i.ctime = Ts::now();
        self.j.commit(&[op, Op::PutInode(i.clone())], None)?;
        self.sync_live(&i);
        Ok(())
    }

    fn virtual_xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        if !name.starts_with(VIRTUAL_PREFIX) || name == POLICY_XATTR {
            return Ok(None);
        }
        let what = &name[VIRTUAL_PREFIX.len()..];
        if matches!(what, b"stats" | b"fileinfo" | b"class") {
            // Closes return before their data is committed: count it first.
            self.settle_closed();
        }
        let v = match what {
            b"stats" => serde_json::to_vec(&if ino == ROOT_INO {
                self.stats_detailed()?
            } else {
                self.stats_subtree(ino)?
            })
            .map_err(|e| Error::Corrupt(e.to_string()))?,
            b"pid" => std::process::id().to_string().into_bytes(),
            b"store" => self.store_dir.display().to_string().into_bytes(),
            b"effective" => self.effective_policy_of(ino)?.to_string().into_bytes(),
            b"class" => crate::classify::class_name_of_flags(self.getattr(ino)?.inode.flags)
                .as_bytes()
                .to_vec(),
            b"fileinfo" => serde_json::to_vec(&self.file_info(ino)?)
                .map_err(|e| Error::Corrupt(e.to_string()))?,
            b"status" => {
                serde_json::to_vec(&self.status()).map_err(|e| Error::Corrupt(e.to_string()))?
            }
            _ => return Err(Error::NoAttr),
        };
        Ok(Some(v))
    }

    fn virtual_setxattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        match &name[VIRTUAL_PREFIX.len()..] {
            b"sync" => self.sync_all(),
            b"compact" => self.compact(true).map(|_| ()),
            b"recompress" => self.recompress_tree(ino, false),
            b"recompress_now" => self.recompress_tree(ino, true),
            _ => Err(Error::NotPermitted(
                "the user.idcfs. attribute namespace is reserved",
            )),
        }
    }

    /// Space as writers see it: free space above the floor new data must leave (the reserve
    /// and the metadata margin, see `space`), never negative; the total excludes them too.
    pub fn statfs(&self) -> Result<Statfs> {
        let fs = super::space::fs_space(&self.store_dir)?;
        let bs = fs.frsize;
        let held = self.space.reserve.max(self.space.held()) + self.space.margin;
        let floor = self.space.floor();
        Ok(Statfs {
            blocks: fs.total.saturating_sub(held) / bs,
            bfree: fs.free.saturating_sub(floor) / bs,
            bavail: fs.avail.saturating_sub(floor) / bs,
            files: self.ns.inodes_allocated() + 1,
            ffree: u32::MAX as u64,
            bsize: bs as u32,
        })
    }
}

/// Names under this prefix are answered by the daemon (stats, control), never stored.
pub const VIRTUAL_PREFIX: &[u8] = b"user.idcfs.";

#[derive(Clone, Copy, Debug)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
}
