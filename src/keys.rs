//! Key files, read one way for every kind of key: the unsubscribe link keys,
//! the data keys and the subject-ref key.
//!
//! Two formats. A key ring is `key-id=base64-key` lines, whose first key
//! signs or encrypts new data while every listed key still verifies or
//! decrypts, so keys rotate by adding a new first line. A single key is one
//! base64 line. In both, `#` starts a comment and keys hold at least 32
//! bytes. A kind of key given no file is kept in the state directory:
//! created there once, then read at every start, because a key made afresh
//! at each start would make stored values unreadable, links dead and erased
//! ids unrecognised after a restart.
//!
//! Key bytes never appear in `Debug` output, errors or logs.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::Path,
    sync::Arc,
};

use anyhow::{Context as _, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::domain::SubjectId;

/// The shortest key any file may hold.
const MIN_KEY_BYTES: usize = 32;

/// The key id of a key made at random for this process.
const RANDOM_KEY_ID: &str = "ephemeral";

/// A kind of key that comes from a file: the one given, or its own file in
/// the state directory.
pub trait KeyFile: Sized {
    /// What the keys are, for the log line that names their file.
    const WHAT: &'static str;

    /// Its file's name in the state directory.
    const STATE_FILE: &'static str;

    /// Parses the text of a key file; `origin` names it in errors.
    fn parse(text: &str, origin: &str) -> anyhow::Result<Self>;

    /// The text of a new file holding one fresh random key.
    fn new_file() -> String;

    fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The given file's keys, or else the state directory's file, created
    /// there on first start. The log names the file either way.
    fn load_or_create(file: Option<&Path>, state_dir: &Path) -> anyhow::Result<Self> {
        let (path, created) = match file {
            Some(file) => (file.to_path_buf(), false),
            None => {
                let path = state_dir.join(Self::STATE_FILE);
                let created = create_key_file(state_dir, &path, &Self::new_file())?;
                (path, created)
            }
        };
        let keys = Self::load(&path)?;
        let file = path.display();
        if created {
            tracing::info!(%file, "{} created in {file}; every start reuses it", Self::WHAT);
        } else {
            tracing::info!(%file, "{} read from {file}", Self::WHAT);
        }
        Ok(keys)
    }
}

/// Creates `path` holding `text` (mode 0600) unless it exists, and `dir`
/// (mode 0700) if needed. Returns whether this call created it. Servers
/// starting at once on one directory all end up reading the same key, and
/// none reads a half-written file: the key is written under a temporary
/// name and linked into place, which fails if another got there first.
pub fn create_key_file(dir: &Path, path: &Path, text: &str) -> anyhow::Result<bool> {
    let hint = "set --state-dir to a directory this user can write, or give the key files";
    ensure_private_dir(dir).with_context(|| {
        format!(
            "cannot keep keys in the state directory {} ({hint})",
            dir.display()
        )
    })?;
    if path.exists() {
        return Ok(false);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
    // Unique per call: servers in one process (the tests) start at once too.
    let temporary = dir.join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| fs::hard_link(&temporary, path));
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot create {} ({hint})", path.display())),
    }
}

/// Creates `dir` with mode 0700, or narrows an existing one of ours to
/// 0700. As root the private cluster's `pgdata` inside runs as the
/// `postgres` user, who must still pass through: 0711 then.
fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    let meta = fs::metadata(dir)?;
    let me = nix::unistd::geteuid();
    let mode = if me.is_root() && dir.join("pgdata").is_dir() {
        0o711
    } else {
        0o700
    };
    if meta.uid() == me.as_raw() && meta.mode() & 0o777 != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// A new key ring file: one random key, under an id that says when it was
/// made, so a later rotation can add its own id above it.
pub fn new_ring_file(what: &str) -> String {
    let kid = chrono::Utc::now().format("k%Y%m%d");
    format!(
        "# consentd {what}, created by consentd; keep it secret.\n\
         # To rotate, add a new `key-id=base64-key` line above this one.\n\
         {kid}={}\n",
        STANDARD.encode(Secret::random().expose())
    )
}

