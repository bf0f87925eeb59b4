//! The FUSE adapter: translates kernel requests into `Engine` calls and results into replies.
//!
//! No filesystem logic lives here: each op decodes its arguments, makes one engine call and
//! replies with the data or `Error::errno`. This is the only module that imports `fuser`.

mod convert;

use self::convert::{attr_of, errno, file_type, time_set};
use crate::engine::Caller;
use crate::engine::{Engine, SetAttr};
use crate::meta::Kind;
use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// How long the kernel may cache attributes and entries. Every change to names and
/// attributes arrives through this mount's kernel (the daemon is the only writer of the
/// store and changes no name or attribute on its own: background recompression and
/// compaction move data only), and the kernel updates or invalidates its cache on each of
/// its own requests, so a cached entry or attribute is never stale. A long lifetime saves a
/// LOOKUP or GETATTR round trip on every path walked again (`tar -x` then `find`, `rm -rf`).
const TTL: Duration = Duration::from_secs(60);

pub struct IdcFuse {
    engine: Arc<Engine>,
    /// The session's notifier, set once the session exists (`notifier_slot`).
    notifier: Arc<OnceLock<fuser::Notifier>>,
}

impl IdcFuse {
    pub fn new(engine: Arc<Engine>) -> IdcFuse {
        IdcFuse {
            engine,
            notifier: Arc::new(OnceLock::new()),
        }
    }

    /// Clears set-user-ID (and set-group-ID where group-executable) for a data change by a
    /// caller without CAP_FSETID, and has the kernel drop its cached attributes: the replies
    /// of write and fallocate carry none, so it would show the old mode until they expire.
    /// Attributes only (negative offset): no page of the file is touched.
    fn kill_suid(&self, ino: INodeNo) -> Result<(), Errno> {
        let kill = SetAttr {
            kill_suid: true,
            ..SetAttr::default()
        };
        self.engine.setattr(ino.0, &kill).map_err(|e| errno(&e))?;
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(ino, -1, 0) {
                tracing::debug!(ino = ino.0, "attribute invalidation: {e}");
            }
        }
        Ok(())
    }

    /// Where the daemon puts the session's notifier after mounting (the session owns `self`).
    pub fn notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }
}

