-- How long a run waited for a VM worker before it executed (its duration is apart).
ALTER TABLE task_events ADD COLUMN queued_ms BIGINT NOT NULL DEFAULT 0;