/// Key bytes, which `Debug` never shows.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    fn random() -> Self {
        let mut key = [0u8; MIN_KEY_BYTES];
        getrandom::fill(&mut key).expect("the OS random source works");
        Self(Arc::from(key.as_slice()))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Keys by id from `key-id=base64-key` lines. The first is current: it signs
/// or encrypts new data; all of them verify or decrypt.
#[derive(Clone, Debug)]
pub struct KeyRing {
    current: String,
    keys: BTreeMap<String, Secret>,
}

impl KeyRing {
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let mut current = None;
        let mut keys = BTreeMap::new();
        for (index, line) in meaningful_lines(text) {
            let at = format!("{origin}:{}", index + 1);
            let Some((kid, key)) = line.split_once('=') else {
                bail!("{at}: expected `key-id=base64-key`");
            };
            let kid = kid.trim();
            if kid.is_empty()
                || kid.len() > 32
                || !kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                bail!("{at}: the key id must be 1-32 characters of A-Z, a-z, 0-9, '-' and '_'");
            }
            let key = decode_key(key, &at)?;
            if keys.insert(kid.to_string(), key).is_some() {
                bail!("{at}: duplicate key id `{kid}`");
            }
            current.get_or_insert_with(|| kid.to_string());
        }
        let current = current.with_context(|| format!("{origin}: no keys"))?;
        Ok(Self { current, keys })
    }

    /// One random key, under the id `ephemeral`.
    pub fn random() -> Self {
        Self {
            current: RANDOM_KEY_ID.into(),
            keys: BTreeMap::from([(RANDOM_KEY_ID.to_string(), Secret::random())]),
        }
    }

    /// The id of the key that signs or encrypts new data.
    pub fn current(&self) -> &str {
        &self.current
    }

    pub fn get(&self, kid: &str) -> Option<&Secret> {
        self.keys.get(kid)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Secret)> {
        self.keys.iter().map(|(kid, key)| (kid.as_str(), key))
    }
}

/// The key that turns subject ids into pseudonyms and keyed hashes: one
/// base64 line. Each use derives under its own domain tag, so that values
/// derived for one use cannot be matched with another's.
///
/// The tag goes into the MAC length-prefixed: with the tag simply put in
/// front of the data, the trace ref of the id `pseudonym:C-1` (tag "") was
/// the pseudonym derivation of `C-1`, and any caller may pick an id.
#[derive(Clone, Debug)]
pub struct SubjectKey(Secret);

impl SubjectKey {
    /// HMAC-SHA256 of the id under `domain`.
    pub fn derive(&self, domain: &str, subject: &SubjectId) -> Vec<u8> {
        self.derive_bytes(domain, subject.as_str().as_bytes())
    }

    /// Whether `tag` is [`derive_bytes`](Self::derive_bytes)'s answer for
    /// `data` under `domain`, compared in constant time. For values that are
    /// not subject ids, such as the preference page's CSRF tokens.
    pub fn verify(&self, domain: &str, data: &[u8], tag: &[u8]) -> bool {
        self.mac(domain, data).verify_slice(tag).is_ok()
    }

    /// [`derive`](Self::derive) for any bytes.
    pub fn derive_bytes(&self, domain: &str, data: &[u8]) -> Vec<u8> {
        self.mac(domain, data).finalize().into_bytes().to_vec()
    }

    /// The suppression-list hash as it was made before domain tags were
    /// length-prefixed: HMAC over `erasure:` and the id. Kept so that ids
    /// erased before still find their refusals. It cannot meet any
    /// [`derive`](Self::derive) value: those MAC inputs start with the
    /// tag's length, a zero byte, and this one with `e`.
    pub fn legacy_erasure_hash(&self, subject: &SubjectId) -> Vec<u8> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.0.expose()).expect("HMAC takes any key length");
        mac.update(b"erasure:");
        mac.update(subject.as_str().as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn mac(&self, domain: &str, data: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.0.expose()).expect("HMAC takes any key length");
        let length = u32::try_from(domain.len()).expect("a domain tag under 4 GiB");
        mac.update(&length.to_be_bytes());
        mac.update(domain.as_bytes());
        mac.update(data);
        mac
    }
}

