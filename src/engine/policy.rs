//! Resolving a directory's effective policy (its own keys over its parents' over the mount
//! default), cached until any policy or the directory tree changes.
//!
//! Invariant: a cached entry is used only while the cache's generation equals the one it was
//! computed under; any policy change or directory move bumps the generation.

use super::Engine;
use crate::error::{Error, Result};
use crate::meta::{Ino, Kind, ROOT_INO};
use crate::policy::{parse_policy, Effective, Level, Policy, POLICY_XATTR};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Effective policies by directory, valid for one generation.
#[derive(Default)]
pub(super) struct PolicyCache {
    gen: AtomicU64,
    map: Mutex<HashMap<Ino, (u64, Effective)>>,
}

impl PolicyCache {
    /// Forget every entry (a policy or the tree changed).
    pub(super) fn invalidate(&self) {
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// The generation to compute under, and the cached value if it is current.
    fn get(&self, dir: Ino) -> (u64, Option<Effective>) {
        let gen = self.gen.load(Ordering::Relaxed);
        let hit = match self.map.lock().get(&dir) {
            Some((g, e)) if *g == gen => Some(e.clone()),
            _ => None,
        };
        (gen, hit)
    }

    fn put(&self, dir: Ino, gen: u64, e: Effective) {
        let mut m = self.map.lock();
        // Bounded: a cheap reset beats tracking recency for a cache this easy to refill.
        if m.len() > 10_000 {
            m.clear();
        }
        m.insert(dir, (gen, e));
    }
}

impl Engine {
    pub(super) fn policy_changed(&self) {
        self.policies.invalidate();
    }

    /// The stored policy of one directory.
    fn own_policy(&self, dir: Ino) -> Result<Policy> {
        match self.j.index.xattr(dir, POLICY_XATTR)? {
            Some(v) => parse_policy(&String::from_utf8_lossy(&v))
                .map_err(|e| Error::Corrupt(format!("stored policy of inode {dir}: {e}"))),
            None => Ok(Policy::default()),
        }
    }

    /// The effective policy of directory `dir` (sources name inodes as `ino:N`).
    pub fn effective_policy(&self, dir: Ino) -> Result<Effective> {
        let (gen, hit) = self.policies.get(dir);
        if let Some(e) = hit {
            return Ok(e);
        }
        let mut chain = vec![dir];
        let mut cur = dir;
        while cur != ROOT_INO && chain.len() < 4096 {
            cur = self.j.index.inode(cur)?.ok_or(Error::NotFound)?.parent;
            chain.push(cur);
        }
        let mut e = self
            .opts
            .default_policy
            .over(&Effective::default(), "config");
        for d in chain.iter().rev() {
            e = self.own_policy(*d)?.over(&e, &format!("ino:{d}"));
        }
        self.policies.put(dir, gen, e.clone());
        Ok(e)
    }

    /// The policy of a file or directory as a user reads it: sources as paths.
    pub fn effective_policy_of(&self, ino: Ino) -> Result<Effective> {
        let i = self.getattr(ino)?.inode;
        let dir = if i.kind == Kind::Dir { ino } else { i.parent };
        let mut e = self.effective_policy(dir)?;
        for v in e.sources.values_mut() {
            if let Some(n) = v.strip_prefix("ino:").and_then(|n| n.parse::<Ino>().ok()) {
                *v = self.path_of(n);
            }
        }
        Ok(e)
    }

    /// The policy level of files in `dir`.
    pub(super) fn level_for(&self, dir: Ino) -> Level {
        self.write_policy(dir).0
    }

    /// (policy level, dedup) for files in `dir`.
    pub(super) fn write_policy(&self, dir: Ino) -> (Level, bool) {
        let e = self.effective_policy(dir).unwrap_or_default();
        (e.level, e.dedup)
    }

    /// Validate and store a directory's policy (`user.idcfs.policy`). Bad text is refused
    /// with EINVAL and the reason is logged.
    pub(super) fn set_policy(&self, ino: Ino, value: &[u8]) -> Result<Option<Policy>> {
        let i = self.j.index.inode(ino)?.ok_or(Error::NotFound)?;
        if i.kind != Kind::Dir {
            tracing::warn!(ino, "policy refused: policies live on directories");
            return Err(Error::Invalid("policies live on directories"));
        }
        let text = String::from_utf8_lossy(value);
        match parse_policy(&text) {
            Ok(p) => Ok(Some(p)),
            Err(e) => {
                tracing::warn!(path = %self.log_name(ino), "policy refused: {e}");
                Err(Error::Invalid("bad policy (the daemon log says why)"))
            }
        }
    }
}
