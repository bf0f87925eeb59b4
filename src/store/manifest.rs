//! The store directory's format manifest and layout: which on-disk format a store is in,
//! creating new stores, refusing formats this build does not know, and upgrading format-1
//! stores in place.
//!
//! Layout of a format-2 store (`FORMAT.md` has the full description):
//! ```text
//! STORE/MANIFEST      "idcfs-store-format 2" and informational lines; written last, atomically
//! STORE/journal/      pack files XXXXXXXX.pack (the journal: the source of truth)
//! STORE/index.redb   redb index (a cache of the journal, rebuildable; builds before it had a
//!                     sled database in STORE/index/, which the next open replaces)
//! STORE/packs         a regular FILE on purpose: builds before format 2 open STORE/packs as a
//!                     directory and would cut records they cannot parse; a file makes them
//!                     fail to open the store instead
//! STORE/lock          flock held by the process that has the store open
//! ```
//! A format-1 store (before this manifest existed) has `packs/` as its pack directory and no
//! MANIFEST; its records are read as they are (record version 1), but it is written to only
//! after `idcfs upgrade`, which renames `packs/` to `journal/` and writes the manifest.
//!
//! Invariants: the MANIFEST is the commit point of creation and upgrade (written by rename
//! after everything else is in place and synced), so a crash leaves either the old state or a
//! `journal/` directory without a MANIFEST, which `open` completes.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The store format this build writes.
pub const FORMAT: u32 = 2;
/// Format 2 plus encryption at rest: `keys.json` holds the wrapped key, every record is
/// sealed and the index file is encrypted. A distinct number so that builds without key
/// support refuse such a store instead of adding plain records to it.
pub const FORMAT_ENCRYPTED: u32 = 3;
/// The oldest store format this build can read (after `idcfs upgrade` for those below FORMAT).
pub const OLDEST_READABLE: u32 = 1;

const MANIFEST: &str = "MANIFEST";
const MAGIC_LINE: &str = "idcfs-store-format";
const JOURNAL_DIR: &str = "journal";
/// The metadata index (a redb database file). Builds before it kept a sled database in the
/// directory `index/`, which opening a store rebuilds into this file and then removes.
pub const INDEX_FILE: &str = "index.redb";
const TRIPWIRE: &str = "packs";
const TRIPWIRE_TEXT: &str = "This idcfs store is in on-disk format 2 or later (see MANIFEST); its pack files are in journal/.\nThis file stands where format-1 stores kept their packs/ directory, so that idcfs builds that predate\nformat 2 refuse to open the store instead of misreading it.\n";

/// What a directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing of a store yet.
    Empty,
    /// A format-1 store (pack directory `packs/`, no manifest).
    V1,
    /// A store of the given format, with a manifest.
    Format(u32),
    /// Creation or upgrade was interrupted after the pack directory was in place.
    Unfinished,
}

/// Paths of an opened store.
#[derive(Debug, Clone)]
pub struct Layout {
    pub packs: PathBuf,
    pub index: PathBuf,
    /// Format 3: records and index are encrypted; opening needs the key.
    pub encrypted: bool,
}

fn err(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, msg)
}

