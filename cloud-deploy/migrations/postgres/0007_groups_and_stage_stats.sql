-- Named device groups (a team's test phones, a beta cohort) that release targeting can name.
-- Members may be devices that have not registered yet: they are included once they do.
CREATE TABLE device_groups (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE device_group_members (
    group_name TEXT NOT NULL REFERENCES device_groups (name),
    device_id TEXT NOT NULL,
    PRIMARY KEY (group_name, device_id)
);
CREATE INDEX device_group_members_by_device ON device_group_members (device_id);

-- Notices delivered per release stage (the stage current when they went out).
CREATE TABLE release_stage_notices (
    release_id TEXT NOT NULL,
    stage BIGINT NOT NULL,
    delivered BIGINT NOT NULL,
    PRIMARY KEY (release_id, stage)
);
