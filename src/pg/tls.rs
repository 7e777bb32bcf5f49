//! TLS for PostgreSQL connections, with rustls.
//!
//! The old connector took certificates and keys as PEM *contents* in its config (not paths), and
//! configuration UIs often turned the newlines of those bodies into spaces; [`normalize_pem`]
//! restores them. `sslmode` follows libpq: `disable`, `prefer` (TLS if offered, no verification),
//! `require` (TLS, no verification — unless a root CA is configured, then like `verify-ca`, as
//! libpq does), `verify-ca` (chain checked), `verify-full` (chain and host name checked).
//!
//! SCRAM channel binding (`tls-server-end-point`, RFC 5929) needs the hash of the server's
//! certificate computed with the hash of its signature algorithm; [`channel_binding_hash`]
//! derives it from the certificate's DER.

use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::Digest;

use crate::pg::error::PgError;
use crate::secret::Secret;

/// How much TLS a connection demands, with libpq's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it; do not verify the certificate.
    #[default]
    Prefer,
    /// Demand TLS; verify the chain only when a root CA is configured.
    Require,
    /// Demand TLS and a certificate chain to the configured (or public) roots.
    VerifyCa,
    /// Demand TLS, the chain, and that the certificate names the host.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = PgError;

    fn from_str(text: &str) -> Result<SslMode, PgError> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(PgError::Config {
                key: "sslmode",
                detail: format!(
                    "unknown value {other:?}; use one of disable, prefer, require, verify-ca, verify-full"
                ),
            }),
        }
    }
}

