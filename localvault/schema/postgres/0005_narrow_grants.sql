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

-- 2. UPDATE column by column: never an id, an owner, a creation time, nor
--    asset_count. Changing a collection's id while moving its assets in the
--    same statement made the count drift (the foreign key is checked at the
--    statement's end, after the guard carried the old count over); the
--    counting trigger and the foreign key's ON DELETE action run as the owner,
--    so they need no grant. The sync's upserts set exactly these columns.
GRANT UPDATE (name, description, updated_at) ON public.user_collections TO authenticated;
GRANT UPDATE (asset_type, storage_path, file_size_bytes, mime_type, duration_seconds, original_prompt,
              model_used, generation_seed, generation_settings, title, tags, is_favorite, visibility,
              collection_id, original_asset_id, thumbnail_path, width, height, sha256, updated_at)
    ON public.user_library TO authenticated;
GRANT UPDATE (asset_type, temp_storage_path, file_size_bytes, mime_type, duration_seconds, job_id, asset_index,
              generation_seed, original_prompt, model_used, generation_settings, expires_at, thumbnail_path,
              width, height, sha256)
    ON public.workspace_assets TO authenticated;

-- Trigger functions are called by their triggers, never by clients.
REVOKE ALL ON FUNCTION public.localvault_touch_updated_at(), public.user_collections_guard() FROM PUBLIC;

-- 3. A time no client clock makes: 'infinity' would win every later edit and
--    delete for ever, and no client library can read it back.
ALTER TABLE public.user_collections
    ADD CONSTRAINT user_collections_finite_times CHECK (isfinite(created_at) AND isfinite(updated_at));
ALTER TABLE public.user_library
    ADD CONSTRAINT user_library_finite_times CHECK (isfinite(created_at) AND isfinite(updated_at));

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
