//! [`AppRecords`] and [`Admin`]: installations, repository configuration, audit, tokens, sessions.

use super::*;
use crate::ids::InstallationId;
use crate::store::RepoName;

#[async_trait]
impl AppRecords for PgStore {
    async fn set_installation(
        &self,
        installation_id: InstallationId,
        account_login: Option<&str>,
        state: InstallationState,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO installations (id, account_login, state, updated_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET \
             account_login = COALESCE(EXCLUDED.account_login, installations.account_login), \
             state = EXCLUDED.state, updated_at = EXCLUDED.updated_at",
        )
        .bind(installation_id)
        .bind(account_login.map(str::to_owned))
        .bind(state.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn installation_state(
        &self,
        installation_id: InstallationId,
    ) -> Result<Option<InstallationState>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT state FROM installations WHERE id = $1")
                .bind(installation_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(s,)| {
            InstallationState::parse(&s)
                .ok_or_else(|| corrupt("installations", format!("unknown state `{s}`")))
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
        let mut tx = self.pool.begin().await?;
        if !added.is_empty() {
            sqlx::query(
                "INSERT INTO installation_repositories (installation_id, repository) \
                 SELECT $1, repository FROM UNNEST($2::text[]) AS t(repository) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(installation_id)
            .bind(added)
            .execute(&mut *tx)
            .await?;
        }
        if !removed.is_empty() {
            sqlx::query(
                "DELETE FROM installation_repositories \
                 WHERE installation_id = $1 AND repository = ANY($2)",
            )
            .bind(installation_id)
            .bind(removed)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn installation_repositories(
        &self,
        installation_id: InstallationId,
    ) -> Result<Vec<RepoName>, StoreError> {
        // `COLLATE "C"`: byte order, as SQLite sorts.
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT repository FROM installation_repositories WHERE installation_id = $1 \
             ORDER BY repository COLLATE \"C\"",
        )
        .bind(installation_id)
        .fetch_all(&self.pool)
        .await?;
        crate::store::rows::repo_names("installation_repositories", rows.into_iter().map(|r| r.0))
    }

    async fn repo_config(
        &self,
        repository: &RepoName,
    ) -> Result<Option<RepoConfigRecord>, StoreError> {
        let row: Option<(Option<String>, Option<String>, i64)> = sqlx::query_as(
            "SELECT body, error, fetched_at FROM repo_configs WHERE repository = $1",
        )
        .bind(repository)
        .fetch_optional(&self.pool)
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
        sqlx::query(
            "INSERT INTO repo_configs (repository, body, error, fetched_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (repository) DO UPDATE SET body = EXCLUDED.body, \
             error = EXCLUDED.error, fetched_at = EXCLUDED.fetched_at",
        )
        .bind(repository)
        .bind(record.body.clone())
        .bind(record.error.clone())
        .bind(record.fetched_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn forget_repo_config(&self, repository: &RepoName) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM repo_configs WHERE repository = $1")
            .bind(repository)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn installation_for_repository(
        &self,
        repository: &RepoName,
    ) -> Result<Option<InstallationId>, StoreError> {
        api::installation_for_repository(&self.pool, repository).await
    }
}

#[async_trait]
impl Admin for PgStore {
    async fn append_audit(&self, entry: &AuditEntry) -> Result<i64, StoreError> {
        let row: (i64,) = sqlx::query_as(
            "INSERT INTO audit_log (at, actor_kind, actor, action, target, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(entry.at)
        .bind(entry.actor_kind.as_str())
        .bind(entry.actor.clone())
        .bind(entry.action.clone())
        .bind(entry.target.clone())
        .bind(entry.outcome.clone())
        .bind(entry.detail.as_ref().map(|d| d.to_string()))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0)
    }

    async fn audit_entries(
        &self,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, at, actor_kind, actor, action, target, outcome, detail FROM audit_log \
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before_id.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(AuditEntry::try_from).collect()
    }

    async fn create_api_token(
        &self,
        token: &crate::store::NewApiToken,
    ) -> Result<Option<crate::store::ApiToken>, StoreError> {
        api::create_api_token(&self.pool, token).await
    }

    async fn api_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<crate::store::ApiToken>, StoreError> {
        api::api_token_by_hash(&self.pool, token_hash).await
    }

    async fn api_tokens(&self) -> Result<Vec<crate::store::ApiToken>, StoreError> {
        api::api_tokens(&self.pool).await
    }

    async fn revoke_api_token(
        &self,
        name: &str,
        at: i64,
    ) -> Result<Option<crate::store::ApiToken>, StoreError> {
        api::revoke_api_token(&self.pool, name, at).await
    }

    async fn touch_api_token(&self, id: i64, at: i64) -> Result<(), StoreError> {
        api::touch_api_token(&self.pool, id, at).await
    }

    async fn end_session(&self, signature: &str, expires_at: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM ended_sessions WHERE expires_at < $1")
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO ended_sessions (signature, expires_at) VALUES ($1, $2) \
             ON CONFLICT (signature) DO NOTHING",
        )
        .bind(signature)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn session_ended(&self, signature: &str) -> Result<bool, StoreError> {
        let row: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM ended_sessions WHERE signature = $1")
                .bind(signature)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }
}
