//! Reporting: what `idcfs stats` and `idcfs status` show (bytes per codec, per top-level
//! directory and per content class; caches, queues, read-only state) and paths for log lines.
//!
//! Invariant: reporting only reads; nothing here changes the store or the engine's state.

use super::Engine;
use crate::error::{Error, Result};
use crate::meta::{Ino, ROOT_INO};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;

/// What `idcfs status` reports for a mount.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Status {
    pub store: String,
    /// Why the mount turned read-only (a disk write or sync failed), when it did.
    #[serde(default)]
    pub read_only: Option<String>,
    pub pid: u32,
    pub uptime_secs: u64,
    pub cache_bytes: u64,
    pub cache_limit: u64,
    pub dirty_bytes: u64,
    pub dirty_limit: u64,
    pub live_files: u64,
    pub recompress_queue: u64,
    /// Codecs that may not encode here, each with the reason.
    #[serde(default)]
    pub unavailable_codecs: Vec<String>,
    /// The store is encrypted (and unlocked, since it is mounted).
    #[serde(default)]
    pub encrypted: bool,
    /// A remote pack backend's upload queue, cache and health.
    #[serde(default)]
    pub backend: Option<crate::store::BackendStatus>,
    /// The ONNX Runtime the neural codecs use: its library and device, or why it is missing.
    #[serde(default)]
    pub onnx_runtime: String,
}

/// What `idcfs stats` reports.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Stats {
    pub store: String,
    /// Raw bytes of all stored blocks (what the files hold, holes excluded).
    pub logical_bytes: u64,
    /// Bytes the store occupies on disk: pack files plus the metadata index.
    pub stored_bytes: u64,
    pub saved_bytes: i64,
    /// logical / stored.
    pub ratio: f64,
    pub pack_bytes: u64,
    pub index_bytes: u64,
    /// Pack bytes not referenced by any block: the metadata journal plus space that
    /// compaction will reclaim.
    pub unreferenced_bytes: u64,
    pub files: u64,
    pub corrupt_reads: u64,
    /// Whole-file (format-aware) encodings that failed verification, did not pay or timed out.
    #[serde(default)]
    pub format_fallbacks: u64,
    /// Files whose content a lossy encoding replaced since the mount (their bytes show under
    /// their codec, e.g. `image-webp`; the log says per file which candidate won and why).
    #[serde(default)]
    pub lossy_files: u64,
    pub uptime_secs: u64,
    pub cache_bytes: u64,
    pub codecs: Vec<CodecRow>,
    /// Per top-level entry of the mount (filled by `stats_detailed`).
    #[serde(default)]
    pub top_dirs: Vec<GroupRow>,
    /// Per content class (filled by `stats_detailed`).
    #[serde(default)]
    pub classes: Vec<GroupRow>,
    /// Set when these are the stats of one file or directory tree of the mount (`idcfs
    /// stats PATH`), not of the whole store: the pack, index and journal fields are then 0,
    /// `stored_bytes` counts the subtree's block records, and `top_dirs` holds one row per
    /// entry directly below PATH.
    #[serde(default)]
    pub subtree: Option<String>,
}

/// Logical and stored bytes of a group of files.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct GroupRow {
    pub name: String,
    pub files: u64,
    pub logical_bytes: u64,
    /// Bytes of the group's block records (payload and headers; shared records counted per use).
    pub stored_bytes: u64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct CodecRow {
    pub codec: String,
    pub blocks: u64,
    pub logical_bytes: u64,
    /// Record bytes on disk for this codec's blocks (payload plus headers).
    pub stored_bytes: u64,
}

/// Rows kept per breakdown: the answer travels as an extended attribute value (at most
/// 64 KiB), so the smallest rows beyond these are folded into one.
const MAX_ROWS: usize = 100;

/// Sorts `rows` largest stored first and folds those beyond `MAX_ROWS` into one row named
/// "(N more)", so the rows still add up to the whole.
fn cap_rows(mut rows: Vec<GroupRow>) -> Vec<GroupRow> {
    rows.sort_by_key(|r| std::cmp::Reverse(r.stored_bytes));
    if rows.len() > MAX_ROWS {
        let rest = rows.split_off(MAX_ROWS - 1);
        let mut other = GroupRow {
            name: format!("({} more)", rest.len()),
            ..Default::default()
        };
        for r in rest {
            other.files += r.files;
            other.logical_bytes += r.logical_bytes;
            other.stored_bytes += r.stored_bytes;
        }
        rows.push(other);
    }
    rows
}

/// logical / stored (0 when nothing is stored).
fn ratio(logical: u64, stored: u64) -> f64 {
    if stored > 0 {
        logical as f64 / stored as f64
    } else {
        0.0
    }
}

/// Total size of the regular files below `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

