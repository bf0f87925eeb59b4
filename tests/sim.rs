//! Crash simulation (in the style of redb's and sled's): random workloads on the engine, with
//! no mount, over the in-memory pack backend, cut at random points by simulated power loss
//! (unsynced bytes forgotten, torn at any byte, or pages reordered; pack creations and
//! removals that were not directory-synced undone or kept), reopened and checked.
//!
//! After each cut the store is reopened (keeping the index as the crash left it, or without
//! it, so it is rebuilt from the journal) and these invariants are checked:
//! 1. fsck finds no problem;
//! 2. the namespace (every path with its inode and kind) equals the one after some prefix of
//!    the operations that includes every operation before the last completed sync;
//! 3. every file's size is a size it had at some point;
//! 4. no file shows a byte never written to it (each byte is zero, or what it held when the
//!    round began, or what some write put at that offset);
//! 5. every file fsynced and not modified since reads back exactly.
//!
//! IDCFS_SIM_ROUNDS (default 3000) sets the number of crash points, IDCFS_SIM_SEED the first
//! seed; a failure prints the seed that reproduces it (IDCFS_SIM_SEED=N IDCFS_SIM_ROUNDS=1).

use idcfs::engine::{Caller, Engine, Options, SetAttr};
use idcfs::meta::{Ino, Kind, ROOT_INO};
use idcfs::store::{Fault, MemBackend, PackBackend};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

type Ns = BTreeMap<String, (Ino, bool)>;

const WHO: Caller = Caller { uid: 0, gid: 0 };
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// A directory for the store's index: on tmpfs when there is one. The simulated disk is in
/// memory; the index file is real, and opening and closing it costs a few fsyncs that a
/// loaded disk makes slow (the simulation opens thousands of times).
fn scratch() -> std::io::Result<tempfile::TempDir> {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => Ok(d),
        Err(_) => tempfile::tempdir(),
    }
}

fn opts() -> Options {
    Options {
        workers: 2,
        background: false,
        pack_max: 96 << 10,
        cache_bytes: 1 << 20,
        dirty_limit: 1 << 20,
        index_cache: 4 << 20,
        ..Options::default()
    }
}

/// The byte write `w` puts at file offset `pos` (never zero).
fn pat(w: u64, pos: u64) -> u8 {
    ((w.wrapping_mul(131) + pos.wrapping_mul(7)) % 251) as u8 + 1
}

#[derive(Default, Clone)]
struct FileModel {
    content: Vec<u8>,
    /// Content at the round's start (it survived the previous crash and is durable).
    base: Vec<u8>,
    sizes: BTreeSet<u64>,
    writes: Vec<(u64, u64, u64)>,
    /// Content at the last fsync, while unmodified since.
    fsynced: Option<Vec<u8>>,
}

/// Read the whole tree back from the engine.
fn read_tree(e: &Engine) -> Result<(Ns, HashMap<Ino, Vec<u8>>), String> {
    let mut ns = Ns::new();
    let mut files = HashMap::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let mut off = 0;
        loop {
            let ents = e
                .readdir(dir, off, 64)
                .map_err(|e| format!("readdir: {e}"))?;
            let Some(last) = ents.last() else { break };
            off = last.offset;
            for d in ents {
                if d.name == b"." || d.name == b".." {
                    continue;
                }
                let path = format!("{prefix}/{}", String::from_utf8_lossy(&d.name));
                let is_dir = d.kind == Kind::Dir;
                ns.insert(path.clone(), (d.ino, is_dir));
                if is_dir {
                    stack.push((d.ino, path));
                } else if let std::collections::hash_map::Entry::Vacant(v) = files.entry(d.ino) {
                    let size = e
                        .getattr(d.ino)
                        .map_err(|e| format!("getattr: {e}"))?
                        .inode
                        .size;
                    let mut data = Vec::new();
                    while (data.len() as u64) < size {
                        let chunk = e
                            .read(d.ino, data.len() as u64, 1 << 20)
                            .map_err(|err| format!("read of {path}: {err}"))?;
                        if chunk.is_empty() {
                            break;
                        }
                        data.extend_from_slice(&chunk);
                    }
                    v.insert(data);
                }
            }
        }
    }
    Ok((ns, files))
}

