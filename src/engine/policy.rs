//! Resolving a directory's effective policy (its own keys over its parents' over the mount
//! default), cached until any policy or the directory tree changes.

use super::Engine;
use crate::error::{Error, Result};
use crate::meta::{Ino, Kind, ROOT_INO};
use crate::policy::{parse_policy, Effective, Level, Policy, POLICY_XATTR};
use std::sync::atomic::Ordering;

impl Engine {
    pub(super) fn policy_changed(&self) {
        self.policy_gen.fetch_add(1, Ordering::Relaxed);
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
        let gen = self.policy_gen.load(Ordering::Relaxed);
        if let Some((g, e)) = self.policy_cache.lock().get(&dir) {
            if *g == gen {
                return Ok(e.clone());
            }
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
        let mut cache = self.policy_cache.lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(dir, (gen, e.clone()));
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
                tracing::warn!(path = %self.path_of(ino), "policy refused: {e}");
                Err(Error::Invalid("bad policy (the daemon log says why)"))
            }
        }
    }
}
