#!/usr/bin/env bash
# Engine scaling sweep: tokens/s and peak memory, lora_engine vs peft + a torch loop, as the sequence length
# (batch 1, gradient checkpointing on), the batch and the rank grow; writes section "scaling" of
# docs/BENCHMARKS.md with a linearity check of memory growth against tokens per step.
#
#   bash benchmarks/engine_scaling.sh                      # CPU, d=256 L=4, 1 torch thread per side (~10 min)
#   DEVICE=cuda THREADS=0 STEPS=20 HIDDEN=1024 LAYERS=8 SEQS="512 1024 2048 4096 8192" bash benchmarks/engine_scaling.sh
#
# DEVICE, THREADS, REPEATS as in engine_matrix.sh; STEPS: optimizer steps per run (1 untimed);
# SEQS: the sequence lengths; SECTION / NO_WRITE as in engine_matrix.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu} THREADS=${THREADS:-1} STEPS=${STEPS:-4} REPEATS=${REPEATS:-1}
HIDDEN=${HIDDEN:-256} LAYERS=${LAYERS:-4} SEQS=${SEQS:-128 256 512 1024 2048}
SECTION=${SECTION:-scaling} PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python
OUT=$(mktemp -d /tmp/engine-scaling-XXXXXX)

run() {  # run NAME ARGS...: one bench setting, its JSON report kept in $OUT/NAME.json
  local name=$1
  shift
  echo "== $name ($(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a))" >&2
  "$PYTHON" -m lora_engine.bench --device "$DEVICE" --threads "$THREADS" --json --steps "$STEPS" --warmup 1 \
    --repeats "$REPEATS" --hidden-size "$HIDDEN" --layers "$LAYERS" --gradient-checkpointing "$@" >"$OUT/$name.json"
}

seq_reports=()
for seq in $SEQS; do
  run "seq$seq" --batch-size 1 --seq-len "$seq"
  seq_reports+=("$OUT/seq$seq.json")
done
if [ -f "$OUT/seq256.json" ]; then cp "$OUT/seq256.json" "$OUT/batch1.json"; else run batch1 --batch-size 1 --seq-len 256; fi
for batch in 4 16; do run "batch$batch" --batch-size "$batch" --seq-len 256; done
for rank in 8 64 256; do run "rank$rank" --batch-size 1 --seq-len 512 --rank "$rank" --targets all-linear; done

"$PYTHON" -m lora_engine.bench_scaling --seq "${seq_reports[@]}" \
  --batch "$OUT/batch1.json" "$OUT/batch4.json" "$OUT/batch16.json" \
  --rank "$OUT/rank8.json" "$OUT/rank64.json" "$OUT/rank256.json" >"$OUT/scaling.md"
if [ -n "${NO_WRITE:-}" ]; then cat "$OUT/scaling.md"; else "$PYTHON" benchmarks/report.py "$SECTION" "$OUT/scaling.md"; fi
echo "reports kept in $OUT" >&2