struct Round<'a> {
    e: &'a Engine,
    rng: StdRng,
    ns: Ns,
    files: HashMap<Ino, FileModel>,
    snaps: Vec<Ns>,
    synced_snap: usize,
    next_write: u64,
    /// What the round did, for a failure's report (the compression workers make a failure
    /// depend on timing, so the seed alone may not reproduce it).
    log: Vec<String>,
}

impl Round<'_> {
    fn dirs(&self) -> Vec<(String, Ino)> {
        let mut v = vec![(String::new(), ROOT_INO)];
        v.extend(
            self.ns
                .iter()
                .filter(|(_, (_, d))| *d)
                .map(|(p, (i, _))| (p.clone(), *i)),
        );
        v
    }

    fn pick_dir(&mut self) -> (String, Ino) {
        let d = self.dirs();
        d[self.rng.random_range(0..d.len())].clone()
    }

    fn pick_entry(&mut self) -> Option<(String, Ino, bool)> {
        if self.ns.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.ns.len());
        self.ns
            .iter()
            .nth(i)
            .map(|(p, (ino, d))| (p.clone(), *ino, *d))
    }

    fn pick_file(&mut self) -> Option<Ino> {
        let f: Vec<Ino> = self
            .ns
            .values()
            .filter(|(_, d)| !d)
            .map(|(i, _)| *i)
            .collect::<BTreeSet<Ino>>()
            .into_iter()
            .collect();
        if f.is_empty() {
            None
        } else {
            Some(f[self.rng.random_range(0..f.len())])
        }
    }

    fn parent_of(&self, path: &str) -> (String, Ino, String) {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let ino = if dir.is_empty() {
            ROOT_INO
        } else {
            self.ns[dir].0
        };
        (dir.to_string(), ino, name.to_string())
    }

    fn snap(&mut self) {
        self.snaps.push(self.ns.clone());
    }

    /// One random operation; Err when the engine failed (the power was cut).
    fn step(&mut self) -> Result<(), String> {
        let r = self.rng.random_range(0..100);
        let err = |e: idcfs::error::Error| e.to_string();
        match r {
            0..=14 => {
                let (dir, dino) = self.pick_dir();
                let name = NAMES[self.rng.random_range(0..NAMES.len())];
                let path = format!("{dir}/{name}");
                if self.ns.contains_key(&path) || dir.matches('/').count() > 2 {
                    return Ok(());
                }
                let is_dir = self.rng.random_bool(0.25);
                let kind = if is_dir { Kind::Dir } else { Kind::File };
                let mode = if is_dir { 0o755 } else { 0o644 };
                self.log.push(format!("mknod {path} dir={is_dir}"));
                let a = self
                    .e
                    .mknod(dino, name.as_bytes(), kind, mode, 0, &[], WHO)
                    .map_err(err)?;
                self.ns.insert(path, (a.inode.ino, is_dir));
                if !is_dir {
                    let mut m = FileModel::default();
                    m.sizes.insert(0);
                    self.files.insert(a.inode.ino, m);
                }
                self.snap();
            }
            15..=49 => {
                let Some(ino) = self.pick_file() else {
                    return Ok(());
                };
                let off = self.rng.random_range(0..300_000u64);
                let len = self.rng.random_range(1..160_000u64);
                let w = self.next_write;
                self.next_write += 1;
                let data: Vec<u8> = (off..off + len).map(|p| pat(w, p)).collect();
                let m = self.files.get_mut(&ino).ok_or("model lost a file")?;
                let end = (off + len) as usize;
                if m.content.len() < end {
                    m.content.resize(end, 0);
                }
                m.content[off as usize..end].copy_from_slice(&data);
                m.sizes.insert(m.content.len() as u64);
                m.writes.push((w, off, len));
                m.fsynced = None;
                self.log
                    .push(format!("write ino {ino} {off}..{}", off + len));
                self.e.open_file(ino).map_err(err)?;
                let res = self.e.write(ino, off, &data).map_err(err);
                let rel = self.e.release(ino).map_err(err);
                res?;
                rel?;
            }
            50..=57 => {
                let Some(ino) = self.pick_file() else {
                    return Ok(());
                };
                let size = self.rng.random_range(0..350_000u64);
                let m = self.files.get_mut(&ino).ok_or("model lost a file")?;
                m.content.resize(size as usize, 0);
                m.sizes.insert(size);
                m.fsynced = None;
                let sa = SetAttr {
                    size: Some(size),
                    ..Default::default()
                };
                self.log.push(format!("truncate ino {ino} to {size}"));
                self.e.setattr(ino, &sa).map_err(err)?;
            }
            58..=71 => {
                let Some(ino) = self.pick_file() else {
                    return Ok(());
                };
                let content = self.files.get(&ino).map(|m| m.content.clone());
                self.log.push(format!("fsync ino {ino}"));
                self.e.fsync(ino).map_err(err)?;
                if let Some(m) = self.files.get_mut(&ino) {
                    m.fsynced = content;
                }
                self.synced_snap = self.snaps.len() - 1;
            }
            72..=81 => {
                let Some((path, ino, is_dir)) = self.pick_entry() else {
                    return Ok(());
                };
                let (_, pino, name) = self.parent_of(&path);
                if is_dir {
                    if self.ns.keys().any(|p| p.starts_with(&format!("{path}/"))) {
                        return Ok(());
                    }
                    self.ns.remove(&path);
                    self.snap();
                    self.log.push(format!("rmdir {path}"));
                    self.e.rmdir(pino, name.as_bytes()).map_err(err)?;
                } else {
                    self.ns.remove(&path);
                    self.snap();
                    self.log.push(format!("unlink {path} (ino {ino})"));
                    self.e.unlink(pino, name.as_bytes()).map_err(err)?;
                }
            }
            82..=93 => {
                let Some((path, ino, is_dir)) = self.pick_entry() else {
                    return Ok(());
                };
                let (dir, dino) = self.pick_dir();
                let name = NAMES[self.rng.random_range(0..NAMES.len())];
                let to = format!("{dir}/{name}");
                if to == path || to.starts_with(&format!("{path}/")) {
                    return Ok(());
                }
                if let Some(&(tino, tdir)) = self.ns.get(&to) {
                    // Replace only like with like, and directories only when empty.
                    if tdir != is_dir
                        || (tdir && self.ns.keys().any(|p| p.starts_with(&format!("{to}/"))))
                        || tino == ino
                    {
                        return Ok(());
                    }
                }
                let (_, pino, pname) = self.parent_of(&path);
                // Move the entry and everything below it.
                let moved: Vec<(String, (Ino, bool))> = self
                    .ns
                    .iter()
                    .filter(|(p, _)| *p == &path || p.starts_with(&format!("{path}/")))
                    .map(|(p, v)| (p.clone(), *v))
                    .collect();
                self.ns.remove(&to);
                for (p, v) in moved {
                    self.ns.remove(&p);
                    self.ns.insert(format!("{to}{}", &p[path.len()..]), v);
                }
                self.snap();
                self.log.push(format!("rename {path} -> {to}"));
                self.e
                    .rename(pino, pname.as_bytes(), dino, name.as_bytes(), 0)
                    .map_err(err)?;
            }
            94..=96 => {
                let Some(ino) = self.pick_file() else {
                    return Ok(());
                };
                let (dir, dino) = self.pick_dir();
                let name = NAMES[self.rng.random_range(0..NAMES.len())];
                let path = format!("{dir}/{name}");
                if self.ns.contains_key(&path) {
                    return Ok(());
                }
                self.ns.insert(path, (ino, false));
                self.snap();
                self.log.push(format!("link ino {ino} as {dir}/{name}"));
                self.e.link(ino, dino, name.as_bytes()).map_err(err)?;
            }
            _ => {
                // Compaction moves live blocks, checkpoints and deletes packs.
                self.log.push("compact".to_string());
                self.e.compact(true).map_err(err)?;
            }
        }
        Ok(())
    }
}

