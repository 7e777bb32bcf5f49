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
