//! Who may use a command: GitHub's collaborator permission, cached per
//! repository and user for a short time, against the level the command
//! needs here.

use super::*;

/// Users' permissions per repository, remembered for a short time.
pub struct PermissionCache {
    ttl: Duration,
    entries: Mutex<HashMap<(RepoName, i64), (Permission, Instant)>>,
}

impl PermissionCache {
    /// A cache whose entries are trusted for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, repository: &RepoName, user_id: i64) -> Option<Permission> {
        let entries = self.entries.lock().expect("permission cache lock");
        entries
            .get(&(repository.clone(), user_id))
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(p, _)| *p)
    }

    fn put(&self, repository: &RepoName, user_id: i64, permission: Permission) {
        let mut entries = self.entries.lock().expect("permission cache lock");
        if entries.len() > 10_000 {
            entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        entries.insert((repository.clone(), user_id), (permission, Instant::now()));
    }
}

impl AppHandler {
    /// The permission of `actor` on `repository`, from the cache or GitHub.
    pub(super) async fn permission(
        &self,
        inv: &Invocation<'_>,
    ) -> Result<Permission, HandlerError> {
        if self.github.is_dry_run() {
            let p = match inv.association.unwrap_or("NONE") {
                "OWNER" => Permission::Admin,
                "MEMBER" | "COLLABORATOR" => Permission::Write,
                _ => Permission::Read,
            };
            tracing::warn!(user = %inv.actor.login, permission = ?p,
                "DRY RUN: no permission API without App credentials; author_association decides");
            return Ok(p);
        }
        if let Some(p) = self.permissions.get(&inv.repository, inv.actor.id) {
            return Ok(p);
        }
        let installation = inv
            .installation
            .ok_or_else(|| HandlerError::Permanent("the delivery names no installation".into()))?;
        let p = self
            .github
            .collaborator_permission(installation, &inv.repository, &inv.actor.login)
            .await
            .map_err(|e| {
                if e.is_transient() {
                    HandlerError::Transient(format!("permission check: {e}"))
                } else {
                    HandlerError::Permanent(format!("permission check: {e}"))
                }
            })?;
        self.permissions.put(&inv.repository, inv.actor.id, p);
        Ok(p)
    }

    /// Whether `inv.actor` may use `kind` here; `Err(reason)` when not.
    pub(super) async fn authorize(
        &self,
        inv: &Invocation<'_>,
        kind: CommandKind,
        config: &Loaded,
    ) -> Result<Result<(), String>, HandlerError> {
        let needed = config.config.permission_for(kind);
        if needed <= Permission::Read {
            return Ok(Ok(()));
        }
        if let Some(association) = inv.association
            && !MAY_HOLD_ACCESS.contains(&association)
            && !self.github.is_dry_run()
        {
            return Ok(Err(format!(
                "`/{}` needs {} access to this repository, and you are not one of its owners, members or collaborators.",
                kind.name(),
                level_name(needed)
            )));
        }
        let has = match self.permission(inv).await {
            Ok(p) => p,
            Err(HandlerError::Permanent(e)) => {
                tracing::error!(user = %inv.actor.login, error = %e, "cannot check a user's permission");
                return Ok(Err(
                    "taskmaster could not check your permission on this repository, so it did nothing."
                        .into(),
                ));
            }
            Err(e) => return Err(e),
        };
        if has >= needed {
            Ok(Ok(()))
        } else {
            Ok(Err(format!(
                "`/{}` needs {} access to this repository; you have {}.",
                kind.name(),
                level_name(needed),
                level_name(has)
            )))
        }
    }
}

pub(super) fn level_name(p: Permission) -> &'static str {
    match p {
        Permission::None => "no",
        Permission::Read => "read",
        Permission::Triage => "triage",
        Permission::Write => "write",
        Permission::Maintain => "maintain",
        Permission::Admin => "admin",
    }
}
