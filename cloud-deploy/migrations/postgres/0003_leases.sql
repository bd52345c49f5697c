-- Leases let exactly one replica do a job at a time (e.g. the release controller). A holder
-- renews before `expires_at_ms`; anyone may take an expired lease.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
