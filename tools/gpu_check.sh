#!/usr/bin/env bash
# GPU checks, run by hand on a machine with one CUDA GPU (never by CI, which has none).
#
#   bash tools/gpu_check.sh [OUT_DIR] [PART ...]      PART: env, zegclip, toy_clip (default: all)
#
# - env:      nvidia-smi, torch/CUDA versions, and that ovseg, detectron2 and open_clip import.
# - zegclip:  the real VOC ZegCLIP config (ViT-B/16, random CLIP weights), synthetic 512x512
#             batches of 16, 50 AMP-bf16 iterations through `tools/benchmark.py train --data
#             synthetic`: iterations/s, peak memory, model-FLOPs utilisation.
# - toy_clip: pretrains candidate toy ViT CLIPs for the offline world in parallel
#             (tools/pretrain_toy_clip.py --device cuda --workers N); each run writes its
#             checkpoint and metrics.json under OUT_DIR/toy_clip/<config>/.
#
# Where the machine lacks ovseg's pure-Python dependencies, put them in .devsite/site (copies
# of the packages) and .devsite/whl (wheels for the machine's Python); this script puts them
# on PYTHONPATH. Results go to OUT_DIR (default $OUT, else output/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-output/gpu_check}}
shift || true
PARTS=${*:-env zegclip toy_clip}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -d .devsite ]; then
    if compgen -G ".devsite/whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/ovseg-site .devsite/whl/*.whl || exit 1
    fi
    export PYTHONPATH="$PWD:$PWD/.devsite/site:/tmp/ovseg-site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
log() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

for part in $PARTS; do
    case $part in
    env)
        log "environment"
        nvidia-smi >"$OUT_DIR/nvidia-smi.txt" 2>&1 || true
        "$PY" -c "import torch, open_clip, detectron2, ovseg; print('torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('open_clip', \
open_clip.__version__, 'detectron2', detectron2.__version__)" || exit 1
        ;;
    zegclip)
        log "ZegCLIP VOC ViT-B/16 training benchmark (50 iterations, bf16, batch 16, 512x512)"
        "$PY" tools/benchmark.py train --output "$OUT_DIR/zegclip_voc_bench.json" \
            --config-file configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml \
            --data synthetic --batch 16 --size 512 --iters 50 --warmup 5 --precision bf16 \
            --device cuda \
            2>&1 | tee "$OUT_DIR/zegclip_voc_bench.log"
        ;;
    toy_clip)
        # candidates (TOY_SPECS): config:lr:warm-up; all batch 128 with hard negatives, seed 0
        STEPS=${TOY_STEPS:-3000}
        WORKERS=${TOY_WORKERS:-3}
        LIMIT=${TOY_LIMIT_S:-300}
        log "toy CLIP candidates: $STEPS steps each, $WORKERS data processes each, ${LIMIT}s cap"
        pids=()
        SPECS=${TOY_SPECS:-toy_vit_p4:1e-3:50 toy_vit_p4:5e-4:300 toy_vit_p4w96:5e-4:300 \
toy_vit:1e-3:50 toy_vit:5e-4:300}
        for spec in $SPECS; do
            IFS=: read -r config lr warmup <<<"$spec"
            run="$config-lr$lr"
            mkdir -p "$OUT_DIR/toy_clip/$run"
            timeout $((LIMIT + 90)) "$PY" tools/pretrain_toy_clip.py \
                --model-config "configs/clip/$config.json" \
                --output "$OUT_DIR/toy_clip/$run/$config.pt" \
                --work-dir "$OUT_DIR/toy_clip/$run/work" \
                --steps "$STEPS" --lr "$lr" --warmup "$warmup" --batch-size 128 --seed 0 \
                --eval-period 1000 --checkpoint-period 1000 --num-eval 256 --no-progress \
                --max-seconds "$LIMIT" --export-partial \
                --device "${TOY_DEVICE:-cuda}" --workers "$WORKERS" >"$OUT_DIR/toy_clip/$run/log.txt" 2>&1 &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid"; done
        for f in "$OUT_DIR"/toy_clip/*/log.txt; do
            log "$f"
            grep -E "step [0-9]+:|Saved|Wall" "$f" | cut -c1-400
        done
        ;;
    *)
        echo "unknown part $part (env, zegclip, toy_clip)" >&2
        exit 2
        ;;
    esac
done
log "done"
