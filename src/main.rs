use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    context_api::cli::run(context_api::cli::Cli::parse()).await
}
