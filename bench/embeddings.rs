//! Throughput of the in-process embedding provider (EMBEDDING_PROVIDER=local).
//!
//!     EMBEDDING_MODEL_DIR=$(scripts/model.sh) cargo bench --bench embeddings
//!
//! Reports sentences per second for short (about 12 tokens) and long (about
//! 256 tokens, the model's limit) inputs, one at a time and batched, with the
//! GFLOP/s that makes and its share of the GEMM peak measured in the same run
//! (candle's matmul, the gemm crate, on the model's own shapes), and each
//! call's p50 and p99 (one text a call: what a text search waits for). Results go
//! in docs/benchmarks.md. Not a test: numbers depend on the machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use context_api::embeddings::LocalModel;

const SHORT: &str = "The quick brown fox jumps over the lazy dog.";

fn long_text() -> String {
    // About 300 tokens: truncated to the model's 256.
    "Context management keeps what an assistant learned about a user, such as preferences, \
     facts and recent tasks, and finds the relevant pieces again when a new question arrives. "
        .repeat(9)
}

/// The FLOPs of one sentence of `tokens` through all-MiniLM-L6-v2 (6 layers,
/// hidden 384, FFN 1,536): the Q, K, V and output projections (8·T·H²), the
/// FFN (16·T·H²) and attention's scores and weighted sum (4·T²·H) per layer.
fn minilm_flops(tokens: f64) -> f64 {
    let h = 384.0;
    6.0 * (24.0 * tokens * h * h + 4.0 * tokens * tokens * h)
}

/// GFLOP/s of candle's CPU matmul (the gemm crate, as the model runs it) on
/// `[b, m, k] x [b, k, n]`, over at least `min_time`.
fn gemm_rate(b: usize, m: usize, k: usize, n: usize, min_time: Duration) -> f64 {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (b, m, k), &dev).expect("a tensor");
    let w = Tensor::randn(0f32, 1.0, (b, k, n), &dev).expect("a tensor");
    x.matmul(&w).expect("matmul");
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < min_time {
        std::hint::black_box(x.matmul(&w).expect("matmul"));
        runs += 1;
    }
    runs as f64 * 2.0 * (b * m * k * n) as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// Sentences per second over at least `min_time`, the sentences measured,
/// and each call's time: p50 and p99 in milliseconds.
async fn measure(
    model: &LocalModel,
    text: &str,
    batch: usize,
    min_time: Duration,
) -> (f64, usize, f64, f64) {
    let texts: Vec<String> = (0..batch).map(|i| format!("{i} {text}")).collect();
    // Warm up.
    model.embed(&texts).await.expect("embeds");
    let started = Instant::now();
    let mut calls = Vec::new();
    while started.elapsed() < min_time {
        let call = Instant::now();
        model.embed(&texts).await.expect("embeds");
        calls.push(call.elapsed().as_secs_f64() * 1e3);
    }
    let n = calls.len() * batch;
    calls.sort_by(f64::total_cmp);
    let at = |q: f64| calls[((calls.len() - 1) as f64 * q).round() as usize];
    (
        n as f64 / started.elapsed().as_secs_f64(),
        n,
        at(0.5),
        at(0.99),
    )
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
    // The GEMM peak, in this run, on the model's own shapes (a batch of 32
    // long inputs: 8,192 token rows): the FFN's up projection, a square
    // projection, and attention's per-head products (K = 32, 12 a sentence).
    // BENCH_ONLY: run the rows whose "input mode" contains it (e.g. "long
    // (256 tokens) batched"), as bench/embedder-profile.sh does.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let min_time = Duration::from_secs(seconds.min(3));
    let rows = batch * 256;
    let peaks = if only.is_empty() {
        vec![
            (
                format!("FFN up [{rows}x384]x[384x1536]"),
                gemm_rate(1, rows, 384, 1536, min_time),
            ),
            (
                format!("projection [{rows}x384]x[384x384]"),
                gemm_rate(1, rows, 384, 384, min_time),
            ),
            (
                format!("attention scores {} x [256x32]x[32x256]", batch * 12),
                gemm_rate(batch * 12, 256, 32, 256, min_time),
            ),
        ]
    } else {
        Vec::new()
    };
    println!("| GEMM (candle, gemm crate) | GFLOP/s |");
    println!("|---|---|");
    for (name, rate) in &peaks {
        println!("| {name} | {rate:.1} |");
    }
    let peak = peaks.iter().map(|p| p.1).fold(f64::NAN, f64::max);
    println!();
    println!(
        "| input | mode | sentences/s | GFLOP/s | of the GEMM peak | a call: p50 | p99 | sentences measured |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|");
    let long = long_text();
    for (name, text, tokens) in [
        ("short (12 tokens)", SHORT, 12.0),
        ("long (256 tokens)", long.as_str(), 256.0),
    ] {
        for (mode, b) in [("single", 1), ("batched", batch)] {
            if !only.is_empty() && !format!("{name} {mode}").contains(&only) {
                continue;
            }
            let (rate, n, p50, p99) = measure(&model, text, b, Duration::from_secs(seconds)).await;
            let gflops = rate * minilm_flops(tokens) / 1e9;
            println!(
                "| {name} | {mode} ({b}) | {rate:.1} | {gflops:.1} | {:.0}% | {p50:.1} ms | {p99:.1} ms | {n} |",
                100.0 * gflops / peak
            );
        }
    }
}
