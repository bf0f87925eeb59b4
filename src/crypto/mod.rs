//! Encryption at rest: the key hierarchy of an encrypted store, the key file that keeps the
//! master key wrapped, and the AEAD every sealed byte goes through.
//!
//! Hierarchy: a random 256-bit master key, kept on disk only wrapped (AES-256-GCM-SIV) by a
//! key-encryption key derived from a passphrase (Argon2id, its parameters in the key file) or
//! from a key file's bytes (BLAKE3; for machine secrets such as a systemd credential). From
//! the master key BLAKE3 `derive_key` makes independent keys for records, index pages and the
//! keyed content hash, so no key is used for two purposes.
//!
//! Invariants:
//! - Key material lives in `Zeroizing` buffers or in cipher states that zeroize on drop, and
//!   is never logged: `Debug` shows only the store id and key id.
//! - Every seal draws a fresh 96-bit nonce from the OS. AES-GCM-SIV is nonce-misuse resistant:
//!   even a repeated nonce would reveal only that the same plaintext was sealed twice with the
//!   same associated data, never the plaintext or the key (RFC 8452, section 9).
//! - Changing the passphrase rewrites only the key file (atomically); data keys never change.

mod pages;

pub use self::pages::SealedFile;

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write;
use std::path::Path;
use zeroize::Zeroizing;

/// The key file in an encrypted store's directory.
pub const KEYS_FILE: &str = "keys.json";
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Argon2id cost of new passphrase slots: 64 MiB, 3 passes, 1 lane (about half a second
/// here), the RFC 9106 second recommendation's memory with more passes.
const ARGON2_M_KIB: u32 = 64 * 1024;
const ARGON2_T: u32 = 3;
const ARGON2_P: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("wrong passphrase or key file (the store's key file has no slot this secret opens)")]
    WrongSecret,
    #[error("authentication failed: {0}")]
    Auth(&'static str),
    #[error("key file {0}")]
    KeyFile(String),
    #[error("no randomness from the operating system: {0}")]
    Random(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What unlocks a store.
pub enum Secret {
    /// Typed by a person: stretched with Argon2id.
    Passphrase(Zeroizing<String>),
    /// Random bytes from a file (`--key-file`, a systemd credential): hashed, not stretched.
    KeyFile(Zeroizing<Vec<u8>>),
}

impl Secret {
    fn kind(&self) -> &'static str {
        match self {
            Secret::Passphrase(_) => "passphrase",
            Secret::KeyFile(_) => "key-file",
        }
    }

    /// Read a key file (any bytes; at least 16).
    pub fn from_key_file(path: &Path) -> Result<Secret, String> {
        let bytes = Zeroizing::new(
            std::fs::read(path).map_err(|e| format!("key file {}: {e}", path.display()))?,
        );
        if bytes.len() < 16 {
            return Err(format!(
                "key file {} holds {} bytes; it needs at least 16 random bytes (e.g. `head -c 32 /dev/urandom > FILE`)",
                path.display(),
                bytes.len()
            ));
        }
        Ok(Secret::KeyFile(bytes))
    }

    /// Read a passphrase from the first line of a file (scripts; systemd credentials).
    pub fn from_passphrase_file(path: &Path) -> Result<Secret, String> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("passphrase file {}: {e}", path.display()))?,
        );
        let line = text.lines().next().unwrap_or_default();
        if line.is_empty() {
            return Err(format!("passphrase file {} is empty", path.display()));
        }
        Ok(Secret::Passphrase(Zeroizing::new(line.to_string())))
    }
}

/// Random bytes from the OS.
pub fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(b)
}

/// What a sealed byte string is: each purpose has its own key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Record,
    IndexUnit,
}

/// The unlocked keys of one store.
pub struct StoreKey {
    pub store_id: [u8; 16],
    pub key_id: u32,
    record: Aes256GcmSiv,
    index: Aes256GcmSiv,
    hash: Zeroizing<[u8; 32]>,
    /// Kept only to hand it to the daemon process (`master_line`).
    master: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StoreKey {{ store {}, key {} }}",
            hex::encode(self.store_id),
            self.key_id
        )
    }
}

fn cipher(key: &[u8; 32]) -> Aes256GcmSiv {
    let k = Zeroizing::new(*key);
    Aes256GcmSiv::new(&(*k).into())
}

