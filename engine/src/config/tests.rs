use std::path::Path;

use super::*;

fn resolve(json: &str) -> Result<ModelConfig> {
    ModelConfig::from_json(json, Path::new("config.json"))
}

const LLAMA: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":172,
 "num_hidden_layers":5,"num_attention_heads":8,"num_key_value_heads":4,"vocab_size":512,
 "max_position_embeddings":512,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":true,
 "eos_token_id":2,"hidden_act":"silu"}"#;

#[test]
fn resolves_a_llama_config_with_derived_head_dim() {
    let c = resolve(LLAMA).unwrap();
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(
        (c.num_heads, c.num_kv_heads, c.head_dim, c.group_size()),
        (8, 4, 8, 2)
    );
    assert_eq!(c.eos_token_ids, vec![2]);
    assert!(c.tie_word_embeddings && !c.qkv_bias && !c.qk_norm);
    assert_eq!(c.rope.scaling, RopeScaling::None);
}

#[test]
fn qwen2_gets_qkv_bias_and_qwen3_gets_qk_norm() {
    let qwen2 = LLAMA.replace("LlamaForCausalLM", "Qwen2ForCausalLM");
    let c = resolve(&qwen2).unwrap();
    assert!(c.qkv_bias && !c.o_bias);
    let qwen3 = LLAMA
        .replace("LlamaForCausalLM", "Qwen3ForCausalLM")
        .replace("\"vocab_size\"", "\"head_dim\":32,\"vocab_size\"");
    let c = resolve(&qwen3).unwrap();
    assert!(c.qk_norm);
    assert_eq!(c.head_dim, 32);
}

#[test]
fn reads_llama3_rope_scaling_from_either_field() {
    let scaling = r#""rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64},"#;
    let c = resolve(&LLAMA.replacen('{', &format!("{{{scaling}"), 1)).unwrap();
    assert!(matches!(
        c.rope.scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            original_max_position_embeddings: 64,
            ..
        }
    ));
    let params = r#""rope_parameters":{"rope_type":"linear","factor":2.0,"rope_theta":500000.0},"#;
    let c = resolve(&LLAMA.replacen('{', &format!("{{{params}"), 1)).unwrap();
    assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 2.0 });
    assert_eq!(c.rope.theta, 500000.0);
}

#[test]
fn eos_may_be_a_list() {
    let c = resolve(&LLAMA.replace("\"eos_token_id\":2", "\"eos_token_id\":[2,7]")).unwrap();
    assert_eq!(c.eos_token_ids, vec![2, 7]);
}

#[test]
fn sliding_window_caps_the_model_length() {
    let mistral = LLAMA
        .replace("LlamaForCausalLM", "MistralForCausalLM")
        .replace("\"vocab_size\"", "\"sliding_window\":128,\"vocab_size\"");
    assert_eq!(resolve(&mistral).unwrap().max_model_len, 128);
}

#[test]
fn unknown_architecture_is_named() {
    let err = resolve(&LLAMA.replace("LlamaForCausalLM", "GPT2LMHeadModel")).unwrap_err();
    assert!(err.to_string().contains("GPT2LMHeadModel"), "{err}");
}

#[test]
fn missing_and_bad_fields_are_named() {
    let err = resolve(&LLAMA.replace("\"hidden_size\":64,", "")).unwrap_err();
    assert!(err.to_string().contains("hidden_size"), "{err}");
    let err = resolve(&LLAMA.replace("\"num_key_value_heads\":4", "\"num_key_value_heads\":3"))
        .unwrap_err();
    assert!(err.to_string().contains("num_key_value_heads"), "{err}");
    let err = resolve(&LLAMA.replace("silu", "gelu")).unwrap_err();
    assert!(err.to_string().contains("gelu"), "{err}");
    let err = resolve("{not json").unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    let err = resolve(&LLAMA.replace("\"eos_token_id\":2", "\"eos_token_id\":9999")).unwrap_err();
    assert!(err.to_string().contains("eos_token_id"), "{err}");
}

/// The error of resolving `LLAMA` with `from` replaced by `to`.
fn refusal(from: &str, to: &str) -> String {
    let json = LLAMA.replace(from, to);
    assert_ne!(json, LLAMA, "`{from}` is not in the test config");
    resolve(&json).unwrap_err().to_string()
}

#[test]
fn absurd_max_position_embeddings_is_refused_naming_the_limit() {
    let err = refusal(
        "\"max_position_embeddings\":512",
        "\"max_position_embeddings\":1000000000000",
    );
    assert!(
        err.contains("config.json")
            && err.contains("`max_position_embeddings`")
            && err.contains(&MAX_POSITION_EMBEDDINGS.to_string())
            && err.contains("1000000000000"),
        "{err}"
    );
}

