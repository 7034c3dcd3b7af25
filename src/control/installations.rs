//! `installation` and `installation_repositories`: the installation's state
//! and repositories are recorded.

use super::*;

impl AppHandler {
    pub(super) async fn installation_event(
        &self,
        event: &Event,
    ) -> Result<Option<Handled>, HandlerError> {
        match event {
            Event::Installation(e) => {
                let state = match e.action.as_str() {
                    "deleted" => InstallationState::Deleted,
                    "suspend" => InstallationState::Suspended,
                    _ => InstallationState::Active,
                };
                let login = e.installation.account.as_ref().map(|a| a.login.as_str());
                self.store
                    .set_installation(e.installation.id, login, state)
                    .await?;
                if e.action == "created" && !e.repositories.is_empty() {
                    let added: Vec<RepoName> =
                        e.repositories.iter().map(|r| r.full_name.clone()).collect();
                    self.store
                        .update_installation_repositories(e.installation.id, &added, &[])
                        .await?;
                }
                tracing::info!(installation = %e.installation.id, action = %e.action,
                    state = state.as_str(), "installation recorded");
                Ok(Some(Handled::Done))
            }
            Event::InstallationRepositories(e) => {
                let added: Vec<RepoName> = e
                    .repositories_added
                    .iter()
                    .map(|r| r.full_name.clone())
                    .collect();
                let removed: Vec<RepoName> = e
                    .repositories_removed
                    .iter()
                    .map(|r| r.full_name.clone())
                    .collect();
                self.store
                    .update_installation_repositories(e.installation.id, &added, &removed)
                    .await?;
                Ok(Some(Handled::Done))
            }
            _ => Ok(None),
        }
    }
}
