//! Module files round-trip exactly, random modules are reproducible, and every malformed or foreign
//! file is refused with a message naming the tensor or metadata key. Bad files are made by editing a
//! good one with the `safetensors` crate directly, so the tests check the format, not the writer.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::*;
use crate::error::EngineError;
use crate::model::Model;

fn model(relative: &str) -> Model {
    Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).unwrap()
}

fn stories() -> Model {
    model("../models/stories260K")
}

fn random_for(model: &Model, options: RandomInit) -> LookaheadModule {
    LookaheadModule::random(&model.config, model.identity().unwrap(), options)
}

/// Every value of the module as raw bits, with the tensor it belongs to, so a comparison fails on
/// the first differing bit and says where.
fn bits(module: &LookaheadModule) -> Vec<(String, Vec<u32>)> {
    let to_bits = |values: &[f32]| values.iter().map(|x| x.to_bits()).collect();
    let mut all = vec![("embeddings".to_string(), to_bits(&module.embeddings))];
    for (l, layer) in module.layers.iter().enumerate() {
        for projection in Projection::ALL {
            let pair = layer.get(projection);
            all.push((format!("{l}.{}.a", projection.name()), to_bits(&pair.a)));
            all.push((format!("{l}.{}.b", projection.name()), to_bits(&pair.b)));
        }
    }
    all
}

fn assert_bit_identical(left: &LookaheadModule, right: &LookaheadModule) {
    assert_eq!(
        (
            left.num_tokens,
            left.rank,
            left.alpha.to_bits(),
            left.hidden_size
        ),
        (
            right.num_tokens,
            right.rank,
            right.alpha.to_bits(),
            right.hidden_size
        )
    );
    assert_eq!(left.identity, right.identity);
    for ((name, l), (_, r)) in bits(left).iter().zip(&bits(right)) {
        assert!(l == r, "tensor {name} differs");
    }
    assert_eq!(left, right);
}

/// A module file opened for editing: tensors as stored bytes, plus the metadata map.
struct RawFile {
    tensors: BTreeMap<String, RawTensor>,
    metadata: HashMap<String, String>,
}

struct RawTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl RawFile {
    fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let tensors = SafeTensors::deserialize(&bytes)
            .unwrap()
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let tensor = RawTensor {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    data: view.data().to_vec(),
                };
                (name, tensor)
            })
            .collect();
        Self {
            tensors,
            metadata: header.metadata().clone().unwrap_or_default(),
        }
    }

    fn write(&self, path: &Path) {
        let views: Vec<(&str, TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let view = TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap();
                (name.as_str(), view)
            })
            .collect();
        safetensors::serialize_to_file(views, Some(self.metadata.clone()), path).unwrap();
    }

    fn set_f32(&mut self, name: &str, shape: Vec<usize>, values: &[f32]) {
        let data = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let tensor = RawTensor {
            dtype: Dtype::F32,
            shape,
            data,
        };
        self.tensors.insert(name.to_string(), tensor);
    }

    /// Overwrites element `index` of an f32 tensor.
    fn poke(&mut self, name: &str, index: usize, value: f32) {
        let tensor = self.tensors.get_mut(name).unwrap();
        tensor.data[index * 4..index * 4 + 4].copy_from_slice(&value.to_le_bytes());
    }
}

/// A temp dir holding `good.safetensors`, a valid default-sized module for stories260K.
struct Scratch {
    dir: tempfile::TempDir,
    model: Model,
    module: LookaheadModule,
}

