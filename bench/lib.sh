# Shared by bench/scale.sh and bench/ingest.sh (sourced after scripts/lib/common.sh).
VENV="$REPO/.bench-venv"

# The .bench-venv of bench/run.sh, with what these Python benchmarks import.
bench_venv() {
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/python" -c 'import numpy, psycopg' 2>/dev/null || "$VENV/bin/pip" install -q numpy "psycopg[binary]"
}

# The release binary as the image builds it, and the TEI stand-in.
bench_build() {
    cargo build --release --no-default-features --bin context-api
    ensure_tei_stub >/dev/null
}
