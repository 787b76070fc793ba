//! `glimpse generate`: runs prompts through the engine loop offline and prints the completions.
//! With one prompt the text streams as it is generated; with several (repeated `--prompt` or a
//! `--prompts-file`), all are submitted at once and batched by the loop, and each completion is
//! printed whole, in input order. Unset sampling flags take the model's defaults the way gRPC and
//! HTTP requests do (the validator resolves them), and the sampling used is logged.

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use glimpse_server::engine_loop::{self, GenerationRequest, StopConditions, StreamEvent};
use glimpse_server::validation::RawSampling;

use super::EngineArgs;
use glimpse_jobs::prompts::{PlainLines, read_prompt_texts};

#[derive(Args)]
#[command(after_help = glimpse_server::validation::SAMPLING_DEFAULTS_HELP)]
pub struct GenerateArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// A prompt (repeat for several). Default: "Once upon a time".
    #[arg(long)]
    prompt: Vec<String>,
    /// A file of prompts: JSON lines `{"prompt": "..."}` or, if not JSON, one prompt per line.
    #[arg(long)]
    prompts_file: Option<PathBuf>,
    /// Tokens to generate at most per prompt.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Tokens to generate at least before EOS or a stop string may end a completion.
    #[arg(long, default_value_t = 0)]
    min_tokens: usize,
    /// Sampling temperature; 0 is greedy. Unset: generation_config.json's, else 1 (as gRPC and
    /// HTTP requests; the sampling used and where each value came from is logged).
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep the k most likely tokens; 0 keeps all. Unset: generation_config.json's, else 0.
    #[arg(long)]
    top_k: Option<u32>,
    /// Nucleus sampling mass, in (0, 1]. Unset: generation_config.json's, else 1.
    #[arg(long)]
    top_p: Option<f32>,
    /// Drop tokens less likely than min_p times the most likely one. Unset: 0.
    #[arg(long)]
    min_p: Option<f32>,
    /// Penalty on tokens already in the prompt or output; > 0. Unset: 1 (none).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Seed of each prompt's random generator. Unset: random.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop strings (repeat for several); cut from the output.
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating through EOS.
    #[arg(long)]
    ignore_eos: bool,
    /// Print a JSON line per prompt (text, token ids, finish reason, usage, timings) instead of text.
    #[arg(long)]
    json: bool,
}

impl GenerateArgs {
    fn prompts(&self) -> anyhow::Result<Vec<String>> {
        let mut prompts = self.prompt.clone();
        if let Some(path) = &self.prompts_file {
            prompts.extend(read_prompt_texts(path, PlainLines::AreItsPrompts)?);
        }
        if prompts.is_empty() {
            prompts.push("Once upon a time".into());
        }
        Ok(prompts)
    }

    /// The sampling flags as a request carries them: unset ones are resolved by the validator,
    /// exactly as for gRPC and HTTP requests.
    fn sampling(&self) -> RawSampling {
        RawSampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            ..RawSampling::default()
        }
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let prompts = args.prompts()?;
    let loaded = args.engine.load()?;
    let tokenizer = loaded.tokenizer.clone();
    let (handle, engine_thread) = engine_loop::spawn(loaded.core, ());
    let sampling = handle.validator().resolve_sampling(args.sampling());
    tracing::info!("sampling: {sampling}");
    let mut streams = Vec::with_capacity(prompts.len());
    for prompt in &prompts {
        let request = GenerationRequest {
            prompt_ids: tokenizer.encode(prompt, true)?,
            sampling: sampling.params.clone(),
            stop: StopConditions {
                max_tokens: args.max_tokens,
                min_tokens: args.min_tokens,
                stop_strings: args.stop.clone(),
                stop_token_ids: Vec::new(),
                ignore_eos: args.ignore_eos,
            },
            skip_special_tokens: true,
            kv_cache: None,
        };
        let request = handle.validator().validate(request)?;
        streams.push(handle.submit(request));
    }
    drop(handle);
    let stream_text = prompts.len() == 1 && !args.json;
    let mut stdout = std::io::stdout().lock();
    for (prompt, mut events) in prompts.iter().zip(streams) {
        let mut text = String::new();
        let mut ids = Vec::new();
        if stream_text {
            write!(stdout, "{prompt}")?;
        }
        loop {
            match events.blocking_recv() {
                Some(StreamEvent::Token(t)) => {
                    ids.push(t.token_id);
                    if stream_text {
                        write!(stdout, "{}", t.text_delta)?;
                        stdout.flush()?;
                    }
                    text.push_str(&t.text_delta);
                }
                Some(StreamEvent::Finished(f)) => {
                    text.push_str(&f.text_delta);
                    if args.json {
                        let line = serde_json::json!({
                            "prompt": prompt, "text": text, "token_ids": ids,
                            "finish_reason": format!("{:?}", f.reason),
                            "prompt_tokens": f.usage.prompt_tokens,
                            "completion_tokens": f.usage.completion_tokens,
                            "time_to_first_token_seconds": f.timings.time_to_first_token.as_secs_f64(),
                            "total_seconds": f.timings.total.as_secs_f64(),
                        });
                        writeln!(stdout, "{line}")?;
                    } else if stream_text {
                        writeln!(stdout, "{}", f.text_delta)?;
                    } else {
                        writeln!(stdout, "{prompt}{text}\n")?;
                    }
                    break;
                }
                Some(StreamEvent::Error(e)) => bail!("prompt {prompt:?}: {e}"),
                None => bail!("prompt {prompt:?}: the engine stopped unexpectedly"),
            }
        }
    }
    engine_thread
        .join
        .join()
        .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
    Ok(())
}
