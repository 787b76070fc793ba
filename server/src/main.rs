//! The `glimpse` command line: `generate` runs prompts offline through the engine loop.

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    match cli.command {
        Command::Generate(args) => cli::generate::run(args),
    }
}
