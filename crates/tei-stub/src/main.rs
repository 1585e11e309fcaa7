//! `tei-stub`: the tests' TEI stand-in as a server, for development, the
//! benchmark and the container stack (deploy/stand-ins/tei).
//!
//!     cargo run --release -p tei-stub -- --port 8080 --dim 768

use std::time::Duration;

use clap::Parser;
use tei_stub::TeiStub;

/// A TEI-compatible embedding stand-in: deterministic bag-of-words vectors.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[arg(long, default_value_t = 768)]
    dim: usize,
    /// TEI's max_client_batch_size: larger batches get 413.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    #[arg(long, default_value = tei_stub::MODEL_ID)]
    model_id: String,
    /// Added to every /embed call, like a model's compute time.
    #[arg(long, default_value_t = 0.0)]
    latency_ms: f64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "tei-stub: cannot listen on {}:{}: {e}",
                args.host, args.port
            );
            std::process::exit(1);
        }
    };
    let stub = TeiStub::serve(listener, args.dim, args.max_batch, &args.model_id);
    stub.set_delay(Duration::from_secs_f64(args.latency_ms.max(0.0) / 1000.0));
    println!(
        "tei-stub: {} dim={} on http://{}:{}",
        args.model_id, args.dim, args.host, args.port
    );
    // SIGINT or SIGTERM: as PID 1 in a container, SIGTERM has no default action.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
