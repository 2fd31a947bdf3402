//! The checkpoint signing key: an Ed25519 key in the state directory,
//! created on first use and reused ever after, so that every checkpoint a
//! server writes is signed by the same key.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use ed25519_dalek::SigningKey;

/// The key's file name inside the state directory.
pub const FILE_NAME: &str = "checkpoint-signing.key";

/// Reads `dir/checkpoint-signing.key`, or creates it (mode 0600, the
/// directory 0700) when absent. Returns the key and its path.
pub fn load_or_create(dir: &Path) -> anyhow::Result<(SigningKey, PathBuf)> {
    let path = dir.join(FILE_NAME);
    if !path.exists() {
        create(dir, &path)?;
    }
    Ok((load(&path)?, path))
}

/// A random key for a server that cannot keep one: its checkpoints still
/// verify, under a key id of their own.
pub fn ephemeral() -> SigningKey {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random source works");
    SigningKey::from_bytes(&seed)
}

/// One base64 line holding the 32-byte seed; `#` comments.
fn load(path: &Path) -> anyhow::Result<SigningKey> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .with_context(|| format!("{}: no key", path.display()))?;
    let seed: [u8; 32] = STANDARD
        .decode(line)
        .with_context(|| format!("{}: the key is not valid base64", path.display()))?
        .try_into()
        .map_err(|_| anyhow::anyhow!("{}: the key must be 32 bytes", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes a new key the way every key of the state directory is written
/// (`keys::create_key_file`): under a unique temporary name, linked into
/// place, so servers starting at once agree on one key.
fn create(dir: &Path, path: &Path) -> anyhow::Result<()> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no random key: {e}"))?;
    let text = format!(
        "# consentd checkpoint signing key (Ed25519 seed); keep it secret\n{}\n",
        STANDARD.encode(seed)
    );
    crate::keys::create_key_file(dir, path, &text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_key_is_created_once_with_mode_0600_and_then_reused() {
        let dir = std::env::temp_dir().join(format!("consentd-key-test-{}", uuid::Uuid::new_v4()));
        let (first, path) = load_or_create(&dir).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, _) = load_or_create(&dir).unwrap();
        assert_eq!(first.to_bytes(), again.to_bytes());
        fs::remove_dir_all(&dir).unwrap();
    }
}