impl SslMode {
    /// libpq's name of the mode (`verify-full`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a server without TLS must be refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// PEM contents for TLS, as the old connector's `ssl_*` config keys carry them.
#[derive(Debug, Clone, Default)]
pub struct TlsMaterial {
    /// `ssl_root_ca_cert`: the CA certificate(s) that signed the server's certificate.
    pub root_ca_pem: Option<String>,
    /// `ssl_client_certificate`: our certificate for client-certificate authentication.
    pub client_cert_pem: Option<String>,
    /// `ssl_client_key`: the private key of that certificate.
    pub client_key_pem: Option<Secret>,
    /// `ssl_client_password`: passphrase of an encrypted (PKCS#8) client key.
    pub client_key_password: Option<Secret>,
}

/// Restores a PEM text whose newlines were replaced by spaces (or that has stray indentation).
///
/// Each `-----BEGIN X-----` … `-----END X-----` block is rebuilt as header, base64 body without
/// whitespace wrapped at 64 columns, and footer; text outside blocks is dropped.
pub fn normalize_pem(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(begin) = rest.find("-----BEGIN ") {
        let after_begin = &rest[begin + "-----BEGIN ".len()..];
        let Some(label_end) = after_begin.find("-----") else {
            break;
        };
        let label = after_begin[..label_end].trim();
        let body_and_rest = &after_begin[label_end + 5..];
        let footer = format!("-----END {label}-----");
        let Some(footer_at) = body_and_rest.find(&footer) else {
            break;
        };
        let body = &body_and_rest[..footer_at];
        out.push_str(&format!("-----BEGIN {label}-----\n"));
        // Encrypted legacy keys carry "Proc-Type:"/"DEK-Info:" headers; keep them on their lines.
        let mut base64 = String::with_capacity(body.len());
        for token in body.split_whitespace() {
            if token.ends_with(':') || token.contains(':') {
                out.push_str(token);
                out.push(if token.ends_with(':') { ' ' } else { '\n' });
            } else {
                base64.push_str(token);
            }
        }
        for line in base64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str(&footer);
        out.push('\n');
        rest = &body_and_rest[footer_at + footer.len()..];
    }
    out
}

fn parse_certificates(
    pem: &str,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, PgError> {
    let normalized = normalize_pem(pem);
    let certificates: Vec<_> = rustls_pemfile::certs(&mut normalized.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|error| PgError::Config {
            key,
            detail: format!("the PEM certificate could not be read: {error}"),
        })?;
    if certificates.is_empty() {
        return Err(PgError::Config {
            key,
            detail: "no certificate found: expected PEM contents starting with -----BEGIN CERTIFICATE----- (the text itself, not a file path)".into(),
        });
    }
    Ok(certificates)
}

fn parse_private_key(
    pem: &Secret,
    password: Option<&Secret>,
) -> Result<PrivateKeyDer<'static>, PgError> {
    let normalized = normalize_pem(pem.expose());
    if normalized.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return crate::pg::tls_key::decrypt_pkcs8(&normalized, password);
    }
    if normalized.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(PgError::Config {
            key: "ssl_client_key",
            detail: "legacy OpenSSL-encrypted keys are not supported; convert it to encrypted PKCS#8 with `openssl pkcs8 -topk8 -v2 aes-256-cbc -in key.pem`, or to an unencrypted key".into(),
        });
    }
    match rustls_pemfile::private_key(&mut normalized.as_bytes()) {
        Ok(Some(key)) => Ok(key),
        // Never echo the key material or the parser's view of it.
        Ok(None) | Err(_) => Err(PgError::Config {
            key: "ssl_client_key",
            detail: "no private key found: expected PEM contents starting with -----BEGIN PRIVATE KEY----- (or RSA/EC PRIVATE KEY, or ENCRYPTED PRIVATE KEY with ssl_client_password)".into(),
        }),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_config_error(error: rustls::Error) -> PgError {
    PgError::Tls {
        detail: format!("could not set up TLS: {error}"),
    }
}

/// Builds the rustls client configuration for `mode` and the configured PEM material.
pub fn client_config(mode: SslMode, material: &TlsMaterial) -> Result<Arc<ClientConfig>, PgError> {
    let provider = provider();
    let custom_roots = match &material.root_ca_pem {
        Some(pem) if !pem.trim().is_empty() => Some(parse_certificates(pem, "ssl_root_ca_cert")?),
        _ => None,
    };
    let verify_chain = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull)
        || (mode == SslMode::Require && custom_roots.is_some());
    let verifier: Arc<dyn ServerCertVerifier> = if verify_chain {
        let mut roots = RootCertStore::empty();
        match custom_roots {
            Some(certificates) => {
                for certificate in certificates {
                    roots.add(certificate).map_err(|error| PgError::Config {
                        key: "ssl_root_ca_cert",
                        detail: format!("not a usable CA certificate: {error}"),
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|error| PgError::Tls {
                detail: format!("could not build the certificate verifier: {error}"),
            })?;
        Arc::new(Verifier {
            webpki: Some(webpki),
            check_host_name: mode == SslMode::VerifyFull,
            provider: provider.clone(),
        })
    } else {
        Arc::new(Verifier {
            webpki: None,
            check_host_name: false,
            provider: provider.clone(),
        })
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_config_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&material.client_cert_pem, &material.client_key_pem) {
        (Some(cert), Some(key)) if !cert.trim().is_empty() && !key.is_empty() => {
            let chain = parse_certificates(cert, "ssl_client_certificate")?;
            let key = parse_private_key(key, material.client_key_password.as_ref())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| PgError::Config {
                    key: "ssl_client_key",
                    detail: format!("the client key does not fit the client certificate: {error}"),
                })?
        }
        (Some(cert), _) if !cert.trim().is_empty() => return Err(PgError::Config {
            key: "ssl_client_key",
            detail:
                "ssl_client_certificate is set but ssl_client_key is missing; set both or neither"
                    .into(),
        }),
        (_, Some(key)) if !key.is_empty() => return Err(PgError::Config {
            key: "ssl_client_certificate",
            detail:
                "ssl_client_key is set but ssl_client_certificate is missing; set both or neither"
                    .into(),
        }),
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The TLS server name for `host`: an IP address or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, PgError> {
    ServerName::try_from(host.to_owned()).map_err(|_| PgError::Config {
        key: "host",
        detail: format!("{host:?} is neither a valid DNS name nor an IP address for TLS"),
    })
}

/// Certificate checks per `sslmode`: none, the chain only, or the chain and the host name.
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    check_host_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Ok(verified) => Ok(verified),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_host_name => Ok(ServerCertVerified::assertion()),
            Err(error) => Err(error),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Explains a failed TLS handshake in the user's terms, with the fix.
pub fn describe_handshake_error(error: &std::io::Error, host: &str) -> String {
    let text = error.to_string();
    if text.contains("NotValidForName") {
        format!("the server's certificate is not valid for host {host:?}\nHINT: connect with the host name its certificate names, or use sslmode=verify-ca to check only the chain")
    } else if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "the server's certificate is not signed by a trusted CA\nHINT: set ssl_root_ca_cert to the PEM of the CA that signed the server's certificate".to_string()
    } else if text.contains("Expired") || text.contains("NotValidYet") {
        format!("the server's certificate is outside its validity period ({text})")
    } else {
        format!("TLS handshake with {host:?} failed: {text}")
    }
}

/// `tls-server-end-point` channel-binding data: the server certificate's hash, computed with
/// the hash algorithm of its signature (SHA-256 for MD5 and SHA-1), per RFC 5929 §4.1.
/// `None` when the signature algorithm has no single hash (Ed25519, RSA-PSS), as in PostgreSQL.
pub fn channel_binding_hash(certificate_der: &[u8]) -> Option<Vec<u8>> {
    const SHA256_OIDS: [&[u8]; 6] = [
        &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x04], // md5WithRSAEncryption
        &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x05], // sha1WithRSAEncryption
        &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B], // sha256WithRSAEncryption
        &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01],             // ecdsa-with-SHA1
        &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02],       // ecdsa-with-SHA256
        &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0E], // sha224WithRSA: no shorter
    ];
    const SHA384_OIDS: [&[u8]; 2] = [
        &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0C],
        &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03],
    ];
    const SHA512_OIDS: [&[u8]; 2] = [
        &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0D],
        &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x04],
    ];
    let oid = signature_algorithm_oid(certificate_der)?;
    if SHA256_OIDS.contains(&oid) {
        Some(sha2::Sha256::digest(certificate_der).to_vec())
    } else if SHA384_OIDS.contains(&oid) {
        Some(sha2::Sha384::digest(certificate_der).to_vec())
    } else if SHA512_OIDS.contains(&oid) {
        Some(sha2::Sha512::digest(certificate_der).to_vec())
    } else {
        None
    }
}

