//! API keys, stored only as SHA-256 digests in files (mounted Secrets) and re-read when they change.
//!
//! A key is `kyb_` and 43 characters of base64url (256 random bits). With that much entropy a plain
//! SHA-256 digest is as safe to store as a slow password hash, and costs a microsecond per request
//! instead of the tens of milliseconds argon2 would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::scopes::{Scope, Scopes};

pub const PREFIX: &str = "kyb_";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read API key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid API key file {path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

/// One entry of a key file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Who holds the key: rate limits, logs and the audit trail name it.
    pub client: String,
    /// Hex SHA-256 of the whole key, `kyb_` included.
    pub sha256: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct KeyHolder {
    pub client: Arc<str>,
    pub scopes: Scopes,
}

/// A new key and its file entry: `kybctl auth new-key`.
pub fn generate(client: &str, scopes: &[Scope]) -> (String, KeyEntry) {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let key = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let entry = KeyEntry {
        client: client.to_owned(),
        sha256: digest_hex(&key),
        scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
    };
    (key, entry)
}

pub fn digest_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn parse(path: &Path, text: &str) -> Result<Vec<([u8; 32], KeyHolder)>, KeyFileError> {
    let invalid = |detail: String| KeyFileError::Invalid {
        path: path.to_owned(),
        detail,
    };
    let entries: Vec<KeyEntry> = if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&e.sha256, &mut digest).map_err(|_| {
                invalid(format!(
                    "entry {i} ({}): sha256 is not 64 hex digits",
                    e.client
                ))
            })?;
            let scopes = e
                .scopes
                .iter()
                .map(|s| {
                    Scope::parse(s).ok_or_else(|| {
                        invalid(format!("entry {i} ({}): unknown scope {s:?}", e.client))
                    })
                })
                .collect::<Result<Scopes, _>>()?;
            let holder = KeyHolder {
                client: e.client.into(),
                scopes,
            };
            Ok((digest, holder))
        })
        .collect()
}

/// The keys of every file, looked up by digest.
pub struct ApiKeys {
    files: Vec<PathBuf>,
    by_digest: RwLock<Arc<HashMap<[u8; 32], KeyHolder>>>,
    loaded_at: RwLock<Vec<Option<SystemTime>>>,
}

impl ApiKeys {
    /// Reads every file; a file that cannot be read or parsed stops the start.
    pub fn load(files: &[PathBuf]) -> Result<Self, KeyFileError> {
        let keys = Self {
            files: files.to_vec(),
            by_digest: RwLock::new(Arc::default()),
            loaded_at: RwLock::new(vec![None; files.len()]),
        };
        keys.read_all()?;
        Ok(keys)
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn read_all(&self) -> Result<(), KeyFileError> {
        let mut map = HashMap::new();
        let mut stamps = Vec::with_capacity(self.files.len());
        for path in &self.files {
            let read = |source| KeyFileError::Read {
                path: path.clone(),
                source,
            };
            let text = std::fs::read_to_string(path).map_err(read)?;
            stamps.push(std::fs::metadata(path).and_then(|m| m.modified()).ok());
            for (digest, holder) in parse(path, &text)? {
                map.insert(digest, holder);
            }
        }
        *self.by_digest.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
        *self.loaded_at.write().unwrap_or_else(|p| p.into_inner()) = stamps;
        Ok(())
    }

    /// Re-reads the files if any changed (a rotated Secret); a broken file keeps the keys in use.
    pub fn reload_if_changed(&self) {
        let now: Vec<Option<SystemTime>> = self
            .files
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect();
        if *self.loaded_at.read().unwrap_or_else(|p| p.into_inner()) == now {
            return;
        }
        match self.read_all() {
            Ok(()) => tracing::info!(files = self.files.len(), "API keys reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "API key files changed but cannot be used; keeping the keys loaded before")
            }
        }
    }

    /// The key's holder. The lookup compares digests of the key, so its timing says nothing about
    /// the key itself.
    pub fn verify(&self, key: &str) -> Option<KeyHolder> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_digest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_verifies_and_others_do_not() {
        let (key, entry) = generate("onboarding", &[Scope::Read, Scope::Write]);
        assert!(key.starts_with(PREFIX) && key.len() == PREFIX.len() + 43);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        std::fs::write(&path, serde_yaml::to_string(&vec![entry]).unwrap()).unwrap();
        let keys = ApiKeys::load(std::slice::from_ref(&path)).unwrap();
        let holder = keys.verify(&key).unwrap();
        assert_eq!(&*holder.client, "onboarding");
        assert!(holder.scopes.has(Scope::Write) && !holder.scopes.has(Scope::Status));
        assert!(keys.verify("kyb_wrong").is_none());
        assert!(keys.verify(&key[..key.len() - 1]).is_none());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let p = Path::new("k.yaml");
        let e = parse(p, "- {client: a, sha256: zz, scopes: []}").unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
        let digest = "0".repeat(64);
        let e = parse(
            p,
            &format!("- {{client: a, sha256: {digest}, scopes: [admin]}}"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown scope \"admin\""), "{e}");
        assert!(parse(p, "").unwrap().is_empty());
    }
}
