#!/bin/bash
# The tuner's call floor on a GPU: uhop tune (CLI, default settings, one fresh store) on growing
# problems of one op; per run: tuning time, pick, candidates skipped by the floor and the budget.
#   bash benchmarks/diagnosis/floor_gpu.sh OUT_DIR
out=${1:-/tmp/floor_gpu}; mkdir -p "$out"
export UHOP_HOME=$(mktemp -d)
for spec in "softmax 64x1024" "softmax 512x4096" "softmax 4096x4096" "softmax 8192x50257" \
            "matmul 64x64x64" "matmul 512x512x512" "matmul 2048x2048x2048"; do
  set -- $spec
  timeout 120 python3 -m uhop tune $1 --shape $2 --dtype bfloat16 --device cuda:0 --json "$out/$1_$2.json" >/dev/null 2>"$out/$1_$2.err"
  python3 - "$out/$1_$2.json" "$1 $2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); c = d["chosen"]; ms = d["measurements"]
best = min((m["median_s"] for m in ms if m["status"] == "ok" and m.get("median_s")), default=float("nan"))
fl = [m["candidate"]["backend"] for m in ms if m["status"] == "skipped" and m["reason"].startswith("call floor")]
print(f'{sys.argv[2]:24s} tuning {d["overhead_s"].get("total", 0):5.1f} s  pick {c["backend"]}/{c["template"]} {best*1e6:8.1f} us  '
      f'evaluated {sum(m["status"] != "skipped" for m in ms)}  floor-skipped {len(fl)} {sorted(set(fl))}  '
      f'budget-skipped {sum(m["status"] == "skipped" and m["reason"].startswith("budget") for m in ms)}')
PY
done | tee "$out/summary.txt"
