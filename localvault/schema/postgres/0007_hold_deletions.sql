-- localvault server schema, migration 7: a library entry brought back while
-- another sync removes its object never stays without it.
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
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION localvault.wait_for_held_deletions() FROM PUBLIC, anon, authenticated;

CREATE TRIGGER user_library_wait_for_held_deletions AFTER INSERT ON public.user_library
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION localvault.wait_for_held_deletions();