/// Check the reopened engine against what the round did. Returns the recovered state.
fn check(
    e: &Engine,
    snaps: &[Ns],
    synced_snap: usize,
    files: &HashMap<Ino, FileModel>,
) -> Result<(Ns, HashMap<Ino, Vec<u8>>), String> {
    let report = e.fsck().map_err(|e| format!("fsck failed to run: {e}"))?;
    if !report.problems.is_empty() {
        return Err(format!("fsck: {:?}", report.problems));
    }
    let (ns, data) = read_tree(e)?;
    if !snaps[synced_snap..].contains(&ns) {
        return Err(format!(
            "namespace after recovery is no prefix at or after the last sync ({} candidates):\n got {ns:?}\n last synced {:?}\n last {:?}",
            snaps.len() - synced_snap,
            snaps[synced_snap],
            snaps.last()
        ));
    }
    for (ino, got) in &data {
        let Some(m) = files.get(ino) else {
            return Err(format!("inode {ino} recovered but unknown to the model"));
        };
        if !m.sizes.contains(&(got.len() as u64)) {
            return Err(format!(
                "inode {ino}: size {} is none it ever had ({:?})",
                got.len(),
                m.sizes
            ));
        }
        for (pos, &b) in got.iter().enumerate() {
            let p = pos as u64;
            let ok = b == 0
                || m.base.get(pos) == Some(&b)
                || m.writes
                    .iter()
                    .any(|&(w, off, len)| p >= off && p < off + len && pat(w, p) == b);
            if !ok {
                return Err(format!(
                    "inode {ino}: byte {b:#x} at {pos} was never written there"
                ));
            }
        }
        if let Some(want) = &m.fsynced {
            if got != want {
                let first = got.iter().zip(want).position(|(a, b)| a != b);
                return Err(format!(
                    "inode {ino}: fsynced content differs (len {} vs {}, first difference at {first:?})",
                    got.len(),
                    want.len()
                ));
            }
        }
    }
    Ok((ns, data))
}

