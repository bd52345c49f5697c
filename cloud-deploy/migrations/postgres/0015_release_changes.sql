-- When a release last changed what devices should run (created, advanced, paused, resumed,
-- aborted, superseded, restored). A replica that takes the controller lease re-announces the
-- releases changed within one sync interval: their notices may have died with the replica
-- that made the change.
ALTER TABLE releases ADD COLUMN changed_at_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX releases_by_change ON releases (changed_at_ms);