/// Reads one DER TLV header at `at`: (tag, start of contents, length of contents).
fn der_header(der: &[u8], at: usize) -> Option<(u8, usize, usize)> {
    let tag = *der.get(at)?;
    let first = *der.get(at + 1)?;
    if first < 0x80 {
        return Some((tag, at + 2, usize::from(first)));
    }
    let count = usize::from(first & 0x7F);
    if count == 0 || count > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..count {
        len = (len << 8) | usize::from(*der.get(at + 2 + i)?);
    }
    let start = at + 2 + count;
    (start.checked_add(len)? <= der.len()).then_some((tag, start, len))
}

/// The content bytes of `Certificate.signatureAlgorithm.algorithm` (an OID).
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (tag, certificate, _) = der_header(der, 0)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs_start, tbs_len) = der_header(der, certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, algorithm, _) = der_header(der, tbs_start + tbs_len)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, oid_start, oid_len) = der_header(der, algorithm)?;
    (tag == OID).then(|| &der[oid_start..oid_start + oid_len])
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIUY2J6\nAAAA\n-----END CERTIFICATE-----\n";

    #[test]
    fn pem_with_spaces_for_newlines_is_restored() {
        let flattened = CERT.replace('\n', " ");
        assert_eq!(
            normalize_pem(&flattened),
            "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIUY2J6AAAA\n-----END CERTIFICATE-----\n"
        );
    }

    #[test]
    fn pem_bodies_are_wrapped_at_64_columns_and_multiple_blocks_kept() {
        let body = "A".repeat(100);
        let text = format!(
            "junk -----BEGIN RSA PRIVATE KEY----- {body} -----END RSA PRIVATE KEY----- -----BEGIN CERTIFICATE----- QQ== -----END CERTIFICATE-----"
        );
        let normalized = normalize_pem(&text);
        let lines: Vec<&str> = normalized.lines().collect();
        assert_eq!(lines[0], "-----BEGIN RSA PRIVATE KEY-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2].len(), 36);
        assert_eq!(lines[3], "-----END RSA PRIVATE KEY-----");
        assert_eq!(lines[4], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[5], "QQ==");
    }

    #[test]
    fn a_pem_that_is_not_a_certificate_is_a_config_error() {
        let error = client_config(
            SslMode::VerifyFull,
            &TlsMaterial {
                root_ca_pem: Some("/etc/ssl/ca.pem".into()),
                ..TlsMaterial::default()
            },
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("ssl_root_ca_cert"), "{text}");
        assert!(text.contains("not a file path"), "{text}");
    }

    #[test]
    fn a_client_key_without_certificate_is_refused_without_echoing_it() {
        let error = client_config(
            SslMode::Require,
            &TlsMaterial {
                client_key_pem: Some(Secret::new(
                    "-----BEGIN PRIVATE KEY----- c2VjcmV0 -----END PRIVATE KEY-----",
                )),
                ..TlsMaterial::default()
            },
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("ssl_client_certificate"), "{text}");
        assert!(!text.contains("c2VjcmV0"), "{text}");
    }

    #[test]
    fn sslmode_parses_libpq_names() {
        assert_eq!(
            "verify-full".parse::<SslMode>().unwrap(),
            SslMode::VerifyFull
        );
        assert!("verify_full"
            .parse::<SslMode>()
            .unwrap_err()
            .to_string()
            .contains("verify-ca"));
        assert!(SslMode::Require.requires_tls());
        assert!(!SslMode::Prefer.requires_tls());
    }

    #[test]
    fn channel_binding_uses_the_signature_hash() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let hash = channel_binding_hash(cert.der()).unwrap();
        assert_eq!(hash.len(), 48, "ecdsa-with-SHA384 binds with SHA-384");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(
            channel_binding_hash(cert.der()).unwrap(),
            sha2::Sha256::digest(cert.der()).to_vec()
        );
        assert_eq!(channel_binding_hash(b"\x30\x03\x02\x01\x00"), None);
        assert_eq!(channel_binding_hash(b""), None);
    }
}
