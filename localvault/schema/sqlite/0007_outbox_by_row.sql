-- The outbox by row: a batch that takes a pending delete takes that row's other entries with it (they may
-- lie anywhere before it in a queue of a million), and `status` counts the rows with pending changes. Both
-- read every entry up to the last delete, or the whole queue, without it (seconds, and hundreds of MiB, per
-- batch of a sync after a long time offline).
CREATE INDEX sync_outbox_row ON sync_outbox (user_id, table_name, row_id);
