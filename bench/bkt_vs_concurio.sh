#!/usr/bin/env bash
# Side by side: a cache hit of `concurio run` and of bkt, same command, both primed, one run.
# Installs bkt from crates.io with cargo (into target/bkt) if it is not on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p concurio
bkt=$(command -v bkt || true)
if [ -z "$bkt" ]; then
  cargo install -q --locked --root target/bkt bkt
  bkt=target/bkt/bin/bkt
fi
echo "$("$bkt" --version 2>/dev/null || echo bkt), $(target/release/concurio --version)" >&2
python3 bench/bkt_vs_concurio.py target/release/concurio "$bkt"
