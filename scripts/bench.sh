#!/usr/bin/env bash
# Reruns every benchmark and prints the figures; `make bench` calls it after `scripts/setup.sh bench`.
# Results are also written to bench-results/<date>.json; copy the figures into BENCHMARKS.md with the
# machine line this prints.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out="bench-results/$(date -u +%Y%m%dT%H%M%SZ).json"
mkdir -p bench-results
threads=${TROUPE_BENCH_THREADS:-2}
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
# llama.cpp's tools, built by scripts/setup.sh into its cache (outside the checkout).
llama_tools=${TROUPE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/troupe}/llama-cpp-0.3.36

machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
echo "machine: $machine" >&2
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)" >&2

cargo build --release --locked --bin troupe >&2
echo "== embedded generation vs llama-bench (tg64, $threads threads), same run" >&2
troupe=$(cargo bench --locked --bench generation 2>/dev/null | tail -n 1)
reference=$("$llama_tools/bin/llama-bench" -m "$model" -t "$threads" -p 0 -n 64 -r 5 -o json 2>/dev/null)
troupe_again=$(cargo bench --locked --bench generation 2>/dev/null | tail -n 1)

echo "== the openai provider vs llama-server's own timings (same server, $threads threads, same run)" >&2
openai=$(cargo bench --locked --bench openai 2>/dev/null | tail -n 1)
echo "openai: $openai" >&2