impl Filesystem for IdcFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large writes and the kernel's write-back cache are what make FUSE fast; ignore
        // refusals from older kernels.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let _ = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // Set-user-ID and set-group-ID bits are cleared here, not by the kernel (see
        // `SetAttr::kill_suid`): the kernel then skips a GETATTR before every chown and, once
        // it has seen a file has no capability attribute, a GETXATTR on every write.
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // Listings carry each entry's attributes (`readdirplus`), so walking a tree does not
        // cost one LOOKUP per name; the kernel picks plain or plus listings per directory.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        let _ = config.add_capabilities(InitFlags::FUSE_READDIRPLUS_AUTO);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.engine.shutdown() {
            tracing::error!("flush at unmount failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded("lookup", || {
            match self.engine.lookup(parent.0, name.as_bytes()) {
                Ok(a) => reply.entry(&TTL, &attr_of(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded("getattr", || match self.engine.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &attr_of(&a)),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guarded("setattr", || {
            let sa = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: atime.map(time_set),
                mtime: mtime.map(time_set),
                ctime: ctime.map(crate::meta::Ts::from_system),
                // The kernel's contract (KILLPRIV_V2): chown always clears the bits; a
                // truncate only when the caller lacks CAP_FSETID, which the request does not
                // carry through fuser, so root stands for it.
                kill_suid: uid.is_some() || gid.is_some() || (size.is_some() && req.uid() != 0),
            };
            match self.engine.setattr(ino.0, &sa) {
                Ok(a) => reply.attr(&TTL, &attr_of(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded("readlink", || match self.engine.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        guarded("mknod", || {
            let Some(kind) = Kind::from_mode(mode) else {
                return reply.error(Errno::EINVAL);
            };
            match self.engine.mknod(
                parent.0,
                name.as_bytes(),
                kind,
                mode & !umask,
                rdev,
                &[],
                caller(req.uid(), req.gid()),
            ) {
                Ok(a) => reply.entry(&TTL, &attr_of(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        guarded("mkdir", || {
            match self.engine.mknod(
                parent.0,
                name.as_bytes(),
                Kind::Dir,
                mode & !umask,
                0,
                &[],
                caller(req.uid(), req.gid()),
            ) {
                Ok(a) => reply.entry(&TTL, &attr_of(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("unlink", || {
            match self.engine.unlink(parent.0, name.as_bytes()) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("rmdir", || {
            match self.engine.rmdir(parent.0, name.as_bytes()) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        guarded("symlink", || {
            let t = target.as_os_str().as_bytes();
            match self.engine.mknod(
                parent.0,
                link_name.as_bytes(),
                Kind::Symlink,
                0o777,
                0,
                t,
                caller(req.uid(), req.gid()),
            ) {
                Ok(a) => reply.entry(&TTL, &attr_of(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        guarded("rename", || {
            match self.engine.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags.bits(),
            ) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        guarded("link", || {
            match self.engine.link(ino.0, newparent.0, newname.as_bytes()) {
                Ok(a) => reply.entry(&TTL, &attr_of(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guarded("open", || match self.engine.open_file(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guarded("read", || match self.engine.read(ino.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded("write", || {
            // A write by a caller without CAP_FSETID to a set-user-ID or set-group-ID file.
            if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
                if let Err(e) = self.kill_suid(ino) {
                    return reply.error(e);
                }
            }
            match self.engine.write(ino.0, offset, data) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        guarded("flush", || match self.engine.close(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        guarded("release", || match self.engine.release(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded("fsync", || match self.engine.fsync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guarded("readdir", || {
            match self.engine.readdir(ino.0, offset, 256) {
                Ok(entries) => {
                    for e in entries {
                        if reply.add(
                            INodeNo(e.ino),
                            e.offset,
                            file_type(e.kind),
                            OsStr::from_bytes(&e.name),
                        ) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        guarded("readdirplus", || {
            match self.engine.readdir_plus(ino.0, offset, 256) {
                Ok(entries) => {
                    for (e, a) in entries {
                        if reply.add(
                            INodeNo(e.ino),
                            e.offset,
                            OsStr::from_bytes(&e.name),
                            &TTL,
                            &attr_of(&a),
                            Generation(0),
                        ) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded("fsyncdir", || match self.engine.fsync_dir() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guarded("statfs", || match self.engine.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, 255, s.bsize,
            ),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        guarded("setxattr", || {
            match self.engine.setxattr(ino.0, name.as_bytes(), value, flags) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guarded("getxattr", || {
            match self.engine.getxattr(ino.0, name.as_bytes()) {
                Ok(v) => xattr_reply(reply, &v, size),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guarded("listxattr", || match self.engine.listxattr(ino.0) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("removexattr", || {
            match self.engine.removexattr(ino.0, name.as_bytes()) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        guarded("access", || {
            // Permission checks are the kernel's (default_permissions); only existence is ours.
            match self.engine.getattr(ino.0) {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        guarded("create", || {
            match self.engine.create(
                parent.0,
                name.as_bytes(),
                mode & !umask,
                caller(req.uid(), req.gid()),
            ) {
                Ok(a) => reply.created(
                    &TTL,
                    &attr_of(&a),
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::FOPEN_KEEP_CACHE,
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        guarded("fallocate", || {
            // The kernel leaves this one to the filesystem too (KILLPRIV_V2) without saying
            // so in the request; root stands for CAP_FSETID, as for truncate.
            if req.uid() != 0 {
                if let Err(e) = self.kill_suid(ino) {
                    return reply.error(e);
                }
            }
            match self.engine.fallocate(ino.0, offset, length, mode) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
    // lseek is left to the kernel (ENOSYS → generic: the whole file is data): with the
    // write-back cache the kernel may hold dirty pages we have not seen, so our SEEK_HOLE
    // answer could be stale.
}

/// Run one request's handler; a panic (a bug) is logged and answered with EIO (the reply is
/// dropped unanswered, which fuser turns into an error) instead of killing the worker thread.
fn guarded(op: &'static str, f: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(
            op,
            "internal error while handling a request (answered EIO): {msg}"
        );
    }
}

fn caller(uid: u32, gid: u32) -> Caller {
    Caller { uid, gid }
}

/// Size probe, ERANGE when too small, or the bytes.
fn xattr_reply(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(v.len() as u32)
    } else if v.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(v)
    }
}
