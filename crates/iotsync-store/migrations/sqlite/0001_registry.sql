-- Registry schema v1 (SQLite). Booleans are BIGINT 0/1 and times are BIGINT ms so the
-- same queries decode the same way on SQLite and PostgreSQL.
CREATE TABLE projects (
    project_id      TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    app_key         TEXT NOT NULL UNIQUE,
    app_secret      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    sync_enabled    BIGINT NOT NULL DEFAULT 0,
    device_route    TEXT NOT NULL DEFAULT 'none',
    user_route      TEXT NOT NULL DEFAULT 'none',
    legacy_url      TEXT,
    legacy_retired  BIGINT NOT NULL DEFAULT 0,
    last_method     TEXT
);

CREATE TABLE products (
    product_key   TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    device_type   TEXT NOT NULL,
    sync_enabled  BIGINT NOT NULL DEFAULT 1,
    created_at    BIGINT NOT NULL
);
CREATE INDEX products_by_project ON products(project_id, created_at);

CREATE TABLE devices (
    iot_id         TEXT PRIMARY KEY,
    project_id     TEXT NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
    product_key    TEXT NOT NULL REFERENCES products(product_key) ON DELETE CASCADE,
    device_name    TEXT NOT NULL,
    device_secret  TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'inactive',
    status_time    BIGINT NOT NULL,
    activated_at   BIGINT,
    created_at     BIGINT NOT NULL,
    UNIQUE (product_key, device_name)
);
CREATE INDEX devices_by_project ON devices(project_id, created_at);

CREATE TABLE device_properties (
    iot_id      TEXT NOT NULL REFERENCES devices(iot_id) ON DELETE CASCADE,
    identifier  TEXT NOT NULL,
    value_json  TEXT NOT NULL,
    time        BIGINT NOT NULL,
    PRIMARY KEY (iot_id, identifier)
);

CREATE TABLE users (
    identity_id  TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
    login_name   TEXT NOT NULL,
    nick_name    TEXT NOT NULL,
    phone        TEXT NOT NULL,
    email        TEXT NOT NULL,
    gmt_create   BIGINT NOT NULL,
    gmt_modified BIGINT NOT NULL,
    UNIQUE (project_id, login_name)
);

CREATE TABLE bindings (
    identity_id  TEXT NOT NULL REFERENCES users(identity_id) ON DELETE CASCADE,
    iot_id       TEXT NOT NULL REFERENCES devices(iot_id) ON DELETE CASCADE,
    project_id   TEXT NOT NULL,
    owned        BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (identity_id, iot_id)
);
CREATE INDEX bindings_by_device ON bindings(iot_id);

CREATE TABLE api_activation (
    project_id  TEXT NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
    api_group   TEXT NOT NULL,
    activated   BIGINT NOT NULL,
    PRIMARY KEY (project_id, api_group)
);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  TEXT,
    actor       TEXT NOT NULL,
    at          BIGINT NOT NULL,
    action      TEXT NOT NULL,
    before_json TEXT NOT NULL,
    after_json  TEXT NOT NULL
);
CREATE INDEX audit_by_project ON audit_log(project_id, id);

CREATE TABLE outbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id     TEXT NOT NULL,
    kind           TEXT NOT NULL,
    product_key    TEXT,
    ordering_key   TEXT NOT NULL,
    topic          TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    generate_time  BIGINT NOT NULL,
    payload        BLOB NOT NULL
);
