-- localvault server schema, migration 7: a library entry brought back while
-- another sync removes its object never stays without it, and a write that
-- waited on a concurrent delete does not bring back an older version.
--
-- A vault that deleted an entry removes its object after the server's commit.
-- Another rig of the same user may bring the entry back meanwhile (an edit
-- newer than the deletion): it found the object in the bucket before its
-- upload, so it sent none, and the removal would leave its row without a file.
-- The vault removing objects first holds their rows' deletion records
-- (SELECT ... FOR UPDATE), checks the rows are still gone, removes the
-- objects, then ends its transaction. An insert of a row whose deletion is
-- held waits here until then; the rig that brought the row back checks after
-- its commit that the object is there, and sends it again if not. So either
-- the removal sees the row and keeps the object, or the rig sees the object
-- gone and sends it.
--
-- The same trigger re-checks last writer wins against deletions. An upsert
-- skips a row deleted at or after the row's updated_at, but it reads the
-- deletion records with its statement's snapshot: one that waited on a
-- concurrent delete of the row (ON CONFLICT waits for it) then inserts the
-- row as it was before that delete, though the delete is newer. The trigger
-- reads the records afresh; finding such a row in a vault's push (which says
-- so with its transaction-local `localvault.push`, migration 6), it fails the
-- statement as a serialization failure (40001), and the push retries the
-- batch, whose upsert then sees the deletion and skips the row. Other clients'
-- inserts are left alone, as before: an insert naming an old updated_at (say,
-- a row restored from a backup by hand) is not refused.
--
-- One trigger per statement, over the rows it inserted (a transition table):
-- an upsert of 5,000 rows costs one join with the user's deletion records, not
-- 5,000 lookups. SECURITY DEFINER: FOR SHARE needs a privilege on the records
-- that their owners' clients (and the web app) need not have.

CREATE FUNCTION localvault.wait_for_held_deletions() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    PERFORM 1 FROM localvault.deleted_rows d
     WHERE d.row_table = TG_TABLE_NAME
       AND (d.user_id, d.id) IN (SELECT i.user_id, i.id FROM inserted i)
     ORDER BY d.user_id, d.id
       FOR SHARE OF d;
    IF pg_catalog.current_setting('localvault.push', true) = 'on'
       AND EXISTS (SELECT 1 FROM inserted i JOIN localvault.deleted_rows d
                 ON d.user_id = i.user_id AND d.row_table = TG_TABLE_NAME AND d.id = i.id
                WHERE d.deleted_at >= i.updated_at) THEN
        RAISE EXCEPTION 'a row was deleted on the server, after this version of it, while this push waited'
              USING ERRCODE = '40001', HINT = 'Push again: the row stays deleted.';
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION localvault.wait_for_held_deletions() FROM PUBLIC, anon, authenticated;

CREATE TRIGGER user_library_wait_for_held_deletions AFTER INSERT ON public.user_library
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION localvault.wait_for_held_deletions();
CREATE TRIGGER user_collections_wait_for_held_deletions AFTER INSERT ON public.user_collections
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION localvault.wait_for_held_deletions();
