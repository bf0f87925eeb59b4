#!/usr/bin/env python3
"""Write SHA256SUMS (every regular file) and TREE (every path's type, mode, size, link count,
mtime, symlink target and xattr hashes) of the tree mounted at MNT into OUT. Used to make a
golden store and, by the golden test, to check that a later build reads it the same."""
import hashlib, os, stat, sys

mnt, out = sys.argv[1], sys.argv[2]
sums, tree = [], []
for root, dirs, files in os.walk(mnt):
    dirs.sort()
    for name in sorted(dirs + files):
        p = os.path.join(root, name)
        rel = os.path.relpath(p, mnt)
        st = os.lstat(p)
        kind = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p"}[stat.S_IFMT(st.st_mode)]
        target = os.readlink(p) if kind == "l" else ""
        xattrs = ""
        if kind in "fd":
            xattrs = ",".join(
                f"{k}={hashlib.sha256(os.getxattr(p, k)).hexdigest()[:16]}"
                for k in sorted(os.listxattr(p))
                if not k.startswith("user.idcfs.")
            )
        size = st.st_size if kind != "d" else 0
        mtime = st.st_mtime_ns if kind != "d" else 0
        tree.append(f"{rel}\t{kind}\t{stat.S_IMODE(st.st_mode):o}\t{size}\t{st.st_nlink}\t{mtime}\t{target}\t{xattrs}")
        if kind == "f":
            with open(p, "rb") as f:
                sums.append(f"{hashlib.sha256(f.read()).hexdigest()}  {rel}")
open(os.path.join(out, "SHA256SUMS"), "w").write("\n".join(sums) + "\n")
open(os.path.join(out, "TREE"), "w").write("\n".join(tree) + "\n")