impl StoreKey {
    pub fn from_master(master: &[u8; 32], store_id: [u8; 16], key_id: u32) -> StoreKey {
        let rk = Zeroizing::new(blake3::derive_key("idcfs 2026-11-30 record key", master));
        let ik = Zeroizing::new(blake3::derive_key(
            "idcfs 2026-11-30 index page key",
            master,
        ));
        let hk = Zeroizing::new(blake3::derive_key(
            "idcfs 2026-11-30 content hash key",
            master,
        ));
        StoreKey {
            store_id,
            key_id,
            record: cipher(&rk),
            index: cipher(&ik),
            hash: hk,
            master: Zeroizing::new(*master),
        }
    }

    /// The content hash of an encrypted store (checksums and dedup): keyed, so equal
    /// content is recognisable only to the key holder.
    pub fn content_hash(&self, data: &[u8]) -> [u8; 16] {
        let h = blake3::keyed_hash(&self.hash, data);
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.as_bytes()[..16]);
        out
    }

    /// Encrypt `buf` in place under the key for `what`; returns its nonce and tag.
    pub fn seal(
        &self,
        what: Purpose,
        ad: &[u8],
        buf: &mut [u8],
    ) -> Result<([u8; NONCE_LEN], [u8; TAG_LEN]), CryptoError> {
        seal(self.cipher(what), ad, buf)
    }

    /// Decrypt `buf` in place; fails when anything (bytes, nonce, tag, AD) was altered.
    pub fn open(
        &self,
        what: Purpose,
        nonce: &[u8; NONCE_LEN],
        ad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        open(self.cipher(what), nonce, ad, buf, tag).map_err(|_| {
            CryptoError::Auth(match what {
                Purpose::Record => "record",
                Purpose::IndexUnit => "index unit",
            })
        })
    }

    fn cipher(&self, what: Purpose) -> &Aes256GcmSiv {
        match what {
            Purpose::Record => &self.record,
            Purpose::IndexUnit => &self.index,
        }
    }

    /// One line that hands the unlocked key to the daemon over a pipe (never a file or
    /// an argument, which other users could read).
    pub fn master_line(&self) -> Zeroizing<String> {
        // Hex into zeroized buffers only: no temporary copy of the key outlives this call.
        let mut hexed = Zeroizing::new([0u8; 64]);
        let mut line = Zeroizing::new(String::with_capacity(128));
        if hex::encode_to_slice(&self.master[..], &mut hexed[..]).is_ok() {
            line.extend(hexed.iter().map(|&b| b as char));
        }
        line.push(' ');
        line.push_str(&hex::encode(self.store_id));
        line.push(' ');
        line.push_str(&self.key_id.to_string());
        line.push('\n');
        line
    }

    pub fn from_master_line(line: &str) -> Result<StoreKey, CryptoError> {
        let bad = || CryptoError::KeyFile("bad key hand-over line".into());
        let mut it = line.split_whitespace();
        let mut master = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(it.next().ok_or_else(bad)?, &mut master[..]).map_err(|_| bad())?;
        let mut store_id = [0u8; 16];
        hex::decode_to_slice(it.next().ok_or_else(bad)?, &mut store_id).map_err(|_| bad())?;
        let key_id = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        Ok(StoreKey::from_master(&master, store_id, key_id))
    }
}

fn seal(
    c: &Aes256GcmSiv,
    ad: &[u8],
    buf: &mut [u8],
) -> Result<([u8; NONCE_LEN], [u8; TAG_LEN]), CryptoError> {
    let nonce: [u8; NONCE_LEN] = random()?;
    let tag = c
        .encrypt_inout_detached(&Nonce::from(nonce), ad, buf.into())
        .map_err(|_| CryptoError::Auth("encryption failed"))?;
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(tag.as_slice());
    Ok((nonce, t))
}

fn open(
    c: &Aes256GcmSiv,
    nonce: &[u8; NONCE_LEN],
    ad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), aes_gcm_siv::Error> {
    c.decrypt_inout_detached(&Nonce::from(*nonce), ad, buf.into(), &Tag::from(*tag))
}

// ---- the key file ----

