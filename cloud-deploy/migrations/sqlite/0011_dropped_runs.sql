-- How many runs a run_dropped event stands for.
ALTER TABLE task_events ADD COLUMN count BIGINT NOT NULL DEFAULT 0;
