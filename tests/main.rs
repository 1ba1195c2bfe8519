//! Black-box tests: each starts the real application (real embedded model in a worker process, its own
//! SQLite file, a random port) and talks to it over HTTP and WebSocket.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod access;
mod bad_input;
mod breakpoints;
mod budget;
mod cancellation;
mod consensus;
mod dashboard_api;
mod database_outage;
mod durability;
mod experiments;
mod fork;
mod helpers;
mod hostile_clients;
mod layers;
mod memory;
mod model_worker;
mod observability_files;
mod openai_front;
mod otlp;
mod pauses;
mod plan_graph;
mod postgres;
mod prometheus_live;
mod replay;
mod resume;
mod routing;
mod sampling;
mod sandbox;
mod scale_out;
mod schemathesis;
mod scripts;
mod self_correction;
mod soak;
mod supervision;
mod task_flow;
mod token_view;
mod tool_replay;
mod writer;