/// Inspect `dir` without changing it.
pub fn inspect(dir: &Path) -> io::Result<Found> {
    let m = dir.join(MANIFEST);
    match fs::read_to_string(&m) {
        Ok(text) => return parse(&text, &m).map(Found::Format),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if dir.join(JOURNAL_DIR).is_dir() {
        return Ok(Found::Unfinished);
    }
    if dir.join(TRIPWIRE).is_dir() {
        return Ok(Found::V1);
    }
    Ok(Found::Empty)
}

fn parse(text: &str, path: &Path) -> io::Result<u32> {
    let first = text.lines().next().unwrap_or_default();
    let mut it = first.split_whitespace();
    match (it.next(), it.next().map(str::parse::<u32>), it.next()) {
        (Some(MAGIC_LINE), Some(Ok(v)), None) => Ok(v),
        _ => Err(err(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not an idcfs manifest (its first line should be `{MAGIC_LINE} N`)",
                path.display()
            ),
        )),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Write `name` in `dir` atomically (temporary file, fsync, rename, directory fsync).
fn write_atomic(dir: &Path, name: &str, text: &str) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn manifest_text(upgraded_from: Option<u32>, encrypted: bool) -> String {
    let mut t = format!(
        "{MAGIC_LINE} {}\nwritten-by idcfs {}\n",
        if encrypted { FORMAT_ENCRYPTED } else { FORMAT },
        env!("CARGO_PKG_VERSION")
    );
    if encrypted {
        t.push_str("encryption aes-256-gcm-siv (key in keys.json)\n");
    }
    if let Some(v) = upgraded_from {
        t.push_str(&format!("upgraded-from {v}\n"));
    }
    t
}

/// Put the tripwire file and the manifest in place around an existing `journal/`.
fn finish(dir: &Path, upgraded_from: Option<u32>) -> io::Result<()> {
    let tw = dir.join(TRIPWIRE);
    if !tw.is_file() {
        write_atomic(dir, TRIPWIRE, TRIPWIRE_TEXT)?;
    }
    // The key file is written before the manifest: a creation interrupted in between is an
    // encrypted store, never a plain one next to a key.
    let encrypted = dir.join(crate::crypto::KEYS_FILE).exists();
    write_atomic(dir, MANIFEST, &manifest_text(upgraded_from, encrypted))
}

fn layout(dir: &Path) -> Layout {
    Layout {
        packs: dir.join(JOURNAL_DIR),
        index: dir.join(INDEX_FILE),
        encrypted: false,
    }
}

/// Create an encrypted store in the empty directory `dir`; `write_keys` puts the key file in
/// place (before the manifest, the commit point).
pub fn create_encrypted(
    dir: &Path,
    write_keys: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<Layout> {
    match inspect(dir)? {
        Found::Empty => {}
        _ => {
            return Err(err(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} already holds an idcfs store; encryption is chosen when a store is created (copy the files into a new encrypted store)",
                    dir.display()
                ),
            ))
        }
    }
    fs::create_dir_all(dir.join(JOURNAL_DIR))?;
    sync_dir(dir)?;
    write_keys(dir)?;
    finish(dir, None)?;
    open(dir)
}

/// Open the store in `dir` for this build, creating it when the directory holds no store.
/// Refuses a format-1 store (naming `idcfs upgrade`) and any format this build does not know.
pub fn open(dir: &Path) -> io::Result<Layout> {
    match inspect(dir)? {
        Found::Format(FORMAT) => Ok(layout(dir)),
        Found::Format(FORMAT_ENCRYPTED) => {
            if !dir.join(crate::crypto::KEYS_FILE).is_file() {
                return Err(err(
                    io::ErrorKind::NotFound,
                    format!(
                        "store {} is encrypted but its key file {} is missing: restore it from your backup (without it the data cannot be read)",
                        dir.display(),
                        crate::crypto::KEYS_FILE
                    ),
                ));
            }
            Ok(Layout {
                encrypted: true,
                ..layout(dir)
            })
        }
        Found::Format(v) if v > FORMAT_ENCRYPTED => Err(err(
            io::ErrorKind::Unsupported,
            format!(
                "store {} is in on-disk format {v}, written by a newer idcfs; this build reads formats {OLDEST_READABLE} to {FORMAT_ENCRYPTED}: use a newer idcfs",
                dir.display()
            ),
        )),
        Found::Format(v) => Err(err(
            io::ErrorKind::Unsupported,
            format!(
                "store {} declares on-disk format {v}, which no idcfs wrote; this build reads formats {OLDEST_READABLE} to {FORMAT_ENCRYPTED}",
                dir.display()
            ),
        )),
        Found::V1 => Err(err(
            io::ErrorKind::Unsupported,
            format!(
                "store {d} is in on-disk format 1 (written by idcfs before format 2); this build writes format {FORMAT}. Run `idcfs upgrade {d}` to convert it in place: it is quick (the data stays where it is) and crash-safe; afterwards builds older than format 2 refuse the store instead of misreading it",
                d = dir.display()
            ),
        )),
        Found::Unfinished => {
            tracing::warn!(store = %dir.display(), "completing an interrupted store creation or upgrade");
            finish(dir, None)?;
            open(dir)
        }
        Found::Empty => {
            fs::create_dir_all(dir.join(JOURNAL_DIR))?;
            sync_dir(dir)?;
            finish(dir, None)?;
            Ok(layout(dir))
        }
    }
}

/// What `upgrade` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgraded {
    /// The store was converted from this format.
    From(u32),
    /// The store was already in the current format.
    AlreadyCurrent,
}

