//! `glimpse generate` through the real binary: `--model ORG/NAME` found in a Hugging Face hub
//! cache laid out as `huggingface_hub` writes it (blobs, `refs/main`, a snapshot of symlinks),
//! here holding the bundled stories260K; a missing id refused naming every place looked; and the
//! sampling used logged with where each value came from; `--dtype` and `--quantize` sizing the
//! packed weights and `--kv-cache-dtype` the KV pool.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const REVISION: &str = "5e1f2a9c";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `glimpse generate ARGS` with the hub cache at `cache` and info logs on stderr.
fn generate(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .arg("generate")
        .args(args)
        .current_dir(repo_root())
        .env("HF_HUB_CACHE", cache)
        .env("RUST_LOG", "info")
        .env_remove("GLIMPSE_MODEL")
        .output()
        .expect("the glimpse binary runs")
}

/// A hub cache holding the bundled model as `models--Org--stories260K`, with a
/// generation_config.json of `generation_config` (the model's sampling defaults).
fn hub_cache_with_bundled_model(root: &Path, generation_config: &str) {
    let repo = root.join("models--Org--stories260K");
    let snapshot = repo.join("snapshots").join(REVISION);
    for dir in [repo.join("blobs"), repo.join("refs"), snapshot.clone()] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(repo.join("refs/main"), REVISION).unwrap();
    let bundled = repo_root().join("models/stories260K");
    let files = ["config.json", "model.safetensors", "tokenizer.json"];
    let files = files
        .iter()
        .chain(["tokenizer_config.json", "special_tokens_map.json"].iter());
    for (i, name) in files.enumerate() {
        let blob = format!("blob{i}");
        std::fs::copy(bundled.join(name), repo.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snapshot.join(name)).unwrap();
    }
    std::fs::write(repo.join("blobs/generation"), generation_config).unwrap();
    std::os::unix::fs::symlink(
        "../../blobs/generation",
        snapshot.join("generation_config.json"),
    )
    .unwrap();
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_hub_id_in_the_cache_generates_with_the_models_sampling_defaults_and_says_so() {
    let cache = tempfile::tempdir().unwrap();
    hub_cache_with_bundled_model(
        cache.path(),
        r#"{"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.0, "top_k": 5}"#,
    );
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("models/stories260K/golden.json")).unwrap(),
    )
    .unwrap();
    let case = &golden["generation_cases"][1];
    let new_tokens = case["greedy_new_ids"].as_array().unwrap().len().to_string();
    let out = generate(
        cache.path(),
        &[
            "--model",
            "Org/stories260K",
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--max-tokens",
            &new_tokens,
            "--top-p",
            "0.9",
        ],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        text(&out.stdout).trim_end(),
        case["greedy_text"].as_str().unwrap().trim_end(),
        "temperature 0 from generation_config.json decodes greedily"
    );
    for part in [
        "model found in the hub cache",
        "temperature=0 (generation_config.json)",
        "top_k=5 (generation_config.json)",
        "top_p=0.9 (request)",
        "min_p=0 (built-in default)",
    ] {
        assert!(stderr.contains(part), "no {part:?} in:\n{stderr}");
    }
}

