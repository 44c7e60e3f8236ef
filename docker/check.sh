#!/usr/bin/env bash
# The CPU image, exercised: the smoke fine-tune runs inside it and cuts CER; `serve` and `ui` start inside it and
# answer their health checks from the host; the run written to the mounted runs volume outlives its container
# and a new container reads it; a second build from scratch installs the same packages (pip freeze).
#   docker/check.sh [IMAGE]          (make docker-check; IMAGE defaults to deepsynth-ocr:cpu, built first by make)
# Runs containers with `docker run` where a daemon answers, else with buildah (`buildah from` + `buildah run
# --isolation chroot`: podman run is refused in VMs that forbid setrlimit). Chroot isolation shares the host's
# network, as `docker run --network host` does here, so the servers are probed on the host's loopback.
# REBUILD=0 skips the second build; STACK_ONLY=1 only imports the training stack (make docker-gpu-check, for the GPU
# image on a machine without a GPU). Exit 0 only when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:-deepsynth-ocr:cpu}
STORAGE=(--storage-driver "${PODMAN_STORAGE:-vfs}")
work=$(mktemp -d /tmp/deepsynth-docker-check.XXXXXX)
runs=$work/runs
mkdir -p "$runs" && chmod 0777 "$runs"  # the image's user (uid 1000) writes there
PREFIX=deepsynth-check-${work##*.}  # every container this check makes is named so, and removed at exit
cleanup() {
    if [ "$MODE" = docker ]; then docker ps -aq --filter "name=^$PREFIX-" | xargs -r docker rm -f >/dev/null; return 0; fi
    buildah "${STORAGE[@]}" containers --format '{{.ContainerName}}' 2>/dev/null | grep "^$PREFIX-" \
        | xargs -r buildah "${STORAGE[@]}" rm >/dev/null 2>&1 || true
}
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then MODE=docker
elif command -v buildah >/dev/null; then MODE=buildah
else echo "docker/check.sh: needs a docker daemon or buildah" >&2; exit 2
fi
trap cleanup EXIT
echo "docker/check.sh: $IMAGE with $MODE; runs volume $runs"

# in_image [-e K=V]... CMD...: a new container of IMAGE with the runs volume, removed when CMD ends.
in_image() {
    local envs=()
    while [ "$1" = -e ]; do envs+=("$2"); shift 2; done
    if [ $MODE = docker ]; then
        local flags=(); for e in "${envs[@]}"; do flags+=(-e "$e"); done
        docker run --rm --name "$PREFIX-$RANDOM" --network host -v "$runs:/app/runs" "${flags[@]}" --entrypoint "$1" "$IMAGE" "${@:2}"
    else
        local ctr; ctr=$(buildah "${STORAGE[@]}" from -q --name "$PREFIX-$RANDOM" "$IMAGE")
        for e in "${envs[@]}"; do buildah "${STORAGE[@]}" config --env "$e" "$ctr"; done
        buildah "${STORAGE[@]}" run --isolation chroot -v "$runs:/app/runs" "$ctr" -- "$@"
        buildah "${STORAGE[@]}" rm "$ctr" >/dev/null
    fi
}

# healthy NAME URL SECONDS -- CMD...: start a server in its own container, wait for URL to answer 200, stop it.
healthy() {
    local name=$1 url=$2 wait=$3; shift 4
    setsid bash -c "$(declare -f in_image); MODE=$MODE IMAGE=$IMAGE runs=$runs PREFIX=$PREFIX; STORAGE=(${STORAGE[*]}); in_image $(printf '%q ' "$@")" \
        > "$work/$name.log" 2>&1 &
    local pid=$! start=$SECONDS ok=0
    while [ $((SECONDS - start)) -lt "$wait" ]; do
        if python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('$url', timeout=3).status != 200)" 2>/dev/null; then ok=1; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 2
    done
    kill -TERM -- -"$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ $ok = 1 ]; then echo "PASS $name: $url answered 200 from the host after $((SECONDS - start)) s"
    else echo "FAIL $name: $url did not answer within $wait s; its log:"; tail -20 "$work/$name.log"; return 1; fi
}

