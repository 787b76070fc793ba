//! Bad model folders never panic: each problem yields an error that names the file and the tensor
//! or field at fault.

mod support;

use std::collections::HashMap;
use std::path::Path;

use glimpse_engine::model::Model;
use safetensors::{Dtype, SafeTensors, View};
use support::repo_root;

/// An owned tensor to re-serialise.
struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Owned {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data[..]).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A copy of the bundled model in a temp dir, with its tensors open for editing.
fn model_copy() -> (tempfile::TempDir, HashMap<String, Owned>) {
    let dir = tempfile::tempdir().unwrap();
    let src = repo_root().join("models/stories260K");
    for file in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(src.join(file), dir.path().join(file)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let owned = Owned {
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                data: t.data().to_vec(),
            };
            (name, owned)
        })
        .collect();
    (dir, tensors)
}

fn write_tensors(dir: &Path, file: &str, tensors: &HashMap<String, Owned>) {
    let views: Vec<(&String, &Owned)> = tensors.iter().collect();
    safetensors::serialize_to_file(views, None, &dir.join(file)).unwrap();
}

fn load_error(dir: &Path) -> String {
    match Model::load(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_names(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "`{message}` does not name `{part}`");
    }
}

#[test]
fn a_missing_folder_or_config_is_named() {
    let msg = load_error(Path::new("/nonexistent/model"));
    assert_names(&msg, &["config.json"]);
    let (dir, _) = model_copy();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert_names(&load_error(dir.path()), &["config.json"]);
}

#[test]
fn a_missing_weights_file_is_named() {
    let (dir, _) = model_copy();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_names(&load_error(dir.path()), &["model.safetensors"]);
}

#[test]
fn an_unknown_architecture_is_named() {
    let (dir, _) = model_copy();
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("LlamaForCausalLM", "FalconForCausalLM");
    std::fs::write(&path, text).unwrap();
    assert_names(
        &load_error(dir.path()),
        &["config.json", "FalconForCausalLM", "unsupported"],
    );
}

#[test]
fn a_malformed_config_names_the_file() {
    let (dir, _) = model_copy();
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 64,").unwrap();
    assert_names(&load_error(dir.path()), &["config.json", "malformed"]);
    std::fs::write(
        dir.path().join("config.json"),
        "{\"architectures\": [\"LlamaForCausalLM\"]}",
    )
    .unwrap();
    assert_names(&load_error(dir.path()), &["config.json", "hidden_size"]);
}

#[test]
fn a_malformed_generation_config_names_the_file() {
    let (dir, _) = model_copy();
    std::fs::write(dir.path().join("generation_config.json"), "[1, 2").unwrap();
    assert_names(&load_error(dir.path()), &["generation_config.json"]);
}

#[test]
fn a_missing_tensor_is_named() {
    let (dir, mut tensors) = model_copy();
    tensors.remove("model.layers.3.mlp.up_proj.weight");
    write_tensors(dir.path(), "model.safetensors", &tensors);
    assert_names(
        &load_error(dir.path()),
        &[
            "model.safetensors",
            "model.layers.3.mlp.up_proj.weight",
            "missing",
        ],
    );
}

