//! GitHub's Re-run links and taskmaster's check-run buttons
//! (`check_run.rerequested`, `check_suite.rerequested`,
//! `check_run.requested_action`), authorized like the matching command.

use super::*;
use crate::store::RunId;

impl AppHandler {
    /// `check_run.rerequested`, `check_suite.rerequested` and our buttons.
    pub(super) async fn rerun(
        &self,
        delivery: &Delivery,
        event: &Event,
        request: RerunRequest,
    ) -> Result<Handled, HandlerError> {
        let Some(actor) = event.sender() else {
            return Ok(Handled::Ignored("re-run request without a sender".into()));
        };
        if actor.is_bot() {
            return Ok(Handled::Ignored(format!(
                "re-run requested by bot `{}`",
                actor.login
            )));
        }
        let installation = match event {
            Event::CheckRun(e) => e.envelope.installation.map(|i| i.id),
            Event::CheckSuite(e) => e.envelope.installation.map(|i| i.id),
            _ => None,
        };
        let (repository, run_ids, command, action) = match &request {
            RerunRequest::RetryRun {
                repository, run_id, ..
            } => (
                repository.clone(),
                run_id.parse::<i64>().ok().into_iter().collect::<Vec<_>>(),
                Command::Retry { step: None },
                "check_run.rerequested",
            ),
            RerunRequest::RerunCommit {
                repository,
                head_sha,
                ..
            } => {
                // The newest run of each workflow on that commit.
                let ids = self.store.runs_for_commit(repository, head_sha).await?;
                let mut newest: HashMap<String, i64> = HashMap::new();
                for id in ids {
                    if let Some(snap) = self.store.run(id).await? {
                        newest.insert(snap.run.workflow.clone(), id.0);
                    }
                }
                let mut ids: Vec<i64> = newest.into_values().collect();
                ids.sort_unstable();
                (
                    repository.clone(),
                    ids,
                    Command::Retry { step: None },
                    "check_suite.rerequested",
                )
            }
            RerunRequest::Action {
                repository,
                run_id,
                command,
                ..
            } => (
                repository.clone(),
                run_id.parse::<i64>().ok().into_iter().collect(),
                command.clone(),
                "check_run.requested_action",
            ),
        };
        if run_ids.is_empty() {
            return Ok(Handled::Ignored(format!("{action}: no run of ours")));
        }
        let config = self.configs.get(installation, &repository).await;
        let mut runs = Vec::new();
        for run_id in run_ids {
            let Some(snap) = self.store.run(RunId(run_id)).await? else {
                continue;
            };
            if snap
                .run
                .repository
                .as_ref()
                .is_none_or(|r| repository != *r)
            {
                continue;
            }
            let inv = Invocation {
                delivery,
                installation,
                repository: repository.clone(),
                number: snap.run.subject_number.map(|n| n as u64),
                comment_id: None,
                actor,
                association: None,
                run_id: Some(run_id),
                via: "button",
                written_at: None,
            };
            let kind = command.kind();
            let mut effects = Effects::new(&inv);
            if let Err(why) = self.authorize(&inv, kind, &config).await? {
                effects.reply(&format!("{command} (from the check run)"), &why);
                self.commit_effects(effects).await?;
                self.audit(&inv, action.into(), format!("run:{run_id}"), "refused")
                    .await;
                continue;
            }
            let mut outcome = self.execute(&inv, event, &command, &config).await?;
            // Re-run of a run with nothing to retry: run it again afresh.
            if action != "check_run.requested_action"
                && matches!(outcome, Outcome::Noop(_))
                && snap.run.state.is_terminal()
            {
                outcome = self
                    .run_workflow(&inv, event, &snap.run.workflow, &config)
                    .await?;
            }
            let result = match outcome {
                Outcome::Done(Some(reply)) | Outcome::Noop(reply) => {
                    effects.reply(&format!("{command} (from the check run)"), &reply);
                    "ok"
                }
                Outcome::Done(None) => "ok",
                Outcome::Refused(reply) => {
                    effects.reply(&format!("{command} (from the check run)"), &reply);
                    "refused"
                }
                Outcome::Start(mut new) => {
                    // Several runs from one delivery need distinct keys.
                    for r in &mut new {
                        r.delivery_id = format!("{}#{}", delivery.delivery_id, run_id);
                    }
                    runs.append(&mut new);
                    "ok"
                }
            };
            self.commit_effects(effects).await?;
            self.audit(&inv, action.into(), format!("run:{run_id}"), result)
                .await;
        }
        Ok(if runs.is_empty() {
            Handled::Done
        } else {
            Handled::Start(runs)
        })
    }
}