if [ "${STACK_ONLY:-0}" = 1 ]; then  # the GPU image on a machine without a GPU: its stack imports, versions listed
    echo "== the training stack imports inside $IMAGE (Unsloth with UNSLOTH_ALLOW_CPU=1: no GPU here)"
    in_image -e UNSLOTH_ALLOW_CPU=1 -e HF_HUB_OFFLINE=1 python -c "
import importlib, sys
import torch, transformers, peft, bitsandbytes, trl, accelerate, opentelemetry.sdk, unsloth, deepsynth_ocr
for name in ('torch', 'transformers', 'peft', 'bitsandbytes', 'trl', 'accelerate', 'unsloth', 'unsloth_zoo'):
    print(f'{name} {importlib.import_module(name).__version__}')
print('python', sys.version.split()[0], '| torch CUDA', torch.version.cuda, '| GPU visible:', torch.cuda.is_available())
" && echo "PASS stack: every package imported" && exit 0
    echo "FAIL stack: an import failed (above)"; exit 1
fi

start=$SECONDS
echo "== smoke fine-tune inside the image"
in_image deepsynth-ocr train --config configs/smoke.yaml -s tracking.wandb=disabled > "$work/smoke.log" 2>&1 \
    || { tail -30 "$work/smoke.log"; echo "FAIL smoke: the run failed"; exit 1; }
run_dir=$(ls -d "$runs"/smoke_* | head -1)
python3 - "$run_dir" <<'EOF'
import json, sys
m = json.load(open(f"{sys.argv[1]}/manifest.json"))["metrics"]
before, after = m["before"]["cer"], m["after"]["cer"]
print(f"{'PASS' if after < 0.6 * before else 'FAIL'} smoke: CER {before:.4f} -> {after:.4f} inside the image "
      "(outside, on this machine: 0.6172 -> 0.2578)")
sys.exit(0 if after < 0.6 * before else 1)
EOF
echo "== the run outlives its container"
listed=$(in_image deepsynth-ocr runs 2>&1)
if grep -q "$(basename "$run_dir")" <<<"$listed" && [ -f "$run_dir/adapter/adapter_model.safetensors" ]; then
    echo "PASS volume: $(basename "$run_dir") is on the host and a new container lists it"
else echo "FAIL volume: a new container does not see $(basename "$run_dir"):"; echo "$listed"; exit 1; fi

echo "== serve and ui inside the image, probed from the host"
healthy serve http://127.0.0.1:18000/ready 180 -- deepsynth-ocr serve --run "runs/$(basename "$run_dir")" --host 127.0.0.1 --port 18000
healthy ui http://127.0.0.1:18700/health 60 -- -e DEEPSYNTH_UI_TOKEN=docker-check-token-0123456789abcdef \
    deepsynth-ocr ui --host 127.0.0.1 --port 18700
echo "checks inside the image: $((SECONDS - start)) s"

if [ "${REBUILD:-1}" = 1 ]; then
    echo "== a second build from scratch installs the same packages"
    in_image pip freeze --all > "$work/freeze-1.txt"
    t=$SECONDS
    NO_CACHE=1 docker/build.sh cpu deepsynth-ocr:cpu-rebuild > "$work/rebuild.log" 2>&1 || { tail -20 "$work/rebuild.log"; exit 1; }
    IMAGE=deepsynth-ocr:cpu-rebuild in_image pip freeze --all > "$work/freeze-2.txt"
    if diff -u "$work/freeze-1.txt" "$work/freeze-2.txt"; then
        echo "PASS rebuild: $(wc -l < "$work/freeze-1.txt") packages, identical pip freeze (rebuilt in $((SECONDS - t)) s)"
    else echo "FAIL rebuild: the package sets differ (above)"; exit 1; fi
fi
echo "docker/check.sh: all checks passed in $((SECONDS - start)) s; logs in $work"
