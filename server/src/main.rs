//! The `glimpse` command line: `generate` runs prompts offline, `serve` runs the gRPC server,
//! `health` probes a server, `bench` load-tests one, `init-lookahead` writes a random
//! lookahead module.

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
    Bench(glimpse_server::bench::BenchArgs),
    /// Write a randomly initialised lookahead module for a model (load tests, benchmarks).
    InitLookahead(cli::init_lookahead::InitLookaheadArgs),
    /// Train a LookaheadKV module for a model on its own answers (KL to the answer's attention).
    TrainLookahead(cli::train_lookahead::TrainLookaheadArgs),
    /// Write prompts sampled from the model itself (JSON Lines), for training and evaluation.
    SamplePrompts(cli::sample_prompts::SamplePromptsArgs),
    /// Measure how much of the full-cache answer survives each eviction policy and budget.
    Eval(cli::eval::EvalArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    match cli.command {
        Command::Generate(args) => cli::generate::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Health(args) => cli::health::run(args),
        Command::InitLookahead(args) => cli::init_lookahead::run(args),
        Command::TrainLookahead(args) => cli::train_lookahead::run(args),
        Command::SamplePrompts(args) => cli::sample_prompts::run(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Bench(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(glimpse_server::bench::run(args)),
    }
}
