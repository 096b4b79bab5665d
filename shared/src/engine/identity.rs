//! Who is calling: tenant ids and API-key hashes. A raw API key never leaves this module: it is
//! hashed on arrival and only the hash is looked up, stored or logged.

use std::fmt;

use sha2::{Digest, Sha256};

/// Longest tenant id, in bytes: the id is the key of the tenant's state item, which must stay
/// under 1 KB.
pub const MAX_TENANT_ID: usize = 64;

/// SHA-256 of an API key. `Debug` and `Display` show only a short prefix, enough to correlate
/// log lines but useless for guessing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyHash([u8; 32]);

impl ApiKeyHash {
    pub fn of(raw_key: &str) -> ApiKeyHash {
        ApiKeyHash(Sha256::digest(raw_key.as_bytes()).into())
    }

    /// Parses 64 hex digits (as stored in policy files and tables).
    pub fn from_hex(s: &str) -> Option<ApiKeyHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(ApiKeyHash(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyHash({self})")
    }
}

impl fmt::Display for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", hex::encode(&self.0[..4]))
    }
}

/// Checks a tenant id: 1 to `MAX_TENANT_ID` bytes, printable, no whitespace.
pub fn validate_tenant_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_TENANT_ID {
        return Err(format!(
            "tenant id must be 1 to {MAX_TENANT_ID} bytes, got {}",
            id.len()
        ));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("tenant id {id:?} contains whitespace or control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_hex_and_display_is_short() {
        let h = ApiKeyHash::of("abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.to_string(), "ba7816bf…");
        assert_eq!(ApiKeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ApiKeyHash::from_hex("zz"), None);
    }

    #[test]
    fn tenant_ids() {
        assert!(validate_tenant_id("acme-corp").is_ok());
        assert!(validate_tenant_id("").is_err());
        assert!(validate_tenant_id("a b").is_err());
        assert!(validate_tenant_id(&"x".repeat(MAX_TENANT_ID + 1)).is_err());
    }
}