impl Engine {
    pub fn stats(&self) -> Result<Stats> {
        let cs = self.j.index.codec_stats();
        let backend = self.j.log.backend();
        let mut pack_bytes = 0;
        for p in backend.list()? {
            pack_bytes += backend.len(p).unwrap_or(0);
        }
        let index_bytes = self.j.index.size_on_disk();
        let logical: u64 = cs.values().map(|c| c.logical).sum();
        let stored = pack_bytes + index_bytes;
        let codecs = cs
            .iter()
            .filter(|(_, c)| c.blocks > 0)
            .map(|(id, c)| CodecRow {
                codec: self.codecs.name(*id),
                blocks: c.blocks,
                logical_bytes: c.logical,
                stored_bytes: c.records,
            })
            .collect();
        Ok(Stats {
            store: self.store_dir.display().to_string(),
            logical_bytes: logical,
            stored_bytes: stored,
            saved_bytes: logical as i64 - stored as i64,
            ratio: ratio(logical, stored),
            pack_bytes,
            index_bytes,
            // Per pack (a deduplicated record is live once there, however many use it).
            unreferenced_bytes: {
                let ps = self.j.index.pack_stats();
                let mut g = 0;
                for p in backend.list()? {
                    let len = backend.len(p).unwrap_or(0);
                    g += len.saturating_sub(ps.get(&p).map_or(0, |s| s.live_bytes));
                }
                g
            },
            files: self.ns.inodes_allocated(),
            corrupt_reads: self.reads.corrupt_reads.load(Ordering::Relaxed),
            format_fallbacks: self.recomp.fallbacks(),
            lossy_files: self.recomp.lossy_files.load(Ordering::Relaxed),
            uptime_secs: self.started.elapsed().as_secs(),
            cache_bytes: self.reads.cache.bytes() as u64,
            codecs,
            top_dirs: Vec::new(),
            classes: Vec::new(),
            subtree: None,
        })
    }

    /// Stats of the file or directory tree at `ino`, from the index alone (like `compsize`):
    /// logical and stored bytes, per codec, per class and per entry directly below. A file
    /// with several links in the tree counts once; a deduplicated block counts its share
    /// in every file that uses it (as in the per-class rows of the whole store).
    pub fn stats_subtree(&self, ino: Ino) -> Result<Stats> {
        let root = self.j.index.inode(ino)?.ok_or(Error::NotFound)?;
        let mut codecs: std::collections::BTreeMap<u16, CodecRow> = Default::default();
        let mut classes: std::collections::BTreeMap<String, GroupRow> = Default::default();
        let mut below: std::collections::BTreeMap<String, GroupRow> = Default::default();
        let mut seen = std::collections::HashSet::new();
        let (mut logical, mut stored, mut files) = (0u64, 0u64, 0u64);
        // (inode, name of the entry directly below `ino` it lies under)
        let mut stack: Vec<(Ino, Option<String>)> = vec![(ino, None)];
        while let Some((cur, group)) = stack.pop() {
            let Some(i) = (if cur == ino {
                Some(root.clone())
            } else {
                self.j.index.inode(cur)?
            }) else {
                continue;
            };
            match i.kind {
                crate::meta::Kind::Dir => {
                    let mut off = 2;
                    loop {
                        let ents = self.j.index.readdir(cur, off, 1024)?;
                        let Some(last) = ents.last() else { break };
                        off = last.0;
                        for (_, name, d) in ents {
                            let g = group
                                .clone()
                                .unwrap_or_else(|| String::from_utf8_lossy(&name).into_owned());
                            stack.push((d.ino, Some(g)));
                        }
                    }
                }
                crate::meta::Kind::File => {
                    if !seen.insert(cur) {
                        continue;
                    }
                    files += 1;
                    let (mut l, mut s) = (0u64, 0u64);
                    let mut from = 0;
                    loop {
                        let blocks = self.j.index.blocks_from(cur, from, 4096)?;
                        let Some(&(last, _)) = blocks.last() else {
                            break;
                        };
                        from = last + 1;
                        for (_, b) in blocks {
                            let row = codecs.entry(b.codec).or_insert_with(|| CodecRow {
                                codec: self.codecs.name(b.codec),
                                blocks: 0,
                                logical_bytes: 0,
                                stored_bytes: 0,
                            });
                            row.blocks += 1;
                            row.logical_bytes += b.raw_len as u64;
                            row.stored_bytes += b.record_share();
                            l += b.raw_len as u64;
                            s += b.record_share();
                        }
                    }
                    logical += l;
                    stored += s;
                    let class = crate::classify::class_name_of_flags(i.flags).to_string();
                    let name = group.unwrap_or_else(|| ".".into());
                    for (map, key) in [(&mut classes, class), (&mut below, name)] {
                        let row = map.entry(key.clone()).or_insert_with(|| GroupRow {
                            name: key,
                            ..Default::default()
                        });
                        row.files += 1;
                        row.logical_bytes += l;
                        row.stored_bytes += s;
                    }
                }
                _ => {}
            }
        }
        let top_dirs = cap_rows(below.into_values().collect());
        let classes = cap_rows(classes.into_values().collect());
        Ok(Stats {
            store: self.store_dir.display().to_string(),
            logical_bytes: logical,
            stored_bytes: stored,
            saved_bytes: logical as i64 - stored as i64,
            ratio: ratio(logical, stored),
            pack_bytes: 0,
            index_bytes: 0,
            unreferenced_bytes: 0,
            files,
            corrupt_reads: self.reads.corrupt_reads.load(Ordering::Relaxed),
            format_fallbacks: 0,
            lossy_files: 0,
            uptime_secs: self.started.elapsed().as_secs(),
            cache_bytes: self.reads.cache.bytes() as u64,
            codecs: codecs.into_values().collect(),
            top_dirs,
            classes,
            // The caller knows the path it asked about (the index would need a scan).
            subtree: Some(format!("inode {ino}")),
        })
    }

