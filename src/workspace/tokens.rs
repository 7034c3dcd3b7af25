//! Where the token for fetching a repository comes from.

use crate::ids::InstallationId;
use std::sync::Arc;

use async_trait::async_trait;
use secrecy::SecretString;

use super::WorkspaceError;

/// Where the read token for a repository comes from: the GitHub App (an
/// installation token narrowed to that repository and `contents: read`),
/// or nothing in dry run (public repositories only).
#[async_trait]
pub trait TokenSource: Send + Sync {
    /// A token that can read `full_name` through `installation`; `None` to
    /// fetch without one.
    ///
    /// # Errors
    /// [`WorkspaceError::Token`] when GitHub refuses or cannot be reached.
    async fn read_token(
        &self,
        installation: Option<InstallationId>,
        full_name: &str,
    ) -> Result<Option<SecretString>, WorkspaceError>;
}

/// Fetch without a token (dry run, tests of public repositories).
#[derive(Debug, Default)]
pub struct Anonymous;

#[async_trait]
impl TokenSource for Anonymous {
    async fn read_token(
        &self,
        _installation: Option<InstallationId>,
        _full_name: &str,
    ) -> Result<Option<SecretString>, WorkspaceError> {
        Ok(None)
    }
}

/// Read tokens from the GitHub App: `POST /app/installations/{id}/access_tokens`
/// narrowed to one repository and `contents: read`
/// ([`crate::github::GitHub::repository_token`]). Without an installation
/// (or in dry run) the fetch goes without a token.
pub struct GitHubTokens(pub Arc<dyn crate::github::GitHub>);

#[async_trait]
impl TokenSource for GitHubTokens {
    async fn read_token(
        &self,
        installation: Option<InstallationId>,
        full_name: &str,
    ) -> Result<Option<SecretString>, WorkspaceError> {
        let Some(installation) = installation else {
            return Ok(None);
        };
        if self.0.is_dry_run() {
            return Ok(None);
        }
        let repo = crate::github::RepoName::parse(full_name)
            .map_err(|e| WorkspaceError::Invalid(format!("repository name `{full_name}`: {e}")))?;
        self.0
            .repository_token(installation, &repo, &[("contents", "read")])
            .await
            .map(Some)
            .map_err(|e| WorkspaceError::Token {
                repository: full_name.to_owned(),
                transient: e.is_transient(),
                message: e.to_string(),
            })
    }
}
