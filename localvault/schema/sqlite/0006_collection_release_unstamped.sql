-- Deleting a collection releases its assets (collection_id = NULL) without
-- stamping them (updated_at) or queueing them for the sync: the server
-- releases the same rows itself when the collection's deletion reaches it,
-- and keeps their updated_at (server migration 4). Sent with a fresh
-- updated_at, a released row won over newer edits of it made on another
-- machine, and brought back a row deleted there.
--
-- A row is released when its collection is gone: the release now runs after
-- the collection's deletion (foreign keys are checked at the statement's end).

-- Its entries the server refused for lack of it (23503: the collection refused itself, say for a name
-- taken there) are queued again, as they were refused: released, they can go now.
DROP TRIGGER user_collections_release;
CREATE TRIGGER user_collections_release AFTER DELETE ON user_collections
BEGIN
    INSERT INTO sync_outbox (table_name, row_id, op, user_id, storage_path, queued_at)
        SELECT r.table_name, r.row_id, r.op, r.user_id, r.storage_path,
               coalesce(r.queued_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        FROM sync_rejected r JOIN user_library l ON l.id = r.row_id AND l.user_id = r.user_id
        WHERE r.user_id = OLD.user_id AND r.table_name = 'user_library' AND r.sqlstate = '23503'
          AND l.collection_id = OLD.id
        ORDER BY r.seq;
    DELETE FROM sync_rejected WHERE seq IN (
        SELECT r.seq FROM sync_rejected r JOIN user_library l ON l.id = r.row_id AND l.user_id = r.user_id
        WHERE r.user_id = OLD.user_id AND r.table_name = 'user_library' AND r.sqlstate = '23503'
          AND l.collection_id = OLD.id);
    UPDATE user_library SET collection_id = NULL WHERE collection_id = OLD.id;
END;

DROP TRIGGER user_library_touch;
CREATE TRIGGER user_library_touch AFTER UPDATE ON user_library
WHEN NEW.updated_at IS OLD.updated_at
     AND NOT (NEW.collection_id IS NULL AND OLD.collection_id IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM user_collections WHERE id = OLD.collection_id))
BEGIN
    UPDATE user_library SET updated_at = max(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                                             strftime('%Y-%m-%dT%H:%M:%fZ', OLD.updated_at, '+0.001 seconds'))
    WHERE local_seq = NEW.local_seq;
END;

DROP TRIGGER user_library_outbox_update;
CREATE TRIGGER user_library_outbox_update AFTER UPDATE OF
    id, user_id, asset_type, storage_path, file_size_bytes, mime_type, duration_seconds,
    original_prompt, model_used, generation_seed, generation_settings, title, tags,
    is_favorite, visibility, collection_id, original_asset_id, thumbnail_path,
    width, height, sha256, created_at ON user_library
WHEN NOT (NEW.collection_id IS NULL AND OLD.collection_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM user_collections WHERE id = OLD.collection_id))
BEGIN
    INSERT INTO sync_outbox (table_name, row_id, op, user_id) VALUES ('user_library', NEW.id, 'update', NEW.user_id);
END;
