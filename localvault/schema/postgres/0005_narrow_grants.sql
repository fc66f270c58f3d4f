-- localvault server schema, migration 5: privileges narrowed to what a client
-- needs, and storage names that cannot climb out of their folder. Found by a
-- review that acted as anon and authenticated with plain SQL.
--
-- 1. Supabase gives anon, authenticated and service_role ALL on every new
--    table of public: TRUNCATE (which row-level security does not govern: any
--    user could empty every user's library) and TRIGGER (a user's trigger
--    runs in others' sessions, up to the owner's SECURITY DEFINER functions)
--    included. Migration 2 revoked from anon only. Start from nothing.
REVOKE ALL ON public.user_collections, public.workspace_assets, public.user_library FROM anon, authenticated;
GRANT SELECT ON public.user_library TO anon;
GRANT SELECT, INSERT, DELETE ON public.user_collections, public.workspace_assets, public.user_library
    TO authenticated;

-- 2. A time no client clock makes: 'infinity' would win every later edit and
--    delete for ever (or never expire), and no client library can read it
--    back. Rows that hold one already are mended first: the constraint would
--    otherwise stop this migration, and with it every sync.
UPDATE public.user_collections
   SET created_at = CASE WHEN isfinite(created_at) THEN created_at ELSE now() END,
       updated_at = CASE WHEN isfinite(updated_at) THEN updated_at ELSE now() END
 WHERE NOT (isfinite(created_at) AND isfinite(updated_at));
UPDATE public.user_library
   SET created_at = CASE WHEN isfinite(created_at) THEN created_at ELSE now() END,
       updated_at = CASE WHEN isfinite(updated_at) THEN updated_at ELSE now() END
 WHERE NOT (isfinite(created_at) AND isfinite(updated_at));
UPDATE public.workspace_assets
   SET created_at = CASE WHEN isfinite(created_at) THEN created_at ELSE now() END,
       expires_at = CASE WHEN isfinite(expires_at) THEN expires_at ELSE now() + interval '7 days' END
 WHERE NOT (isfinite(created_at) AND isfinite(expires_at));
ALTER TABLE public.user_collections
    ADD CONSTRAINT user_collections_finite_times CHECK (isfinite(created_at) AND isfinite(updated_at));
ALTER TABLE public.user_library
    ADD CONSTRAINT user_library_finite_times CHECK (isfinite(created_at) AND isfinite(updated_at));
ALTER TABLE public.workspace_assets
    ADD CONSTRAINT workspace_assets_finite_times CHECK (isfinite(created_at) AND isfinite(expires_at));

-- 3. UPDATE: every column but asset_count (the database's own; writable
--    before, and ignored by a guard a nested trigger could step around). An
--    id, an owner or a creation time may be named in an UPDATE (PostgREST's
--    upsert of a whole row names them all) but not changed: changing a
--    collection's id while moving its assets in the same statement made the
--    count drift (the foreign key is checked at the statement's end, after the
--    guard carried the old count over). The counting trigger and the foreign
--    key's ON DELETE action run as the owner, so they need no grant.
GRANT UPDATE (id, user_id, name, description, created_at, updated_at) ON public.user_collections TO authenticated;
GRANT UPDATE ON public.user_library, public.workspace_assets TO authenticated;

CREATE FUNCTION public.localvault_keep_identity() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.user_id IS DISTINCT FROM OLD.user_id
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'localvault: a row''s id, user_id and created_at cannot be changed'
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER user_collections_keep_identity BEFORE UPDATE OF id, user_id, created_at ON public.user_collections
    FOR EACH ROW EXECUTE FUNCTION public.localvault_keep_identity();
CREATE TRIGGER user_library_keep_identity BEFORE UPDATE OF id, user_id, created_at ON public.user_library
    FOR EACH ROW EXECUTE FUNCTION public.localvault_keep_identity();
CREATE TRIGGER workspace_assets_keep_identity BEFORE UPDATE OF id, user_id, created_at ON public.workspace_assets
    FOR EACH ROW EXECUTE FUNCTION public.localvault_keep_identity();

-- Trigger functions are called by their triggers, never by clients (Supabase's default privileges grant
-- EXECUTE to its roles by name; a trigger function cannot be called directly in any case).
REVOKE ALL ON FUNCTION public.localvault_touch_updated_at(), public.user_collections_guard(),
    public.localvault_keep_identity() FROM PUBLIC, anon, authenticated;

-- 4. Object names: the owner's id first, then no empty, "." or ".." segment
--    and no backslash (a store that maps names onto a filesystem would take
--    "<me>/../<you>/x.png" into your folder).
CREATE OR REPLACE FUNCTION public.localvault_own_object_name(p_name text) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = ''
AS $$
    SELECT (storage.foldername(p_name))[1] = (SELECT auth.uid())::text
       AND p_name !~ '(^|/)\.{0,2}(/|$)'
       AND pg_catalog.strpos(p_name, E'\\') = 0
$$;
GRANT EXECUTE ON FUNCTION public.localvault_own_object_name(text) TO authenticated;

DROP POLICY IF EXISTS "localvault: owner insert" ON storage.objects;
CREATE POLICY "localvault: owner insert" ON storage.objects
    FOR INSERT TO authenticated
    WITH CHECK (bucket_id IN ('workspace-temp', 'user-library') AND public.localvault_own_object_name(name));

DROP POLICY IF EXISTS "localvault: owner update" ON storage.objects;
CREATE POLICY "localvault: owner update" ON storage.objects
    FOR UPDATE TO authenticated
    USING (bucket_id IN ('workspace-temp', 'user-library')
           AND (storage.foldername(name))[1] = (SELECT auth.uid())::text)
    WITH CHECK (bucket_id IN ('workspace-temp', 'user-library') AND public.localvault_own_object_name(name));
