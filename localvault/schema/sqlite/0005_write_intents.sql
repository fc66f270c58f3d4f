-- Files written into place just before their rows commit (DESIGN.md §3): a process killed between the rename
-- and the commit left a file that no row names. Each such write is noted first, in a transaction of its own;
-- the transaction that inserts the rows drops the note. Opening the vault for writing removes whatever a note
-- still covers that no row uses (localvault/_write_intents.py).
CREATE TABLE write_intents (
    id       INTEGER PRIMARY KEY,
    bucket   TEXT NOT NULL CHECK (bucket IN ('workspace-temp', 'user-library')),
    -- A JSON array of paths in the bucket: a file's, or a folder's (ending in "/": the files in it).
    paths    TEXT NOT NULL CHECK (json_valid(paths) AND json_type(paths) = 'array'),
    noted_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
