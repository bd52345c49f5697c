-- The kind of a failed run (exception, deadline, memory, …), for failure counts by kind.
ALTER TABLE task_events ADD COLUMN failure TEXT NOT NULL DEFAULT '';
