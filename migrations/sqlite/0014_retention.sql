-- Retention (`taskmaster prune`, and the pruner in `serve`): when a finished
-- run's attempt outputs and its timeline were cleared, and indexes that let
-- the pruner find what is past retention without reading what it already
-- pruned. The run indexes are partial: a run enters them when it finishes
-- and leaves the `_prunable` ones as it is pruned.
ALTER TABLE runs ADD COLUMN outputs_pruned_at INTEGER;
ALTER TABLE runs ADD COLUMN events_pruned_at INTEGER;
CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX runs_outputs_prunable ON runs (finished_at)
    WHERE finished_at IS NOT NULL AND outputs_pruned_at IS NULL;
CREATE INDEX runs_events_prunable ON runs (finished_at)
    WHERE finished_at IS NOT NULL AND events_pruned_at IS NULL;
-- Attempts by run: clearing a run's outputs (and the run page's attempts).
-- PostgreSQL has had it since 0002.
CREATE INDEX attempts_run ON attempts (run_id, id);
