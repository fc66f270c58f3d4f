-- localvault server schema, migration 2: row-level security and grants.
--
-- Every row belongs to user_id; the owner may read and write its own rows,
-- nobody else's. user_library rows with visibility = 'public' are readable by
-- everyone (anon and authenticated). Policies call (select auth.uid()) so the
-- function is evaluated once per statement, not once per row.
-- service_role has BYPASSRLS (Supabase, and the compat layer).

ALTER TABLE public.user_collections ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.workspace_assets ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.user_library ENABLE ROW LEVEL SECURITY;

-- ------------------------------------------------------- user_collections
CREATE POLICY "user_collections: owner select" ON public.user_collections
    FOR SELECT TO authenticated USING ((SELECT auth.uid()) = user_id);
CREATE POLICY "user_collections: owner insert" ON public.user_collections
    FOR INSERT TO authenticated WITH CHECK ((SELECT auth.uid()) = user_id);
CREATE POLICY "user_collections: owner update" ON public.user_collections
    FOR UPDATE TO authenticated USING ((SELECT auth.uid()) = user_id) WITH CHECK ((SELECT auth.uid()) = user_id);
CREATE POLICY "user_collections: owner delete" ON public.user_collections
    FOR DELETE TO authenticated USING ((SELECT auth.uid()) = user_id);

-- ------------------------------------------------------- workspace_assets
CREATE POLICY "workspace_assets: owner select" ON public.workspace_assets
    FOR SELECT TO authenticated USING ((SELECT auth.uid()) = user_id);
CREATE POLICY "workspace_assets: owner insert" ON public.workspace_assets
    FOR INSERT TO authenticated WITH CHECK ((SELECT auth.uid()) = user_id);
CREATE POLICY "workspace_assets: owner update" ON public.workspace_assets
    FOR UPDATE TO authenticated USING ((SELECT auth.uid()) = user_id) WITH CHECK ((SELECT auth.uid()) = user_id);
CREATE POLICY "workspace_assets: owner delete" ON public.workspace_assets
    FOR DELETE TO authenticated USING ((SELECT auth.uid()) = user_id);

-- ----------------------------------------------------------- user_library
CREATE POLICY "user_library: owner select" ON public.user_library
    FOR SELECT TO authenticated USING ((SELECT auth.uid()) = user_id);
CREATE POLICY "user_library: public select" ON public.user_library
    FOR SELECT TO anon, authenticated USING (visibility = 'public');
CREATE POLICY "user_library: owner insert" ON public.user_library
    FOR INSERT TO authenticated WITH CHECK ((SELECT auth.uid()) = user_id);
CREATE POLICY "user_library: owner update" ON public.user_library
    FOR UPDATE TO authenticated USING ((SELECT auth.uid()) = user_id) WITH CHECK ((SELECT auth.uid()) = user_id);
CREATE POLICY "user_library: owner delete" ON public.user_library
    FOR DELETE TO authenticated USING ((SELECT auth.uid()) = user_id);

-- ----------------------------------------------------------------- grants
-- Supabase grants everything in public to anon by default; anon only reads
-- the library (and RLS narrows that to public rows).
REVOKE ALL ON public.user_collections, public.workspace_assets, public.user_library FROM anon;
GRANT SELECT ON public.user_library TO anon;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON public.user_collections, public.workspace_assets, public.user_library TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON public.user_collections, public.workspace_assets, public.user_library TO service_role;
-- asset_count: writable in name only; the guard trigger of migration 1 keeps
-- the database's value whatever a client sends.