echo "== orchestration with the replay provider: tracing on, tracing on + OTLP export, tracing off" >&2
orchestration_on=$(cargo bench --locked --bench orchestration 2>/dev/null | tail -n 1)
orchestration_otlp=$(TROUPE_BENCH_OTLP=1 cargo bench --locked --bench orchestration 2>/dev/null | tail -n 1)
orchestration_off=$(TROUPE_BENCH_TRACING=0 cargo bench --locked --bench orchestration 2>/dev/null | tail -n 1)
echo "== the same flow durable on PostgreSQL (a fresh database on the local server)" >&2
pg_server=${TROUPE_BENCH_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
pg_database="troupe_bench_$(date -u +%s)"
psql "$pg_server" -qc "CREATE DATABASE $pg_database" >&2
orchestration_pg=$(TROUPE_BENCH_DATABASE_URL="${pg_server%/*}/$pg_database" cargo bench --locked --bench orchestration 2>/dev/null | tail -n 1)
psql "$pg_server" -qc "DROP DATABASE IF EXISTS $pg_database WITH (FORCE)" >&2
echo "orchestration on PostgreSQL: $orchestration_pg" >&2
# The peers (LangGraph with and without its SQLite checkpointer, autogen-core: the same four-step flow on an
# instant fake model) in the same run, when their harness is at hand (TROUPE_PEERS_DIR, default ../shared/peers).
peers_dir=${TROUPE_PEERS_DIR:-$root/../shared/peers}
if [ -f "$peers_dir/run.sh" ]; then
  echo "== peers, same run: $peers_dir" >&2
  N=${PEERS_N:-1000} RUNS=${PEERS_RUNS:-1} CREWAI=0 bash "$peers_dir/run.sh" >&2 || echo "peers: the harness failed (see above)" >&2
else
  echo "== peers: no harness at $peers_dir (set TROUPE_PEERS_DIR); skipped" >&2
fi

echo "== scale-out: tasks/s through the Redis queue with 1, 2, 3 workers vs one process; queue hop; re-claim time" >&2
scale_out=$(TROUPE_BENCH_POSTGRES_URL="$pg_server" cargo bench --locked --bench scale_out 2>/dev/null | tail -n 1)
echo "scale-out: $scale_out" >&2

# The soak is the test of tests/soak.rs run long (the dev profile the test suite builds; the nodes are the same
# `troupe` binary): TROUPE_SOAK_SECONDS (default here 1800) at TROUPE_SOAK_RATE tasks/s (default 10).
echo "== soak: ${TROUPE_SOAK_SECONDS:-1800} s of replayed tasks through an API node and two workers: RSS, open files, sockets" >&2
soak=$(TROUPE_SOAK_SECONDS=${TROUPE_SOAK_SECONDS:-1800} TROUPE_TEST_POSTGRES_URL="$pg_server" \
  cargo test --locked --test main soak:: -- --nocapture 2>/dev/null | sed -n 's/^soak: //p' | tail -n 1)
echo "soak: ${soak:-failed (rerun: cargo test --test main soak:: -- --nocapture)}" >&2

echo "== memory: embeddings/s, pgvector HNSW search at 10k and 100k (latency, recall@10), per-tier latency" >&2
memory=$(cargo bench --locked --bench memory 2>/dev/null | tail -n 1)

echo "== sandbox: start-to-exit of a trivial Python program, jailed vs unconfined; runs/s with both cores busy" >&2
sandbox=$(cargo bench --locked --bench sandbox 2>/dev/null | tail -n 1)
echo "sandbox: $sandbox" >&2
echo "== routing: the Director's first-step agent on benches/data/routing.json, raw and calibrated" >&2
routing=$(cargo bench --locked --bench routing 2>/dev/null | tail -n 1)
echo "== dashboard in Chromium: overview FCP with 10,000 tasks, a 10,000-event task page, its data requests, page weight" >&2
dashboard=$(cargo bench --locked --profile dev --bench dashboard 2>/dev/null | tail -n 1)
echo "dashboard: $dashboard" >&2
echo "== sandbox reference (hyperfine): the same Python bare, and bubblewrap alone (a minimal jail) around true and it" >&2
jail="bwrap --unshare-all --die-with-parent --new-session --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --proc /proc --dev /dev --tmpfs /tmp --"
sandbox_reference=$(mktemp)
hyperfine -N --warmup 20 --runs 300 --export-json "$sandbox_reference" \
  "/usr/bin/python3 -B -s -c pass" "$jail /usr/bin/true" "$jail /usr/bin/python3 -B -s -c pass" >&2

python3 - "$out" "$machine" "$threads" "$troupe" "$troupe_again" "$reference" "$orchestration_on" "$orchestration_off" \
  "$(cat "$llama_tools/VERSION" 2>/dev/null || echo unknown)" "$orchestration_otlp" "$memory" "$sandbox" \
  "$sandbox_reference" "$openai" "$routing" "$dashboard" "$orchestration_pg" "$scale_out" "${soak:-null}" <<'PY'
import json, sys
out, machine, threads, troupe, troupe_again, reference, on, off, version, otlp, memory, sandbox, sandbox_reference, openai, routing, dashboard, orchestration_pg, scale_out, soak = sys.argv[1:]
troupe, troupe_again, on, off, otlp, memory, sandbox, openai, routing, dashboard = (json.loads(x) for x in (troupe, troupe_again, on, off, otlp, memory, sandbox, openai, routing, dashboard))
reference = json.loads(reference)
tg = [r for r in reference if r.get("n_gen") == 64][0]
ours = (troupe["generation_tokens_per_s_median"] + troupe_again["generation_tokens_per_s_median"]) / 2
result = {
    "machine": machine,
    "generation": {
        "threads": int(threads),
        "troupe_tokens_per_s": ours,
        "troupe_end_to_end_tokens_per_s": troupe["end_to_end_tokens_per_s_median"],
        "llama_bench_tg64_tokens_per_s": tg["avg_ts"],
        "llama_bench_build": tg.get("build_commit", version),
        "ratio": ours / tg["avg_ts"],
    },
    "orchestration": {"tracing_on": on, "tracing_on_otlp": otlp, "tracing_off": off, "postgres": json.loads(orchestration_pg),
        "tracing_cost_throughput": 1 - on["throughput_tasks_per_s"] / off["throughput_tasks_per_s"],
        "full_instrumentation_cost_throughput": 1 - otlp["throughput_tasks_per_s"] / off["throughput_tasks_per_s"]},
    "openai_provider": openai,
    "scale_out": json.loads(scale_out),
    "soak": json.loads(soak),
    "memory": memory,
    "sandbox": sandbox,
    "routing": routing,
    "dashboard": dashboard,
    "sandbox_reference_ms": {
        r["command"]: {"p50": sorted(r["times"])[len(r["times"]) // 2] * 1e3,
                       "p99": sorted(r["times"])[int(len(r["times"]) * 0.99)] * 1e3}
        for r in json.load(open(sandbox_reference))["results"]
    },
}
json.dump(result, open(out, "w"), indent=2)
print(json.dumps(result, indent=2))
PY
echo "written: $out" >&2