/// Convert a store in place to the current format. The caller holds the store lock.
///
/// Format 1 → 2: the pack directory is renamed (atomic), the tripwire and the manifest are
/// written; records keep their bytes (version-1 records stay readable forever), the index
/// keeps its layout. A crash at any step leaves a store that this build opens or finishes.
pub fn upgrade(dir: &Path) -> io::Result<Upgraded> {
    match inspect(dir)? {
        Found::Format(FORMAT | FORMAT_ENCRYPTED) => Ok(Upgraded::AlreadyCurrent),
        Found::V1 => {
            fs::rename(dir.join(TRIPWIRE), dir.join(JOURNAL_DIR))?;
            sync_dir(dir)?;
            finish(dir, Some(1))?;
            Ok(Upgraded::From(1))
        }
        // Creation or an upgrade was interrupted: which one cannot be told, so the manifest
        // does not claim an origin.
        Found::Unfinished => {
            finish(dir, None)?;
            Ok(Upgraded::AlreadyCurrent)
        }
        Found::Empty => Err(err(
            io::ErrorKind::NotFound,
            format!("{} holds no idcfs store", dir.display()),
        )),
        Found::Format(_) => open(dir).map(|_| Upgraded::AlreadyCurrent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn new_store_gets_manifest_and_tripwire() {
        let d = tmp();
        let l = open(d.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(l.packs.is_dir());
        assert!(d.path().join("packs").is_file());
        assert_eq!(
            inspect(d.path()).unwrap_or_else(|e| panic!("{e}")),
            Found::Format(FORMAT)
        );
        // Reopening is idempotent.
        open(d.path()).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn v1_is_refused_naming_upgrade_then_upgraded() {
        let d = tmp();
        fs::create_dir_all(d.path().join("packs")).unwrap_or_else(|e| panic!("{e}"));
        fs::write(d.path().join("packs/00000001.pack"), b"x").unwrap_or_else(|e| panic!("{e}"));
        let e = open(d.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("format 1") && e.contains("idcfs upgrade"), "{e}");
        assert_eq!(
            upgrade(d.path()).unwrap_or_else(|e| panic!("{e}")),
            Upgraded::From(1)
        );
        assert!(d.path().join("journal/00000001.pack").is_file());
        assert_eq!(
            upgrade(d.path()).unwrap_or_else(|e| panic!("{e}")),
            Upgraded::AlreadyCurrent
        );
        let m = fs::read_to_string(d.path().join("MANIFEST")).unwrap_or_default();
        assert!(m.contains("upgraded-from 1"), "{m}");
    }

    #[test]
    fn interrupted_upgrade_is_completed() {
        let d = tmp();
        // State after the rename, before the tripwire and manifest.
        fs::create_dir_all(d.path().join("journal")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            inspect(d.path()).unwrap_or_else(|e| panic!("{e}")),
            Found::Unfinished
        );
        open(d.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            inspect(d.path()).unwrap_or_else(|e| panic!("{e}")),
            Found::Format(FORMAT)
        );
    }

    #[test]
    fn newer_and_garbled_manifests_are_refused() {
        let d = tmp();
        open(d.path()).unwrap_or_else(|e| panic!("{e}"));
        fs::write(d.path().join("MANIFEST"), "idcfs-store-format 9\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let e = open(d.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("format 9") && e.contains("formats 1 to 3"),
            "{e}"
        );
        fs::write(d.path().join("MANIFEST"), "hello\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(open(d.path()).is_err());
    }
}
