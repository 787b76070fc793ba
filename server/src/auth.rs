//! Optional bearer-token authentication (`--auth-token-file`): one token, read once at start-up,
//! that requests present as `Authorization: Bearer <token>` (gRPC metadata `authorization`).
//! Each wire checks it in one place (gRPC: [`crate::grpc::TokenCheck`], HTTP and metrics:
//! [`crate::http::require_token`]); health is exempt everywhere, because Kubernetes probes and
//! container health checks cannot send headers. The comparison takes the same time wherever the
//! presented token first differs, so timing does not reveal the token byte by byte.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq;

/// The token requests must present.
#[derive(Clone)]
pub struct BearerToken(Arc<[u8]>);

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read --auth-token-file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--auth-token-file {path} holds no token (it is empty or only whitespace)")]
    Empty { path: PathBuf },
    #[error(
        "--auth-token-file {path} holds whitespace inside the token; a bearer token is one word"
    )]
    Whitespace { path: PathBuf },
}

impl BearerToken {
    /// The token in the file at `path`, leading and trailing whitespace (a final newline) trimmed.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        if token.contains(char::is_whitespace) {
            return Err(TokenFileError::Whitespace {
                path: path.to_path_buf(),
            });
        }
        Ok(Self(token.as_bytes().into()))
    }

    /// Whether an `Authorization` header value (absent: `None`) presents this token
    /// (`Bearer <token>`, the scheme in any case).
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some((scheme, presented)) = value.split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(presented.ct_eq(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn only_the_bearer_scheme_with_the_exact_token_is_accepted() {
        let (_dir, path) = token_file("  s3cret\n");
        let token = BearerToken::load(&path).unwrap();
        assert!(token.accepts(Some(b"Bearer s3cret")));
        assert!(token.accepts(Some(b"bearer s3cret")));
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"Basic s3cret",
            b"s3cret",
            b"Bearer ",
            b"",
        ] {
            assert!(!token.accepts(Some(wrong)), "{wrong:?}");
        }
        assert!(!token.accepts(None));
    }

    #[test]
    fn an_empty_or_missing_file_is_refused_naming_it() {
        let (_dir, path) = token_file(" \n\t");
        let error = BearerToken::load(&path).err().unwrap().to_string();
        assert!(
            error.contains("--auth-token-file") && error.contains("holds no token"),
            "{error}"
        );
        let missing = path.with_file_name("absent");
        let error = BearerToken::load(&missing).err().unwrap().to_string();
        assert!(error.starts_with("cannot read --auth-token-file ") && error.contains("absent"));
    }
}
