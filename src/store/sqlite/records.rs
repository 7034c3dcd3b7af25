//! [`AppRecords`] and [`Admin`]: installations, repository configuration, audit, tokens, sessions.

use super::*;
use crate::ids::InstallationId;
use crate::store::RepoName;

#[async_trait]
impl AppRecords for SqliteStore {
    async fn set_installation(
        &self,
        installation_id: InstallationId,
        account_login: Option<&str>,
        state: InstallationState,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(|conn| {
            conn.exec(
                "INSERT INTO installations (id, account_login, state, updated_at) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (id) DO UPDATE SET \
                 account_login = COALESCE(excluded.account_login, installations.account_login), \
                 state = excluded.state, updated_at = excluded.updated_at",
                params![installation_id, account_login, state.as_str(), now],
            )
        })
        .await
        .map(drop)
    }

    async fn installation_state(
        &self,
        installation_id: InstallationId,
    ) -> Result<Option<InstallationState>, StoreError> {
        // Asked for every delivery the dispatcher handles: a point lookup.
        let row: Option<(String,)> = self
            .read(|conn| {
                conn.opt(
                    "SELECT state FROM installations WHERE id = ?1",
                    [installation_id],
                )
            })
            .await?;
        row.map(|(s,)| {
            InstallationState::parse(&s).ok_or_else(|| StoreError::Corrupt {
                table: "installations",
                detail: format!("unknown state `{s}`"),
            })
        })
        .transpose()
    }

    async fn update_installation_repositories(
        &self,
        installation_id: InstallationId,
        added: &[RepoName],
        removed: &[RepoName],
    ) -> Result<(), StoreError> {
        let added: Vec<String> = added.iter().map(ToString::to_string).collect();
        let removed: Vec<String> = removed.iter().map(ToString::to_string).collect();
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            for repository in added {
                tx.exec(
                    "INSERT INTO installation_repositories (installation_id, repository) \
                     VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    params![installation_id, repository],
                )?;
            }
            for repository in removed {
                tx.exec(
                    "DELETE FROM installation_repositories \
                     WHERE installation_id = ?1 AND repository = ?2",
                    params![installation_id, repository],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn installation_repositories(
        &self,
        installation_id: InstallationId,
    ) -> Result<Vec<RepoName>, StoreError> {
        let rows: Vec<(String,)> = self
            .scan(|conn| {
                conn.all(
                    "SELECT repository FROM installation_repositories \
                     WHERE installation_id = ?1 ORDER BY repository",
                    [installation_id],
                )
            })
            .await?;
        crate::store::rows::repo_names("installation_repositories", rows.into_iter().map(|r| r.0))
    }

    async fn repo_config(
        &self,
        repository: &RepoName,
    ) -> Result<Option<RepoConfigRecord>, StoreError> {
        let repository = repository.clone();
        // Asked for every delivery the dispatcher routes: a point lookup.
        let row: Option<(Option<String>, Option<String>, i64)> = self
            .read(|conn| {
                conn.opt(
                    "SELECT body, error, fetched_at FROM repo_configs WHERE repository = ?1",
                    [repository],
                )
            })
            .await?;
        Ok(row.map(|(body, error, fetched_at)| RepoConfigRecord {
            body,
            error,
            fetched_at,
        }))
    }

    async fn set_repo_config(
        &self,
        repository: &RepoName,
        record: &RepoConfigRecord,
    ) -> Result<(), StoreError> {
        let repository = repository.clone();
        self.write(|conn| {
            conn.exec(
                "INSERT INTO repo_configs (repository, body, error, fetched_at) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (repository) DO UPDATE SET body = excluded.body, \
                 error = excluded.error, fetched_at = excluded.fetched_at",
                params![repository, record.body, record.error, record.fetched_at],
            )
        })
        .await
        .map(drop)
    }

    async fn forget_repo_config(&self, repository: &RepoName) -> Result<(), StoreError> {
        let repository = repository.clone();
        self.write(|conn| {
            conn.exec(
                "DELETE FROM repo_configs WHERE repository = ?1",
                [repository],
            )
        })
        .await
        .map(drop)
    }

    async fn installation_for_repository(
        &self,
        repository: &RepoName,
    ) -> Result<Option<InstallationId>, StoreError> {
        let repository = repository.clone();
        self.read(|conn| api::installation_for_repository(conn, &repository))
            .await
    }
}

#[async_trait]
impl Admin for SqliteStore {
    async fn append_audit(&self, entry: &AuditEntry) -> Result<i64, StoreError> {
        let detail = entry.detail.as_ref().map(|d| d.to_string());
        let (id,): (i64,) = self
            .write(|conn| {
                conn.one(
                    "INSERT INTO audit_log (at, actor_kind, actor, action, target, outcome, \
                     detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                    params![
                        entry.at,
                        entry.actor_kind.as_str(),
                        entry.actor,
                        entry.action,
                        entry.target,
                        entry.outcome,
                        detail
                    ],
                )
            })
            .await?;
        Ok(id)
    }

    async fn audit_entries(
        &self,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<AuditRow> = self
            .scan(|conn| {
                conn.all(
                    "SELECT id, at, actor_kind, actor, action, target, outcome, detail \
                     FROM audit_log WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
                    [before_id.unwrap_or(i64::MAX), limit],
                )
            })
            .await?;
        rows.into_iter().map(AuditEntry::try_from).collect()
    }

    async fn create_api_token(
        &self,
        token: &crate::store::NewApiToken,
    ) -> Result<Option<crate::store::ApiToken>, StoreError> {
        self.write(|conn| api::create_api_token(conn, token)).await
    }

    async fn api_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<crate::store::ApiToken>, StoreError> {
        self.read(|conn| api::api_token_by_hash(conn, token_hash))
            .await
    }

    async fn api_tokens(&self) -> Result<Vec<crate::store::ApiToken>, StoreError> {
        self.scan(api::api_tokens).await
    }

    async fn revoke_api_token(
        &self,
        name: &str,
        at: i64,
    ) -> Result<Option<crate::store::ApiToken>, StoreError> {
        self.write(|conn| api::revoke_api_token(conn, name, at))
            .await
    }

    async fn touch_api_token(&self, id: i64, at: i64) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.exec(
                "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
                [id, at],
            )
        })
        .await
        .map(drop)
    }

    async fn end_session(&self, signature: &str, expires_at: i64) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            tx.exec("DELETE FROM ended_sessions WHERE expires_at < ?1", [now])?;
            tx.exec(
                "INSERT INTO ended_sessions (signature, expires_at) VALUES (?1, ?2) \
                 ON CONFLICT (signature) DO NOTHING",
                params![signature, expires_at],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn session_ended(&self, signature: &str) -> Result<bool, StoreError> {
        let row: Option<(i64,)> = self
            .read(|conn| {
                conn.opt(
                    "SELECT 1 FROM ended_sessions WHERE signature = ?1",
                    [signature],
                )
            })
            .await?;
        Ok(row.is_some())
    }
}
