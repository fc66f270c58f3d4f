-- A refused change keeps the time it was queued at: sent again by `sync --retry-rejected`,
-- a delete must carry its own time (last-writer-wins against the server's edits), not the retry's.

ALTER TABLE sync_rejected ADD COLUMN queued_at TEXT;