fn open(dir: &Path, disk: &MemBackend) -> Result<Arc<Engine>, String> {
    let b: Arc<dyn PackBackend> = Arc::new(disk.handle());
    Engine::open_with_backend(dir, opts(), b).map_err(|e| format!("reopen failed: {e}"))
}

/// One simulation: `rounds` crash points from `seed`. Returns the number of checks made.
/// What a simulation did.
#[derive(Default)]
struct Tally {
    cuts: u64,
    /// Cuts that landed inside an operation (the disk cut the power by itself).
    inside: u64,
    ops: u64,
    files_checked: u64,
    fsynced_checked: u64,
}

fn simulate(seed: u64, rounds: u64, t: &mut Tally) -> Result<u64, String> {
    let dir = scratch().map_err(|e| e.to_string())?;
    let disk = MemBackend::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ns = Ns::new();
    let mut base: HashMap<Ino, Vec<u8>> = HashMap::new();
    let mut checks = 0;
    for round in 0..rounds {
        let e = open(dir.path(), &disk).map_err(|m| format!("round {round}: {m}"))?;
        let mut files: HashMap<Ino, FileModel> = HashMap::new();
        for (_, (ino, is_dir)) in ns.iter() {
            if !is_dir {
                let c = base.get(ino).cloned().unwrap_or_default();
                let mut m = FileModel {
                    sizes: BTreeSet::from([c.len() as u64]),
                    content: c.clone(),
                    base: c.clone(),
                    ..Default::default()
                };
                m.fsynced = Some(c);
                files.insert(*ino, m);
            }
        }
        let mut r = Round {
            e: &e,
            rng: StdRng::seed_from_u64(rng.random()),
            ns: ns.clone(),
            files,
            snaps: vec![ns.clone()],
            synced_snap: 0,
            next_write: round << 20,
            log: Vec::new(),
        };
        let ops = r.rng.random_range(5..60);
        // Cut the power by itself somewhere in the round, or at its end.
        let cut_inside = r.rng.random_bool(0.7);
        if cut_inside {
            let n = r.rng.random_range(0..(ops * 4) as u64);
            disk.crash_after(n, r.rng.random());
        }
        let mut progressed = 0;
        for _ in 0..ops {
            if r.step().is_err() {
                break;
            }
            progressed += 1;
        }
        t.ops += progressed;
        let mut how = String::new();
        if disk.is_off() {
            t.inside += 1;
            how.push_str("cut inside an operation");
        } else {
            let mode = match r.rng.random_range(0..3) {
                0 => Fault::Forget,
                1 => Fault::Tear,
                _ => Fault::Reorder,
            };
            how = format!("power loss after the round ({mode:?})");
            disk.power_loss(mode, r.rng.random());
        }
        let (snaps, synced_snap, files, log) = (r.snaps, r.synced_snap, r.files, r.log);
        e.halt();
        drop(e);
        disk.power_on();
        if rng.random_bool(0.3) {
            // Lose the index too: it must be rebuilt from the journal alone.
            std::fs::remove_file(dir.path().join("index.redb")).map_err(|e| e.to_string())?;
            how.push_str(", index lost");
        }
        let story = || format!("\n  {how}; the round's operations:\n  {}", log.join("\n  "));
        let e2 = open(dir.path(), &disk)
            .map_err(|m| format!("round {round} ({progressed} ops): {m}{}", story()))?;
        let (ns2, data2) = check(&e2, &snaps, synced_snap, &files)
            .map_err(|m| format!("round {round} ({progressed} ops done): {m}{}", story()))?;
        checks += 1;
        t.cuts += 1;
        t.files_checked += data2.len() as u64;
        t.fsynced_checked += data2
            .keys()
            .filter(|i| files.get(i).is_some_and(|m| m.fsynced.is_some()))
            .count() as u64;
        e2.halt();
        drop(e2);
        ns = ns2;
        base = data2;
    }
    Ok(checks)
}

