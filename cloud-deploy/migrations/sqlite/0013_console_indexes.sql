-- The console lists releases by task and by state a page at a time, newest first.
CREATE INDEX releases_by_task ON releases (task, seq);
CREATE INDEX releases_by_state ON releases (state, seq);
-- A device's reports and failures, newest first; recent failures across the fleet.
CREATE INDEX task_events_by_device_time ON task_events (device_id, at_ms);
CREATE INDEX task_events_by_kind_time ON task_events (kind, at_ms);
CREATE INDEX task_events_by_release_time ON task_events (release_id, at_ms);
-- Devices listed a page at a time per app.
CREATE INDEX devices_by_app ON devices (app_id, id);
-- The newest coverage sample of a release is read by its primary key (release_id, at_ms).
