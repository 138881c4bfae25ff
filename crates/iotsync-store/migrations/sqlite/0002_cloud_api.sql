-- Cloud API (SPEC §9): the live cloud token of each project (its SHA-256, never the
-- token) and the reported property values behind the property timeline, bounded per
-- device property by the registry (newest PROPERTY_HISTORY_MAX kept).
CREATE TABLE cloud_tokens (
    project_id  TEXT PRIMARY KEY REFERENCES projects(project_id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE property_history (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    iot_id      TEXT NOT NULL REFERENCES devices(iot_id) ON DELETE CASCADE,
    identifier  TEXT NOT NULL,
    value_json  TEXT NOT NULL,
    time        BIGINT NOT NULL
);
CREATE INDEX property_history_by_time ON property_history(iot_id, identifier, time);
CREATE INDEX property_history_by_seq ON property_history(iot_id, identifier, seq);
