//! Orchestration benchmark (written next).
fn main() {}
