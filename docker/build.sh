#!/usr/bin/env bash
# Build a kit image with whichever container engine this machine has, and say which.
#   docker/build.sh base                 # a Debian bookworm base image from Debian packages (mmdebstrap)
#   docker/build.sh cpu [TAG]            # docker/Dockerfile.cpu -> deepsynth-ocr:cpu
#   docker/build.sh gpu [TAG]            # docker/Dockerfile     -> deepsynth-ocr:gpu
# Environment: BASE=public|local|auto (auto, the default: the public base image when the engine can pull it,
# else the local Debian one, built first if missing); NO_CACHE=1 rebuilds every layer; TORCH_WHEELS=DIR holds
# the CPU torch wheel when download.pytorch.org is unreachable (default /opt/wheels when it holds one); PIP_CERT
# (pip's own variable) is the CA bundle pip inside the build trusts, for a TLS-inspecting proxy.
# Engines: docker when its daemon answers; else podman, with vfs storage and chroot isolation, which build
# inside an unprivileged VM or container where overlay mounts and namespaces are refused (slower, more disk).
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:?usage: docker/build.sh base|cpu|gpu [TAG]}
LOCAL_BASE=localhost/deepsynth-base:bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# A fresh Debian machine has neither engine: as root with apt (as `make setup` installs its system packages),
# install Debian's podman, buildah and mmdebstrap first, saying so.
if ! { command -v docker >/dev/null && docker info >/dev/null 2>&1; } && ! command -v podman >/dev/null \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "docker/build.sh: no container engine; installing Debian's podman, buildah and mmdebstrap (apt)"
    apt-get install -y -q podman buildah mmdebstrap >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q podman buildah mmdebstrap >/dev/null; }
fi
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=(docker); BUILD=(docker build)
elif command -v podman >/dev/null; then
    ENGINE=(podman --storage-driver "${PODMAN_STORAGE:-vfs}")
    # vfs copies the whole root file system for every layer (about a minute each once torch is in): one commit
    # at the end instead of one per instruction, so no layer cache between builds.
    BUILD=("${ENGINE[@]}" build --isolation chroot --layers="$([ "${PODMAN_STORAGE:-vfs}" = vfs ] && echo false || echo true)")
else
    echo "docker/build.sh: neither a running docker daemon nor podman; install one (Debian: apt install podman buildah)" >&2
    exit 2
fi

build_base() {
    command -v mmdebstrap >/dev/null || { echo "docker/build.sh: the local base needs mmdebstrap (apt install mmdebstrap)" >&2; exit 2; }
    local tar; tar=$(mktemp --suffix=.tar)
    echo "docker/build.sh: building $LOCAL_BASE from Debian packages ($DEBIAN_MIRROR)"
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$tar" "deb $DEBIAN_MIRROR bookworm main"
    "${ENGINE[@]}" import "$tar" "$LOCAL_BASE" >/dev/null
    rm -f "$tar"
}

base_for() {  # the BASE_IMAGE build argument for a Dockerfile whose default is $1
    local public=$1
    case "${BASE:-auto}" in
        public) echo "$public" ;;
        local) "${ENGINE[@]}" image exists "$LOCAL_BASE" 2>/dev/null || "${ENGINE[@]}" image inspect "$LOCAL_BASE" >/dev/null 2>&1 || build_base >&2; echo "$LOCAL_BASE" ;;
        auto)
            if "${ENGINE[@]}" image inspect "$public" >/dev/null 2>&1 || timeout 120 "${ENGINE[@]}" pull -q "$public" >/dev/null 2>&1; then
                echo "$public"
            else
                echo "docker/build.sh: cannot pull $public; using the local Debian base" >&2
                BASE=local base_for "$public"
            fi ;;
        *) echo "docker/build.sh: BASE must be public, local or auto, got ${BASE}" >&2; exit 2 ;;
    esac
}

case "$what" in
    base) echo "docker/build.sh: engine ${ENGINE[*]}"; build_base; exit 0 ;;
    cpu) dockerfile=docker/Dockerfile.cpu; tag=${2:-deepsynth-ocr:cpu} ;;
    gpu) dockerfile=docker/Dockerfile; tag=${2:-deepsynth-ocr:gpu} ;;
    *) echo "docker/build.sh: build base, cpu or gpu, not $what" >&2; exit 2 ;;
esac

public=$(sed -n 's/^ARG BASE_IMAGE=//p' "$dockerfile")
base=$(base_for "$public")
args=(--build-arg "BASE_IMAGE=$base" --build-arg "UID=${UID_IN_IMAGE:-1000}" -f "$dockerfile" -t "$tag")
[ "${NO_CACHE:-0}" = 1 ] && args+=(--no-cache)
wheels=${TORCH_WHEELS-/opt/wheels}
if [ "$what" = cpu ] && [ "${ENGINE[0]}" = podman ] && [ -n "$wheels" ] && compgen -G "$wheels/torch-2.13.0+cpu-*.whl" >/dev/null; then
    args+=(--build-arg "TORCH_WHEELS=/torch-wheels" -v "$(realpath "$wheels"):/torch-wheels:ro")
fi
# pip inside the build trusts what pip here trusts: a proxy's CA named by PIP_CERT (podman mounts it read-only).
if [ "${ENGINE[0]}" = podman ] && [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
    args+=(--build-arg "BUILD_CA=/build-ca.pem" -v "$(realpath "$PIP_CERT"):/build-ca.pem:ro")
fi
echo "docker/build.sh: engine ${ENGINE[*]}; $dockerfile on $base -> $tag"
start=$SECONDS
"${BUILD[@]}" "${args[@]}" .
echo "docker/build.sh: built $tag in $((SECONDS - start)) s with ${ENGINE[0]}"
