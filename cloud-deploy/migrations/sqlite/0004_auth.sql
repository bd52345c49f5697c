-- Operator API tokens with roles (the bootstrap admin token lives in the data dir instead).
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- viewer | developer | release-manager | admin
    role TEXT NOT NULL,
    -- sha256 (hex) of the token; the token itself is shown once, at creation.
    token_hash TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    -- 0 while valid.
    revoked_at_ms BIGINT NOT NULL DEFAULT 0
);

-- Every mutating control-plane call, who made it and how it ended.
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status BIGINT NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (at_ms);

-- Host apps; devices of a registered app must present its enrollment secret.
CREATE TABLE apps (
    app_id TEXT PRIMARY KEY,
    enrollment_secret_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
