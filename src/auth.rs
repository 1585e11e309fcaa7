//! Bearer-key authentication. Keys are configured as `SCOPE:SHA256HEX`; the
//! server keeps only the hashes and compares the hash of the presented key.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::UserId;

/// What a key may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every user.
    Admin,
    /// One user's contexts only.
    User(UserId),
}

impl Scope {
    /// Whether this caller may see or change `user`'s contexts.
    pub fn allows(&self, user: UserId) -> bool {
        match self {
            Scope::Admin => true,
            Scope::User(own) => *own == user,
        }
    }

    /// The user a list or search is confined to, given the one asked for.
    /// `Err` when a user key asks for somebody else.
    pub fn confine(&self, requested: Option<UserId>) -> Result<Option<UserId>, OutOfScope> {
        match (self, requested) {
            (Scope::Admin, r) => Ok(r),
            (Scope::User(own), None) => Ok(Some(*own)),
            (Scope::User(own), Some(r)) if *own == r => Ok(Some(r)),
            (Scope::User(_), Some(_)) => Err(OutOfScope),
        }
    }
}

/// A user key asked for another user's contexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfScope;

#[derive(Clone, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], Scope>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} keys)", self.by_hash.len())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KeyParseError {
    #[error("entry {0} is not SCOPE:SHA256HEX (SCOPE is admin or a user UUID)")]
    Shape(usize),
    #[error("entry {0}: scope must be admin or a user UUID")]
    Scope(usize),
    #[error("entry {0}: hash must be 64 hex characters (sha256 of the key)")]
    Hash(usize),
}

impl ApiKeys {
    /// Entries separated by commas, whitespace or newlines (so a secrets file
    /// may hold one per line). Lines starting with `#` are comments.
    pub fn parse(text: &str) -> Result<Self, KeyParseError> {
        let mut by_hash = HashMap::new();
        let entries = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|e| !e.is_empty());
        for (i, entry) in entries.enumerate() {
            let n = i + 1;
            let (scope, hash) = entry.rsplit_once(':').ok_or(KeyParseError::Shape(n))?;
            let scope = if scope.eq_ignore_ascii_case("admin") {
                Scope::Admin
            } else {
                Scope::User(UserId(
                    Uuid::parse_str(scope).map_err(|_| KeyParseError::Scope(n))?,
                ))
            };
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(hash, &mut bytes).map_err(|_| KeyParseError::Hash(n))?;
            by_hash.insert(bytes, scope);
        }
        Ok(Self { by_hash })
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn scopes_summary(&self) -> String {
        let admins = self
            .by_hash
            .values()
            .filter(|s| **s == Scope::Admin)
            .count();
        format!("{admins} admin, {} user", self.len() - admins)
    }

    /// The scope of a presented key, if it is one of ours.
    pub fn lookup(&self, presented: &str) -> Option<Scope> {
        self.by_hash.get(&hash_key(presented)).copied()
    }
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The config entry for a key: what an operator puts in API_KEYS.
pub fn key_entry(scope: &str, key: &str) -> String {
    format!("{scope}:{}", hex::encode(hash_key(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_and_user_keys_resolve_to_their_scopes() {
        let user = Uuid::now_v7();
        let text = format!(
            "{}\n# a comment\n{}",
            key_entry("admin", "root-key"),
            key_entry(&user.to_string(), "u-key")
        );
        let keys = ApiKeys::parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.lookup("root-key"), Some(Scope::Admin));
        assert_eq!(keys.lookup("u-key"), Some(Scope::User(UserId(user))));
        assert_eq!(keys.lookup("other"), None);
    }

    #[test]
    fn malformed_entries_are_rejected_with_their_position() {
        assert_eq!(
            ApiKeys::parse("admin").unwrap_err(),
            KeyParseError::Shape(1)
        );
        assert_eq!(
            ApiKeys::parse(&format!(
                "{},bob:{}",
                key_entry("admin", "k"),
                "ab".repeat(32)
            ))
            .unwrap_err(),
            KeyParseError::Scope(2)
        );
        assert_eq!(
            ApiKeys::parse("admin:xyz").unwrap_err(),
            KeyParseError::Hash(1)
        );
    }

    #[test]
    fn a_user_scope_confines_lists_to_itself() {
        let me = UserId(Uuid::now_v7());
        let other = UserId(Uuid::now_v7());
        let s = Scope::User(me);
        assert_eq!(s.confine(None), Ok(Some(me)));
        assert_eq!(s.confine(Some(me)), Ok(Some(me)));
        assert!(s.confine(Some(other)).is_err());
        assert_eq!(Scope::Admin.confine(None), Ok(None));
        assert!(Scope::Admin.allows(other) && !s.allows(other));
    }
}