#[derive(Serialize, Deserialize)]
struct KeysFile {
    /// Layout of this file (1).
    format: u32,
    store_id: String,
    key_id: u32,
    slots: Vec<Slot>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Slot {
    /// "passphrase" or "key-file".
    kind: String,
    /// Argon2id cost (passphrase slots): memory KiB, passes, lanes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    argon2id: Option<[u32; 3]>,
    salt: String,
    nonce: String,
    /// The master key sealed under the key-encryption key, with its tag (hex).
    wrapped: String,
}

const KEYS_FORMAT: u32 = 1;

/// Associated data of a wrapped master key: binds it to the store, the key id and the
/// slot's KDF choice, so none of them can be edited without the unwrap failing.
fn slot_ad(store_id: &[u8; 16], key_id: u32, slot: &Slot) -> Vec<u8> {
    let mut ad = b"idcfs keys v1".to_vec();
    ad.extend_from_slice(store_id);
    ad.extend_from_slice(&key_id.to_le_bytes());
    ad.extend_from_slice(slot.kind.as_bytes());
    for v in slot.argon2id.unwrap_or_default() {
        ad.extend_from_slice(&v.to_le_bytes());
    }
    ad.extend_from_slice(slot.salt.as_bytes());
    ad
}

fn kek(secret: &Secret, slot: &Slot, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let mut out = Zeroizing::new([0u8; 32]);
    match secret {
        Secret::Passphrase(p) => {
            let [m, t, par] = slot
                .argon2id
                .ok_or_else(|| CryptoError::KeyFile("passphrase slot without argon2id".into()))?;
            let params = argon2::Params::new(m, t, par, Some(32))
                .map_err(|e| CryptoError::KeyFile(format!("argon2id parameters: {e}")))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(p.as_bytes(), salt, &mut out[..])
                .map_err(|e| CryptoError::KeyFile(format!("argon2id: {e}")))?;
        }
        Secret::KeyFile(b) => {
            let mut h = blake3::Hasher::new_derive_key("idcfs 2026-11-30 key file");
            h.update(salt);
            h.update(b);
            out.copy_from_slice(h.finalize().as_bytes());
        }
    }
    Ok(out)
}

fn new_slot(
    secret: &Secret,
    master: &[u8; 32],
    store_id: &[u8; 16],
    key_id: u32,
) -> Result<Slot, CryptoError> {
    let salt: [u8; 16] = random()?;
    let mut slot = Slot {
        kind: secret.kind().into(),
        argon2id: match secret {
            Secret::Passphrase(_) => Some([ARGON2_M_KIB, ARGON2_T, ARGON2_P]),
            Secret::KeyFile(_) => None,
        },
        salt: hex::encode(salt),
        nonce: String::new(),
        wrapped: String::new(),
    };
    let k = kek(secret, &slot, &salt)?;
    let mut buf = Zeroizing::new(*master);
    let (nonce, tag) = seal(&cipher(&k), &slot_ad(store_id, key_id, &slot), &mut buf[..])?;
    slot.nonce = hex::encode(nonce);
    let mut w = buf.to_vec();
    w.extend_from_slice(&tag);
    slot.wrapped = hex::encode(&w);
    Ok(slot)
}

fn read_keys(store: &Path) -> Result<KeysFile, CryptoError> {
    let p = store.join(KEYS_FILE);
    let text = std::fs::read_to_string(&p)
        .map_err(|e| CryptoError::KeyFile(format!("{}: {e}", p.display())))?;
    let k: KeysFile = serde_json::from_str(&text)
        .map_err(|e| CryptoError::KeyFile(format!("{}: {e}", p.display())))?;
    if k.format != KEYS_FORMAT {
        return Err(CryptoError::KeyFile(format!(
            "{} has layout {}, this build reads {KEYS_FORMAT}",
            p.display(),
            k.format
        )));
    }
    Ok(k)
}

fn write_keys(store: &Path, k: &KeysFile) -> Result<(), CryptoError> {
    let text = serde_json::to_string_pretty(k).map_err(|e| CryptoError::KeyFile(e.to_string()))?;
    let tmp = store.join(format!("{KEYS_FILE}.tmp"));
    // Only the owner reads the wrapped key (an offline guessing attack needs it).
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, store.join(KEYS_FILE))?;
    std::fs::File::open(store)?.sync_all()?;
    Ok(())
}

fn store_id_of(k: &KeysFile) -> Result<[u8; 16], CryptoError> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(&k.store_id, &mut id)
        .map_err(|_| CryptoError::KeyFile("bad store id".into()))?;
    Ok(id)
}

/// Whether `store` is (being made) an encrypted store.
pub fn has_keys(store: &Path) -> bool {
    store.join(KEYS_FILE).exists()
}

/// Create the key file of a new encrypted store: a random master key and store id, wrapped
/// by `secret`.
pub fn create(store: &Path, secret: &Secret) -> Result<StoreKey, CryptoError> {
    let master = Zeroizing::new(random::<32>()?);
    let store_id: [u8; 16] = random()?;
    let key_id = 1;
    let slot = new_slot(secret, &master, &store_id, key_id)?;
    write_keys(
        store,
        &KeysFile {
            format: KEYS_FORMAT,
            store_id: hex::encode(store_id),
            key_id,
            slots: vec![slot],
        },
    )?;
    Ok(StoreKey::from_master(&master, store_id, key_id))
}

