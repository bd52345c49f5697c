-- Release policies: targeting, stages over sticky buckets, health gate, abort rule, priority.
ALTER TABLE releases ADD COLUMN policy_json TEXT NOT NULL DEFAULT '{}';
-- Salt of the sticky bucket hash; per release so stages of different releases are independent.
ALTER TABLE releases ADD COLUMN salt TEXT NOT NULL DEFAULT '';
-- Index into the policy's stages.
ALTER TABLE releases ADD COLUMN stage BIGINT NOT NULL DEFAULT 0;
ALTER TABLE releases ADD COLUMN stage_started_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE releases ADD COLUMN priority BIGINT NOT NULL DEFAULT 0;
-- Why the release is in its state (e.g. the abort criterion that fired).
ALTER TABLE releases ADD COLUMN state_reason TEXT NOT NULL DEFAULT '';
-- The release that superseded this one; aborting that release restores this one (the rollback).
ALTER TABLE releases ADD COLUMN superseded_by TEXT NOT NULL DEFAULT '';
