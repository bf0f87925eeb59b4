//! Offline consistency check of a store: every reference, link count and checksum.
//!
//! Runs on an opened (and therefore recovered) engine. Reports each problem with the paths it
//! affects; never modifies the store.

use super::layout::blocks_for;
use super::Engine;
use crate::error::Result;
use crate::meta::{CodecStats, Ino, Inode, Kind, ROOT_INO};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default, serde::Serialize)]
pub struct FsckReport {
    pub inodes: u64,
    pub dirents: u64,
    pub blocks: u64,
    pub bytes_verified: u64,
    pub problems: Vec<String>,
}

impl Engine {
    pub fn fsck(&self) -> Result<FsckReport> {
        let ix = &self.j.index;
        let mut r = FsckReport::default();
        let mut inodes: HashMap<Ino, Inode> = HashMap::new();
        for i in ix.all_inodes() {
            let i = i?;
            inodes.insert(i.ino, i);
        }
        r.inodes = inodes.len() as u64;
        // Name of each inode for messages: (parent, name) of its first entry.
        let mut names: HashMap<Ino, (Ino, Vec<u8>)> = HashMap::new();
        let mut links: HashMap<Ino, u32> = HashMap::new();
        let mut subdirs: HashMap<Ino, u32> = HashMap::new();
        let mut ents = Vec::new();
        for d in ix.all_dirents() {
            let (parent, name, ent) = d?;
            r.dirents += 1;
            names.entry(ent.ino).or_insert((parent, name.clone()));
            *links.entry(ent.ino).or_default() += 1;
            if ent.kind == Kind::Dir {
                *subdirs.entry(parent).or_default() += 1;
            }
            ents.push((parent, name, ent));
        }
        let path = |ino: Ino| -> String {
            let mut parts = Vec::new();
            let mut cur = ino;
            for _ in 0..4096 {
                if cur == ROOT_INO {
                    parts.reverse();
                    return format!("/{}", parts.join("/"));
                }
                match names.get(&cur) {
                    Some((p, n)) => {
                        parts.push(String::from_utf8_lossy(n).into_owned());
                        cur = *p;
                    }
                    None => break,
                }
            }
            format!("<inode {ino}, unreachable>")
        };
        if !inodes.contains_key(&ROOT_INO) {
            r.problems.push("root directory inode is missing".into());
        }
        for (parent, name, ent) in &ents {
            let shown = format!(
                "{}/{}",
                path(*parent).trim_end_matches('/'),
                String::from_utf8_lossy(name)
            );
            match inodes.get(&ent.ino) {
                None => r.problems.push(format!(
                    "{shown}: entry points to missing inode {}",
                    ent.ino
                )),
                Some(i) if i.kind != ent.kind => r.problems.push(format!(
                    "{shown}: entry says {:?} but inode {} is {:?}",
                    ent.kind, ent.ino, i.kind
                )),
                Some(_) => {}
            }
            match inodes.get(parent) {
                Some(p) if p.kind == Kind::Dir => {}
                _ => r
                    .problems
                    .push(format!("{shown}: parent {parent} is not a directory")),
            }
        }
        for i in inodes.values() {
            if i.ino == ROOT_INO {
                continue;
            }
            let n = links.get(&i.ino).copied().unwrap_or(0);
            if n == 0 {
                r.problems.push(format!(
                    "inode {} ({:?}, {} bytes) is not reachable from any directory",
                    i.ino, i.kind, i.size
                ));
                continue;
            }
            let want = if i.kind == Kind::Dir {
                2 + subdirs.get(&i.ino).copied().unwrap_or(0)
            } else {
                n
            };
            if i.nlink != want {
                r.problems.push(format!(
                    "{}: link count {} but {} found",
                    path(i.ino),
                    i.nlink,
                    want
                ));
            }
            if i.kind == Kind::Dir && n != 1 {
                r.problems
                    .push(format!("{}: directory has {n} names", path(i.ino)));
            }
        }
        if let Some(root) = inodes.get(&ROOT_INO) {
            let want = 2 + subdirs.get(&ROOT_INO).copied().unwrap_or(0);
            if root.nlink != want {
                r.problems
                    .push(format!("/: link count {} but {want} found", root.nlink));
            }
        }
        let mut recount: BTreeMap<u16, CodecStats> = BTreeMap::new();
        for b in ix.all_blocks() {
            let (ino, idx, bref) = b?;
            r.blocks += 1;
            let c = recount.entry(bref.codec).or_default();
            c.blocks += 1;
            c.logical += bref.raw_len as u64;
            c.payload += bref.stored as u64;
            c.records += bref.record_share();
            let Some(i) = inodes.get(&ino) else {
                r.problems
                    .push(format!("block {idx} belongs to missing inode {ino}"));
                continue;
            };
            if idx >= blocks_for(i.size) {
                r.problems.push(format!(
                    "{}: block {idx} lies past the end of the file ({} bytes)",
                    path(ino),
                    i.size
                ));
            }
            match self.block_data(ino, idx, &bref) {
                Ok(d) => r.bytes_verified += d.len() as u64,
                Err(e) => r.problems.push(format!(
                    "{}: block {idx} (bytes {}..{}) is unreadable: {e}",
                    path(ino),
                    idx * super::layout::BLOCK_U64,
                    (idx + 1) * super::layout::BLOCK_U64
                )),
            }
        }
        // The journal itself: every record of every pack must read (and, sealed,
        // authenticate); a record that does not is reported even when no file uses it now,
        // since a rebuild of the index would miss what it carried.
        self.j.log.take_tampered();
        let packs = self.j.log.backend().list()?;
        let newest = packs.last().copied();
        for p in packs {
            let end = self.j.log.scan(p, 0, |_, _| Ok(()));
            match end {
                Ok(crate::store::ScanEnd::Torn { off, reason, .. }) if Some(p) != newest => r
                    .problems
                    .push(format!("pack {p} is damaged at offset {off}: {reason}")),
                Ok(_) => {}
                Err(e) => r.problems.push(format!("pack {p} cannot be read: {e}")),
            }
        }
        for why in self.j.log.take_tampered() {
            r.problems
                .push(format!("record failed authentication: {why}"));
        }
        // Shared (deduplicated) records: the reference count equals the entries using them.
        let mut uses: HashMap<crate::store::Loc, u64> = HashMap::new();
        for b in ix.all_blocks() {
            let (_, _, bref) = b?;
            *uses.entry(bref.loc).or_default() += 1;
        }
        for sh in ix.all_shared() {
            let sh = sh?;
            let n = uses.get(&sh.bref.loc).copied().unwrap_or(0);
            if n != sh.refs {
                r.problems.push(format!(
                    "shared record at {:?}: reference count {} but {n} block(s) use it",
                    sh.bref.loc, sh.refs
                ));
            }
        }
        let stored: BTreeMap<u16, CodecStats> = ix
            .codec_stats()
            .into_iter()
            .filter(|(_, c)| c.blocks > 0)
            .collect();
        if stored != recount {
            r.problems.push(format!("codec statistics disagree with the block map: recorded {stored:?}, counted {recount:?}"));
        }
        Ok(r)
    }
}