    /// `stats` plus the breakdown by top-level directory and content class (one pass over
    /// the block map).
    pub fn stats_detailed(&self) -> Result<Stats> {
        let mut st = self.stats()?;
        let mut top_of: HashMap<Ino, String> = HashMap::new();
        let mut inode_info: HashMap<Ino, (String, String)> = HashMap::new();
        let mut tops: std::collections::BTreeMap<String, GroupRow> = Default::default();
        let mut classes: std::collections::BTreeMap<String, GroupRow> = Default::default();
        let mut last_ino = 0;
        for b in self.j.index.all_blocks() {
            let (ino, _, r) = b?;
            let (top, class) = match inode_info.get(&ino) {
                Some(x) => x.clone(),
                None => {
                    let Some(i) = self.j.index.inode(ino)? else {
                        continue;
                    };
                    let x = (
                        self.top_dir(i.parent, &mut top_of)?,
                        crate::classify::class_name_of_flags(i.flags).to_string(),
                    );
                    inode_info.insert(ino, x.clone());
                    x
                }
            };
            for (map, key) in [(&mut tops, top), (&mut classes, class)] {
                let row = map.entry(key.clone()).or_insert_with(|| GroupRow {
                    name: key,
                    ..Default::default()
                });
                if ino != last_ino {
                    row.files += 1;
                }
                row.logical_bytes += r.raw_len as u64;
                row.stored_bytes += r.record_share();
            }
            last_ino = ino;
        }
        st.top_dirs = cap_rows(tops.into_values().collect());
        st.classes = cap_rows(classes.into_values().collect());
        Ok(st)
    }

    /// Name of the top-level entry that directory `dir` lies in ("/" for the root itself).
    fn top_dir(&self, dir: Ino, memo: &mut HashMap<Ino, String>) -> Result<String> {
        if dir == ROOT_INO {
            return Ok("/".into());
        }
        if let Some(t) = memo.get(&dir) {
            return Ok(t.clone());
        }
        let mut cur = dir;
        let mut chain = vec![];
        for _ in 0..4096 {
            let i = self.j.index.inode(cur)?.ok_or(Error::NotFound)?;
            chain.push(cur);
            if i.parent == ROOT_INO {
                break;
            }
            cur = i.parent;
        }
        // The top-level directory's own name, from the root's entries.
        let mut name = format!("<inode {cur}>");
        let mut off = 2;
        'scan: loop {
            let ents = self.j.index.readdir(ROOT_INO, off, 1024)?;
            let Some(last) = ents.last() else { break };
            off = last.0;
            for (_, n, d) in &ents {
                if d.ino == cur {
                    name = format!("/{}", String::from_utf8_lossy(n));
                    break 'scan;
                }
            }
        }
        for c in chain {
            memo.insert(c, name.clone());
        }
        Ok(name)
    }

    pub fn status(&self) -> Status {
        Status {
            store: self.store_dir.display().to_string(),
            read_only: self.j.read_only(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            cache_bytes: self.reads.cache.bytes() as u64,
            cache_limit: self.opts.cache_bytes as u64,
            dirty_bytes: self.budget.bytes() as u64,
            dirty_limit: self.opts.dirty_limit as u64,
            live_files: self.files.lock().len() as u64,
            recompress_queue: self.recomp.queued(),
            unavailable_codecs: self
                .codecs
                .unavailable()
                .into_iter()
                .map(|(name, why)| format!("{name}: {why}"))
                .collect(),
            encrypted: self.opts.key.is_some(),
            backend: self.j.log.backend().status(),
            onnx_runtime: crate::neural::status(),
        }
    }

    /// How logs name a file: its path, or in an encrypted store only its inode number (the
    /// log lives in the store directory and must not reveal names).
    pub fn log_name(&self, ino: Ino) -> String {
        if self.opts.key.is_some() {
            format!("inode {ino}")
        } else {
            self.path_of(ino)
        }
    }

    /// A path of `ino` for messages (a scan: only used on errors and for policies).
    pub fn path_of(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut cur = ino;
        for _ in 0..4096 {
            if cur == ROOT_INO {
                break;
            }
            let found = self
                .j
                .index
                .all_dirents()
                .filter_map(|d| d.ok())
                .find(|(_, _, d)| d.ino == cur);
            match found {
                Some((parent, name, _)) => {
                    parts.push(String::from_utf8_lossy(&name).into_owned());
                    cur = parent;
                }
                None => return format!("<unlinked inode {ino}>"),
            }
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }
}
