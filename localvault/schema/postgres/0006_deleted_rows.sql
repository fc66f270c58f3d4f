-- localvault server schema, migration 6: the server remembers what was
-- deleted, so that last writer wins between an edit and a delete too.
--
-- Without it a library entry deleted on the server (through the web app, or
-- by another rig of the same user) came back whenever a vault pushed an edit
-- of it made *before* the deletion, and `sync --full` brought back every such
-- entry the vault still held: the server had no trace of the deletion to weigh
-- the edit against.
--
-- Every deleted library entry or collection leaves a row here (a trigger, so
-- deletions by any client count). Its time is the server's clock (at least
-- 1 ms after the row's own updated_at); a vault's
-- own pushed delete then sets it to the delete's own time (the vault's clock,
-- as its updated_at is), which is what an edit of another rig must beat. A
-- vault's upsert skips a row whose deletion is at or after the row's
-- updated_at (counted as a conflict: the server's newer state is kept). A row
-- edited after its deletion is inserted again: its deletion is older.
--
-- The rows of a user deleted from auth.users go with that user.

CREATE TABLE localvault.deleted_rows (
    user_id    uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    row_table  text NOT NULL CHECK (row_table IN ('user_library', 'user_collections')),
    id         uuid NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now() CHECK (isfinite(deleted_at)),
    -- The owner is part of the key: another user who takes a deleted row's id (any id of a public row can be
    -- read) and deletes that row of theirs leaves a record of their own, never takes over this one.
    PRIMARY KEY (user_id, row_table, id)
);

ALTER TABLE localvault.deleted_rows ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON localvault.deleted_rows FROM PUBLIC, anon, authenticated;
-- A vault reads its user's deletions in its upserts, and stamps its own deletes with their time.
GRANT SELECT, UPDATE (deleted_at) ON localvault.deleted_rows TO authenticated;
CREATE POLICY "deleted_rows: owner select" ON localvault.deleted_rows
    FOR SELECT TO authenticated USING ((SELECT auth.uid()) = user_id);
CREATE POLICY "deleted_rows: owner update" ON localvault.deleted_rows
    FOR UPDATE TO authenticated USING ((SELECT auth.uid()) = user_id) WITH CHECK ((SELECT auth.uid()) = user_id);

-- SECURITY DEFINER: whoever deletes a row may not write here directly. A row
-- whose user is being deleted (a cascade from auth.users) leaves no trace: its
-- user is gone already, and the trace would go with it in any case.
CREATE FUNCTION localvault.record_deletion() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    -- At least 1 ms after the row's last change: a row whose time ran ahead of the server's clock (a vault's
    -- clock running fast) must not pass for newer than its own deletion when it is sent again.
    INSERT INTO localvault.deleted_rows (user_id, row_table, id, deleted_at)
    SELECT OLD.user_id, TG_TABLE_NAME, OLD.id, GREATEST(pg_catalog.now(), OLD.updated_at + interval '1 millisecond')
     WHERE EXISTS (SELECT 1 FROM auth.users u WHERE u.id = OLD.user_id)
    ON CONFLICT (user_id, row_table, id) DO UPDATE SET deleted_at = EXCLUDED.deleted_at;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION localvault.record_deletion() FROM PUBLIC, anon, authenticated;

CREATE TRIGGER user_library_record_deletion AFTER DELETE ON public.user_library
    FOR EACH ROW EXECUTE FUNCTION localvault.record_deletion();
CREATE TRIGGER user_collections_record_deletion AFTER DELETE ON public.user_collections
    FOR EACH ROW EXECUTE FUNCTION localvault.record_deletion();

-- A vault's push sends each row with its own updated_at. A row that differs
-- from the server's only by the server's release from a collection (its
-- deletion, ON DELETE SET NULL, keeps updated_at) is sent again with the same
-- updated_at to rejoin the collection the vault brought back: stamping it with
-- now() would make it newer than edits made elsewhere since the vault's.
-- localvault's push says so with a transaction-local setting (any client may
-- set it: it only lets an update of one's own rows keep their updated_at, which
-- an update naming updated_at could set to any other value already).
CREATE OR REPLACE FUNCTION public.localvault_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at AND NEW IS DISTINCT FROM OLD
       AND pg_catalog.pg_trigger_depth() = 1
       AND pg_catalog.current_setting('localvault.push', true) IS DISTINCT FROM 'on' THEN
        NEW.updated_at := pg_catalog.now();
    END IF;
    RETURN NEW;
END
$$;
