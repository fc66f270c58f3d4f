-- localvault server schema, migration 4: two corrections found by review.
--
-- 1. A library row released by the deletion of its collection (ON DELETE SET
--    NULL, a foreign-key action, so nested: pg_trigger_depth() > 1) keeps its
--    updated_at. Stamping it with the server's now() made the row newer than
--    the vault's own later edits of it still on their way (a vault pushes a
--    collection delete ahead of older library entries), and last-writer-wins
--    then dropped those edits. The vault that deleted the collection sends
--    the released rows itself, with its own time.
CREATE OR REPLACE FUNCTION public.localvault_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    -- An update that changes the row but not updated_at gets now(), unless a
    -- foreign-key action made it; an update that sets updated_at keeps its
    -- value; an update that changes nothing (a re-sent sync batch) changes nothing.
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at AND NEW IS DISTINCT FROM OLD
       AND pg_catalog.pg_trigger_depth() = 1 THEN
        NEW.updated_at := pg_catalog.now();
    END IF;
    RETURN NEW;
END
$$;

-- 2. A public row makes readable only objects in its owner's own folder. Any
--    user could otherwise publish another user's private object by pointing
--    the storage_path or thumbnail_path of a public row of their own at it.
DROP POLICY IF EXISTS "localvault: read public library objects" ON storage.objects;
CREATE POLICY "localvault: read public library objects" ON storage.objects
    FOR SELECT TO anon, authenticated
    USING (bucket_id = 'user-library'
           AND EXISTS (
               SELECT 1 FROM public.user_library l
               WHERE l.visibility = 'public'
                 AND l.user_id::text = (storage.foldername(objects.name))[1]
                 AND (l.storage_path IN (objects.name, 'user-library/' || objects.name)
                      OR l.thumbnail_path IN (objects.name, 'user-library/' || objects.name))
           ));
