-- localvault server schema: privileges every `schema apply` re-asserts after
-- the migrations. Idempotent, and no client depends on them, so they change
-- no version: a new migration would make every rig with an older localvault
-- refuse the server until upgraded (a server newer than a client is refused).
--
-- Trigger functions are called by their triggers alone. A trigger function
-- cannot be called directly, and PostgREST does not expose one, but EXECUTE is
-- what CREATE TRIGGER checks: with it, a client attaches the function to a
-- temporary table of its own and runs it as its owner. Attached to such a
-- table, the SECURITY DEFINER count of user_library_count_assets() set any
-- user's asset_count. Migration 1 revoked it from PUBLIC only, and Supabase's
-- default privileges grant EXECUTE on every new function of public to anon,
-- authenticated and service_role by name (its Security Advisor flags it).
REVOKE ALL ON FUNCTION
    public.user_library_count_assets(),
    public.localvault_touch_updated_at(),
    public.user_collections_guard(),
    public.localvault_keep_identity(),
    localvault.record_deletion(),
    localvault.wait_for_held_deletions()
FROM PUBLIC, anon, authenticated, service_role;