impl Scratch {
    fn new() -> Self {
        let model = stories();
        let module = random_for(&model, RandomInit::default());
        let dir = tempfile::tempdir().unwrap();
        module.save(&dir.path().join("good.safetensors")).unwrap();
        Self { dir, model, module }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn good(&self) -> RawFile {
        RawFile::read(&self.path("good.safetensors"))
    }

    /// Writes `edit(good file)` and loads it; the error must be the caller's expectation.
    fn load_edited(&self, edit: impl FnOnce(&mut RawFile)) -> EngineError {
        let mut raw = self.good();
        edit(&mut raw);
        let path = self.path("bad.safetensors");
        raw.write(&path);
        LookaheadModule::load(&path, &self.model).expect_err("the edited file must be refused")
    }
}

/// The error's text, checked to name the file it is about.
fn message(error: &EngineError) -> String {
    let text = error.to_string();
    assert!(text.contains("bad.safetensors"), "no file named in: {text}");
    text
}

#[test]
fn save_then_load_is_bit_exact() {
    let scratch = Scratch::new();
    let loaded = LookaheadModule::load(&scratch.path("good.safetensors"), &scratch.model).unwrap();
    assert_bit_identical(&loaded, &scratch.module);
}

#[test]
fn round_trips_a_qwen3_model_whose_head_dim_is_not_hidden_over_heads() {
    let qwen3 = model("tests/fixtures/qwen3_qknorm");
    let module = random_for(&qwen3, RandomInit::default());
    let q = &module.layers[0].q;
    assert_eq!((q.in_features, q.out_features), (64, 4 * 32));
    let o = &module.layers[0].o;
    assert_eq!((o.in_features, o.out_features), (4 * 32, 64));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen3.safetensors");
    module.save(&path).unwrap();
    assert_bit_identical(&LookaheadModule::load(&path, &qwen3).unwrap(), &module);
}

#[test]
fn save_replaces_an_existing_file() {
    let scratch = Scratch::new();
    let other = random_for(
        &scratch.model,
        RandomInit {
            seed: 1,
            ..RandomInit::default()
        },
    );
    let path = scratch.path("good.safetensors");
    other.save(&path).unwrap();
    assert_bit_identical(
        &LookaheadModule::load(&path, &scratch.model).unwrap(),
        &other,
    );
}

/// `x` stored as a 16-bit float of `dtype` (BF16 or F16).
fn narrow(dtype: Dtype, x: f32) -> [u8; 2] {
    match dtype {
        Dtype::BF16 => half::bf16::from_f32(x).to_le_bytes(),
        Dtype::F16 => half::f16::from_f32(x).to_le_bytes(),
        other => panic!("not a 16-bit float: {other:?}"),
    }
}

#[test]
fn loads_bf16_and_f16_files_by_widening() {
    let scratch = Scratch::new();
    for dtype in [Dtype::BF16, Dtype::F16] {
        let mut raw = scratch.good();
        for tensor in raw.tensors.values_mut() {
            tensor.data = tensor
                .data
                .chunks_exact(4)
                .flat_map(|b| narrow(dtype, f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect();
            tensor.dtype = dtype;
        }
        let path = scratch.path("narrow.safetensors");
        raw.write(&path);
        let loaded = LookaheadModule::load(&path, &scratch.model).unwrap();
        let rounded = |values: &[f32]| -> Vec<f32> {
            let widen = |b: [u8; 2]| match dtype {
                Dtype::BF16 => half::bf16::from_le_bytes(b).to_f32(),
                _ => half::f16::from_le_bytes(b).to_f32(),
            };
            values.iter().map(|&x| widen(narrow(dtype, x))).collect()
        };
        assert_eq!(
            loaded.embeddings,
            rounded(&scratch.module.embeddings),
            "{dtype:?}"
        );
        assert_eq!(
            loaded.layers[4].down.b,
            rounded(&scratch.module.layers[4].down.b),
            "{dtype:?}"
        );
    }
}

#[test]
fn random_is_deterministic_per_seed() {
    let model = stories();
    let seeded = |seed| {
        random_for(
            &model,
            RandomInit {
                seed,
                ..RandomInit::default()
            },
        )
    };
    assert_bit_identical(&seeded(7), &seeded(7));
    assert_ne!(seeded(7).embeddings, seeded(8).embeddings);
    assert_ne!(seeded(7).layers[3].gate.b, seeded(8).layers[3].gate.b);
}

#[test]
fn random_module_has_the_model_shapes_and_a_nonzero_b() {
    let model = stories();
    let module = random_for(&model, RandomInit::default());
    assert_eq!(
        (module.num_tokens, module.rank, module.alpha),
        (32, 8, 32.0)
    );
    assert_eq!(module.scale(), 4.0);
    assert_eq!(module.embeddings.len(), 32 * 64);
    assert_eq!(module.layers.len(), 5);
    // stories260K: hidden 64, 8 query heads and 4 KV heads of 8, intermediate 172.
    let expected = [
        (Projection::Q, 64, 64),
        (Projection::K, 64, 32),
        (Projection::V, 64, 32),
        (Projection::O, 64, 64),
        (Projection::Gate, 64, 172),
        (Projection::Up, 64, 172),
        (Projection::Down, 172, 64),
    ];
    for layer in &module.layers {
        for (projection, inp, out) in expected {
            let pair = layer.get(projection);
            assert_eq!((pair.in_features, pair.out_features), (inp, out));
            assert_eq!((pair.a.len(), pair.b.len()), (8 * inp, out * 8));
            let bound = 1.0 / (inp as f32).sqrt();
            assert!(pair.a.iter().all(|x| x.abs() <= bound));
            assert!(pair.b.iter().all(|x| x.abs() <= 0.02));
            assert!(pair.b.iter().any(|&x| x != 0.0), "B must not be zero");
        }
    }
    let std = (module.embeddings.iter().map(|x| x * x).sum::<f32>() / (32.0 * 64.0)).sqrt();
    assert!((0.015..0.025).contains(&std), "embedding std {std}");
}

#[test]
fn refuses_a_module_made_for_another_model() {
    let stories = stories();
    let gqa = model("tests/fixtures/llama_gqa");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    random_for(&gqa, RandomInit::default()).save(&path).unwrap();
    let error = LookaheadModule::load(&path, &stories).unwrap_err();
    let text = message(&error);
    let (mine, theirs) = (gqa.identity().unwrap(), stories.identity().unwrap());
    assert_ne!(mine.hash, theirs.hash);
    for part in ["llama_gqa", "stories260K", &mine.hash, &theirs.hash] {
        assert!(text.contains(part), "`{part}` missing from: {text}");
    }
}

#[test]
fn refuses_a_changed_base_model_hash_even_under_the_same_name() {
    let scratch = Scratch::new();
    let error = scratch.load_edited(|raw| {
        raw.metadata
            .insert("base_model_hash".into(), "0123456789abcdef".into());
    });
    let text = message(&error);
    assert!(
        text.contains("0123456789abcdef") && text.contains("stories260K"),
        "{text}"
    );
}

#[test]
fn rejects_a_missing_tensor_by_name() {
    let scratch = Scratch::new();
    for name in ["layers.2.v_proj.lora_B", "lookahead.embeddings"] {
        let error = scratch.load_edited(|raw| {
            raw.tensors.remove(name);
        });
        assert!(
            matches!(&error, EngineError::MissingTensor { tensor, .. } if tensor == name),
            "{error}"
        );
        assert!(message(&error).contains(name));
    }
}

#[test]
fn rejects_a_wrong_shape_naming_tensor_expected_and_actual() {
    let scratch = Scratch::new();
    let error = scratch.load_edited(|raw| {
        raw.set_f32("lookahead.embeddings", vec![31, 64], &[0.0; 31 * 64]);
    });
    match &error {
        EngineError::TensorShape {
            tensor,
            expected,
            actual,
            ..
        } => {
            assert_eq!(tensor, "lookahead.embeddings");
            assert_eq!(
                (expected.as_slice(), actual.as_slice()),
                (&[32, 64][..], &[31, 64][..])
            );
        }
        other => panic!("expected a shape error, got {other}"),
    }
    message(&error);
    let error = scratch.load_edited(|raw| {
        raw.set_f32("layers.1.down_proj.lora_A", vec![8, 64], &[0.0; 8 * 64]);
    });
    assert!(
        matches!(&error, EngineError::TensorShape { tensor, expected, .. }
            if tensor == "layers.1.down_proj.lora_A" && expected == &[8, 172]),
        "{error}"
    );
}

#[test]
fn rejects_each_missing_metadata_key_by_name() {
    let scratch = Scratch::new();
    for key in [
        "format",
        "format_version",
        "num_tokens",
        "rank",
        "alpha",
        "base_model",
        "base_model_hash",
    ] {
        let error = scratch.load_edited(|raw| {
            raw.metadata.remove(key);
        });
        let text = message(&error);
        assert!(
            text.contains(&format!("missing metadata key `{key}`")),
            "{text}"
        );
    }
}

#[test]
fn rejects_a_file_without_metadata() {
    let scratch = Scratch::new();
    let error = scratch.load_edited(|raw| raw.metadata.clear());
    assert!(message(&error).contains("missing metadata key `format`"));
}

#[test]
fn rejects_unparseable_metadata_values_by_key() {
    let scratch = Scratch::new();
    for (key, value) in [
        ("num_tokens", "thirty-two"),
        ("num_tokens", "0"),
        ("rank", "-8"),
        ("rank", "0"),
        ("alpha", "NaN"),
        ("alpha", "inf"),
        ("alpha", ""),
    ] {
        let error = scratch.load_edited(|raw| {
            raw.metadata.insert(key.into(), value.into());
        });
        let text = message(&error);
        assert!(
            text.contains(&format!("metadata `{key}` is `{value}`")),
            "{key}={value}: {text}"
        );
    }
}

#[test]
fn rejects_a_foreign_format_tag_and_an_unknown_version() {
    let scratch = Scratch::new();
    let error = scratch.load_edited(|raw| {
        raw.metadata.insert("format".into(), "pt".into());
    });
    assert!(message(&error).contains("metadata `format` is `pt`, expected `glimpse-lookahead`"));
    let error = scratch.load_edited(|raw| {
        raw.metadata.insert("format_version".into(), "2".into());
    });
    assert!(message(&error).contains("`format_version` is `2`"));
}

#[test]
fn rejects_a_layer_count_different_from_the_model() {
    let scratch = Scratch::new();
    let error =
        scratch.load_edited(|raw| raw.tensors.retain(|name, _| !name.starts_with("layers.4.")));
    assert!(message(&error).contains("holds adapters for 4 layers, but the model has 5"));
    let error = scratch.load_edited(|raw| {
        raw.set_f32("layers.5.q_proj.lora_A", vec![8, 64], &[0.0; 8 * 64]);
    });
    assert!(message(&error).contains("holds adapters for 6 layers, but the model has 5"));
}

#[test]
fn rejects_a_rank_that_contradicts_the_metadata() {
    let scratch = Scratch::new();
    let error = scratch.load_edited(|raw| {
        raw.metadata.insert("rank".into(), "4".into());
    });
    let text = message(&error);
    assert!(
        text.contains("metadata says rank 4, but tensor `layers.0.q_proj.lora_A` has rank 8"),
        "{text}"
    );
    let error = scratch.load_edited(|raw| {
        raw.set_f32("layers.3.o_proj.lora_B", vec![64, 4], &[0.0; 64 * 4]);
    });
    let text = message(&error);
    assert!(
        text.contains("metadata says rank 8, but tensor `layers.3.o_proj.lora_B` has rank 4"),
        "{text}"
    );
}

#[test]
fn rejects_non_finite_values_naming_the_tensor() {
    let scratch = Scratch::new();
    for (name, index, value) in [
        ("layers.1.up_proj.lora_A", 17, f32::NAN),
        ("lookahead.embeddings", 3, f32::INFINITY),
        ("layers.0.k_proj.lora_B", 0, f32::NEG_INFINITY),
    ] {
        let error = scratch.load_edited(|raw| raw.poke(name, index, value));
        let text = message(&error);
        assert!(
            text.contains(&format!(
                "tensor `{name}` holds a non-finite value ({value}) at element {index}"
            )),
            "{text}"
        );
    }
}

#[test]
fn rejects_unexpected_extra_tensors() {
    let scratch = Scratch::new();
    let error = scratch.load_edited(|raw| {
        raw.set_f32("lookahead.bias", vec![64], &[0.0; 64]);
        raw.set_f32("layers.0.q_proj.lora_C", vec![1], &[0.0]);
    });
    let text = message(&error);
    assert!(
        text.contains("unexpected tensor `layers.0.q_proj.lora_C` (2 tensor(s)"),
        "{text}"
    );
}

#[test]
fn rejects_an_unsupported_dtype() {
    let scratch = Scratch::new();
    let error = scratch.load_edited(|raw| {
        raw.tensors
            .get_mut("layers.2.gate_proj.lora_A")
            .unwrap()
            .dtype = Dtype::I32;
    });
    assert!(
        matches!(&error, EngineError::TensorDtype { tensor, .. } if tensor == "layers.2.gate_proj.lora_A"),
        "{error}"
    );
    message(&error);
}

#[test]
fn rejects_a_missing_truncated_or_garbage_file() {
    let scratch = Scratch::new();
    let path = scratch.path("bad.safetensors");
    let error = LookaheadModule::load(&path, &scratch.model).unwrap_err();
    assert!(matches!(error, EngineError::Io { .. }), "{error}");
    let good = std::fs::read(scratch.path("good.safetensors")).unwrap();
    for bytes in [
        &good[..good.len() - 1],
        &good[..5],
        b"not a safetensors file",
    ] {
        std::fs::write(&path, bytes).unwrap();
        let error = LookaheadModule::load(&path, &scratch.model).unwrap_err();
        assert!(matches!(error, EngineError::Safetensors { .. }), "{error}");
        message(&error);
    }
}
