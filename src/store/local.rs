//! Pack files in a local directory (`STORE/journal`, or `STORE/packs` in format-1 stores).

use super::{PackAppender, PackBackend, PackId};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct LocalDir {
    dir: PathBuf,
    /// Read handles, opened on first use and kept: packs are few and large.
    readers: RwLock<HashMap<PackId, Arc<File>>>,
}

impl LocalDir {
    pub fn open(dir: &Path) -> io::Result<LocalDir> {
        fs::create_dir_all(dir)?;
        Ok(LocalDir {
            dir: dir.to_path_buf(),
            readers: RwLock::new(HashMap::new()),
        })
    }

    fn path(&self, pack: PackId) -> PathBuf {
        self.dir.join(format!("{pack:08x}.pack"))
    }

    fn reader(&self, pack: PackId) -> io::Result<Arc<File>> {
        if let Some(f) = self.readers.read().get(&pack) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.path(pack))?);
        self.readers.write().insert(pack, f.clone());
        Ok(f)
    }
}

impl PackBackend for LocalDir {
    fn list(&self) -> io::Result<Vec<PackId>> {
        let mut ids = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name.strip_suffix(".pack") {
                if let Ok(id) = u32::from_str_radix(hex, 16) {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn len(&self, pack: PackId) -> io::Result<u64> {
        Ok(fs::metadata(self.path(pack))?.len())
    }

    fn read_at(&self, pack: PackId, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.reader(pack)?.read_exact_at(buf, off)
    }

    fn open_append(&self, pack: PackId) -> io::Result<Box<dyn PackAppender>> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(self.path(pack))?;
        Ok(Box::new(LocalAppender { f }))
    }

    fn remove(&self, pack: PackId) -> io::Result<()> {
        self.readers.write().remove(&pack);
        fs::remove_file(self.path(pack))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

struct LocalAppender {
    f: File,
}

impl PackAppender for LocalAppender {
    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        // O_APPEND: one write_all per record, so concurrent readers never see a partial record
        // they were told about (locations are handed out only after this returns).
        (&self.f).write_all(bytes)
    }
    fn sync(&self) -> io::Result<()> {
        self.f.sync_data()
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.f.set_len(len)?;
        self.f.sync_all()
    }
}
