-- The cloud keeps the fleet in memory for release statistics and previews, and re-reads only
-- the devices that changed since its last read: a new device, a new profile or a change of its
-- groups stamps `changed_at_ms`; a change of what it runs stamps `device_tasks.updated_at_ms`.
ALTER TABLE devices ADD COLUMN changed_at_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX devices_by_change ON devices (changed_at_ms);
CREATE INDEX device_tasks_by_update ON device_tasks (updated_at_ms);
