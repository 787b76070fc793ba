//! Which base model a derived artefact (a LookaheadKV module, docs/design.md §4) belongs to. A lookahead
//! module is trained against one model's activations; run on another it still loads if the shapes
//! agree, but its scores are noise. The identity lets a loader refuse that case up front.

use super::Model;
use crate::error::{EngineError, Result};

/// Embedding rows widened per read while hashing.
const IDENTITY_ROWS_PER_READ: usize = 1024;

/// The base model an adapter was made for. `hash` is what loaders compare; `name` is only there so
/// an error can tell a person which model each side is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseModelIdentity {
    pub name: String,
    /// 16 lowercase hex digits: FNV-1a 64 over `config.json` and the embedding matrix.
    pub hash: String,
}

impl Model {
    /// Names and fingerprints this model.
    ///
    /// The name is the model folder's name. `config.json`'s `_name_or_path` is not used: it is often
    /// absent or the absolute path of whatever machine saved the checkpoint. A model copied or
    /// renamed keeps its hash, so only the name changes and nothing that compares hashes breaks.
    ///
    /// The hash is FNV-1a 64 over the bytes of `config.json` followed by the embedding matrix
    /// widened to f32 (little-endian, so a bf16 checkpoint hashes its widened values). The config
    /// alone cannot tell apart fine-tunes of one architecture, which share it byte for byte; the
    /// embeddings nearly always move in a fine-tune and are a small part of the weights, so hashing
    /// them stays cheap (one pass over `vocab × hidden` floats) where hashing every weight would
    /// read gigabytes. Known limits: a fine-tune that froze the embeddings and kept `config.json`
    /// identical hashes the same, and re-serialising `config.json` (whitespace, key order) changes
    /// the hash although the model did not change. FNV is not cryptographic; this guards against
    /// mistakes, not forgery.
    ///
    /// Fails with [`EngineError::Io`] if `config.json` can no longer be read from the model folder.
    pub fn identity(&self) -> Result<BaseModelIdentity> {
        let config_path = self.dir.join("config.json");
        let config = std::fs::read(&config_path).map_err(|e| EngineError::io(&config_path, e))?;
        let mut hash = Fnv1a64::default();
        hash.write(&config);
        let embeddings = &self.weights.embed_tokens;
        let vocab = embeddings.shape()[0];
        let mut rows = Vec::new();
        // A slice of rows at a time: a large vocabulary widened whole would be gigabytes.
        for first in (0..vocab).step_by(IDENTITY_ROWS_PER_READ) {
            embeddings.rows_to_f32(
                first..(first + IDENTITY_ROWS_PER_READ).min(vocab),
                &mut rows,
            );
            for value in &rows {
                hash.write(&value.to_le_bytes());
            }
        }
        Ok(BaseModelIdentity {
            name: self.folder_name(),
            hash: format!("{:016x}", hash.0),
        })
    }

    /// The last component of the model folder's path; for a relative path such as `.`, that of its
    /// absolute form.
    fn folder_name(&self) -> String {
        let absolute = self.dir.canonicalize().ok();
        self.dir
            .file_name()
            .or_else(|| absolute.as_deref().and_then(|p| p.file_name()))
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.dir.display().to_string())
    }
}

/// 64-bit FNV-1a (Fowler–Noll–Vo): a byte-at-a-time hash with no dependencies, stable across
/// platforms and releases, which is all a file fingerprint needs.
struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a64 {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use safetensors::SafeTensors;

    use super::Fnv1a64;
    use crate::loader::WeightDtype;
    use crate::model::Model;

    fn stories() -> Model {
        Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stories260K")).unwrap()
    }

    #[test]
    fn identity_is_the_folder_name_and_a_stable_hex_hash() {
        let first = stories().identity().unwrap();
        assert_eq!(first.name, "stories260K");
        assert_eq!(first.hash.len(), 16);
        assert!(
            first
                .hash
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(stories().identity().unwrap(), first);
    }

    #[test]
    fn a_changed_embedding_changes_the_hash() {
        let model = stories();
        let before = model.identity().unwrap();
        // The same folder with one embedding element moved by 1e-3, under the same name.
        let copy = tempfile::tempdir().unwrap();
        let dir = copy.path().join("stories260K");
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(model.dir.join("config.json"), dir.join("config.json")).unwrap();
        let mut bytes = std::fs::read(model.dir.join("model.safetensors")).unwrap();
        let embeddings = &model.weights.embed_tokens;
        assert_eq!(embeddings.dtype(), WeightDtype::F32);
        let element = embeddings.shape()[1] + 36;
        let (header_len, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let data = 8 + header_len + metadata.info(embeddings.name()).unwrap().data_offsets.0;
        let at = data + 4 * element;
        let value = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) + 1e-3;
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        let after = Model::load(&dir).unwrap().identity().unwrap();
        assert_eq!(after.name, before.name);
        assert_ne!(after.hash, before.hash);
    }

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        for (input, expected) in [
            (&b""[..], 0xcbf2_9ce4_8422_2325),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut hash = Fnv1a64::default();
            hash.write(input);
            assert_eq!(hash.0, expected, "input {input:?}");
        }
    }
}
