#!/usr/bin/env bash
# Where the in-process model's time goes: perf samples of batched long inputs
# (bench/embeddings.rs, BENCH_ONLY="long (256 tokens) batched"), summed by
# operation. Writes bench/results/embedder-profile.md.
#
#   bench/embedder-profile.sh            (about 40 s; needs perf)
#
# Environment: BENCH_SECONDS (default 20), BENCH_BATCH (default 32), BENCH_BIN
# (a bench binary to profile instead of this tree's), OUT (default
# bench/results/embedder-profile.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v perf >/dev/null || { echo "embedder-profile: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
dir="$(scripts/model.sh)"
out="${OUT:-bench/results/embedder-profile.md}"
data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT
# BENCH_BIN: another build of the bench (e.g. an older commit's, to compare).
bin="${BENCH_BIN:-}"
[[ -n "$bin" ]] || bin="$(cargo bench --bench embeddings --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "embeddings" and m.get("executable"):
        print(m["executable"])')"
[[ -x "$bin" ]] || { echo "embedder-profile: the bench did not build" >&2; exit 1; }
EMBEDDING_MODEL_DIR="$dir" BENCH_ONLY="long (256 tokens) batched" BENCH_SECONDS="${BENCH_SECONDS:-20}" \
    perf record -q -F 499 -o "$data/perf.data" -- "$bin" --bench >"$data/bench.txt" 2>/dev/null
perf report -i "$data/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null >"$data/report.txt"
python3 - "$data/report.txt" "$data/bench.txt" "${BENCH_REV:-$(git rev-parse --short HEAD)}" >"$out" <<'PY'
import re, sys
report, bench, rev = open(sys.argv[1]).read(), open(sys.argv[2]).read(), sys.argv[3]
# Each operation, by the symbols perf sees (candle's CPU kernels, the gemm
# crate, tokenizers, the allocator and the kernel).
kinds = [
    ("matmul (gemm crate)", r"gemm"),
    ("attention (softmax, exp)", r"softmax|expf|attention"),
    ("GELU (erf)", r"gelu|erf"),
    ("layer norm", r"layer_norm|layernorm|LayerNorm|Norm::apply"),
    ("element-wise (bias, residual, mask, scale ...)", r"binary_map|unary_map|Map1|Map2|affine|Dense::start|vs_|vd_"),
    ("copies and layout (contiguous, transpose, cat)", r"copy|memcpy|memmove|strided|transpose|cat"),
    ("reductions (sum, max)", r"reduce|sum|max"),
    ("tokenizer", r"tokenizers|onig|unicode"),
    ("allocation (user space)", r"malloc|free|alloc|memset"),
]
share = {k: 0.0 for k, _ in kinds}
share["other"] = 0.0
top = []
for line in report.splitlines():
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)$", line)
    if not m:
        continue
    pct, dso, sym = float(m.group(1)), m.group(2), m.group(3).strip()
    top.append((pct, dso, sym))
    if dso.startswith("[kernel"):
        # Page faults of fresh allocations, and the locks and accounting
        # they take.
        share.setdefault("kernel (page faults, memory accounting)", 0.0)
        share["kernel (page faults, memory accounting)"] += pct
        continue
    for k, rx in kinds:
        if re.search(rx, sym, re.I):
            share[k] += pct
            break
    else:
        share["other"] += pct
print(f"# Where the in-process model's time goes\n")
print(f"`bench/embedder-profile.sh` at {rev}: perf samples (499 Hz, both cores) of bench/embeddings.rs")
print("running batched long inputs (32 x 256 tokens) through all-MiniLM-L6-v2, summed by the")
print("operation each symbol belongs to. The bench's own output, with the GEMM peak of the same")
print("build, follows.\n")
print("| operation | share of samples |\n|---|--:|")
for k, v in sorted(share.items(), key=lambda kv: -kv[1]):
    print(f"| {k} | {v:.1f}% |")
print("\nThe 15 hottest symbols:\n")
print("| share | object | symbol |\n|--:|---|---|")
for pct, dso, sym in sorted(top, reverse=True)[:15]:
    sym = sym.replace("|", "\\|")
    print(f"| {pct:.2f}% | {dso} | `{sym.strip()[:110]}` |")
print("\nThe bench:\n")
print("```\n" + bench.strip() + "\n```")
PY
echo "embedder-profile: wrote $out"
