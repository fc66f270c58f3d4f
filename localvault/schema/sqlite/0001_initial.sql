-- localvault local store, version 1.
-- The three tables of the server schema, column for column, plus what a
-- local-first store needs: sha256 per row, a tag index, FTS5, the sync outbox
-- and the pending file deletions. Timestamps are UTC ISO-8601 text with
-- milliseconds ('2026-11-25T02:04:35.123Z'), which sort as text.

CREATE TABLE user_collections (
    id            TEXT NOT NULL PRIMARY KEY CHECK (length(id) = 36 AND id = lower(id)),
    user_id       TEXT NOT NULL CHECK (length(user_id) = 36 AND user_id = lower(user_id)),
    name          TEXT NOT NULL CHECK (length(trim(name)) BETWEEN 1 AND 100),
    description   TEXT CHECK (description IS NULL OR length(description) <= 2000),
    asset_count   INTEGER NOT NULL DEFAULT 0 CHECK (asset_count >= 0),
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (user_id, name),
    UNIQUE (id, user_id)            -- target of the same-user foreign key
) STRICT;

CREATE TABLE workspace_assets (
    id                  TEXT NOT NULL PRIMARY KEY CHECK (length(id) = 36 AND id = lower(id)),
    user_id             TEXT NOT NULL CHECK (length(user_id) = 36 AND user_id = lower(user_id)),
    asset_type          TEXT NOT NULL CHECK (asset_type IN ('image', 'video')),
    temp_storage_path   TEXT NOT NULL,
    file_size_bytes     INTEGER NOT NULL CHECK (file_size_bytes > 0 AND file_size_bytes <= 1073741824),
    mime_type           TEXT NOT NULL CHECK (mime_type IN ('image/jpeg', 'image/png', 'image/webp', 'video/mp4')),
    duration_seconds    REAL CHECK (duration_seconds IS NULL OR duration_seconds >= 0),
    job_id              TEXT NOT NULL CHECK (length(job_id) = 36 AND job_id = lower(job_id)),
    asset_index         INTEGER NOT NULL DEFAULT 0 CHECK (asset_index >= 0),
    generation_seed     INTEGER NOT NULL CHECK (generation_seed >= 0),
    original_prompt     TEXT NOT NULL CHECK (length(original_prompt) <= 65536),
    model_used          TEXT NOT NULL,
    generation_settings TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(generation_settings) AND json_type(generation_settings) = 'object'),
    created_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+7 days')),
    thumbnail_path      TEXT,
    width               INTEGER CHECK (width IS NULL OR width > 0),
    height              INTEGER CHECK (height IS NULL OR height > 0),
    sha256              TEXT NOT NULL CHECK (length(sha256) = 64),
    CHECK (expires_at > created_at),
    CHECK ((asset_type = 'video') = (mime_type = 'video/mp4')),
    UNIQUE (user_id, job_id, asset_index),
    UNIQUE (user_id, sha256)
) STRICT;

CREATE INDEX workspace_assets_user_created ON workspace_assets (user_id, created_at DESC, id DESC);
CREATE INDEX workspace_assets_expires ON workspace_assets (expires_at);
CREATE UNIQUE INDEX workspace_assets_path ON workspace_assets (temp_storage_path);

-- local_seq is the rowid (a stable alias: VACUUM keeps it), used by FTS5 and
-- the tag index; it also orders search results by recency of saving.
CREATE TABLE user_library (
    local_seq           INTEGER PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE CHECK (length(id) = 36 AND id = lower(id)),
    user_id             TEXT NOT NULL CHECK (length(user_id) = 36 AND user_id = lower(user_id)),
    asset_type          TEXT NOT NULL CHECK (asset_type IN ('image', 'video')),
    storage_path        TEXT NOT NULL,
    file_size_bytes     INTEGER NOT NULL CHECK (file_size_bytes > 0 AND file_size_bytes <= 1073741824),
    mime_type           TEXT NOT NULL CHECK (mime_type IN ('image/jpeg', 'image/png', 'image/webp', 'video/mp4')),
    duration_seconds    REAL CHECK (duration_seconds IS NULL OR duration_seconds >= 0),
    original_prompt     TEXT NOT NULL CHECK (length(original_prompt) <= 65536),
    model_used          TEXT NOT NULL,
    generation_seed     INTEGER NOT NULL CHECK (generation_seed >= 0),
    generation_settings TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(generation_settings) AND json_type(generation_settings) = 'object'),
    title               TEXT CHECK (title IS NULL OR length(title) BETWEEN 1 AND 300),
    tags                TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tags) AND json_type(tags) = 'array'),
    is_favorite         INTEGER NOT NULL DEFAULT 0 CHECK (is_favorite IN (0, 1)),
    visibility          TEXT NOT NULL DEFAULT 'private' CHECK (visibility IN ('private', 'unlisted', 'public')),
    collection_id       TEXT,
    original_asset_id   TEXT,
    thumbnail_path      TEXT,
    width               INTEGER CHECK (width IS NULL OR width > 0),
    height              INTEGER CHECK (height IS NULL OR height > 0),
    sha256              TEXT NOT NULL CHECK (length(sha256) = 64),
    created_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK ((asset_type = 'video') = (mime_type = 'video/mp4')),
    UNIQUE (user_id, sha256),
    -- Correction 2: an asset may only join a collection of the same user.
    FOREIGN KEY (collection_id, user_id) REFERENCES user_collections (id, user_id)
) STRICT;

