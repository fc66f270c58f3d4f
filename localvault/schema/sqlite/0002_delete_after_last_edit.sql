-- A delete is stamped no earlier than 1 ms after the row's last local edit.
-- updated_at can run ahead of the clock (it grows at least 1 ms per edit), and
-- the server applies a delete only to a row not changed after it: stamped with
-- the bare clock, a delete could lose against this vault's own earlier edits.

DROP TRIGGER user_library_outbox_delete;
CREATE TRIGGER user_library_outbox_delete AFTER DELETE ON user_library
BEGIN
    INSERT INTO sync_outbox (table_name, row_id, op, user_id, storage_path, queued_at)
    VALUES ('user_library', OLD.id, 'delete', OLD.user_id, OLD.storage_path,
            max(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', OLD.updated_at, '+0.001 seconds')));
END;

DROP TRIGGER user_collections_outbox_delete;
CREATE TRIGGER user_collections_outbox_delete AFTER DELETE ON user_collections
BEGIN
    INSERT INTO sync_outbox (table_name, row_id, op, user_id, queued_at)
    VALUES ('user_collections', OLD.id, 'delete', OLD.user_id,
            max(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', OLD.updated_at, '+0.001 seconds')));
END;

-- The entries every sync batch takes beyond its limit (collection changes and deletes), without a scan.
CREATE INDEX sync_outbox_extra ON sync_outbox (user_id, seq) WHERE table_name = 'user_collections' OR op = 'delete';
