//! The on-disk form of a [`LookaheadModule`] (format in the [parent module's doc](super)): writing
//! it, and reading it back with every check a file from elsewhere needs.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::{BaseModelIdentity, LayerAdapters, LookaheadModule, LoraPair, Projection};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::loader::read_f32;
use crate::model::Model;

const FORMAT: &str = "glimpse-lookahead";
const FORMAT_VERSION: &str = "1";
const EMBEDDINGS: &str = "lookahead.embeddings";

fn lora_a_name(layer: usize, projection: Projection) -> String {
    format!("layers.{layer}.{}.lora_A", projection.name())
}

fn lora_b_name(layer: usize, projection: Projection) -> String {
    format!("layers.{layer}.{}.lora_B", projection.name())
}

impl LookaheadModule {
    /// Writes the module to `path` as f32 safetensors (format in the [module doc](super)). The file
    /// is written beside `path` and renamed over it, so a reader never sees half a file.
    ///
    /// Fails with [`EngineError::Io`] if the file cannot be written, or
    /// [`EngineError::LookaheadFile`] if a tensor's length does not match its shape (a bug in
    /// whatever built the module).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors = self.named_tensors();
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|t| t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let mut views = Vec::with_capacity(tensors.len());
        for (tensor, bytes) in tensors.iter().zip(&bytes) {
            let expected = tensor.shape.iter().product::<usize>();
            if tensor.data.len() != expected {
                return Err(file_error(
                    path,
                    format!(
                        "tensor `{}` holds {} values, but its shape {:?} needs {expected}",
                        tensor.name,
                        tensor.data.len(),
                        tensor.shape
                    ),
                ));
            }
            let view = TensorView::new(Dtype::F32, tensor.shape.clone(), bytes)
                .expect("length was checked against the shape just above");
            views.push((tensor.name.as_str(), view));
        }
        safetensors::serialize_to_file(views, Some(self.metadata()), path).map_err(|e| match e {
            SafeTensorError::IoError(e) => EngineError::io(path, e),
            other => EngineError::Safetensors {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        })
    }

    /// Reads the module at `path` and checks it against `model`: format tag and version, the
    /// base-model hash (see [`Model::identity`]), one adapter layer per decoder layer, every tensor's
    /// shape for the metadata's `num_tokens` and `rank`, finite values, and no extra tensors.
    ///
    /// Never panics on a bad file. Errors name the file and the tensor or metadata key at fault:
    /// [`EngineError::MissingTensor`], [`EngineError::TensorShape`], [`EngineError::TensorDtype`],
    /// [`EngineError::Safetensors`] (unreadable container), [`EngineError::LookaheadFile`]
    /// (metadata, identity, layer count, rank, non-finite values, extra tensors), or
    /// [`EngineError::Io`].
    pub fn load(path: &Path, model: &Model) -> Result<Self> {
        let identity = model.identity()?;
        let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
        Self::from_bytes(path, &bytes, model, &identity)
    }

    /// [`Self::load`] for a file already read into `bytes`; `identity` is `model`'s (hashing it
    /// reads the embeddings, so a caller checking many files computes it once). `path` only names
    /// the file in errors.
    pub fn from_bytes(
        path: &Path,
        bytes: &[u8],
        model: &Model,
        identity: &BaseModelIdentity,
    ) -> Result<Self> {
        let malformed = |e: SafeTensorError| EngineError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let (_, raw_header) = SafeTensors::read_metadata(bytes).map_err(malformed)?;
        let header = Header::parse(path, raw_header.metadata().as_ref())?;
        header.check_identity(path, identity)?;
        let tensors = SafeTensors::deserialize(bytes).map_err(malformed)?;
        let reader = Reader {
            path,
            tensors: &tensors,
            rank: header.rank,
        };
        reader.check_layer_count(model.config.num_layers)?;
        reader.check_no_extra_tensors(model.config.num_layers)?;
        reader.module(&model.config, header)
    }

