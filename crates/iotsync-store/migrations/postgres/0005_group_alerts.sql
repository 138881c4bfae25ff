-- Alert thresholds per consumer group (issue 14): a group is alerting while its stack is
-- over stacked_max, its oldest stacked message older than oldest_age_max_ms, or its
-- dead letters over dead_letters_max. NULL: that threshold is not set; a group without
-- a row (or with every threshold NULL) never alerts. The row goes with its group (and
-- the group with its project).
CREATE TABLE group_alerts (
    project_id        TEXT NOT NULL,
    name              TEXT NOT NULL,
    stacked_max       BIGINT,
    oldest_age_max_ms BIGINT,
    dead_letters_max  BIGINT,
    updated_at        BIGINT NOT NULL,
    PRIMARY KEY (project_id, name),
    FOREIGN KEY (project_id, name) REFERENCES consumer_groups(project_id, name) ON DELETE CASCADE
);