#[test]
fn without_model_defaults_generate_samples_at_temperature_one_like_the_servers() {
    let cache = tempfile::tempdir().unwrap();
    let out = generate(cache.path(), &["--max-tokens", "2", "--seed", "3"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for part in ["temperature=1 (built-in default)", "seed=3 (request)"] {
        assert!(stderr.contains(part), "no {part:?} in:\n{stderr}");
    }
}

#[test]
fn a_missing_hub_id_names_every_place_looked_and_that_nothing_is_downloaded() {
    let cache = tempfile::tempdir().unwrap();
    let out = generate(
        cache.path(),
        &["--model", "Org/absent", "--max-tokens", "2"],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a missing model must fail");
    let refs = cache.path().join("models--Org--absent/refs/main");
    for part in [
        "model `Org/absent` not found",
        "Org/absent (no such folder)",
        &refs.display().to_string(),
        "never downloads",
        "huggingface-cli download Org/absent",
    ] {
        assert!(stderr.contains(part), "no {part:?} in:\n{stderr}");
    }
}

#[test]
fn help_states_the_model_lookup_without_download_and_the_default_sampling() {
    for command in ["generate", "serve"] {
        let out = Command::new(env!("CARGO_BIN_EXE_glimpse"))
            .args([command, "--help"])
            .output()
            .expect("the glimpse binary runs");
        let help = text(&out.stdout);
        for part in [
            "No download",
            "~/.cache/huggingface/hub",
            "Default sampling (the same for `glimpse generate`, gRPC and HTTP",
        ] {
            assert!(
                help.contains(part),
                "glimpse {command} --help lacks {part:?}"
            );
        }
    }
}

/// The number `field` of the start-up log line `message`.
fn logged_number(stderr: &str, message: &str, field: &str) -> usize {
    let line = stderr
        .lines()
        .find(|l| l.contains(message))
        .unwrap_or_else(|| panic!("no `{message}` line in:\n{stderr}"));
    let value = line
        .split(&format!("{field}="))
        .nth(1)
        .unwrap_or_else(|| panic!("no {field} in {line}"));
    value
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn dtype_bf16_halves_the_packed_weights_and_an_unknown_dtype_is_refused_by_name() {
    let cache = tempfile::tempdir().unwrap();
    let run = |dtype: &str| {
        let out = generate(
            cache.path(),
            &["--dtype", dtype, "--max-tokens", "2", "--temperature", "0"],
        );
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "--dtype {dtype}: {stderr}");
        assert!(stderr.contains(&format!("dtype={dtype}")), "{stderr}");
        logged_number(&stderr, "weights packed for the CPU", "weight_bytes")
    };
    let (f32_bytes, bf16_bytes) = (run("f32"), run("bf16"));
    // Half, but for the norm weights, which stay f32.
    let ratio = bf16_bytes as f64 / f32_bytes as f64;
    assert!((0.5..0.51).contains(&ratio), "{bf16_bytes} / {f32_bytes}");
    let out = generate(cache.path(), &["--dtype", "fp8", "--max-tokens", "2"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "an unknown dtype must fail");
    for part in ["--dtype", "fp8", "auto, f32, bf16"] {
        assert!(stderr.contains(part), "no {part:?} in:\n{stderr}");
    }
}

#[test]
fn quantize_int8_packs_the_weights_in_q8_0_at_about_a_quarter_of_f32_and_an_unknown_one_is_refused()
{
    let cache = tempfile::tempdir().unwrap();
    // Returns the packed bytes, after checking the dtype the log names.
    let run = |quantize: &str, logged_dtype: &str| {
        let args = [
            "--quantize",
            quantize,
            "--dtype",
            "f32",
            "--max-tokens",
            "2",
            "--temperature",
            "0",
        ];
        let out = generate(cache.path(), &args);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "--quantize {quantize}: {stderr}");
        assert!(
            stderr.contains(&format!("dtype={logged_dtype}")),
            "{stderr}"
        );
        logged_number(&stderr, "weights packed for the CPU", "weight_bytes")
    };
    let (f32_bytes, int8_bytes) = (run("none", "f32"), run("int8", "q8_0"));
    // 34 bytes per 32 values of 4 (0.266), plus the f32 norm weights and the padding of
    // down_proj's 172 columns to 6 blocks.
    let ratio = int8_bytes as f64 / f32_bytes as f64;
    assert!((0.26..0.28).contains(&ratio), "{int8_bytes} / {f32_bytes}");
    let out = generate(cache.path(), &["--quantize", "int4", "--max-tokens", "2"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "an unknown quantization must fail");
    for part in ["--quantize", "int4", "none, int8"] {
        assert!(stderr.contains(part), "no {part:?} in:\n{stderr}");
    }
}

#[test]
fn kv_cache_dtype_bf16_and_fp8_hold_2x_and_4x_the_blocks_in_the_same_bytes_and_others_are_refused()
{
    let cache = tempfile::tempdir().unwrap();
    let run = |kv_dtype: &str| {
        let args = [
            "--kv-cache-dtype",
            kv_dtype,
            "--kv-memory-bytes",
            "4096000", // 200 f32 blocks of stories260K, exactly
            "--max-tokens",
            "2",
            "--temperature",
            "0",
        ];
        let out = generate(cache.path(), &args);
        let stderr = text(&out.stderr);
        assert!(
            out.status.success(),
            "--kv-cache-dtype {kv_dtype}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("kv_cache_dtype={kv_dtype}")),
            "{stderr}"
        );
        assert_eq!(
            stderr.contains("fp8 KV scales calibrated"),
            kv_dtype == "fp8",
            "fp8 (only) logs its calibrated scales:\n{stderr}"
        );
        logged_number(&stderr, "KV cache pool sized", "num_blocks")
    };
    let (f32_blocks, bf16_blocks, fp8_blocks) = (run("f32"), run("bf16"), run("fp8"));
    assert_eq!(bf16_blocks, 2 * f32_blocks);
    assert_eq!(fp8_blocks, 4 * f32_blocks);
    let out = generate(
        cache.path(),
        &["--kv-cache-dtype", "fp4", "--max-tokens", "2"],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "an unknown KV cache dtype must fail");
    for part in ["--kv-cache-dtype", "fp4", "auto, f32, bf16, fp8"] {
        assert!(stderr.contains(part), "no {part:?} in:\n{stderr}");
    }
}
