-- PostgreSQL twin of migrations/sqlite: keep both in step (same tables, same column types).
-- Walle cloud metadata, version 1. Times are Unix milliseconds (BIGINT) so the same queries run
-- on SQLite and PostgreSQL through sqlx's Any driver.

CREATE TABLE tasks (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE task_versions (
    task TEXT NOT NULL REFERENCES tasks (name),
    version TEXT NOT NULL,
    bundle_digest TEXT NOT NULL,
    bundle_size BIGINT NOT NULL,
    -- The exact signed bytes of the release manifest, and its signature (hex).
    manifest_json TEXT NOT NULL,
    signature_hex TEXT NOT NULL,
    key_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (task, version)
);
CREATE INDEX task_versions_by_digest ON task_versions (bundle_digest);

CREATE TABLE releases (
    id TEXT PRIMARY KEY,
    -- Creation order; the newest active release of a task wins.
    seq BIGINT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    version TEXT NOT NULL,
    -- active | superseded
    state TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    FOREIGN KEY (task, version) REFERENCES task_versions (task, version)
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    -- sha256 (hex) of the device token; the token itself is never stored.
    token_hash TEXT NOT NULL UNIQUE,
    profile_json TEXT NOT NULL,
    registered_at_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);

-- What each device last said it runs (from Sync and Report).
CREATE TABLE device_tasks (
    device_id TEXT NOT NULL REFERENCES devices (id),
    task TEXT NOT NULL,
    version TEXT NOT NULL,
    -- installed | install_failed | removed
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, task)
);

CREATE TABLE task_events (
    device_id TEXT NOT NULL,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    task TEXT NOT NULL,
    version TEXT NOT NULL,
    release_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    detail TEXT NOT NULL,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, id)
);
CREATE INDEX task_events_by_release ON task_events (release_id, kind);

CREATE TABLE tunnel_records (
    device_id TEXT NOT NULL,
    id TEXT NOT NULL,
    task TEXT NOT NULL,
    version TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (device_id, id)
);
CREATE INDEX tunnel_records_by_task ON tunnel_records (task, received_at_ms);
