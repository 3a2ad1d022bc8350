#!/usr/bin/env bash
# GPU check: the engine contract suite on every engine kind, then the engine microbenchmark with the
# GPU kinds beside ONNX Runtime CPU on the same machine (so GPU/CPU ratios come from one run).
#
# Run from the repository root on a machine with an NVIDIA GPU and a Python that has numpy, onnx,
# pytest, prometheus-client and (for the torch-cuda kind) a CUDA build of PyTorch:
#
#     bench/gpu_check.sh OUTDIR [PACKAGE ...]
#
# PACKAGE: wheels or .tar.xz archives of site-packages trees (e.g. onnxruntime-gpu unpacked and
# re-packed smaller for a machine without network) installed into a private folder first; nothing is
# downloaded. The checkout itself is made importable as voxserve.* without installing it.
# A PACKAGE that is a folder is put on the Python path as it is.
# Environment: PYTHON (default python3), MOONSHINE_ENCODER (a converted encoder .onnx when
# moonshine-cpp is not installed), BATCHES / ENCODER_BATCHES for the benchmark (BENCH=0 skips it); SPEECH (an audio file of
# JFK's inaugural address, shared/eval/speech/openai-whisper/jfk.flac) turns on the real-server part:
# `voxserve serve --engine onnxruntime-cuda` streamed with voxserve-client, then real-time ASR load
# (ASR_STREAMS on the GPU, ASR_CPU_STREAMS on ONNX Runtime CPU of the same machine; empty skips).
# Writes OUTDIR/{providers.txt,contract.log,engines.json,engines.log,results-section.md} and, with SPEECH,
# OUTDIR/{server.log,e2e.txt,load.log}.
set -u
OUTDIR=${1:?usage: bench/gpu_check.sh OUTDIR [PACKAGE ...]}
shift
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
SITE=$(mktemp -d /tmp/voxserve-site.XXXX)
for pkg in "$@"; do
  case "$pkg" in
    *.whl) "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$pkg" || exit 1 ;;
    *.tar.xz) "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$pkg" "$SITE" \
                || exit 1 ;;
    *) [ -d "$pkg" ] || { echo "unknown package kind: $pkg" >&2; exit 2; }
       EXTRA_PATH="${EXTRA_PATH:+$EXTRA_PATH:}$(cd "$pkg" && pwd)" ;;
  esac
done
NS=$(mktemp -d /tmp/voxserve-ns.XXXX)
mkdir -p "$NS/voxserve"
for d in server engines clients models; do ln -sfn "$PWD/$d" "$NS/voxserve/$d"; done
export PYTHONPATH="$SITE:$NS${EXTRA_PATH:+:$EXTRA_PATH}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUTDIR/providers.txt"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUTDIR/providers.txt"
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except ImportError:
    print("torch not installed")
EOF

probe() {   # can our own engine start ONNX Runtime's CUDA provider? (prints the reason when not)
  "$PY" -c "
from voxserve.engines.onnxrt import OrtEngine
from voxserve.server.stages.vc import model_path
print('cuda-probe-ok:', OrtEngine(model_path(), 'onnxruntime-cuda').description)" 2>&1 | tail -n 3
}
if ! probe | tee -a "$OUTDIR/providers.txt" | grep -q cuda-probe-ok; then
  # Fall back to the pip CUDA libraries' folders on the library path, and say so.
  LIBS=$("$PY" -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for d in site.getsitepackages()
    for p in glob.glob(d + '/nvidia/**/lib*.so*', recursive=True)})))")
  export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "retrying with LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee -a "$OUTDIR/providers.txt"
  probe | tee -a "$OUTDIR/providers.txt"
fi

new_results() {   # what the benchmarks appended to bench/RESULTS.md since the copy, added to OUTDIR
  "$PY" -c "import sys; a, b = (open(p).read() for p in sys.argv[1:3]); open(sys.argv[3], 'a').write(b[len(a):])" \
    "$OUTDIR/.results-before.md" bench/RESULTS.md "$OUTDIR/results-section.md"
}

status=0
rm -f "$OUTDIR/results-section.md"
"$PY" -m pytest -p no:cacheprovider tests/contract -v -rs 2>&1 | tee "$OUTDIR/contract.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

