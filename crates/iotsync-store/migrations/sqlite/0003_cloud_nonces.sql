-- Cloud API (SPEC §9): used X-Ca-Nonce values, single-use within the signature's
-- 15-minute window. Kept here, not in memory, so a restart or another node sharing the
-- registry cannot accept one twice. Rows past expires_at are purged periodically.
CREATE TABLE cloud_nonces (
    project_id  TEXT NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
    nonce       TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (project_id, nonce)
);
CREATE INDEX cloud_nonces_by_expiry ON cloud_nonces(expires_at);
