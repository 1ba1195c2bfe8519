//! Troupe: a local-first multi-agent LLM system. A Director actor plans each task, assigns its steps to
//! Code, Research and QA agents (actix actors under its supervision) and assembles the result; every step
//! is an event, a span and a metric. See `ARCHITECTURE.md` for the map of modules and the flow of a task.

pub mod agents;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod debug;
pub mod director;
pub mod domain;
pub mod events;
pub mod llm;
pub mod memory;
pub mod messages;
pub mod queue;
pub mod sandbox;
pub mod service;
pub mod storage;
pub mod supervision;
pub mod telemetry;
pub mod tools;