CREATE INDEX user_library_user_created ON user_library (user_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX user_library_path ON user_library (storage_path);
CREATE INDEX user_library_collection ON user_library (collection_id, created_at DESC, id DESC) WHERE collection_id IS NOT NULL;
CREATE INDEX user_library_favorite ON user_library (user_id, created_at DESC, id DESC) WHERE is_favorite = 1;

-- Tags in a searchable form: one row per (asset, tag), kept by triggers.
CREATE TABLE library_tags (
    library_seq INTEGER NOT NULL REFERENCES user_library (local_seq) ON DELETE CASCADE,
    user_id     TEXT NOT NULL,
    tag         TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    id          TEXT NOT NULL,
    PRIMARY KEY (library_seq, tag)
) STRICT, WITHOUT ROWID;
CREATE INDEX library_tags_lookup ON library_tags (user_id, tag, created_at DESC, id DESC);

-- Full-text search over prompt, title and tags (external content).
CREATE VIRTUAL TABLE library_fts USING fts5(
    original_prompt, title, tags,
    content = 'user_library', content_rowid = 'local_seq',
    tokenize = 'unicode61 remove_diacritics 2'
);

-- Sync outbox: every change to the library and collections, in the same
-- transaction as the change. Workspace assets are never queued.
CREATE TABLE sync_outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name   TEXT NOT NULL CHECK (table_name IN ('user_library', 'user_collections')),
    row_id       TEXT NOT NULL,
    op           TEXT NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    user_id      TEXT NOT NULL,
    -- For a deleted library row: its object, removed from the bucket after the server commit.
    storage_path TEXT,
    queued_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX sync_outbox_user ON sync_outbox (user_id, seq);

-- Changes the server refused for good (SQLSTATE classes 22, 23, 42501): kept
-- with the server's message until the user fixes them and retries.
CREATE TABLE sync_rejected (
    seq          INTEGER PRIMARY KEY,
    table_name   TEXT NOT NULL,
    row_id       TEXT NOT NULL,
    op           TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    storage_path TEXT,
    sqlstate     TEXT NOT NULL,
    message      TEXT NOT NULL,
    rejected_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

-- Files whose rows are gone: removed after the commit, idempotently.
CREATE TABLE pending_deletes (
    id        INTEGER PRIMARY KEY,
    bucket    TEXT NOT NULL CHECK (bucket IN ('workspace-temp', 'user-library')),
    path      TEXT NOT NULL,
    queued_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (bucket, path)
) STRICT;

CREATE TABLE vault_meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- ------------------------------------------------------------ triggers

-- Correction 3: updated_at on every update (recursive_triggers is off, so the
-- inner UPDATE does not fire this again).
-- updated_at only moves forward, at least 1 ms per update, so last-writer-wins
-- on the server can tell every local edit from the one before it.
CREATE TRIGGER user_library_touch AFTER UPDATE ON user_library
WHEN NEW.updated_at IS OLD.updated_at
BEGIN
    UPDATE user_library SET updated_at = max(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                                             strftime('%Y-%m-%dT%H:%M:%fZ', OLD.updated_at, '+0.001 seconds'))
    WHERE local_seq = NEW.local_seq;
END;

CREATE TRIGGER user_collections_touch AFTER UPDATE OF name, description ON user_collections
WHEN NEW.updated_at IS OLD.updated_at
BEGIN
    UPDATE user_collections SET updated_at = max(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                                                 strftime('%Y-%m-%dT%H:%M:%fZ', OLD.updated_at, '+0.001 seconds'))
    WHERE id = NEW.id;
END;

-- Correction 1: asset_count exact through insert, delete, move and collection delete.
CREATE TRIGGER user_library_count_insert AFTER INSERT ON user_library
WHEN NEW.collection_id IS NOT NULL
BEGIN
    UPDATE user_collections SET asset_count = asset_count + 1 WHERE id = NEW.collection_id;
END;

CREATE TRIGGER user_library_count_delete AFTER DELETE ON user_library
WHEN OLD.collection_id IS NOT NULL
BEGIN
    UPDATE user_collections SET asset_count = asset_count - 1 WHERE id = OLD.collection_id;
END;

CREATE TRIGGER user_library_count_move AFTER UPDATE OF collection_id ON user_library
WHEN OLD.collection_id IS NOT NEW.collection_id
BEGIN
    UPDATE user_collections SET asset_count = asset_count - 1 WHERE id = OLD.collection_id;
    UPDATE user_collections SET asset_count = asset_count + 1 WHERE id = NEW.collection_id;
END;

-- Deleting a collection keeps its assets, outside any collection (the server
-- does the same with ON DELETE SET NULL (collection_id)).
CREATE TRIGGER user_collections_release BEFORE DELETE ON user_collections
BEGIN
    UPDATE user_library SET collection_id = NULL WHERE collection_id = OLD.id;
END;

-- Tag index and full-text index.
CREATE TRIGGER user_library_index_insert AFTER INSERT ON user_library
BEGIN
    INSERT INTO library_tags (library_seq, user_id, tag, created_at, id)
        SELECT DISTINCT NEW.local_seq, NEW.user_id, value, NEW.created_at, NEW.id FROM json_each(NEW.tags);
    INSERT INTO library_fts (rowid, original_prompt, title, tags)
        VALUES (NEW.local_seq, NEW.original_prompt, NEW.title, NEW.tags);
END;

CREATE TRIGGER user_library_index_delete AFTER DELETE ON user_library
BEGIN
    DELETE FROM library_tags WHERE library_seq = OLD.local_seq;
    INSERT INTO library_fts (library_fts, rowid, original_prompt, title, tags)
        VALUES ('delete', OLD.local_seq, OLD.original_prompt, OLD.title, OLD.tags);
END;

CREATE TRIGGER user_library_index_update AFTER UPDATE OF original_prompt, title, tags, created_at ON user_library
BEGIN
    DELETE FROM library_tags WHERE library_seq = OLD.local_seq;
    INSERT INTO library_tags (library_seq, user_id, tag, created_at, id)
        SELECT DISTINCT NEW.local_seq, NEW.user_id, value, NEW.created_at, NEW.id FROM json_each(NEW.tags);
    INSERT INTO library_fts (library_fts, rowid, original_prompt, title, tags)
        VALUES ('delete', OLD.local_seq, OLD.original_prompt, OLD.title, OLD.tags);
    INSERT INTO library_fts (rowid, original_prompt, title, tags)
        VALUES (NEW.local_seq, NEW.original_prompt, NEW.title, NEW.tags);
END;

-- Outbox (DESIGN.md §4). asset_count is never pushed, so count-only updates
-- of a collection are not queued.
CREATE TRIGGER user_library_outbox_insert AFTER INSERT ON user_library
BEGIN
    INSERT INTO sync_outbox (table_name, row_id, op, user_id) VALUES ('user_library', NEW.id, 'insert', NEW.user_id);
END;
-- Fires on the user's update, not on the updated_at touch that follows it.
CREATE TRIGGER user_library_outbox_update AFTER UPDATE OF
    id, user_id, asset_type, storage_path, file_size_bytes, mime_type, duration_seconds,
    original_prompt, model_used, generation_seed, generation_settings, title, tags,
    is_favorite, visibility, collection_id, original_asset_id, thumbnail_path,
    width, height, sha256, created_at ON user_library
BEGIN
    INSERT INTO sync_outbox (table_name, row_id, op, user_id) VALUES ('user_library', NEW.id, 'update', NEW.user_id);
END;
CREATE TRIGGER user_library_outbox_delete AFTER DELETE ON user_library
BEGIN
    INSERT INTO sync_outbox (table_name, row_id, op, user_id, storage_path) VALUES ('user_library', OLD.id, 'delete', OLD.user_id, OLD.storage_path);
END;
CREATE TRIGGER user_collections_outbox_insert AFTER INSERT ON user_collections
BEGIN
    INSERT INTO sync_outbox (table_name, row_id, op, user_id) VALUES ('user_collections', NEW.id, 'insert', NEW.user_id);
END;
CREATE TRIGGER user_collections_outbox_update AFTER UPDATE OF name, description ON user_collections
BEGIN
    INSERT INTO sync_outbox (table_name, row_id, op, user_id) VALUES ('user_collections', NEW.id, 'update', NEW.user_id);
END;
CREATE TRIGGER user_collections_outbox_delete AFTER DELETE ON user_collections
BEGIN
    INSERT INTO sync_outbox (table_name, row_id, op, user_id) VALUES ('user_collections', OLD.id, 'delete', OLD.user_id);
END;
