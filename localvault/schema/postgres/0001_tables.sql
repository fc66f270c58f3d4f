-- localvault server schema, migration 1: the three tables, their indexes and
-- the triggers that keep them consistent.
--
-- The tables mirror localvault/schema/sqlite/0001_initial.sql column for
-- column (minus local_seq and the local-only tables), with server types:
-- uuid, timestamptz, jsonb, text[] for tags, boolean is_favorite, bigint for
-- seeds and sizes, double precision for durations. Users live in auth.users
-- (Supabase, or the compat layer on a plain PostgreSQL).
--
-- Corrections to the seed schema (DESIGN.md section 2):
--  1. user_collections.asset_count is exact: statement-level triggers count
--     inserts, deletes and moves (UPDATE of collection_id), including the
--     ON DELETE SET NULL of a deleted collection; CHECK (asset_count >= 0);
--     clients cannot write it (a guard trigger ignores their value).
--  2. An asset may only join a collection of the same user: composite foreign
--     key (collection_id, user_id) -> user_collections (id, user_id).
--  3. updated_at is set to now() by a trigger on every update that changes
--     the row without setting updated_at itself. The sync sends the local
--     updated_at and it is kept, so last-writer-wins compares the times the
--     edits were made; a re-sent identical row changes nothing.
--  4. Indexes on expires_at and user_library (collection_id).

-- --------------------------------------------------------------- tables

CREATE TABLE public.user_collections (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(trim(name)) BETWEEN 1 AND 100),
    description text CHECK (description IS NULL OR length(description) <= 2000),
    asset_count integer NOT NULL DEFAULT 0 CHECK (asset_count >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Deferred so that one sync transaction may delete a collection and create
    -- another of the same name in any order (checked at commit).
    CONSTRAINT user_collections_user_id_name_key UNIQUE (user_id, name) DEFERRABLE INITIALLY DEFERRED,
    -- Target of the same-user foreign key of user_library.
    CONSTRAINT user_collections_id_user_id_key UNIQUE (id, user_id)
);

CREATE TABLE public.workspace_assets (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    asset_type          text NOT NULL CHECK (asset_type IN ('image', 'video')),
    temp_storage_path   text NOT NULL,
    file_size_bytes     bigint NOT NULL CHECK (file_size_bytes > 0 AND file_size_bytes <= 1073741824),
    mime_type           text NOT NULL CHECK (mime_type IN ('image/jpeg', 'image/png', 'image/webp', 'video/mp4')),
    duration_seconds    double precision CHECK (duration_seconds IS NULL OR duration_seconds >= 0),
    job_id              uuid NOT NULL,
    asset_index         integer NOT NULL DEFAULT 0 CHECK (asset_index >= 0),
    generation_seed     bigint NOT NULL CHECK (generation_seed >= 0),
    original_prompt     text NOT NULL CHECK (length(original_prompt) <= 65536),
    model_used          text NOT NULL,
    generation_settings jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(generation_settings) = 'object'),
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL DEFAULT (now() + interval '7 days'),
    thumbnail_path      text,
    width               integer CHECK (width IS NULL OR width > 0),
    height              integer CHECK (height IS NULL OR height > 0),
    sha256              text NOT NULL CHECK (length(sha256) = 64),
    CONSTRAINT workspace_assets_expiry_check CHECK (expires_at > created_at),
    CONSTRAINT workspace_assets_type_check CHECK ((asset_type = 'video') = (mime_type = 'video/mp4')),
    CONSTRAINT workspace_assets_user_id_job_id_asset_index_key UNIQUE (user_id, job_id, asset_index),
    CONSTRAINT workspace_assets_user_id_sha256_key UNIQUE (user_id, sha256)
);

CREATE TABLE public.user_library (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    asset_type          text NOT NULL CHECK (asset_type IN ('image', 'video')),
    storage_path        text NOT NULL,
    file_size_bytes     bigint NOT NULL CHECK (file_size_bytes > 0 AND file_size_bytes <= 1073741824),
    mime_type           text NOT NULL CHECK (mime_type IN ('image/jpeg', 'image/png', 'image/webp', 'video/mp4')),
    duration_seconds    double precision CHECK (duration_seconds IS NULL OR duration_seconds >= 0),
    original_prompt     text NOT NULL CHECK (length(original_prompt) <= 65536),
    model_used          text NOT NULL,
    generation_seed     bigint NOT NULL CHECK (generation_seed >= 0),
    generation_settings jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(generation_settings) = 'object'),
    title               text CHECK (title IS NULL OR length(title) BETWEEN 1 AND 300),
    tags                text[] NOT NULL DEFAULT '{}'::text[],
    is_favorite         boolean NOT NULL DEFAULT false,
    visibility          text NOT NULL DEFAULT 'private' CHECK (visibility IN ('private', 'unlisted', 'public')),
    collection_id       uuid,
    original_asset_id   uuid,
    thumbnail_path      text,
    width               integer CHECK (width IS NULL OR width > 0),
    height              integer CHECK (height IS NULL OR height > 0),
    sha256              text NOT NULL CHECK (length(sha256) = 64),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_library_type_check CHECK ((asset_type = 'video') = (mime_type = 'video/mp4')),
    -- Deferred for the same reason as the collection names: a delete and a
    -- re-add of the same file may arrive in one sync transaction.
    CONSTRAINT user_library_user_id_sha256_key UNIQUE (user_id, sha256) DEFERRABLE INITIALLY DEFERRED,
    -- Correction 2: same-user collections only. Deleting a collection keeps
    -- its assets, outside any collection (only collection_id is nulled).
    CONSTRAINT user_library_collection_fkey FOREIGN KEY (collection_id, user_id)
        REFERENCES public.user_collections (id, user_id) ON DELETE SET NULL (collection_id)
);

