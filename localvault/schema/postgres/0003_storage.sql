-- localvault server schema, migration 3: the two storage buckets, their
-- policies, and the expiry of workspace assets.
--
-- Object names start with the owner's id: workspace-temp/<user_id>/<job_id>/
-- <asset_index>.<ext> and user-library/<user_id>/<asset_id>.<ext>, so the
-- policies compare the first folder of the name with auth.uid(). Both buckets
-- are private (public = false): a public bucket would serve every object to
-- anyone who knows its URL; public library assets are readable through the
-- policy "read public library objects" instead.

INSERT INTO storage.buckets (id, name, public, file_size_limit, allowed_mime_types)
VALUES
    ('workspace-temp', 'workspace-temp', false, 1073741824,
     ARRAY['image/jpeg', 'image/png', 'image/webp', 'video/mp4']),
    ('user-library', 'user-library', false, 1073741824,
     ARRAY['image/jpeg', 'image/png', 'image/webp', 'video/mp4'])
ON CONFLICT (id) DO NOTHING;

-- Policy names are unique per table and storage.objects is shared with the
-- rest of a Supabase project: every name starts with "localvault:".
DROP POLICY IF EXISTS "localvault: owner select" ON storage.objects;
CREATE POLICY "localvault: owner select" ON storage.objects
    FOR SELECT TO authenticated
    USING (bucket_id IN ('workspace-temp', 'user-library')
           AND (storage.foldername(name))[1] = (SELECT auth.uid())::text);

DROP POLICY IF EXISTS "localvault: owner insert" ON storage.objects;
CREATE POLICY "localvault: owner insert" ON storage.objects
    FOR INSERT TO authenticated
    WITH CHECK (bucket_id IN ('workspace-temp', 'user-library')
                AND (storage.foldername(name))[1] = (SELECT auth.uid())::text);

DROP POLICY IF EXISTS "localvault: owner update" ON storage.objects;
CREATE POLICY "localvault: owner update" ON storage.objects
    FOR UPDATE TO authenticated
    USING (bucket_id IN ('workspace-temp', 'user-library')
           AND (storage.foldername(name))[1] = (SELECT auth.uid())::text)
    WITH CHECK (bucket_id IN ('workspace-temp', 'user-library')
                AND (storage.foldername(name))[1] = (SELECT auth.uid())::text);

DROP POLICY IF EXISTS "localvault: owner delete" ON storage.objects;
CREATE POLICY "localvault: owner delete" ON storage.objects
    FOR DELETE TO authenticated
    USING (bucket_id IN ('workspace-temp', 'user-library')
           AND (storage.foldername(name))[1] = (SELECT auth.uid())::text);

-- Anyone may read a library object whose row is public (the row's path may be
-- stored with or without the bucket prefix).
CREATE INDEX user_library_public_thumbnail ON public.user_library (thumbnail_path)
    WHERE visibility = 'public' AND thumbnail_path IS NOT NULL;

DROP POLICY IF EXISTS "localvault: read public library objects" ON storage.objects;
CREATE POLICY "localvault: read public library objects" ON storage.objects
    FOR SELECT TO anon, authenticated
    USING (bucket_id = 'user-library'
           AND EXISTS (
               SELECT 1 FROM public.user_library l
               WHERE l.visibility = 'public'
                 AND (l.storage_path IN (objects.name, 'user-library/' || objects.name)
                      OR l.thumbnail_path IN (objects.name, 'user-library/' || objects.name))
           ));

-- Expiry of workspace assets: deletes the expired rows and the matching
-- objects of bucket workspace-temp (the file and its thumbnail), and returns
-- one row per deleted asset so that the caller can also remove the bytes from
-- the object store. On Supabase, direct deletes from storage.objects may be
-- refused (storage.protect_delete, SQLSTATE 42501): the rows are then still
-- deleted, objects_deleted is 0, and the caller deletes the objects through
-- the Storage API. Run it from a scheduler (pg_cron) or the service role.
CREATE FUNCTION public.cleanup_expired_workspace_assets(p_now timestamptz DEFAULT now())
RETURNS TABLE (asset_id uuid, owner_id uuid, object_path text, thumbnail_object_path text, objects_deleted integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
#variable_conflict use_column
DECLARE
    _ids     uuid[];
    _owners  uuid[];
    _paths   text[];
    _thumbs  text[];
    _counts  integer[];
BEGIN
    WITH gone AS (
        DELETE FROM public.workspace_assets w
        WHERE w.expires_at <= p_now
        RETURNING w.id, w.user_id, w.temp_storage_path, w.thumbnail_path
    )
    SELECT coalesce(array_agg(g.id ORDER BY g.id), '{}'),
           coalesce(array_agg(g.user_id ORDER BY g.id), '{}'),
           coalesce(array_agg(g.temp_storage_path ORDER BY g.id), '{}'),
           coalesce(array_agg(g.thumbnail_path ORDER BY g.id), '{}')
    INTO _ids, _owners, _paths, _thumbs
    FROM gone g;

    _counts := array_fill(0, ARRAY[coalesce(array_length(_ids, 1), 0)]);

    IF coalesce(array_length(_ids, 1), 0) > 0 THEN
        BEGIN
            WITH wanted AS (
                SELECT t.ord, regexp_replace(p.path, '^/?workspace-temp/', '') AS name
                FROM unnest(_paths, _thumbs) WITH ORDINALITY AS t(path, thumb, ord)
                CROSS JOIN LATERAL (VALUES (t.path), (t.thumb)) AS p(path)
                WHERE p.path IS NOT NULL
            ), deleted AS (
                DELETE FROM storage.objects o
                USING wanted w
                WHERE o.bucket_id = 'workspace-temp' AND o.name = w.name
                RETURNING w.ord
            )
            SELECT array_agg(coalesce(c.n, 0)::integer ORDER BY i.ord)
            INTO _counts
            FROM generate_series(1, array_length(_ids, 1)) AS i(ord)
            LEFT JOIN (SELECT d.ord, count(*) AS n FROM deleted d GROUP BY d.ord) c ON c.ord = i.ord;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'localvault: storage.objects rows not deleted (%); delete the objects through the Storage API', SQLERRM;
        END;
    END IF;

    RETURN QUERY
    SELECT t.id, t.owner, t.path, t.thumb, _counts[t.ord::integer]
    FROM unnest(_ids, _owners, _paths, _thumbs) WITH ORDINALITY AS t(id, owner, path, thumb, ord);
END
$$;

REVOKE ALL ON FUNCTION public.cleanup_expired_workspace_assets(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.cleanup_expired_workspace_assets(timestamptz) FROM anon, authenticated;
GRANT EXECUTE ON FUNCTION public.cleanup_expired_workspace_assets(timestamptz) TO service_role;
