//! The lookahead workflow end to end through the real binary on the bundled stories260K:
//! `sample-prompts` writes a prompts file, `train-lookahead` trains a few updates on self-generated
//! prompts with a checkpoint and resumes from it, and `eval` scores the module against the
//! baselines and writes its table, JSON and plots. Bad input is refused with a message that names
//! it. (Quality is not judged here: a few updates on a handful of prompts; `docs/quality.md`
//! holds the measured run.)

use std::path::Path;
use std::process::{Command, Output};

fn glimpse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("the glimpse binary runs")
}

fn ok(args: &[&str]) -> Output {
    let out = glimpse(args);
    assert!(
        out.status.success(),
        "glimpse {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn sample_train_resume_and_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    ok(&[
        "sample-prompts",
        "--count",
        "4",
        "--seed",
        "5",
        "--min-prompt-tokens",
        "40",
        "--max-prompt-tokens",
        "120",
        "--out",
        path(&prompts),
    ]);
    let lines = std::fs::read_to_string(&prompts).unwrap();
    assert_eq!(lines.lines().count(), 4);
    assert!(lines.lines().all(|l| l.starts_with("{\"prompt\":")));

    let checkpoint = dir.path().join("checkpoint");
    let module = dir.path().join("module.safetensors");
    let train = |steps: &str, extra: &[&str]| {
        let mut args = vec![
            "train-lookahead",
            "--self-generate",
            "10",
            "--seed",
            "3",
            "--min-prompt-tokens",
            "40",
            "--max-prompt-tokens",
            "100",
            "--answer-tokens",
            "8",
            "--validation-prompts",
            "2",
            "--batch-size",
            "4",
            "--num-tokens",
            "8",
            "--steps",
            steps,
            "--checkpoint-every",
            "2",
            "--checkpoint-dir",
            path(&checkpoint),
            "--out",
            path(&module),
        ];
        args.extend_from_slice(extra);
        ok(&args)
    };
    train("2", &[]);
    assert!(checkpoint.join("module.safetensors").exists());
    let resumed = train("3", &["--resume", path(&checkpoint)]);
    let log = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        log.contains("step=2"),
        "the resumed run starts at step 2:\n{log}"
    );

    let out_dir = dir.path().join("eval");
    let module_arg = format!("lookahead={}", path(&module));
    let eval = ok(&[
        "eval",
        "--prompts",
        path(&prompts),
        "--budgets",
        "8,16",
        "--answer-tokens",
        "8",
        "--lookahead",
        &module_arg,
        "--out-dir",
        path(&out_dir),
    ]);
    let table = String::from_utf8_lossy(&eval.stdout);
    for policy in ["lookahead", "snapkv", "pyramidkv", "streaming_llm"] {
        assert!(table.contains(policy), "{policy} missing from:\n{table}");
    }
    for file in [
        "eval.md",
        "eval.json",
        "eval-agreement.png",
        "eval-kl.png",
        "eval-recall.png",
        "eval-ttft.png",
    ] {
        assert!(out_dir.join(file).exists(), "{file} not written");
    }
}

/// Prompts with expected answers (two held-out single-needle instances of the retrieval model,
/// 1024 tokens) add the accuracy tables and the needle-depth heat maps; the full cache answers both
/// right (the model's documented capability), and StreamingLLM at budget 16 — which keeps the first
/// 4 and last 12 entries of a prompt whose needles sit at 0 % and ~12 % depth behind hundreds of
/// tokens — cannot answer either.
#[test]
fn prompts_with_answers_are_scored_per_task_with_depth_heat_maps() {
    let dir = tempfile::tempdir().unwrap();
    let all = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/retrieval-eval/retrieval-1024.jsonl"),
    )
    .unwrap();
    let prompts = dir.path().join("needles.jsonl");
    let two: Vec<&str> = all.lines().take(2).collect();
    assert!(two.iter().all(|l| l.contains("\"task\": \"niah_single\"")));
    std::fs::write(&prompts, two.join("\n")).unwrap();
    let out_dir = dir.path().join("eval");
    let eval = ok(&[
        "eval",
        "--model",
        "models/retrieval-byte-6l",
        "--prompts",
        path(&prompts),
        "--budgets",
        "16",
        "--answer-tokens",
        "12",
        "--out-dir",
        path(&out_dir),
    ]);
    let table = String::from_utf8_lossy(&eval.stdout);
    assert!(table.contains("| niah_single | 1.00 |"), "{table}");
    assert!(table.contains("| streaming_llm | 0.00 |"), "{table}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["accuracy"].as_array().unwrap().len(), 2 * (1 + 3));
    for file in [
        "eval-accuracy.png",
        "accuracy-depth-full.png",
        "accuracy-depth-snapkv.png",
        "accuracy-depth-pyramidkv.png",
        "accuracy-depth-streaming_llm.png",
    ] {
        assert!(out_dir.join(file).exists(), "{file} not written");
    }
}

#[test]
fn bad_prompt_files_and_modules_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("bad.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"Once\"}\nnot json\n").unwrap();
    let out = glimpse(&[
        "eval",
        "--prompts",
        path(&prompts),
        "--out-dir",
        path(dir.path()),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:2"), "{err}");

    std::fs::write(&prompts, "{\"prompt\": \"Once upon a time\"}\n").unwrap();
    let module = dir.path().join("missing.safetensors");
    let spec = format!("lookahead={}", path(&module));
    let out = glimpse(&[
        "eval",
        "--prompts",
        path(&prompts),
        "--lookahead",
        &spec,
        "--out-dir",
        path(dir.path()),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.safetensors"));
}
