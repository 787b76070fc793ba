//! `--device cuda:N` through the real binary (`generate`, `serve`, `eval`). CI machines have no GPU and no NVIDIA driver, so
//! the real behaviour there is a refusal at start-up naming the missing driver and what to do
//! about it, with a non-zero exit (no mock: the driver library really is absent). On a machine
//! with the driver these runs use the default f32 KV cache, which the CUDA backend refuses (its
//! kernels store bf16), so they still fail cleanly at start-up: a typed error naming the device
//! (or NVRTC, when it is missing), never a panic.

use std::path::{Path, PathBuf};
use std::process::Output;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `glimpse SUBCOMMAND --device DEVICE ARGS` on the bundled model.
fn run_on(subcommand: &str, device: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .arg(subcommand)
        .args(["--device", device])
        .args(args)
        .current_dir(repo_root())
        .env_remove("GLIMPSE_MODEL")
        .env_remove("GLIMPSE_DEVICE")
        .output()
        .expect("the glimpse binary runs")
}

/// Whether this machine has the NVIDIA kernel driver loaded (then `libcuda` is usually there,
/// and the run gets further: a device index out of range, NVRTC missing, or the f32 KV cache
/// refused).
fn has_nvidia_driver() -> bool {
    Path::new("/proc/driver/nvidia").exists()
}

fn check_refused(output: &Output, ordinal: usize) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "must exit non-zero:\n{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "a typed error, not a panic:\n{stderr}"
    );
    let device = format!("device cuda:{ordinal}");
    if has_nvidia_driver() {
        // Past the probe, only NVRTC's errors name no device.
        assert!(
            stderr.contains(&device) || stderr.contains("NVRTC"),
            "names {device} or NVRTC:\n{stderr}"
        );
    } else {
        assert!(
            stderr.contains(&format!(
                "{device}: the NVIDIA driver library (libcuda.so.1) was not found"
            )) && stderr.contains("install the NVIDIA driver")
                && stderr.contains("--gpus all"),
            "says the driver is missing and how to expose the GPU:\n{stderr}"
        );
    }
}

#[test]
fn generate_on_cuda_refuses_at_start_up_naming_what_is_missing() {
    let output = run_on(
        "generate",
        "cuda:0",
        &["--prompt", "Once", "--max-tokens", "1"],
    );
    check_refused(&output, 0);
}

#[test]
fn serve_on_cuda_exits_before_listening_naming_what_is_missing() {
    let output = run_on("serve", "cuda:3", &[]);
    check_refused(&output, 3);
}

#[test]
fn eval_on_cuda_refuses_before_evaluating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"Once upon a time\"}\n").unwrap();
    let out_dir = dir.path().join("eval");
    let output = run_on(
        "eval",
        "cuda:1",
        &[
            "--prompts",
            prompts.to_str().unwrap(),
            "--out-dir",
            out_dir.to_str().unwrap(),
        ],
    );
    check_refused(&output, 1);
    assert!(
        !out_dir.join("eval.json").exists(),
        "no report from a refused run"
    );
}

#[test]
fn a_misspelt_device_is_refused_when_the_flags_are_parsed() {
    let output = run_on("generate", "gpu:0", &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "a usage error:\n{stderr}");
    assert!(
        stderr.contains("--device")
            && stderr.contains("expected `cpu`, `cuda` or `cuda:N`, got `gpu:0`"),
        "{stderr}"
    );
}
