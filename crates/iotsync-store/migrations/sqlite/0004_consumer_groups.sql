-- Declared consumer groups (issue 12): a group collects every message its filter takes
-- from the moment it is declared, whether or not a consumer is connected. filter_json is
-- the GroupFilterDoc shape ({dataClasses?, kinds?, products?}; {} takes everything);
-- retry is 'backoff' (the engine's policy) or 'legacy_http' (10 s, 30 s, ... 16 pushes,
-- then dead letter); internal groups (names starting with '_') are the platform's own.
CREATE TABLE consumer_groups (
    project_id  TEXT NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    filter_json TEXT NOT NULL,
    retry       TEXT NOT NULL,
    internal    BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (project_id, name)
);

-- Projects that had sync on before groups were declared: their default group (device
-- data only in the mixed and legacy-only configurations) and the legacy push group.
INSERT INTO consumer_groups (project_id, name, filter_json, retry, internal, created_at)
SELECT project_id, app_key,
       CASE WHEN sync_enabled = 1 AND user_route = 'legacy_http'
            THEN '{"dataClasses":["device"]}' ELSE '{}' END,
       'backoff', 0, created_at
FROM projects WHERE sync_enabled = 1 OR last_method IS NOT NULL;

INSERT INTO consumer_groups (project_id, name, filter_json, retry, internal, created_at)
SELECT project_id, '_legacy_http', '{"dataClasses":["user"]}', 'legacy_http', 1, created_at
FROM projects WHERE sync_enabled = 1 AND user_route = 'legacy_http';