/// Unlock the store's key with `secret`; a wrong secret is `WrongSecret`.
pub fn unlock(store: &Path, secret: &Secret) -> Result<StoreKey, CryptoError> {
    let k = read_keys(store)?;
    let store_id = store_id_of(&k)?;
    for slot in k.slots.iter().filter(|s| s.kind == secret.kind()) {
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; NONCE_LEN];
        let wrapped = hex::decode(&slot.wrapped).unwrap_or_default();
        if hex::decode_to_slice(&slot.salt, &mut salt).is_err()
            || hex::decode_to_slice(&slot.nonce, &mut nonce).is_err()
            || wrapped.len() != 32 + TAG_LEN
        {
            continue;
        }
        let kek = kek(secret, slot, &salt)?;
        let mut m = Zeroizing::new([0u8; 32]);
        m.copy_from_slice(&wrapped[..32]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&wrapped[32..]);
        let ad = slot_ad(&store_id, k.key_id, slot);
        if open(&cipher(&kek), &nonce, &ad, &mut m[..], &tag).is_ok() {
            return Ok(StoreKey::from_master(&m, store_id, k.key_id));
        }
    }
    Err(CryptoError::WrongSecret)
}

/// Replace every slot by one that `new` opens (after `old` unlocked the store). Data keys do
/// not change: nothing but the key file is rewritten, atomically.
pub fn change_secret(store: &Path, old: &Secret, new: &Secret) -> Result<(), CryptoError> {
    let key = unlock(store, old)?;
    let mut k = read_keys(store)?;
    k.slots = vec![new_slot(new, &key.master, &key.store_id, key.key_id)?];
    write_keys(store, &k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unlock_change() {
        let d = tempfile::tempdir().unwrap();
        let pass = |s: &str| Secret::Passphrase(Zeroizing::new(s.into()));
        let k = create(d.path(), &pass("correct horse")).unwrap();
        assert!(matches!(
            unlock(d.path(), &pass("wrong")),
            Err(CryptoError::WrongSecret)
        ));
        let k2 = unlock(d.path(), &pass("correct horse")).unwrap();
        assert_eq!(k.content_hash(b"x"), k2.content_hash(b"x"));
        change_secret(
            d.path(),
            &pass("correct horse"),
            &Secret::KeyFile(Zeroizing::new(vec![7; 32])),
        )
        .unwrap();
        assert!(unlock(d.path(), &pass("correct horse")).is_err());
        let k3 = unlock(d.path(), &Secret::KeyFile(Zeroizing::new(vec![7; 32]))).unwrap();
        assert_eq!(k.content_hash(b"x"), k3.content_hash(b"x"));
        assert_ne!(k.content_hash(b"x"), crate::store::raw_hash(b"x"));
        // The hand-over line carries the same key.
        let k4 = StoreKey::from_master_line(&k.master_line()).unwrap();
        assert_eq!(k4.content_hash(b"y"), k.content_hash(b"y"));
        // Editing the key file's store id breaks the unwrap.
        let p = d.path().join(KEYS_FILE);
        let t = std::fs::read_to_string(&p).unwrap();
        let id = hex::encode(k.store_id);
        std::fs::write(&p, t.replace(&id, &"0".repeat(32))).unwrap();
        assert!(unlock(d.path(), &Secret::KeyFile(Zeroizing::new(vec![7; 32]))).is_err());
    }

    #[test]
    fn seal_open_detects_tampering() {
        let k = StoreKey::from_master(&[1; 32], [2; 16], 1);
        let mut buf = b"secret data".to_vec();
        let (n, t) = k.seal(Purpose::Record, b"ad", &mut buf).unwrap();
        assert_ne!(&buf[..], b"secret data");
        let mut ok = buf.clone();
        k.open(Purpose::Record, &n, b"ad", &mut ok, &t).unwrap();
        assert_eq!(&ok[..], b"secret data");
        let mut bad = buf.clone();
        assert!(k
            .open(Purpose::Record, &n, b"other ad", &mut bad, &t)
            .is_err());
        let mut bad = buf.clone();
        bad[0] ^= 1;
        assert!(k.open(Purpose::Record, &n, b"ad", &mut bad, &t).is_err());
        // Another purpose's key does not open it.
        let mut bad = buf;
        assert!(k.open(Purpose::IndexUnit, &n, b"ad", &mut bad, &t).is_err());
    }
}
