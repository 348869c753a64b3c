#!/usr/bin/env bash
# The engine benchmark matrix: lora_engine vs peft + a torch loop over precisions, LoRA/QLoRA, ranks, targets,
# and the ~30M-parameter MFU model; writes section "engine" of docs/BENCHMARKS.md (the sequence-length, batch
# and rank sweep is benchmarks/engine_scaling.sh, section "scaling").
#
#   bash benchmarks/engine_matrix.sh                       # CPU, 1 torch thread per side (the committed figures)
#   DEVICE=cuda THREADS=0 STEPS=50 REPEATS=3 bash benchmarks/engine_matrix.sh
#
# DEVICE: auto|cpu|cuda (lora_engine/device.py). THREADS: torch threads in both sides (0: torch's default).
# STEPS / SMALL_STEPS: optimizer steps of the main runs / of the slow ones (bf16 on a CPU without bf16
# instructions, the 30M model). REPEATS: alternate the sides this many times, keep the fastest.
# DATA_FILE: the instruction data set of rows 07-13 (default: LLaMA-Factory's Alpaca demo from ../shared/data;
# rows 01-06 train on packed rows, where both sides do nearly the same work; 07-13 on the examples as users upload them).
# SECTION: the section to write (NO_WRITE=1 prints the Markdown instead).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu} THREADS=${THREADS:-1} STEPS=${STEPS:-12} SMALL_STEPS=${SMALL_STEPS:-8} REPEATS=${REPEATS:-2}
SECTION=${SECTION:-engine} PYTHON=${PYTHON:-.venv/bin/python}
DATA_FILE=${DATA_FILE:-../shared/data/peers/alpaca_en_demo.json} SFT_SEQ=${SFT_SEQ:-512}
[ -x "$PYTHON" ] || PYTHON=python
OUT=$(mktemp -d /tmp/engine-matrix-XXXXXX)
# the section's heading and the machine, as it is when the matrix starts
"$PYTHON" -c "from benchmarks.report import machine_markdown; print(machine_markdown())" >"$OUT/machine.md"

run() {  # run NAME ARGS...: one bench setting, its JSON report kept in $OUT/NAME.json
  local name=$1
  shift
  echo "== $name ($(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a))" >&2
  "$PYTHON" -m lora_engine.bench --device "$DEVICE" --threads "$THREADS" --json "$@" >"$OUT/$name.json"
}

run 01-fp32-lora-r8-qv --steps "$STEPS" --warmup 2 --repeats "$REPEATS"
run 02-fp32-nf4-r8-qv --steps "$STEPS" --warmup 2 --quant nf4 --repeats "$REPEATS"
run 03-fp32-lora-r64-all --steps "$STEPS" --warmup 2 --rank 64 --targets all-linear --repeats "$REPEATS"
run 04-bf16-lora-r8-qv --steps "$SMALL_STEPS" --warmup 2 --batch-size 2 --precision bf16 --repeats "$REPEATS"
run 05-bf16-nf4-r8-qv --steps "$SMALL_STEPS" --warmup 2 --batch-size 2 --precision bf16 --quant nf4 --repeats "$REPEATS"
run 06-mfu-30m-fp32 --steps "$SMALL_STEPS" --warmup 2 --hidden-size 512 --layers 8 --repeats "$REPEATS"
if [ -f "$DATA_FILE" ]; then
  sft() { run "$1" --data-file "$DATA_FILE" --seq-len "$SFT_SEQ" --warmup 2 --repeats "$REPEATS" "${@:2}"; }
  sft 07-sft-fp32-lora-r8-qv --steps "$STEPS"
  sft 08-sft-fp32-nf4-r8-qv --steps "$STEPS" --quant nf4
  sft 09-sft-fp32-lora-r64-all --steps "$STEPS" --rank 64 --targets all-linear
  sft 10-sft-bf16-lora-r8-qv --steps "$SMALL_STEPS" --precision bf16
  sft 11-sft-bf16-nf4-r8-qv --steps "$SMALL_STEPS" --precision bf16 --quant nf4
  sft 12-sft-bf16-lora-r64-all --steps "$SMALL_STEPS" --precision bf16 --rank 64 --targets all-linear
  sft 13-sft-fp32-nf4-r64-all --steps "$STEPS" --quant nf4 --rank 64 --targets all-linear
else
  echo "no $DATA_FILE: rows 07-13 (instruction data) left out" >&2
fi

{
  echo "## Engine benchmark (\`bash benchmarks/engine_matrix.sh\`: \`python -m lora_engine.bench\` per row)"
  echo
  cat "$OUT/machine.md"
  echo "Rows ran one after another from then on: device $DEVICE, $THREADS torch thread(s) per side (0: torch's" \
       "default), $STEPS steps ($SMALL_STEPS for bf16 and the d=512 model), every row alternating the sides $REPEATS times and keeping the fastest." \
       "Rows 01-06 train on packed rows of random sentences (every token a target; greedy packing leaves rows a little short: ~93% real tokens at seq 256, nearly the same" \
       "work on both sides); rows 07-13 on $(basename "$DATA_FILE") as uploaded (one example per row, prompt masked, up to $SFT_SEQ tokens)."
  echo
  "$PYTHON" -m lora_engine.bench_report "$OUT"/*.json
} >"$OUT/engine.md"
if [ -n "${NO_WRITE:-}" ]; then cat "$OUT/engine.md"; else "$PYTHON" benchmarks/report.py "$SECTION" "$OUT/engine.md"; fi
echo "reports kept in $OUT" >&2