-- -------------------------------------------------------------- indexes

CREATE INDEX workspace_assets_user_created ON public.workspace_assets (user_id, created_at DESC, id DESC);
CREATE INDEX workspace_assets_expires ON public.workspace_assets (expires_at);

CREATE INDEX user_library_user_created ON public.user_library (user_id, created_at DESC, id DESC);
CREATE INDEX user_library_collection ON public.user_library (collection_id) WHERE collection_id IS NOT NULL;
CREATE INDEX user_library_favorite ON public.user_library (user_id, created_at DESC, id DESC) WHERE is_favorite;
CREATE INDEX user_library_tags ON public.user_library USING gin (tags);
-- Full-text search over prompt and title ('simple': prompts are multilingual).
-- Query with: to_tsvector('simple', coalesce(original_prompt, '') || ' ' || coalesce(title, '')) @@ ...
CREATE INDEX user_library_fts ON public.user_library USING gin (
    to_tsvector('simple'::regconfig, coalesce(original_prompt, '') || ' ' || coalesce(title, ''))
);
-- Public reads of storage objects look rows up by path (migration 3).
CREATE INDEX user_library_public_path ON public.user_library (storage_path) WHERE visibility = 'public';

CREATE INDEX user_collections_user_created ON public.user_collections (user_id, created_at DESC, id DESC);

-- ------------------------------------------------------------- triggers

-- Correction 3: updated_at on every update that does not set it itself.
CREATE FUNCTION public.localvault_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    -- An update that changes the row but not updated_at gets now(); an
    -- update that sets updated_at keeps its value; an update that changes
    -- nothing (a re-sent sync batch) changes nothing.
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at AND NEW IS DISTINCT FROM OLD THEN
        NEW.updated_at := pg_catalog.now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER user_library_touch BEFORE UPDATE ON public.user_library
    FOR EACH ROW EXECUTE FUNCTION public.localvault_touch_updated_at();

-- Correction 1: asset_count belongs to the database. A new collection starts
-- at 0 whatever the client sends; an update keeps the current count unless it
-- comes from the counting trigger below (nested, pg_trigger_depth() > 1).
CREATE FUNCTION public.user_collections_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.asset_count := 0;
    ELSIF pg_catalog.pg_trigger_depth() = 1 THEN
        NEW.asset_count := OLD.asset_count;
        IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at AND NEW IS DISTINCT FROM OLD THEN
            NEW.updated_at := pg_catalog.now();
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER user_collections_guard BEFORE INSERT OR UPDATE ON public.user_collections
    FOR EACH ROW EXECUTE FUNCTION public.user_collections_guard();

-- Counts by statement, from the transition tables: one UPDATE per touched
-- collection whatever the batch size. A move is -1 on the old collection and
-- +1 on the new one; rows whose collection did not change net to 0 and are
-- skipped. SECURITY DEFINER so that the count is exact whatever the caller's
-- row-level security lets it see.
CREATE FUNCTION public.user_library_count_assets() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH d AS (
            SELECT n.collection_id, count(*) AS delta
            FROM localvault_new_rows n WHERE n.collection_id IS NOT NULL GROUP BY n.collection_id
        )
        UPDATE public.user_collections c SET asset_count = c.asset_count + d.delta
        FROM d WHERE c.id = d.collection_id;
    ELSIF TG_OP = 'DELETE' THEN
        WITH d AS (
            SELECT o.collection_id, count(*) AS delta
            FROM localvault_old_rows o WHERE o.collection_id IS NOT NULL GROUP BY o.collection_id
        )
        UPDATE public.user_collections c SET asset_count = c.asset_count - d.delta
        FROM d WHERE c.id = d.collection_id;
    ELSE
        WITH moves AS (
            SELECT n.collection_id, 1 AS delta FROM localvault_new_rows n WHERE n.collection_id IS NOT NULL
            UNION ALL
            SELECT o.collection_id, -1 AS delta FROM localvault_old_rows o WHERE o.collection_id IS NOT NULL
        ), d AS (
            SELECT m.collection_id, sum(m.delta) AS delta
            FROM moves m GROUP BY m.collection_id HAVING sum(m.delta) <> 0
        )
        UPDATE public.user_collections c SET asset_count = c.asset_count + d.delta
        FROM d WHERE c.id = d.collection_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER user_library_count_insert AFTER INSERT ON public.user_library
    REFERENCING NEW TABLE AS localvault_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.user_library_count_assets();
CREATE TRIGGER user_library_count_delete AFTER DELETE ON public.user_library
    REFERENCING OLD TABLE AS localvault_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.user_library_count_assets();
CREATE TRIGGER user_library_count_update AFTER UPDATE ON public.user_library
    REFERENCING OLD TABLE AS localvault_old_rows NEW TABLE AS localvault_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.user_library_count_assets();

REVOKE ALL ON FUNCTION public.user_library_count_assets() FROM PUBLIC;