#[test]
fn power_loss_at_random_points_loses_nothing_synced() {
    let rounds: u64 = std::env::var("IDCFS_SIM_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let seed0: u64 = std::env::var("IDCFS_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // Several independent simulations of `per` rounds each, so a failure names a short seed.
    let per = rounds.min(50);
    let mut done = 0;
    let mut seed = seed0;
    let mut tally = Tally::default();
    while done < rounds {
        let n = per.min(rounds - done);
        match simulate(seed, n, &mut tally) {
            Ok(c) => assert_eq!(c, n),
            Err(m) => panic!(
                "crash simulation failed: {m}\nreproduce: IDCFS_SIM_SEED={seed} IDCFS_SIM_ROUNDS={n} cargo test --test integration power_loss"
            ),
        }
        done += n;
        seed += 1;
    }
    eprintln!(
        "crash simulation: {} power cuts ({} inside an operation) after {} operations; {} files checked byte by byte, {} of them against fsynced content",
        tally.cuts, tally.inside, tally.ops, tally.files_checked, tally.fsynced_checked
    );
    assert_eq!(tally.cuts, rounds);
    assert!(
        tally.inside > 0 && tally.fsynced_checked > 0,
        "the simulation exercised nothing"
    );
}

fn write_file(e: &Engine, name: &str, data: &[u8]) -> Ino {
    let a = e
        .create(ROOT_INO, name.as_bytes(), 0o644, WHO)
        .unwrap_or_else(|err| panic!("create {name}: {err}"));
    let ino = a.inode.ino;
    e.write(ino, 0, data).unwrap_or_else(|err| panic!("{err}"));
    e.fsync(ino).unwrap_or_else(|err| panic!("{err}"));
    e.release(ino).unwrap_or_else(|err| panic!("{err}"));
    ino
}

/// The index is a cache of the journal: whatever state it is found in (missing, damaged, of
/// another layout, behind the journal, or ahead of it after a power cut), the store opens
/// with exactly the tree the journal holds.
#[test]
fn index_in_any_state_is_rebuilt_or_replayed_from_the_journal() {
    let dir = scratch().unwrap_or_else(|e| panic!("{e}"));
    let disk = MemBackend::new();
    let idx = dir.path().join("index.redb");
    let early = dir.path().join("index.early");
    let body = |i: u64| -> Vec<u8> { (0..200_000u64).map(|p| pat(i, p)).collect() };
    let e = open(dir.path(), &disk).unwrap_or_else(|m| panic!("{m}"));
    write_file(&e, "a", &body(1));
    e.shutdown().unwrap_or_else(|err| panic!("{err}"));
    drop(e);
    std::fs::copy(&idx, &early).unwrap_or_else(|e| panic!("{e}"));
    let e = open(dir.path(), &disk).unwrap_or_else(|m| panic!("{m}"));
    write_file(&e, "b", &body(2));
    let sub = e
        .mknod(ROOT_INO, b"sub", Kind::Dir, 0o755, 0, &[], WHO)
        .unwrap_or_else(|err| panic!("{err}"));
    e.rename(ROOT_INO, b"a", sub.inode.ino, b"a2", 0)
        .unwrap_or_else(|err| panic!("{err}"));
    e.shutdown().unwrap_or_else(|err| panic!("{err}"));
    let (want_ns, want_data) = read_tree(&e).unwrap_or_else(|m| panic!("{m}"));
    drop(e);
    assert_eq!(want_ns.len(), 3, "{want_ns:?}");
    let late = dir.path().join("index.late");
    std::fs::copy(&idx, &late).unwrap_or_else(|e| panic!("{e}"));

    let reopen_and_check = |what: &str| {
        let e = open(dir.path(), &disk).unwrap_or_else(|m| panic!("{what}: {m}"));
        let r = e.fsck().unwrap_or_else(|err| panic!("{what}: {err}"));
        assert!(r.problems.is_empty(), "{what}: {:?}", r.problems);
        let (ns, data) = read_tree(&e).unwrap_or_else(|m| panic!("{what}: {m}"));
        assert_eq!(ns, want_ns, "{what}: namespace");
        assert!(data == want_data, "{what}: contents");
        e.shutdown().unwrap_or_else(|err| panic!("{what}: {err}"));
    };
    let restore = |from: &Path| {
        let _ = std::fs::remove_file(&idx);
        std::fs::copy(from, &idx).unwrap_or_else(|e| panic!("{e}"));
    };

    std::fs::remove_file(&idx).unwrap_or_else(|e| panic!("{e}"));
    reopen_and_check("missing index");

    restore(&early);
    reopen_and_check("index behind the journal");

    restore(&late);
    {
        let ix = idcfs::meta::Index::open(&idx, 1 << 20, None).unwrap_or_else(|e| panic!("{e}"));
        ix.set_format(99).unwrap_or_else(|e| panic!("{e}"));
        ix.flush().unwrap_or_else(|e| panic!("{e}"));
    }
    reopen_and_check("index of another layout");

    restore(&late);
    // Damage the index file: overwrite its middle with garbage.
    {
        let mut b = std::fs::read(&idx).unwrap_or_else(|e| panic!("{e}"));
        let n = b.len();
        for x in b.iter_mut().skip(n / 8).take(n / 2) {
            *x ^= 0x5a;
        }
        std::fs::write(&idx, &b).unwrap_or_else(|e| panic!("{e}"));
    }
    reopen_and_check("damaged index");
    // And its header (not a database any more).
    restore(&late);
    {
        let mut b = std::fs::read(&idx).unwrap_or_else(|e| panic!("{e}"));
        for x in b.iter_mut().take(4096) {
            *x ^= 0x5a;
        }
        std::fs::write(&idx, &b).unwrap_or_else(|e| panic!("{e}"));
    }
    reopen_and_check("index with a damaged header");

    // Ahead: records applied to the index whose journal bytes a power cut then lost.
    restore(&late);
    {
        let e = open(dir.path(), &disk).unwrap_or_else(|m| panic!("{m}"));
        let a = e
            .create(ROOT_INO, b"lost", 0o644, WHO)
            .unwrap_or_else(|err| panic!("{err}"));
        e.write(a.inode.ino, 0, &body(3)[..1000])
            .unwrap_or_else(|err| panic!("{err}"));
        e.flush(a.inode.ino).unwrap_or_else(|err| panic!("{err}"));
        // Persist the index past the journal's synced end (a flush racing the power cut).
        e.flush_index_unsynced()
            .unwrap_or_else(|err| panic!("{err}"));
        disk.power_loss(Fault::Forget, 7);
        e.halt();
        drop(e);
        disk.power_on();
    }
    reopen_and_check("index ahead of the journal after a power cut");

    // Ahead, and the journal file kept its length but not its data (size metadata persisted,
    // data pages not: zeros), so no length check can see it.
    restore(&late);
    {
        let e = open(dir.path(), &disk).unwrap_or_else(|m| panic!("{m}"));
        let a = e
            .create(ROOT_INO, b"lost2", 0o644, WHO)
            .unwrap_or_else(|err| panic!("{err}"));
        e.write(a.inode.ino, 0, &body(4)[..1000])
            .unwrap_or_else(|err| panic!("{err}"));
        e.flush(a.inode.ino).unwrap_or_else(|err| panic!("{err}"));
        e.flush_index_unsynced()
            .unwrap_or_else(|err| panic!("{err}"));
        let last = disk.list().unwrap_or_default().last().copied().unwrap_or(1);
        let len_before = disk.len(last).unwrap_or(0);
        disk.power_loss(Fault::Forget, 8);
        e.halt();
        drop(e);
        disk.power_on();
        let now = disk.len(last).unwrap_or(0);
        assert!(now < len_before, "the cut lost the unsynced records");
        let app = disk.open_append(last).unwrap_or_else(|e| panic!("{e}"));
        app.append(&vec![0u8; (len_before - now) as usize])
            .unwrap_or_else(|e| panic!("{e}"));
        app.sync().unwrap_or_else(|e| panic!("{e}"));
    }
    reopen_and_check("index ahead of a journal whose lost tail reads as zeros");
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random()).collect()
}