impl KeyFile for SubjectKey {
    const WHAT: &'static str = "subject-ref key (trace refs, erased ids)";
    const STATE_FILE: &'static str = "subject-ref.key";

    fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let (index, line) = meaningful_lines(text)
            .next()
            .with_context(|| format!("{origin}: no key"))?;
        Ok(Self(decode_key(line, &format!("{origin}:{}", index + 1))?))
    }

    fn new_file() -> String {
        format!(
            "# consentd subject-ref key, created by consentd; keep it secret.\n{}\n",
            STANDARD.encode(Secret::random().expose())
        )
    }
}

/// Lowercase hex, for derived values shown as text.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lines that are neither blank nor comments, trimmed, with their index.
fn meaningful_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

fn decode_key(text: &str, at: &str) -> anyhow::Result<Secret> {
    let key = STANDARD
        .decode(text.trim())
        .with_context(|| format!("{at}: the key is not valid base64"))?;
    if key.len() < MIN_KEY_BYTES {
        bail!(
            "{at}: the key must be at least {MIN_KEY_BYTES} bytes (got {})",
            key.len()
        );
    }
    Ok(Secret(Arc::from(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const K2: &str = "k2=ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn a_key_ring_is_led_by_its_first_key_and_holds_every_key() {
        let ring = KeyRing::parse(&format!("# rotated\n{K2}\n\n{K1}\n"), "keys").unwrap();
        assert_eq!(ring.current(), "k2");
        assert_eq!(
            ring.iter().map(|(kid, _)| kid).collect::<Vec<_>>(),
            ["k1", "k2"]
        );
        assert_eq!(
            ring.get("k1").unwrap().expose(),
            b"0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn key_ring_mistakes_are_reported_with_their_line() {
        let error = |text: &str| KeyRing::parse(text, "keys.txt").unwrap_err().to_string();
        assert_eq!(
            error("# comment\nk1=c2hvcnQ="),
            "keys.txt:2: the key must be at least 32 bytes (got 5)"
        );
        assert_eq!(error(""), "keys.txt: no keys");
        assert_eq!(
            error("just-base64"),
            "keys.txt:1: expected `key-id=base64-key`"
        );
        assert!(error("k 1=abc").starts_with("keys.txt:1: the key id must be"));
        assert_eq!(error("k1=!!!"), "keys.txt:1: the key is not valid base64");
        assert_eq!(
            error(&format!("{K1}\n{K1}")),
            "keys.txt:2: duplicate key id `k1`"
        );
    }

    #[test]
    fn a_single_key_file_takes_its_first_base64_line() {
        let key = SubjectKey::parse(
            "# ref key\n\nMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
            "ref",
        )
        .unwrap();
        assert_eq!(key.0.expose(), b"0123456789abcdef0123456789abcdef");
        let error = |text: &str| SubjectKey::parse(text, "ref").unwrap_err().to_string();
        assert_eq!(error("# nothing\n"), "ref: no key");
        assert_eq!(
            error("c2hvcnQ="),
            "ref:1: the key must be at least 32 bytes (got 5)"
        );
    }

    #[test]
    fn random_keys_differ_and_are_long_enough() {
        let (a, b) = (KeyRing::random(), KeyRing::random());
        assert_eq!(a.current(), "ephemeral");
        let (a, b) = (a.get("ephemeral").unwrap(), b.get("ephemeral").unwrap());
        assert_eq!(a.expose().len(), MIN_KEY_BYTES);
        assert_ne!(a, b);
    }

    #[test]
    fn debug_output_never_shows_key_bytes() {
        let ring = KeyRing::parse(K1, "keys").unwrap();
        let subject = SubjectKey::parse(K1.trim_start_matches("k1="), "ref").unwrap();
        for shown in [format!("{ring:?}"), format!("{subject:?}")] {
            assert!(!shown.contains("MDEy"), "{shown}");
            assert!(!shown.contains("0123456789"), "{shown}");
            assert!(!shown.contains("48, 49"), "{shown}");
            assert!(shown.contains("32 bytes"), "{shown}");
        }
        assert!(format!("{ring:?}").contains("k1"), "key ids may show");
    }

    #[test]
    fn derivations_under_different_domains_differ() {
        let key = SubjectKey(Secret(Arc::from([7u8; 32].as_slice())));
        let id = SubjectId::parse("C-1042").unwrap();
        assert_eq!(key.derive("a:", &id), key.derive("a:", &id));
        assert_ne!(key.derive("a:", &id), key.derive("b:", &id));
        let other = SubjectKey(Secret(Arc::from([8u8; 32].as_slice())));
        assert_ne!(key.derive("a:", &id), other.derive("a:", &id));
    }

    #[test]
    fn a_domain_tag_cannot_be_moved_into_the_data() {
        let key = SubjectKey(Secret(Arc::from([7u8; 32].as_slice())));
        let id = |text: &str| SubjectId::parse(text).unwrap();
        // Without the length prefix these were one MAC input.
        assert_ne!(
            key.derive("", &id("pseudonym:C-1")),
            key.derive("pseudonym:", &id("C-1"))
        );
        assert_ne!(key.derive("a", &id("bc")), key.derive("ab", &id("c")));
        assert_ne!(
            key.derive("", &id("erasure:C-1")),
            key.legacy_erasure_hash(&id("C-1"))
        );
    }

    /// A directory of its own under the system temp dir, removed at the end.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("consentd-keys-{}", uuid::Uuid::new_v4()));
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn derived(key: &SubjectKey) -> Vec<u8> {
        key.derive("test:", &SubjectId::parse("C-1").unwrap())
    }

    #[test]
    fn a_key_without_a_file_is_created_once_private_and_then_reused() {
        let temp = TempDir::new();
        let state = temp.0.join("state");
        let first = SubjectKey::load_or_create(None, &state).unwrap();
        let file = state.join(SubjectKey::STATE_FILE);
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        let again = SubjectKey::load_or_create(None, &state).unwrap();
        assert_eq!(derived(&first), derived(&again));
    }

    #[test]
    fn a_given_key_file_wins_and_the_state_dir_is_left_alone() {
        let temp = TempDir::new();
        let given = temp.0.join("given.key");
        fs::write(&given, K1.trim_start_matches("k1=")).unwrap();
        let state = temp.0.join("state");
        let key = SubjectKey::load_or_create(Some(&given), &state).unwrap();
        assert_eq!(key.0.expose(), b"0123456789abcdef0123456789abcdef");
        assert!(!state.exists(), "nothing was created in the state dir");
    }

    #[test]
    fn a_state_dir_that_cannot_be_made_is_refused_with_the_reason() {
        let temp = TempDir::new();
        // Root may write anywhere, but nobody can make a directory inside a file.
        let blocker = temp.0.join("a-file");
        fs::write(&blocker, "").unwrap();
        let state = blocker.join("state");
        let error = format!(
            "{:#}",
            SubjectKey::load_or_create(None, &state).unwrap_err()
        );
        assert!(
            error.starts_with(&format!(
                "cannot keep keys in the state directory {}",
                state.display()
            )),
            "{error}"
        );
        assert!(error.contains("--state-dir"), "{error}");
    }

    #[test]
    fn servers_starting_at_once_on_one_state_dir_agree_on_one_key() {
        let temp = TempDir::new();
        let state = temp.0.join("state");
        let keys: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let starts: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| SubjectKey::load_or_create(None, &state).unwrap()))
                .collect();
            starts
                .into_iter()
                .map(|s| derived(&s.join().unwrap()))
                .collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]));
    }

    #[test]
    fn a_new_ring_file_holds_one_key_under_a_dated_id() {
        let ring = KeyRing::parse(&new_ring_file("test keys"), "new").unwrap();
        let today = chrono::Utc::now().format("k%Y%m%d").to_string();
        assert_eq!(ring.current(), today);
        assert_eq!(ring.iter().count(), 1);
        assert_eq!(ring.get(&today).unwrap().expose().len(), MIN_KEY_BYTES);
    }
}
