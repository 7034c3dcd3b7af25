//! Agents: the `Agent` trait and one adapter per file.
//!
//! Filled by the agents issue (#5).
