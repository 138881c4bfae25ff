-- Console sessions (issue 13): shared by every node on the registry, so a session made
-- on one node works on another and a sign-out anywhere ends it everywhere. The cookie's
-- token is never stored, only its SHA-256 (hex): a copy of this table signs nobody in.
-- operator_fp is a fingerprint of the operator token the session proved; a node with
-- another operator token does not accept it. Rows past expires_at are purged at sign-in.
CREATE TABLE console_sessions (
    token_hash  TEXT PRIMARY KEY,
    operator_fp TEXT NOT NULL,
    csrf_token  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX console_sessions_by_expiry ON console_sessions(expires_at);

-- Failed sign-in counters (issue 13): one row per throttled key (a SHA-256 of the
-- source address and credential), written on failures only, so every node refuses an
-- address that failed on any of them. Rows past forget_at are purged.
CREATE TABLE auth_failures (
    key_hash      TEXT PRIMARY KEY,
    failures      BIGINT NOT NULL,
    blocked_until BIGINT NOT NULL,
    forget_at     BIGINT NOT NULL
);
CREATE INDEX auth_failures_by_forget ON auth_failures(forget_at);
