//! Test helpers shared by the `agent_*` integration tests.
#![allow(dead_code)]

pub mod agentapi;
pub mod fake_github;
pub mod git_server;
pub mod messages_api;