    /// Every tensor of the file with its name and shape, in a fixed order.
    fn named_tensors(&self) -> Vec<NamedTensor<'_>> {
        let mut tensors = vec![NamedTensor {
            name: EMBEDDINGS.to_string(),
            shape: vec![self.num_tokens, self.hidden_size],
            data: &self.embeddings,
        }];
        for (l, layer) in self.layers.iter().enumerate() {
            for projection in Projection::ALL {
                let pair = layer.get(projection);
                tensors.push(NamedTensor {
                    name: lora_a_name(l, projection),
                    shape: vec![self.rank, pair.in_features],
                    data: &pair.a,
                });
                tensors.push(NamedTensor {
                    name: lora_b_name(l, projection),
                    shape: vec![pair.out_features, self.rank],
                    data: &pair.b,
                });
            }
        }
        tensors
    }

    fn metadata(&self) -> HashMap<String, String> {
        [
            ("format", FORMAT.to_string()),
            ("format_version", FORMAT_VERSION.to_string()),
            ("num_tokens", self.num_tokens.to_string()),
            ("rank", self.rank.to_string()),
            // `Display` for f32 prints the shortest string that parses back to the same bits.
            ("alpha", self.alpha.to_string()),
            ("base_model", self.identity.name.clone()),
            ("base_model_hash", self.identity.hash.clone()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
    }
}

struct NamedTensor<'a> {
    name: String,
    shape: Vec<usize>,
    data: &'a [f32],
}

fn file_error(path: &Path, message: String) -> EngineError {
    EngineError::LookaheadFile {
        path: path.to_path_buf(),
        message,
    }
}

/// The parsed `__metadata__` of a module file.
struct Header {
    num_tokens: usize,
    rank: usize,
    alpha: f32,
    identity: BaseModelIdentity,
}

impl Header {
    fn parse(path: &Path, metadata: Option<&HashMap<String, String>>) -> Result<Self> {
        let empty = HashMap::new();
        let metadata = metadata.unwrap_or(&empty);
        let get = |key: &str| {
            metadata.get(key).ok_or_else(|| {
                file_error(
                    path,
                    format!("missing metadata key `{key}` (is this a {FORMAT} file?)"),
                )
            })
        };
        let format = get("format")?;
        if format != FORMAT {
            return Err(file_error(
                path,
                format!("metadata `format` is `{format}`, expected `{FORMAT}`"),
            ));
        }
        let version = get("format_version")?;
        if version != FORMAT_VERSION {
            return Err(file_error(
                path,
                format!(
                    "metadata `format_version` is `{version}`, this build reads version {FORMAT_VERSION}"
                ),
            ));
        }
        let positive = |key: &str| -> Result<usize> {
            let text = get(key)?;
            match text.parse::<usize>() {
                Ok(value) if value > 0 => Ok(value),
                _ => Err(file_error(
                    path,
                    format!("metadata `{key}` is `{text}`, expected a positive integer"),
                )),
            }
        };
        let num_tokens = positive("num_tokens")?;
        let rank = positive("rank")?;
        let alpha_text = get("alpha")?;
        let alpha = match alpha_text.parse::<f32>() {
            Ok(alpha) if alpha.is_finite() => alpha,
            _ => {
                return Err(file_error(
                    path,
                    format!("metadata `alpha` is `{alpha_text}`, expected a finite number"),
                ));
            }
        };
        let identity = BaseModelIdentity {
            name: get("base_model")?.clone(),
            hash: get("base_model_hash")?.clone(),
        };
        Ok(Self {
            num_tokens,
            rank,
            alpha,
            identity,
        })
    }

    fn check_identity(&self, path: &Path, model: &BaseModelIdentity) -> Result<()> {
        if self.identity.hash == model.hash {
            return Ok(());
        }
        Err(file_error(
            path,
            format!(
                "made for base model `{}` (hash {}), but the loaded model is `{}` (hash {})",
                self.identity.name, self.identity.hash, model.name, model.hash
            ),
        ))
    }
}

/// Which axis of a LoRA matrix is the rank: rows of `A` (`[rank, in]`), columns of `B`
/// (`[out, rank]`).
#[derive(Clone, Copy)]
enum RankAxis {
    Rows,
    Columns,
}

/// Reads tensors out of a parsed file, checking each one.
struct Reader<'a, 'data> {
    path: &'a Path,
    tensors: &'a SafeTensors<'data>,
    rank: usize,
}

