-- Property history in chunks (issue 16, ADR 0014): one row per (device, property) per
-- write-behind batch holds that batch's values of the property, in report order, as a
-- JSON array of [time, value] pairs. A batch of 8 192 reports from 1 000 devices with 3
-- properties writes ~3 000 rows instead of ~24 500 (and one index instead of two).
-- Readers keep the newest PROPERTY_HISTORY_MAX values of a (device, property) by
-- insertion order, so the bound is exact even between two trims; trims drop whole chunks
-- older than the newest PROPERTY_HISTORY_MAX values. n = how many values the chunk holds.
CREATE TABLE property_chunks (
    seq         INTEGER PRIMARY KEY,
    iot_id      TEXT NOT NULL REFERENCES devices(iot_id) ON DELETE CASCADE,
    identifier  TEXT NOT NULL,
    n           BIGINT NOT NULL,
    values_json TEXT NOT NULL
);
CREATE INDEX property_chunks_by_key ON property_chunks(iot_id, identifier, seq);

-- The history so far: one chunk per value, in the order it was recorded.
INSERT INTO property_chunks (iot_id, identifier, n, values_json)
SELECT iot_id, identifier, 1, '[[' || time || ',' || value_json || ']]'
FROM property_history ORDER BY seq;

DROP TABLE property_history;
