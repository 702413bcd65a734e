#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (CPU only, Release) as the serving baseline for
# benchmarks/serve_throughput.py.
#
#   scripts/build_llama_server.sh [DEST]     (default: <repo>/.cache/llama.cpp/bin/llama-server)
#
# Only package registries are reachable here, so the llama.cpp sources come from the
# `llama-cpp-python` sdist on PyPI (it vendors llama.cpp under vendor/llama.cpp).
# Environment knobs:
#   LLAMA_BUILD_DIR             scratch folder (default /tmp/llama-build)
#   LLAMA_CPP_PYTHON_VERSION    pin the sdist version (default: newest)
#   LLAMA_BUILD_JOBS            parallel compile jobs (default: nproc)
#   LLAMA_BUILD_FORCE=1         rebuild even if DEST already works
# Idempotent: exits at once when DEST exists and answers --version.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$REPO/.cache/llama.cpp/bin/llama-server}"
WORK="${LLAMA_BUILD_DIR:-/tmp/llama-build}"
JOBS="${LLAMA_BUILD_JOBS:-$(nproc)}"
PIN="${LLAMA_CPP_PYTHON_VERSION:-}"

log() { printf '[build_llama_server] %s\n' "$*" >&2; }

if [[ "${LLAMA_BUILD_FORCE:-0}" != 1 && -x "$DEST" ]] && "$DEST" --version >/dev/null 2>&1; then
    log "already built: $DEST ($("$DEST" --version 2>&1 | grep -m1 -i version || true))"
    exit 0
fi

# A binary inside the checkout must not end up in git: warn (do not edit .gitignore from here).
case "$DEST" in
    "$REPO"/*)
        if command -v git >/dev/null && git -C "$REPO" rev-parse >/dev/null 2>&1 \
            && ! git -C "$REPO" check-ignore -q "$DEST"; then
            log "WARNING: $DEST is not git-ignored; add '.cache/' to .gitignore"
        fi
        ;;
esac

PY="$REPO/.venv/bin/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"
mkdir -p "$WORK/sdist"

# 1. Sources: the llama-cpp-python sdist (reused when already downloaded).
SPEC="llama-cpp-python${PIN:+==$PIN}"
SDIST="$(ls -1t "$WORK"/sdist/llama_cpp_python-${PIN:-*}.tar.gz 2>/dev/null | head -n1 || true)"
if [[ -z "$SDIST" ]]; then
    log "downloading the $SPEC sdist from PyPI"
    "$PY" -m pip download --quiet --no-binary :all: --no-deps "$SPEC" -d "$WORK/sdist"
    SDIST="$(ls -1t "$WORK"/sdist/llama_cpp_python-*.tar.gz | head -n1)"
fi
SRC_ROOT="$WORK/sdist/$(basename "$SDIST" .tar.gz)"
if [[ ! -f "$SRC_ROOT/vendor/llama.cpp/CMakeLists.txt" ]]; then
    log "unpacking $(basename "$SDIST")"
    tar -xzf "$SDIST" -C "$WORK/sdist"
fi
SRC="$SRC_ROOT/vendor/llama.cpp"
[[ -f "$SRC/tools/server/CMakeLists.txt" ]] || { log "no llama.cpp server sources in $SDIST"; exit 1; }

# 2. cmake >= 3.14 (llama.cpp's minimum): the system one, else pip's `cmake` in a scratch venv.
CMAKE="$(command -v cmake || true)"
cmake_ok() {
    local v
    v="$("$1" --version 2>/dev/null | head -n1 | grep -oE '[0-9]+\.[0-9]+' | head -n1)" || return 1
    [[ -n "$v" ]] && printf '%s\n3.14\n' "$v" | sort -V -C -r
}
if [[ -z "$CMAKE" ]] || ! cmake_ok "$CMAKE"; then
    if [[ ! -x "$WORK/cmake-venv/bin/cmake" ]]; then
        log "installing cmake from PyPI into $WORK/cmake-venv"
        "$PY" -m venv "$WORK/cmake-venv"
        "$WORK/cmake-venv/bin/pip" install --quiet cmake ninja
    fi
    CMAKE="$WORK/cmake-venv/bin/cmake"
    export PATH="$WORK/cmake-venv/bin:$PATH"
fi
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)

# 3. Configure and build only the server: CPU backend tuned for this host, static (relocatable
# binary), and nothing that downloads at build time (web UI assets, OpenSSL/BoringSSL).
BUILD="$SRC_ROOT/build-server"
log "configuring in $BUILD with $("$CMAKE" --version | head -n1)"
nice -n 10 "$CMAKE" -S "$SRC" -B "$BUILD" "${GEN[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_LLGUIDANCE=OFF \
    >"$BUILD.configure.log" 2>&1 || { tail -n 40 "$BUILD.configure.log" >&2; exit 1; }
log "building llama-server with $JOBS job(s) (log: $BUILD.build.log)"
nice -n 10 "$CMAKE" --build "$BUILD" --config Release --target llama-server -j "$JOBS" \
    >"$BUILD.build.log" 2>&1 || { tail -n 40 "$BUILD.build.log" >&2; exit 1; }

BIN="$BUILD/bin/llama-server"
[[ -x "$BIN" ]] || BIN="$(find "$BUILD" -type f -name llama-server -perm -u+x | head -n1)"
mkdir -p "$(dirname "$DEST")"
install -m 0755 "$BIN" "$DEST"
"$DEST" --version >/dev/null 2>&1 || { log "built binary does not run: $DEST"; exit 1; }
log "built $DEST ($("$DEST" --version 2>&1 | grep -m1 -i version || true))"
