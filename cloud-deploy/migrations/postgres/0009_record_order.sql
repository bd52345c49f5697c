-- The record's position in its device's outbox, so one device's records of a task list in the
-- order the task produced them; records stored before this have 0.
ALTER TABLE tunnel_records ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
-- Listing and export walk records in the order they were received.
CREATE INDEX tunnel_records_in_order ON tunnel_records (received_at_ms, device_id, seq);
