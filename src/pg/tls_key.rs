//! Encrypted PKCS#8 client keys (`-----BEGIN ENCRYPTED PRIVATE KEY-----`), unlocked with
//! `ssl_client_password`. Errors never include key material or the passphrase.

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::pg::error::PgError;
use crate::secret::Secret;

/// Decrypts a normalized PEM text holding an encrypted PKCS#8 key with `password`.
pub fn decrypt_pkcs8(
    pem: &str,
    password: Option<&Secret>,
) -> Result<PrivateKeyDer<'static>, PgError> {
    let Some(password) = password.filter(|password| !password.is_empty()) else {
        return Err(PgError::Config {
            key: "ssl_client_password",
            detail: "ssl_client_key is encrypted; set ssl_client_password to its passphrase".into(),
        });
    };
    let start = pem
        .find("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        .unwrap_or_default();
    let unreadable = || PgError::Config {
        key: "ssl_client_key",
        detail: "the encrypted private key is not valid PEM/PKCS#8".into(),
    };
    let (label, document) = pkcs8::Document::from_pem(&pem[start..]).map_err(|_| unreadable())?;
    if label != "ENCRYPTED PRIVATE KEY" {
        return Err(unreadable());
    }
    let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(document.as_bytes())
        .map_err(|_| unreadable())?;
    let decrypted = info
        .decrypt(password.expose().as_bytes())
        .map_err(|_| PgError::Config {
            key: "ssl_client_password",
            detail: "could not decrypt ssl_client_key: wrong passphrase, or an encryption scheme other than PBES2 (PBKDF2/scrypt with AES)".into(),
        })?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        decrypted.as_bytes().to_vec(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway P-256 test key, encrypted with `openssl pkcs8 -topk8 -v2 aes-256-cbc`
    /// and the passphrase `fixture-pass`; newlines flattened to spaces as UIs do. The expected
    /// digest is `openssl pkcs8 -topk8 -nocrypt -outform DER` of the plain key, hashed.
    const ENCRYPTED: &str = "-----BEGIN ENCRYPTED PRIVATE KEY----- MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAjuBzLZ129+KQICCAAw DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEND8ku43ZuCsst7bqqOrp8AEgZAF vQTZF2aj7qzA4xNW6WL56QzYWqmmu8LJh3130GLHNS8ucqzN8oO4blRJMjnQNdJ9 4LVvgyv8xwYYN57zkg8wFV6YUl7NwdvPa19a+pb2OkOZ+XjLYgF3eIP+mFKsHvZs o4rz0HJYJH42B3Pi5D4Xdf7/KZJUv8xwWbG6WIhQuduurO724Z9vHl25Zf+em1k= -----END ENCRYPTED PRIVATE KEY-----";

    fn normalized() -> String {
        crate::pg::tls::normalize_pem(ENCRYPTED)
    }

    #[test]
    fn decrypts_with_the_right_passphrase() {
        use sha2::Digest;
        let key = decrypt_pkcs8(&normalized(), Some(&Secret::new("fixture-pass"))).unwrap();
        let PrivateKeyDer::Pkcs8(der) = key else {
            panic!("expected PKCS#8");
        };
        let digest: String = sha2::Sha256::digest(der.secret_pkcs8_der())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            "441d52e1c097fd914fa49cb4e838af80049baba00054108bafe3a071f22a963a"
        );
    }

    #[test]
    fn a_wrong_or_missing_passphrase_is_a_config_error_without_secrets() {
        let wrong = decrypt_pkcs8(&normalized(), Some(&Secret::new("not-it"))).unwrap_err();
        assert!(wrong.to_string().contains("wrong passphrase"), "{wrong}");
        assert!(!wrong.to_string().contains("not-it"));
        let missing = decrypt_pkcs8(&normalized(), None).unwrap_err();
        assert!(
            missing.to_string().contains("ssl_client_password"),
            "{missing}"
        );
    }
}
