# syntax=docker/dockerfile:1
#
# Troupe container image.
#
#   docker build -t troupe:0.1.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/models:/app/models:ro" troupe:0.1.0
#
# The models are NOT baked into the image: they are large, they change independently of the code, and users pick
# their own. Mount the directory that holds them (scripts/setup.sh puts the default chat model and the
# all-MiniLM-L6-v2 embedding model folder in ./models) at /app/models, read-only. The working directory is /app,
# so the default relative paths models/<file>.gguf and models/all-MiniLM-L6-v2 resolve there.

# ---------------------------------------------------------------------------------------------------------------
# Builder: compiles the `troupe` binary, including llama.cpp through llama-cpp-sys-2.
# ---------------------------------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# llama-cpp-sys-2 builds llama.cpp with cmake and generates its bindings with bindgen, which needs libclang.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        cmake clang libclang-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*

# CPU baseline for the Rust code and llama.cpp. Empty (the default) builds for the target's baseline
# (x86-64: SSE2 only), so the image runs on any CPU of that architecture, but inference is slow. For a faster
# image on known hardware pass e.g. `--build-arg TARGET_CPU=x86-64-v3` (AVX2; Haswell and newer). llama-cpp-sys-2
# derives llama.cpp's -march and GGML_* flags from this. Never use `native` for an image that moves between hosts.
ARG TARGET_CPU=""

WORKDIR /src
# The whole workspace (minus what .dockerignore drops): the build needs Cargo.toml, Cargo.lock, src/, the
# migrations crate, benches/ (declared in Cargo.toml) and config/ (embedded defaults).
COPY . .

# Cache mounts keep the crate registry and the target directory between builds (BuildKit). The target directory
# lives only in the cache, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    RUSTFLAGS="${TARGET_CPU:+-C target-cpu=${TARGET_CPU}}" \
        cargo build --release --locked --bin troupe \
    && install -D -m 0755 target/release/troupe /out/troupe

# ---------------------------------------------------------------------------------------------------------------
# Runtime: Debian slim with only what the binary needs at run time.
# ---------------------------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates: TLS to PostgreSQL, OpenAI-compatible servers and OTLP endpoints.
# libgomp1: llama.cpp is built with OpenMP (llama-cpp-2 feature `openmp`) and links libgomp dynamically.
# curl: only for the HEALTHCHECK below.
# bubblewrap, python3: the code sandbox's jail and the interpreter generated code runs with (see the note below).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates libgomp1 curl bubblewrap python3 \
    && rm -rf /var/lib/apt/lists/*

# Run as an unprivileged system user. /app (config, mounted models) stays owned by root and read-only for
# the service; only /app/.troupe, where the default configuration keeps local state (the SQLite database when
# database.url is left at its default), is writable. Mount a volume there to keep that state across containers,
# or point TROUPE__DATABASE__URL at PostgreSQL as docker-compose.yml does.
RUN groupadd --system troupe \
    && useradd --system --gid troupe --home-dir /app --no-create-home --shell /usr/sbin/nologin troupe \
    && mkdir -p /app/models /app/.troupe \
    && chown troupe:troupe /app/.troupe

# Note on the code sandbox: it uses bubblewrap, which needs unprivileged user namespaces. Docker's default
# seccomp profile denies them, so inside a default container the sandbox refuses to run generated code (with a
# clear error) rather than running it unconfined, and /readyz says so. Tasks that do not execute code are
# unaffected. To run generated code in a container, allow user namespaces (e.g. a seccomp profile that permits
# clone/unshare with CLONE_NEWUSER) or set TROUPE__SANDBOX__ENABLED=false to turn the loop off knowingly.
# docker-compose.yml gives its workers what bubblewrap needs (security_opt, explained there).

COPY --from=builder /out/troupe /usr/local/bin/troupe
COPY config/ /app/config/

WORKDIR /app
ENV TROUPE_PROFILE=production
USER troupe

EXPOSE 8080

# Liveness only (/healthz checks no dependency). The port must match --bind below; if you change the bind
# address, override the health check too. Readiness (database, model) is /readyz.
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1

ENTRYPOINT ["troupe"]
CMD ["serve", "--bind", "0.0.0.0:8080"]