#[test]
fn head_dim_whose_widths_overflow_is_refused_naming_it() {
    let err = refusal(
        "\"vocab_size\"",
        "\"head_dim\":4611686018427387904,\"vocab_size\"",
    );
    assert!(err.contains("`head_dim` 4611686018427387904"), "{err}");
}

#[test]
fn zero_negative_or_huge_rope_factors_are_refused_naming_the_field() {
    for factor in ["0", "-2.0", "1e300"] {
        let scaling = format!(r#""rope_scaling":{{"rope_type":"linear","factor":{factor}}},"#);
        let err = resolve(&LLAMA.replacen('{', &format!("{{{scaling}"), 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`rope_scaling.factor`"), "{factor}: {err}");
    }
    let llama3 = r#""rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":4.0,"high_freq_factor":4.0,"original_max_position_embeddings":64},"#;
    let err = resolve(&LLAMA.replacen('{', &format!("{{{llama3}"), 1)).unwrap_err();
    assert!(
        err.to_string().contains("`rope_scaling.high_freq_factor`"),
        "{err}"
    );
}

#[test]
fn non_positive_eps_and_theta_are_refused_naming_the_field() {
    let err = refusal("\"rms_norm_eps\":1e-5", "\"rms_norm_eps\":0");
    assert!(err.contains("`rms_norm_eps`"), "{err}");
    let err = refusal("\"rope_theta\":10000.0", "\"rope_theta\":-1");
    assert!(err.contains("`rope_theta`"), "{err}");
}

fn generation(json: &str) -> Result<GenerationConfig> {
    GenerationConfig::from_json(json, Path::new("generation_config.json"))
}

#[test]
fn generation_defaults_are_read() {
    let g =
        generation(r#"{"eos_token_id":[2,3],"temperature":0.7,"top_p":0.9,"top_k":40}"#).unwrap();
    assert_eq!(g.eos_token_ids, vec![2, 3]);
    assert_eq!(
        (g.temperature, g.top_p, g.top_k),
        (Some(0.7), Some(0.9), Some(40))
    );
}

#[test]
fn out_of_range_generation_defaults_are_refused_naming_file_and_field() {
    for (json, field, value) in [
        (r#"{"temperature":-1.0}"#, "`temperature`", "-1"),
        (r#"{"top_p":0}"#, "`top_p`", "0"),
        (r#"{"top_p":1.5}"#, "`top_p`", "1.5"),
        (r#"{"top_k":-1}"#, "`top_k`", "-1"),
        (r#"{"top_k":5000000000}"#, "`top_k`", "5000000000"),
    ] {
        let err = generation(json).unwrap_err().to_string();
        assert!(
            err.contains("generation_config.json") && err.contains(field) && err.contains(value),
            "{json}: {err}"
        );
    }
}

#[test]
fn dtype_auto_follows_the_checkpoint_and_f16_runs_in_f32() {
    use crate::loader::WeightDtype;
    let resolve =
        |choice: &str, checkpoint| choice.parse::<DtypeChoice>().unwrap().resolve(checkpoint);
    assert_eq!(resolve("auto", WeightDtype::BF16), WeightsDtype::Bf16);
    assert_eq!(resolve("auto", WeightDtype::F32), WeightsDtype::F32);
    assert_eq!(resolve("auto", WeightDtype::F16), WeightsDtype::F32);
    assert_eq!(resolve("bf16", WeightDtype::F32), WeightsDtype::Bf16);
    assert_eq!(resolve("bfloat16", WeightDtype::F16), WeightsDtype::Bf16);
    assert_eq!(resolve("f32", WeightDtype::BF16), WeightsDtype::F32);
    let err = "fp8".parse::<DtypeChoice>().unwrap_err().to_string();
    assert!(
        err.contains("dtype") && err.contains("fp8") && err.contains("auto, f32, bf16"),
        "{err}"
    );
}

#[test]
fn quantize_int8_holds_every_matrix_in_q8_0_whatever_the_dtype() {
    let parse = |s: &str| s.parse::<Quantization>();
    for dtype in [WeightsDtype::F32, WeightsDtype::Bf16] {
        assert_eq!(parse("none").unwrap().resolve(dtype), dtype);
        assert_eq!(parse("int8").unwrap().resolve(dtype), WeightsDtype::Q8_0);
    }
    assert_eq!(Quantization::default(), Quantization::None);
    assert_eq!(WeightsDtype::Q8_0.bytes_for(64), 68);
    let err = parse("int4").unwrap_err().to_string();
    assert!(
        err.contains("quantize") && err.contains("int4") && err.contains("none, int8"),
        "{err}"
    );
}
