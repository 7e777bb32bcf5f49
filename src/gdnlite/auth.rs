//! Authentication: API keys, and HS256 JWTs issued by `POST /_open/auth`.
//!
//! The JWT signing key is derived from the API key, so tokens stay valid across a restart with
//! the same flags. HMAC is written out over `sha2` (RFC 2104) rather than pulling in a JWT crate.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// How long an issued token is valid.
pub const TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// The credentials gdnlite accepts.
#[derive(Debug, Clone)]
pub struct Credentials {
    api_key: Secret,
    login: Option<(String, Secret)>,
    signing_key: [u8; 32],
}

/// The outcome of checking an `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthCheck {
    /// The header carries the API key or a valid token.
    Allowed,
    /// No header, an unknown scheme, a wrong key or an invalid or expired token.
    Denied,
}

impl Credentials {
    /// Credentials for one API key and an optional email/password login.
    pub fn new(api_key: Secret, login: Option<(String, Secret)>) -> Credentials {
        let mut hasher = Sha256::new();
        hasher.update(b"gdnlite-jwt-signing-key\0");
        hasher.update(api_key.expose().as_bytes());
        let signing_key: [u8; 32] = hasher.finalize().into();
        Credentials {
            api_key,
            login,
            signing_key,
        }
    }

    /// Checks an `Authorization` header value (`apikey <key>`, `bearer <jwt>`; scheme
    /// case-insensitive).
    pub fn check(&self, header: Option<&[u8]>, now_secs: u64) -> AuthCheck {
        let Some(header) = header.and_then(|h| std::str::from_utf8(h).ok()) else {
            return AuthCheck::Denied;
        };
        let (scheme, value) = header.trim().split_once(' ').unwrap_or((header, ""));
        let value = value.trim();
        let ok = match scheme.to_ascii_lowercase().as_str() {
            "apikey" => constant_time_eq(value.as_bytes(), self.api_key.expose().as_bytes()),
            "bearer" => self.verify_token(value, now_secs),
            _ => false,
        };
        if ok {
            AuthCheck::Allowed
        } else {
            AuthCheck::Denied
        }
    }

    /// Whether `email`/`password` match the configured login.
    pub fn login_matches(&self, email: &str, password: &str) -> bool {
        match &self.login {
            Some((e, p)) => {
                constant_time_eq(e.as_bytes(), email.as_bytes())
                    & constant_time_eq(p.expose().as_bytes(), password.as_bytes())
            }
            None => false,
        }
    }

    /// Issues an HS256 JWT for `tenant`, valid for [`TOKEN_LIFETIME_SECS`].
    pub fn issue_token(&self, tenant: &str, user: &str, now_secs: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": "gdnlite",
            "tenant": tenant,
            "preferred_username": user,
            "iat": now_secs,
            "exp": now_secs + TOKEN_LIFETIME_SECS,
        });
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let signature =
            URL_SAFE_NO_PAD.encode(hmac_sha256(&self.signing_key, signing_input.as_bytes()));
        format!("{signing_input}.{signature}")
    }

    fn verify_token(&self, token: &str, now_secs: u64) -> bool {
        let mut parts = token.rsplitn(2, '.');
        let (Some(signature), Some(signing_input)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        let expected = hmac_sha256(&self.signing_key, signing_input.as_bytes());
        if !constant_time_eq(&signature, &expected) {
            return false;
        }
        let Some((header, payload)) = signing_input.split_once('.') else {
            return false;
        };
        let header_ok = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
            .is_some_and(|h| h["alg"] == "HS256");
        let exp = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
            .and_then(|p| p["exp"].as_u64());
        header_ok && exp.is_some_and(|exp| exp > now_secs)
    }
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        let digest: [u8; 32] = Sha256::digest(key).into();
        block[..32].copy_from_slice(&digest);
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let inner: [u8; 32] = inner.finalize().into();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc_4231_vectors() {
        // Test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn api_keys_and_tokens() {
        let creds = Credentials::new(Secret::new("k1"), Some(("a@b.c".into(), Secret::new("pw"))));
        assert_eq!(creds.check(Some(b"apikey k1"), 0), AuthCheck::Allowed);
        assert_eq!(creds.check(Some(b"ApiKey k1"), 0), AuthCheck::Allowed);
        assert_eq!(creds.check(Some(b"apikey k2"), 0), AuthCheck::Denied);
        assert_eq!(creds.check(Some(b"k1"), 0), AuthCheck::Denied);
        assert_eq!(creds.check(None, 0), AuthCheck::Denied);
        assert_eq!(creds.check(Some(b"\xff\xfe"), 0), AuthCheck::Denied);
        let token = creds.issue_token("t", "root", 1000);
        assert_eq!(
            creds.check(Some(format!("bearer {token}").as_bytes()), 1001),
            AuthCheck::Allowed
        );
        assert_eq!(
            creds.check(Some(format!("Bearer {token}").as_bytes()), 1001),
            AuthCheck::Allowed
        );
        let expired = 1000 + TOKEN_LIFETIME_SECS;
        assert_eq!(
            creds.check(Some(format!("bearer {token}").as_bytes()), expired),
            AuthCheck::Denied
        );
        let tampered = format!("bearer {}x", token);
        assert_eq!(
            creds.check(Some(tampered.as_bytes()), 1001),
            AuthCheck::Denied
        );
        let other = Credentials::new(Secret::new("k2"), None);
        assert_eq!(
            other.check(Some(format!("bearer {token}").as_bytes()), 1001),
            AuthCheck::Denied
        );
        assert!(creds.login_matches("a@b.c", "pw"));
        assert!(!creds.login_matches("a@b.c", "px"));
        assert!(!other.login_matches("a@b.c", "pw"));
    }
}
