-- Notices delivered to device streams for a release (every replica adds what it delivered).
ALTER TABLE releases ADD COLUMN notified BIGINT NOT NULL DEFAULT 0;

-- Devices that pulled a release (were handed it by Sync while running something else).
CREATE TABLE release_syncs (
    release_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    synced_at_ms BIGINT NOT NULL,
    PRIMARY KEY (release_id, device_id)
);

-- Coverage over time, sampled by the release controller.
CREATE TABLE release_samples (
    release_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    stage BIGINT NOT NULL,
    targeted BIGINT NOT NULL,
    installed BIGINT NOT NULL,
    PRIMARY KEY (release_id, at_ms)
);