#[test]
fn a_misshaped_tensor_is_named_with_both_shapes() {
    let (dir, mut tensors) = model_copy();
    let t = tensors
        .get_mut("model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    t.shape = vec![16, 64];
    t.data.truncate(16 * 64 * 4);
    write_tensors(dir.path(), "model.safetensors", &tensors);
    assert_names(
        &load_error(dir.path()),
        &[
            "model.safetensors",
            "model.layers.0.self_attn.k_proj.weight",
            "[16, 64]",
            "[32, 64]",
        ],
    );
}

#[test]
fn a_tensor_of_the_wrong_dtype_is_named() {
    let (dir, mut tensors) = model_copy();
    tensors.get_mut("model.norm.weight").unwrap().dtype = Dtype::I32;
    write_tensors(dir.path(), "model.safetensors", &tensors);
    assert_names(
        &load_error(dir.path()),
        &["model.safetensors", "model.norm.weight", "I32"],
    );
}

#[test]
fn a_truncated_weights_file_is_named() {
    let (dir, _) = model_copy();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_names(&load_error(dir.path()), &["model.safetensors", "malformed"]);
    std::fs::write(&path, &bytes[..5]).unwrap();
    assert_names(&load_error(dir.path()), &["model.safetensors"]);
}

#[test]
fn a_shard_index_naming_a_missing_shard_is_named() {
    let (dir, tensors) = model_copy();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let mut weight_map: HashMap<&str, &str> = HashMap::new();
    for name in tensors.keys() {
        weight_map.insert(name, "model-00001-of-00002.safetensors");
    }
    weight_map.insert("model.norm.weight", "model-00002-of-00002.safetensors");
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    write_tensors(dir.path(), "model-00001-of-00002.safetensors", &tensors);
    assert_names(
        &load_error(dir.path()),
        &["model-00002-of-00002.safetensors"],
    );
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        "{\"weight_map\": 3}",
    )
    .unwrap();
    assert_names(
        &load_error(dir.path()),
        &["model.safetensors.index.json", "malformed"],
    );
}

/// Sets `field` of the JSON file `file` in `dir` to `value` (other fields untouched).
fn set_field(dir: &Path, file: &str, field: &str, value: serde_json::Value) {
    let path = dir.join(file);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json[field] = value;
    std::fs::write(&path, json.to_string()).unwrap();
}

#[test]
fn an_absurd_context_length_is_refused_before_any_allocation() {
    let (dir, _) = model_copy();
    set_field(
        dir.path(),
        "config.json",
        "max_position_embeddings",
        1_000_000_000_000u64.into(),
    );
    assert_names(
        &load_error(dir.path()),
        &[
            "config.json",
            "`max_position_embeddings`",
            "16777216",
            "1000000000000",
        ],
    );
}

#[test]
fn a_head_dim_the_projections_do_not_have_is_named() {
    let (dir, _) = model_copy();
    set_field(
        dir.path(),
        "config.json",
        "head_dim",
        1_000_000_000u64.into(),
    );
    assert_names(
        &load_error(dir.path()),
        &[
            "config.json",
            "`head_dim` 1000000000",
            "`num_attention_heads` 8",
            "model.layers.0.self_attn.q_proj.weight",
            "[64, 64]",
        ],
    );
}

#[test]
fn a_zero_rope_factor_is_named() {
    let (dir, _) = model_copy();
    let scaling = serde_json::json!({ "rope_type": "linear", "factor": 0.0 });
    set_field(dir.path(), "config.json", "rope_scaling", scaling);
    assert_names(
        &load_error(dir.path()),
        &["config.json", "`rope_scaling.factor`", "got 0"],
    );
}

#[test]
fn a_negative_default_temperature_refuses_the_model() {
    let (dir, _) = model_copy();
    set_field(
        dir.path(),
        "generation_config.json",
        "temperature",
        (-1.0).into(),
    );
    assert_names(
        &load_error(dir.path()),
        &["generation_config.json", "`temperature`", "-1"],
    );
}

#[test]
fn a_checkpoint_missing_declared_layers_names_the_first_missing_tensor() {
    let (dir, mut tensors) = model_copy();
    tensors.retain(|name, _| {
        !name.starts_with("model.layers.3.") && !name.starts_with("model.layers.4.")
    });
    write_tensors(dir.path(), "model.safetensors", &tensors);
    assert_names(
        &load_error(dir.path()),
        &[
            "model.safetensors",
            "missing",
            "model.layers.3.input_layernorm.weight",
        ],
    );
}

#[test]
fn a_checkpoint_with_more_layers_than_declared_is_refused() {
    let (dir, _) = model_copy();
    set_field(dir.path(), "config.json", "num_hidden_layers", 3.into());
    assert_names(
        &load_error(dir.path()),
        &[
            "model.safetensors",
            "model.layers.3.",
            "`num_hidden_layers` = 3",
        ],
    );
}
