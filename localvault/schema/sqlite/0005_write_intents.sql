-- Files written into place just before their rows commit (DESIGN.md §3): a process killed between the rename
-- and the commit left a file that no row names. Each such write is noted first, in a transaction of its own;
-- the transaction that inserts the rows drops the note. Opening the vault for writing removes whatever a note
-- still covers that no row uses (localvault/_write_intents.py).
CREATE TABLE write_intents (
    id       INTEGER PRIMARY KEY,
    bucket   TEXT NOT NULL CHECK (bucket IN ('workspace-temp', 'user-library')),
    -- A JSON array of paths in the bucket: a file's, or a folder's (ending in "/": the files in it).
    paths    TEXT NOT NULL CHECK (json_valid(paths) AND json_type(paths) = 'array'),
    -- A JSON array of the sha256 of the files written: in a folder, only a file with one of them is the
    -- write's (another file without a row there may be the only copy of an asset whose row was lost).
    hashes   TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(hashes) AND json_type(hashes) = 'array'),
    noted_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
