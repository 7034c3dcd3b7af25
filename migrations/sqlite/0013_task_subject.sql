-- The dispatcher looks up the task of every pull-request and issue event by
-- its subject (repository, number, newest first). With only
-- `tasks_repository` that read every task of the repository when the subject
-- was new: a storm of new pull requests made intake quadratic
-- (benches/README.md, "PR storm").
CREATE INDEX tasks_subject ON tasks (repository, subject_number, id);
