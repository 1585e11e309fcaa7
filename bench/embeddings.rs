//! Throughput of the in-process embedding provider (EMBEDDING_PROVIDER=local).
//!
//!     EMBEDDING_MODEL_DIR=$(scripts/model.sh) cargo bench --bench embeddings
//!
//! Reports sentences per second for short (about 12 tokens) and long (about
//! 256 tokens, the model's limit) inputs, one at a time and batched. Results
//! go in bench/README.md. Not a test: numbers depend on the machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use context_api::embeddings::LocalModel;

const SHORT: &str = "The quick brown fox jumps over the lazy dog.";

fn long_text() -> String {
    // About 300 tokens: truncated to the model's 256.
    "Context management keeps what an assistant learned about a user, such as preferences, \
     facts and recent tasks, and finds the relevant pieces again when a new question arrives. "
        .repeat(9)
}

async fn measure(model: &LocalModel, text: &str, batch: usize, min_time: Duration) -> (f64, usize) {
    let texts: Vec<String> = (0..batch).map(|i| format!("{i} {text}")).collect();
    // Warm up.
    model.embed(&texts).await.expect("embeds");
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < min_time {
        model.embed(&texts).await.expect("embeds");
        n += batch;
    }
    (n as f64 / started.elapsed().as_secs_f64(), n)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; test runners listing targets (nextest
    // --all-targets runs `--list`) must find nothing to run here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = PathBuf::from(std::env::var("EMBEDDING_MODEL_DIR").expect(
        "set EMBEDDING_MODEL_DIR, e.g. EMBEDDING_MODEL_DIR=$(scripts/model.sh) cargo bench --bench embeddings",
    ));
    let batch: usize = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(32);
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(5);
    let started = Instant::now();
    let model = tokio::task::spawn_blocking(move || LocalModel::load(&dir, 1024, batch))
        .await
        .unwrap()
        .expect("model loads");
    println!(
        "model {} ({} dims), loaded in {:?}",
        model.model_id,
        model.dim,
        started.elapsed()
    );
    println!(
        "threads: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| input | mode | sentences/s | sentences measured |");
    println!("|---|---|---|---|");
    let long = long_text();
    for (name, text) in [
        ("short (12 tokens)", SHORT),
        ("long (256 tokens)", long.as_str()),
    ] {
        for (mode, b) in [("single", 1), ("batched", batch)] {
            let (rate, n) = measure(&model, text, b, Duration::from_secs(seconds)).await;
            println!("| {name} | {mode} ({b}) | {rate:.1} | {n} |");
        }
    }
}
