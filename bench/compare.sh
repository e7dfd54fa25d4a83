#!/usr/bin/env bash
# Side-by-side benchmark: the same workloads on dbx-concurio and on python-diskcache (in a
# virtualenv this script creates), in one run; prints one table (medians and ratios).
#   bench/compare.sh            # headline + benchmark_core mix (1, 2, 4, 8 processes)
#   EXTRAS=1 bench/compare.sh   # also: raw LMDB read, 16 MiB vs cat, 1 000 000 keys
#   ENGINE=1 bench/compare.sh   # only: the hit and set paths beside the raw LMDB floors,
#                               # redb and cacache (RUNS runs, default 3; no python-diskcache)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${ENGINE:-0}" = 1 ]; then
  cargo build -q --release --example compare
  mkdir -p target/compare
  echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(rustc --version)" >&2
  runs=()
  for i in $(seq "${RUNS:-3}"); do
    target/release/examples/compare engine > "target/compare/engine-$i.jsonl"
    runs+=("target/compare/engine-$i.jsonl")
  done
  python3 bench/compare.py engine-table "${runs[@]}"
  exit 0
fi
venv=target/bench-venv
out=target/compare
mkdir -p "$out"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q diskcache
cargo build -q --release --example compare
echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
echo "diskcache $("$venv/bin/python" -c 'import diskcache; print(diskcache.__version__)'), $(rustc --version)" >&2
target/release/examples/compare > "$out/rust.jsonl"
"$venv/bin/python" bench/compare.py > "$out/python.jsonl"
files=("$out/rust.jsonl" "$out/python.jsonl")
if [ "${EXTRAS:-0}" = 1 ]; then
  target/release/examples/compare extras > "$out/extras.jsonl"
  files+=("$out/extras.jsonl")
fi
"$venv/bin/python" bench/compare.py table "${files[@]}"
