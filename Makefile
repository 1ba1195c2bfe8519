# Troupe: the two commands a new machine needs, and a few more.
#   make demo    set up (packages, model), build, and run one task on the embedded defaults
#   make test    set up, then fmt check, clippy, and the whole test suite
#   make bench   set up (plus llama-bench), then every benchmark; results go to BENCHMARKS.md by hand
SHELL := /bin/bash
CARGO ?= cargo
DEMO_TASK ?= Write a Python function that checks whether a word is a palindrome

# One build serves both commands: the dev profile (dependencies optimised, see Cargo.toml) is what `make demo`
# builds and what `make test` compiles its tests against, so the second command reuses the first's build.
# `make release` builds the optimised binary for deployment (target/release/troupe, as the Dockerfile does).
BIN := target/debug/troupe

.PHONY: demo test setup-demo setup-test build release lint bench serve clean

setup-demo:
	scripts/setup.sh demo

setup-test:
	scripts/setup.sh test

build: setup-demo
	$(CARGO) build --locked --bin troupe

release: setup-demo
	$(CARGO) build --release --locked --bin troupe

# Exit code 1 is a task that ran and failed (its reason is printed): a finished demo, said plainly, not a
# broken set-up; anything else non-zero (could not start) fails the target.
demo: build
	@./$(BIN) run "$(DEMO_TASK)"; status=$$?; \
	if [ $$status -eq 1 ]; then \
	  echo "demo: the task ran and failed, for the reason above. The embedded SmolLM2-135M is a very small model:"; \
	  echo "demo: its code often fails its own test. Point llm.model at a larger GGUF model for better answers."; \
	elif [ $$status -ne 0 ]; then exit $$status; fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

test: setup-test lint
	$(CARGO) test --locked

bench:
	scripts/setup.sh bench
	scripts/bench.sh

serve: build
	./$(BIN) serve

clean:
	$(CARGO) clean
	rm -rf .troupe
