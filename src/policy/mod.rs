//! Per-directory policies: what a directory wants from the compressor, inherited by
//! everything below it unless a deeper directory overrides a key.
//!
//! A policy is a set of optional keys; an unset key inherits. It is stored as the extended
//! attribute `user.idcfs.policy` of a directory, in the text form `key=value key=value`, and
//! journaled like any xattr. The mount-wide default comes from the config file.
//!
//! Invariants: a stored policy always parses (it is validated before it is stored); nothing
//! is ever stored lossily unless a policy names that medium in `lossy`.

mod parse;

pub use self::parse::{parse_policy, PolicyError};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The xattr that holds a directory's own policy.
pub const POLICY_XATTR: &[u8] = b"user.idcfs.policy";

/// How hard to compress, cheapest to strongest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// Store as is.
    Off,
    /// zstd -1 on write; no recompression.
    Fast,
    /// zstd -3 on write; background recompression with format-aware codecs (the default).
    Balanced,
    /// zstd -3 on write; background recompression with zstd -19 and long windows.
    Max,
    /// Like max, plus the strongest codecs available whatever they cost.
    Archive,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Off,
        Level::Fast,
        Level::Balanced,
        Level::Max,
        Level::Archive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Fast => "fast",
            Level::Balanced => "balanced",
            Level::Max => "max",
            Level::Archive => "archive",
        }
    }

    /// zstd level of the write path (None: store raw).
    pub fn write_zstd(self) -> Option<i32> {
        match self {
            Level::Off => None,
            Level::Fast => Some(1),
            Level::Balanced | Level::Max | Level::Archive => Some(3),
        }
    }

    /// zstd level of background recompression (None: leave the fast-path encoding).
    pub fn recompress_zstd(self) -> Option<i32> {
        match self {
            Level::Off | Level::Fast => None,
            Level::Balanced => Some(9),
            Level::Max | Level::Archive => Some(19),
        }
    }
}

/// A medium that may be stored lossily.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Medium {
    Image,
    Audio,
}

impl Medium {
    pub fn name(self) -> &'static str {
        match self {
            Medium::Image => "image",
            Medium::Audio => "audio",
        }
    }
}

/// A quality target a lossy encoding must meet, measured after encoding.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Quality {
    /// Codec quality scale 1..=100.
    Q(u8),
    /// Minimum peak signal-to-noise ratio in dB (images).
    Psnr(f32),
}

/// The explicit settings of one directory (unset keys inherit).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub level: Option<Level>,
    /// `Some(empty)` is an explicit `lossy=none`.
    pub lossy: Option<BTreeMap<Medium, Quality>>,
    pub dedup: Option<bool>,
}

/// A fully resolved policy, with where each key came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Effective {
    pub level: Level,
    pub lossy: BTreeMap<Medium, Quality>,
    pub dedup: bool,
    /// key -> the directory (or "default") that set it.
    pub sources: BTreeMap<String, String>,
}

impl Default for Effective {
    fn default() -> Self {
        Effective {
            level: Level::Balanced,
            lossy: BTreeMap::new(),
            dedup: false,
            sources: BTreeMap::new(),
        }
    }
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.level.is_none() && self.lossy.is_none() && self.dedup.is_none()
    }

    /// Keys set here override `base`; the rest inherit from it. `from` names this level.
    pub fn over(&self, base: &Effective, from: &str) -> Effective {
        let mut e = base.clone();
        if let Some(l) = self.level {
            e.level = l;
            e.sources.insert("level".into(), from.into());
        }
        if let Some(l) = &self.lossy {
            e.lossy = l.clone();
            e.sources.insert("lossy".into(), from.into());
        }
        if let Some(d) = self.dedup {
            e.dedup = d;
            e.sources.insert("dedup".into(), from.into());
        }
        e
    }

    /// Set the keys of `other` on top of this policy.
    pub fn merge(&mut self, other: &Policy) {
        if other.level.is_some() {
            self.level = other.level;
        }
        if other.lossy.is_some() {
            self.lossy = other.lossy.clone();
        }
        if other.dedup.is_some() {
            self.dedup = other.dedup;
        }
    }

    /// Remove a key; unknown keys are an error.
    pub fn unset(&mut self, key: &str) -> Result<(), PolicyError> {
        match key {
            "level" => self.level = None,
            "lossy" => self.lossy = None,
            "dedup" => self.dedup = None,
            other => return Err(PolicyError::UnknownKey(other.to_string())),
        }
        Ok(())
    }
}

fn fmt_lossy(l: &BTreeMap<Medium, Quality>) -> String {
    if l.is_empty() {
        return "none".into();
    }
    l.iter()
        .map(|(m, q)| match q {
            Quality::Q(q) => format!("{}:q={q}", m.name()),
            Quality::Psnr(p) => format!("{}:psnr={p}", m.name()),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for Policy {
    /// The canonical text form, which `parse_policy` reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(l) = self.level {
            parts.push(format!("level={}", l.name()));
        }
        if let Some(l) = &self.lossy {
            parts.push(format!("lossy={}", fmt_lossy(l)));
        }
        if let Some(d) = self.dedup {
            parts.push(format!("dedup={}", if d { "on" } else { "off" }));
        }
        write!(f, "{}", parts.join(" "))
    }
}

impl fmt::Display for Effective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let src = |k: &str| {
            self.sources
                .get(k)
                .cloned()
                .unwrap_or_else(|| "default".into())
        };
        writeln!(f, "level={}\t(from {})", self.level.name(), src("level"))?;
        writeln!(
            f,
            "lossy={}\t(from {})",
            fmt_lossy(&self.lossy),
            src("lossy")
        )?;
        writeln!(
            f,
            "dedup={}\t(from {})",
            if self.dedup { "on" } else { "off" },
            src("dedup")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inheritance_and_override() {
        let root = parse_policy("level=max dedup=on").unwrap_or_default();
        let sub = parse_policy("level=fast lossy=image:q=90").unwrap_or_default();
        let e1 = root.over(&Effective::default(), "/");
        let e2 = sub.over(&e1, "/photos");
        assert_eq!(e2.level, Level::Fast);
        assert!(e2.dedup, "dedup inherited");
        assert_eq!(e2.lossy.get(&Medium::Image), Some(&Quality::Q(90)));
        assert_eq!(e2.sources.get("dedup").map(String::as_str), Some("/"));
        assert_eq!(e2.sources.get("level").map(String::as_str), Some("/photos"));
        let text = sub.to_string();
        assert_eq!(parse_policy(&text).ok(), Some(sub));
    }
}