impl Reader<'_, '_> {
    /// The number of adapter layers is implied by the tensor names, not stored; a file for a model
    /// of another depth gets this message rather than one about a missing or extra tensor.
    fn check_layer_count(&self, num_layers: usize) -> Result<()> {
        let file_layers = self
            .tensors
            .names()
            .iter()
            .filter_map(|name| {
                name.strip_prefix("layers.")?
                    .split('.')
                    .next()?
                    .parse()
                    .ok()
            })
            .map(|layer: usize| layer + 1)
            .max()
            .unwrap_or(0);
        if file_layers == num_layers {
            return Ok(());
        }
        Err(file_error(
            self.path,
            format!("holds adapters for {file_layers} layers, but the model has {num_layers}"),
        ))
    }

    fn check_no_extra_tensors(&self, num_layers: usize) -> Result<()> {
        let mut known: HashSet<String> = HashSet::from([EMBEDDINGS.to_string()]);
        for layer in 0..num_layers {
            for projection in Projection::ALL {
                known.insert(lora_a_name(layer, projection));
                known.insert(lora_b_name(layer, projection));
            }
        }
        let mut extra: Vec<&str> = self
            .tensors
            .names()
            .into_iter()
            .filter(|name| !known.contains(*name))
            .collect();
        extra.sort_unstable();
        match extra.first() {
            None => Ok(()),
            Some(first) => Err(file_error(
                self.path,
                format!(
                    "unexpected tensor `{first}` ({} tensor(s) not in the {FORMAT} format)",
                    extra.len()
                ),
            )),
        }
    }

    fn module(&self, config: &ModelConfig, header: Header) -> Result<LookaheadModule> {
        let embeddings = self.read(EMBEDDINGS, &[header.num_tokens, config.hidden_size])?;
        let layers = (0..config.num_layers)
            .map(|l| LayerAdapters::try_build(|projection| self.pair(config, l, projection)))
            .collect::<Result<_>>()?;
        Ok(LookaheadModule {
            num_tokens: header.num_tokens,
            rank: header.rank,
            alpha: header.alpha,
            hidden_size: config.hidden_size,
            embeddings,
            layers,
            identity: header.identity,
        })
    }

    fn pair(&self, config: &ModelConfig, layer: usize, projection: Projection) -> Result<LoraPair> {
        let in_features = projection.in_features(config);
        let out_features = projection.out_features(config);
        let a_name = lora_a_name(layer, projection);
        let b_name = lora_b_name(layer, projection);
        self.check_rank(&a_name, RankAxis::Rows, in_features)?;
        self.check_rank(&b_name, RankAxis::Columns, out_features)?;
        Ok(LoraPair {
            in_features,
            out_features,
            a: self.read(&a_name, &[self.rank, in_features])?,
            b: self.read(&b_name, &[out_features, self.rank])?,
        })
    }

    /// A LoRA tensor whose only wrong dimension is the rank contradicts the metadata's `rank`; say
    /// so, rather than leave the reader to work it out from a shape error. `features` is the length
    /// the other axis must have; any other shape problem is left to [`read_f32`].
    fn check_rank(&self, name: &str, rank_axis: RankAxis, features: usize) -> Result<()> {
        let Ok(view) = self.tensors.tensor(name) else {
            return Ok(());
        };
        let (rank, other) = match (view.shape(), rank_axis) {
            (&[rank, other], RankAxis::Rows) | (&[other, rank], RankAxis::Columns) => (rank, other),
            _ => return Ok(()),
        };
        if other == features && rank != self.rank {
            return Err(file_error(
                self.path,
                format!(
                    "metadata says rank {}, but tensor `{name}` has rank {rank} (shape {:?})",
                    self.rank,
                    view.shape()
                ),
            ));
        }
        Ok(())
    }

    /// Tensor `name`, checked for shape, dtype and finite values, widened to f32.
    fn read(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| EngineError::MissingTensor {
                path: self.path.to_path_buf(),
                tensor: name.to_string(),
            })?;
        let data = read_f32(self.path, name, &view, expected)?;
        if let Some((index, value)) = data.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(file_error(
                self.path,
                format!("tensor `{name}` holds a non-finite value ({value}) at element {index}"),
            ));
        }
        Ok(data)
    }
}
