-- An expiry set before the year 1000 was written with a year of 3 digits ("205-01-01…": glibc's %Y),
-- which sorts after "2026-…": such an asset never expired, and reading it back failed. The moment asked
-- for is long past: it expires now (just after its creation, as the CHECK wants).
UPDATE workspace_assets
SET expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', created_at, '+0.001 seconds')
WHERE expires_at NOT GLOB '[0-9][0-9][0-9][0-9]-*';
