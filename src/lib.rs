//! taskmaster: a GitHub App that turns pull-request and issue events into
//! durable, multi-step workflows run by AI coding agents, and reports back on
//! GitHub as check runs and comments.
//!
//! The path of one event (see `DESIGN.md` in the shared docs):
//! [`webhook`] verifies and stores each delivery in the inbox (a [`store`]),
//! answers GitHub, and the [`dispatch`] task hands stored deliveries on.
//!
//! Units: inside the program a length of time is a
//! [`Duration`](std::time::Duration) and an instant is Unix epoch
//! milliseconds (`i64`, [`store::now_ms`]). A number that leaves the
//! program names its unit: flags and environment variables
//! (`--lease-ms`, `TASKMASTER_LEASE_MS`), columns and JSON fields
//! (`duration_ms`, `agent_ms`, `rank_ms`); settings parse into
//! `Duration`s where they are read.

pub mod agent;
pub mod api;
pub mod budget;
pub mod classify;
pub mod command;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod dispatch;
pub mod doctor;
pub mod engine;
pub mod event;
pub mod github;
pub mod ids;
pub mod insights;
pub mod instrument;
pub mod outbox;
pub mod publish;
pub mod redact;
pub mod repo_config;
pub mod report;
pub mod routing;
pub mod server;
pub mod setup;
pub mod store;
pub mod telemetry;
pub mod tools;
pub mod verdict;
pub mod webhook;
pub mod workflow;
pub mod workspace;
