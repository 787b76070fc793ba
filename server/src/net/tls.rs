//! The TLS certificate and key every port presents (`--tls-cert-file`, `--tls-key-file`, PEM),
//! read once at start-up: a file that cannot be read, holds no certificate or key, or a key that
//! does not belong to the certificate fails start-up naming the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} file {path}: {source}")]
    Unreadable {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} file {path} holds no PEM {what}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    NoPem {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
        detail: Option<String>,
    },
    #[error(
        "the key in --tls-key-file {key} cannot be used with the certificate in --tls-cert-file {cert}: {source}"
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The server configuration for the certificate chain in `cert` and the private key in `key`,
/// with the ring provider and rustls' safe defaults (TLS 1.2 and 1.3, no post-quantum key
/// exchange); ALPN is set per port.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read("--tls-cert-file", cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| no_pem("--tls-cert-file", cert, "certificate", Some(error)))?;
    if chain.is_empty() {
        return Err(no_pem("--tls-cert-file", cert, "certificate", None));
    }
    let key_pem = read("--tls-key-file", key)?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| no_pem("--tls-key-file", key, "private key", Some(error)))?;
    #[expect(
        deprecated,
        reason = "ring builds with the Rust toolchain alone (aws-lc-rs, which adds post-quantum \
                  key exchange, needs cmake and a C build); classical ECDHE is what clients \
                  negotiate today"
    )]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|source| TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        })?;
    Ok(Arc::new(config))
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn no_pem(
    flag: &'static str,
    path: &Path,
    what: &'static str,
    error: Option<rustls::pki_types::pem::Error>,
) -> TlsError {
    TlsError::NoPem {
        flag,
        path: path.to_path_buf(),
        what,
        detail: error.map(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn each_bad_file_is_named_with_its_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let garbage = write(dir.path(), "garbage.pem", "not pem at all\n");
        let error = load_tls(&missing, &garbage).unwrap_err().to_string();
        assert!(
            error.starts_with("cannot read --tls-cert-file file ") && error.contains("missing.pem"),
            "{error}"
        );
        let error = load_tls(&garbage, &garbage).unwrap_err().to_string();
        assert!(
            error.contains("--tls-cert-file file") && error.contains("no PEM certificate"),
            "{error}"
        );
    }
}
