//! The task of each issue and pull request (`GET /api/tasks`), kept up to
//! date from their events.

use super::*;

impl AppHandler {
    /// Keeps the task of an issue or pull request (`GET /api/tasks`): its
    /// title, body and classification, created on the first event about it
    /// and updated by later ones (`opened`, `reopened`, `edited`, `labeled`,
    /// `unlabeled`, `synchronize`) that change its title, body or
    /// classification; `updated_at` is when one last did.
    pub(super) async fn record_task(&self, event: &Event) -> Result<(), HandlerError> {
        const ACTIONS: &[&str] = &[
            "opened",
            "reopened",
            "edited",
            "labeled",
            "unlabeled",
            "synchronize",
        ];
        let (source, repository, number, title, body, labels, branch) = match event {
            Event::Issues(e)
                if ACTIONS.contains(&e.action.as_str()) && !e.issue.is_pull_request() =>
            {
                (
                    TaskSource::Issue,
                    e.envelope.repository.as_ref(),
                    e.issue.number,
                    &e.issue.title,
                    e.issue.body.as_deref().unwrap_or(""),
                    &e.issue.labels,
                    None,
                )
            }
            Event::PullRequest(e) if ACTIONS.contains(&e.action.as_str()) => (
                TaskSource::PullRequest,
                e.envelope.repository.as_ref(),
                e.pull_request.number,
                &e.pull_request.title,
                e.pull_request.body.as_deref().unwrap_or(""),
                &e.pull_request.labels,
                Some(e.pull_request.head.branch.as_str()),
            ),
            _ => return Ok(()),
        };
        let Some(repository) = repository.map(|r| r.full_name.clone()) else {
            return Ok(());
        };
        let labels: Vec<String> = labels.iter().map(|l| l.name.clone()).collect();
        let classification = classify(&TaskInput {
            title,
            body,
            labels: &labels,
            branch,
        });
        let classification = serde_json::to_value(&classification).unwrap_or_default();
        let now = now_ms();
        let existing = self
            .store
            .tasks(&TaskFilter {
                repository: Some(repository.to_string()),
                subject_number: Some(number as i64),
                limit: 1,
                ..TaskFilter::default()
            })
            .await?;
        match existing.first() {
            // Most events about a subject (`synchronize` on every push,
            // `labeled` with a label that does not change the class) leave
            // its task as it is: no write, so the dispatcher does not hold
            // the database's one writer for nothing.
            Some(task)
                if task.title == *title
                    && task.body == body
                    && task.classification == classification => {}
            Some(task) => {
                self.store
                    .update_task(
                        task.id,
                        &TaskUpdate {
                            title: Some(title.clone()),
                            body: Some(body.to_owned()),
                            classification: Some(classification),
                            updated_at: now,
                            ..TaskUpdate::default()
                        },
                    )
                    .await?;
            }
            None => {
                self.store
                    .create_task(&NewTask {
                        source,
                        repository: Some(repository.to_string()),
                        subject_number: Some(number as i64),
                        title: title.clone(),
                        body: body.to_owned(),
                        classification,
                        created_by: "github".into(),
                        created_at: now,
                    })
                    .await?;
            }
        }
        Ok(())
    }
}
