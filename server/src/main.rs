//! The `glimpse` command line: `generate` runs prompts offline, `serve` runs the gRPC server,
//! `health` probes a server; `bench` load-tests one (crate `glimpse-bench`); `init-lookahead`,
//! `train-lookahead`, `sample-prompts` and `eval` are the offline jobs (crate `glimpse-jobs`).

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "glimpse",
    version,
    about = "Glimpse: an LLM serving engine with learned KV-cache eviction"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        default_value = "text",
        env = "GLIMPSE_LOG_FORMAT"
    )]
    log_format: cli::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate completions for one or more prompts offline, through the engine loop.
    Generate(cli::generate::GenerateArgs),
    /// Serve the gRPC generation API with Prometheus metrics.
    Serve(cli::serve::ServeArgs),
    /// Check a server's gRPC health (exit 0 when SERVING).
    Health(cli::health::HealthArgs),
    /// Load-test a running server like `vllm bench serve` (a gRPC client; no engine inside).
    Bench(glimpse_bench::BenchArgs),
    /// Write a randomly initialised lookahead module for a model (load tests, benchmarks).
    InitLookahead(glimpse_jobs::init_lookahead::InitLookaheadArgs),
    /// Train a LookaheadKV module for a model on its own answers (KL to the answer's attention).
    TrainLookahead(glimpse_jobs::train_lookahead::TrainLookaheadArgs),
    /// Write prompts sampled from the model itself (JSON Lines), for training and evaluation.
    SamplePrompts(glimpse_jobs::sample_prompts::SamplePromptsArgs),
    /// Measure how much of the full-cache answer survives each eviction policy and budget.
    Eval(glimpse_jobs::eval::EvalArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    match cli.command {
        Command::Generate(args) => cli::generate::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Health(args) => cli::health::run(args),
        Command::InitLookahead(args) => Ok(glimpse_jobs::init_lookahead::run(args)?),
        Command::TrainLookahead(args) => Ok(glimpse_jobs::train_lookahead::run(
            args,
            &cli::default_model_dir(),
        )?),
        Command::SamplePrompts(args) => Ok(glimpse_jobs::sample_prompts::run(
            args,
            &cli::default_model_dir(),
        )?),
        Command::Eval(args) => Ok(glimpse_jobs::eval::run(args, &cli::default_model_dir())?),
        Command::Bench(args) => Ok(tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(glimpse_bench::run(args))?),
    }
}