cp bench/RESULTS.md "$OUTDIR/.results-before.md"
[ "${BENCH:-1}" = 0 ] || "$PY" bench/engines.py --record --kinds onnxruntime-cpu onnxruntime-cuda onnxruntime-trt tensorrt \
  --batches "${BATCHES:-1,16,64,256}" --encoder-batches "${ENCODER_BATCHES:-1,4,16}" \
  ${MOONSHINE_ENCODER:+--moonshine-encoder "$MOONSHINE_ENCODER"} --json "$OUTDIR/engines.json" \
  > "$OUTDIR/engines.log" 2>&1 || status=1
tail -n 40 "$OUTDIR/engines.log"
new_results

if [ -n "${SPEECH:-}" ]; then
  # The server started the way users start it, on the GPU, with the project's own client; then real-time
  # ASR load at several stream counts on the GPU and one on the CPU of the same machine.
  BIN=$(mktemp -d /tmp/voxserve-bin.XXXX)
  printf '#!/bin/sh\nexec "%s" -m voxserve.server.cli "$@"\n' "$PY" > "$BIN/voxserve"
  printf '#!/bin/sh\nexec "%s" -m voxserve.clients.cli "$@"\n' "$PY" > "$BIN/voxserve-client"
  chmod +x "$BIN/voxserve" "$BIN/voxserve-client"
  export PATH="$BIN:$PATH"
  PORT=8765
  voxserve serve --engine "${E2E_ENGINE:-onnxruntime-cuda}" --port $PORT > "$OUTDIR/server.log" 2>&1 &
  SRV=$!
  "$PY" - "$PORT" <<'PYEOF' > "$OUTDIR/e2e.txt" 2>&1 || status=1
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(300):
    try:
        if urllib.request.urlopen(url + "/readyz", timeout=2).status == 200:
            break
    except Exception:
        time.sleep(0.5)
print(json.dumps(json.load(urllib.request.urlopen(url + "/v1/info"))["models"], indent=1))
PYEOF
  voxserve-client stream "$SPEECH" --url ws://127.0.0.1:$PORT/v1/stream --pipelines asr,wakeword,vc --json --frame-ms 200 \
    --speed 0 --out /tmp/voxserve-gpu-check-vc.wav >> "$OUTDIR/e2e.txt" 2>&1 || status=1
  kill $SRV; wait $SRV 2>/dev/null
  "$PY" - "$OUTDIR/e2e.txt" <<'PYEOF' || status=1
import json, sys
finals = []
for line in open(sys.argv[1]):
    try:
        ev = json.loads(line)
    except ValueError:
        continue
    if isinstance(ev, dict) and ev.get("type") == "transcript" and ev.get("final"):
        finals.append(ev.get("text", ""))
text = " ".join(finals)
print("e2e final transcript:", text)
sys.exit(0 if "ask not what your country" in text.lower() else 1)
PYEOF
  cp bench/RESULTS.md "$OUTDIR/.results-before.md"
  export VOXSERVE_SHARED=$(mktemp -d /tmp/voxserve-shared.XXXX)      # the load generator reads shared/'s JFK
  mkdir -p "$VOXSERVE_SHARED/eval/speech/openai-whisper" && cp "$SPEECH" "$VOXSERVE_SHARED/eval/speech/openai-whisper/jfk.flac"
  [ -z "${ASR_STREAMS-16 64 128}" ] || "$PY" bench/stage_load.py --pipeline asr --streams ${ASR_STREAMS-16 64 128} \
    --seconds 20 --server-arg=--engine=${E2E_ENGINE:-onnxruntime-cuda} --record > "$OUTDIR/load.log" 2>&1 || status=1
  [ -z "${ASR_CPU_STREAMS-16}" ] || "$PY" bench/stage_load.py --pipeline asr --streams ${ASR_CPU_STREAMS-16} \
    --seconds 20 --server-arg=--engine=onnxruntime-cpu --record >> "$OUTDIR/load.log" 2>&1 || status=1
  tail -n 30 "$OUTDIR/load.log"
  new_results
fi
rm -f "$OUTDIR/.results-before.md"
exit $status
