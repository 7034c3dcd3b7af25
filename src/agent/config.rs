//! Agent configuration (in progress).

/// Which adapter an agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// An AgentAPI server (`coder/agentapi`).
    Agentapi,
    /// A local agent CLI in headless mode.
    Cli,
    /// The hosted Codegen API.
    Codegen,
    /// A plain command.
    Command,
}
