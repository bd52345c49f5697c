-- The state a release had when a full release superseded it, so that undoing the full release
-- restores a paused release as paused rather than resuming it.
ALTER TABLE releases ADD COLUMN state_before_superseded TEXT NOT NULL DEFAULT 'active';