fn read_all(e: &Engine, ino: Ino, len: usize) -> idcfs::error::Result<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < len {
        let chunk = e.read(ino, out.len() as u64, 1 << 20)?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A failing disk: a read error is EIO for the blocks it hits and nothing else; a failed
/// journal write or sync turns the engine read-only (EROFS for changes, reads keep working),
/// and reopening after the fault recovers everything acknowledged by fsync.
#[test]
fn disk_faults_are_contained_and_lose_nothing_acknowledged() {
    for fault in ["fsync", "write"] {
        let dir = scratch().unwrap_or_else(|e| panic!("{e}"));
        let disk = MemBackend::new();
        let e = open(dir.path(), &disk).unwrap_or_else(|m| panic!("{m}"));
        let (a, b) = (noise(1, 300_000), noise(2, 200_000));
        let ia = write_file(&e, "a", &a);
        let ib = write_file(&e, "b", &b);
        match fault {
            "fsync" => disk.fail_sync(true),
            _ => disk.fail_append(true),
        }
        // The fault surfaces at the latest at the next fsync.
        let c = e.create(ROOT_INO, b"c", 0o644, WHO);
        let failed = match c {
            Err(_) => true,
            Ok(attr) => {
                let ic = attr.inode.ino;
                let w = e.write(ic, 0, &noise(3, 50_000));
                let f = e.fsync(ic);
                let _ = e.release(ic);
                w.is_err() || f.is_err()
            }
        };
        assert!(failed, "{fault} fault: nothing reported it");
        // From now on: read-only, and reads still work.
        let errno = |r: idcfs::error::Result<()>| r.err().map(|e| e.errno());
        assert_eq!(
            errno(
                e.mknod(ROOT_INO, b"d", Kind::File, 0o644, 0, &[], WHO)
                    .map(|_| ())
            ),
            Some(libc::EROFS),
            "{fault} fault: create after the fault"
        );
        assert_eq!(
            errno(e.unlink(ROOT_INO, b"a")),
            Some(libc::EROFS),
            "{fault} fault: unlink after the fault"
        );
        assert!(
            read_all(&e, ia, a.len()).is_ok_and(|d| d == a),
            "{fault}: read a"
        );
        assert!(
            read_all(&e, ib, b.len()).is_ok_and(|d| d == b),
            "{fault}: read b"
        );
        assert!(
            e.status().read_only.is_some(),
            "{fault} fault: status does not say read-only"
        );
        // The disk is replaced or fixed; what was acknowledged is all there.
        disk.power_loss(Fault::Forget, 3);
        e.halt();
        drop(e);
        disk.fail_sync(false);
        disk.fail_append(false);
        disk.power_on();
        let e = open(dir.path(), &disk).unwrap_or_else(|m| panic!("{fault}: {m}"));
        let r = e.fsck().unwrap_or_else(|err| panic!("{err}"));
        assert!(r.problems.is_empty(), "{fault}: {:?}", r.problems);
        assert!(
            read_all(&e, ia, a.len()).is_ok_and(|d| d == a),
            "{fault}: a after remount"
        );
        assert!(
            read_all(&e, ib, b.len()).is_ok_and(|d| d == b),
            "{fault}: b after remount"
        );
        e.shutdown().unwrap_or_else(|err| panic!("{err}"));
    }

    // Read errors: the blocks in the failing pack read as EIO, never as other bytes, and
    // everything else reads.
    let dir = scratch().unwrap_or_else(|e| panic!("{e}"));
    let disk = MemBackend::new();
    let e = open(dir.path(), &disk).unwrap_or_else(|m| panic!("{m}"));
    let files: Vec<(Ino, Vec<u8>)> = (0..6u64)
        .map(|i| {
            let d = noise(10 + i, 150_000);
            (write_file(&e, &format!("f{i}"), &d), d)
        })
        .collect();
    e.shutdown().unwrap_or_else(|err| panic!("{err}"));
    drop(e);
    let packs = disk.list().unwrap_or_default();
    assert!(packs.len() >= 3, "files spread over packs: {packs:?}");
    disk.fail_reads(Some(packs[packs.len() / 2]));
    let e = open(dir.path(), &disk).unwrap_or_else(|m| panic!("{m}"));
    let (mut ok, mut eio) = (0, 0);
    for (ino, want) in &files {
        match read_all(&e, *ino, want.len()) {
            Ok(d) => {
                assert!(
                    d == *want,
                    "a read under a failing pack returned other bytes"
                );
                ok += 1;
            }
            Err(err) => {
                assert_eq!(err.errno(), libc::EIO, "{err}");
                eio += 1;
            }
        }
    }
    assert!(
        ok > 0 && eio > 0,
        "expected some files readable and some EIO: ok {ok}, eio {eio}"
    );
    // The engine is not read-only for a read error.
    assert!(e.status().read_only.is_none());
    e.shutdown().unwrap_or_else(|err| panic!("{err}"));
}
