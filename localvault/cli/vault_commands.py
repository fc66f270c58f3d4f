"""Commands over the local vault: init, add, ls, save, update, rm, collections, cleanup, verify, export, show."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import click
from rich.text import Text

from .. import models
from .._recovered import RECOVERED_FOLDER
from ..errors import InvalidInputError
from ..library import UNSET
from ..models import Collection, LibraryAsset, Page, Visibility, WorkspaceAsset
from ..vault import Vault
from . import output
from .app import Context, json_option, main, pass_ctx


@main.command()
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option("--user", "user_id", help="The owner's user id (a UUID; generated if omitted).")
@json_option("Print the vault's path and user id as JSON.")
@pass_ctx
def init(ctx: Context, path: Path | None, user_id: str | None, as_json: bool) -> None:
    """Create a vault: vault.db, the two buckets and localvault.toml."""
    vault = Vault.create(path or ctx.vault_path, user_id=user_id if user_id is not None else ctx.user_id)
    vault.close()
    if as_json:
        output.print_json({"path": str(vault.root), "user_id": vault.user_id})
    else:
        output.console.print(f"created vault at {vault.root} for user {vault.user_id}")


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--job", "job_id", help="Job id (UUID) grouping files of one generation run; new if omitted.")
@click.option("--index", "asset_index", type=int, help="Position within the job (default: next free).")
@click.option("--seed", type=str, help="Generation seed (0 … 2^63-1).")
@click.option("--prompt", help="The prompt.")
@click.option("--model", help="The model used.")
@click.option("--settings", help="Other generation settings, as a JSON object.")
@json_option("Print the new asset as JSON.")
@pass_ctx
def add(ctx: Context, file: Path, job_id: str | None, asset_index: int | None, seed: str | None, prompt: str | None,
        model: str | None, settings: str | None, as_json: bool) -> None:
    """Add a file to the workspace (prompt, seed and model read from the file where it carries them)."""
    asset = ctx.vault().workspace.add(file, job_id=job_id, asset_index=asset_index, seed=_seed(seed), prompt=prompt,
                                      model=model, settings=settings)
    _emit_one(asset, as_json)


def _seed(text: str | None) -> int | None:
    return None if text is None else models.check_seed(text)


@main.command(name="ls")
@click.argument("what", type=click.Choice(["workspace", "library"]), default="library")
@click.option("--tag", "tags", multiple=True, help="Only assets with this tag (repeatable: all must match).")
@click.option("--favorite", is_flag=True, default=None, help="Only favourites.")
@click.option("--collection", help="Only assets of this collection (name or id).")
@click.option("--search", help="Full-text search over prompt, title and tags (newest matches first).")
@click.option("--limit", default=50, show_default=True, help="Page size.")
@click.option("--cursor", help="Continue after a previous page (its next_cursor).")
@json_option("Print JSON instead of a table.")
@pass_ctx
def ls(ctx: Context, what: str, tags: tuple[str, ...], favorite: bool | None, collection: str | None,
       search: str | None, limit: int, cursor: str | None, as_json: bool) -> None:
    """List library (the default) or workspace assets, newest first, one page at a time."""
    if what == "workspace" and (tags or favorite is not None or collection is not None or search is not None):
        raise InvalidInputError("--tag, --favorite, --collection and --search filter the library; "
                                "'ls workspace' takes --limit and --cursor only")
    vault = ctx.vault(reads_only=True)
    page: Page[WorkspaceAsset] | Page[LibraryAsset]
    if what == "workspace":
        page = vault.workspace.list(limit=limit, cursor=cursor)
        now = datetime.now(timezone.utc)  # (an expired asset stays listed until the next cleanup: up to an hour)
        rows: list[tuple[object, ...]] = [
            (a.id, a.created_at.strftime("%Y-%m-%d %H:%M"),
             "expired" if a.expires_at <= now else a.expires_at.strftime("%Y-%m-%d %H:%M"), a.mime_type.extension,
             a.generation_seed, a.model_used, output.short(a.original_prompt)) for a in page.items]
        headers = ["id", "created", "expires", "type", "seed", "model", "prompt"]
    else:
        page = vault.library.list(tags=tags, favorite=favorite, collection=collection, search=search, limit=limit,
                                  cursor=cursor)
        rows = [(a.id, a.created_at.strftime("%Y-%m-%d %H:%M"), "★" if a.is_favorite else "", a.title or "",
                 output.tag_list(a.tags), output.short(a.original_prompt, 40)) for a in page.items]
        headers = ["id", "saved", "fav", "title", "tags", "prompt"]
    if as_json:
        output.print_json({"items": page.items, "next_cursor": page.next_cursor})
        return
    if not rows:  # (not an empty table)
        filtered = tags or favorite is not None or collection is not None or search is not None
        output.console.print(f"no {what} asset matches" if filtered else
                             "no asset further on" if cursor else f"the {what} is empty", highlight=False)
        return
    output.table(what, headers, rows)
    if page.next_cursor:
        output.console.print(f"more: --cursor {page.next_cursor}", highlight=False)


@main.command()
@click.argument("workspace_asset_id")
@click.option("--title")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--collection", help="Put it in this collection (name or id).")
@click.option("--favorite", is_flag=True)
@click.option("--visibility", type=click.Choice([v.value for v in Visibility]), default="private", show_default=True)
@json_option("Print the saved asset as JSON.")
@pass_ctx
def save(ctx: Context, workspace_asset_id: str, title: str | None, tags: tuple[str, ...], collection: str | None,
         favorite: bool, visibility: str, as_json: bool) -> None:
    """Keep a workspace asset in the library (its id, or the id's first 6 or more characters)."""
    vault = ctx.vault()
    asset = vault.library.save(vault.resolve_id(workspace_asset_id), title=title, tags=tags, collection=collection,
                               favorite=favorite, visibility=Visibility(visibility))
    _emit_one(asset, as_json, vault)


@main.command()
@click.argument("library_id")
@click.option("--title")
@click.option("--no-title", is_flag=True, help="Remove the title.")
@click.option("--add-tag", "add_tags", multiple=True)
@click.option("--remove-tag", "remove_tags", multiple=True)
@click.option("--favorite/--no-favorite", default=None)
@click.option("--visibility", type=click.Choice([v.value for v in Visibility]))
@click.option("--move-to", help="Move into this collection (name or id).")
@click.option("--no-collection", is_flag=True, help="Take it out of its collection.")
@json_option("Print the updated asset as JSON.")
@pass_ctx
def update(ctx: Context, library_id: str, title: str | None, no_title: bool, add_tags: tuple[str, ...],
           remove_tags: tuple[str, ...], favorite: bool | None, visibility: str | None, move_to: str | None,
           no_collection: bool, as_json: bool) -> None:
    """Change a library asset's title, tags, favourite, visibility or collection (LIBRARY_ID: its id, or the
    id's first 6 or more characters)."""
    if no_title and title is not None:
        raise InvalidInputError("give --title or --no-title, not both")
    if no_collection and move_to is not None:
        raise InvalidInputError("give --move-to or --no-collection, not both")
    if not (title is not None or no_title or add_tags or remove_tags or favorite is not None or visibility
            or move_to is not None or no_collection):
        raise InvalidInputError("nothing to change: give --title, --no-title, --add-tag, --remove-tag, --favorite, "
                                "--no-favorite, --visibility, --move-to or --no-collection")
    collection = None if no_collection else (move_to if move_to is not None else UNSET)
    vault = ctx.vault()
    asset = vault.library.update(
        vault.resolve_id(library_id), title=None if no_title else title if title is not None else UNSET, add_tags=add_tags,
        remove_tags=remove_tags,
        favorite=favorite if favorite is not None else UNSET, visibility=Visibility(visibility) if visibility else UNSET,
        collection=collection)
    _emit_one(asset, as_json, vault)


@main.command()
@click.argument("asset_id")
@click.option("--yes", "-y", is_flag=True, help="Delete a library asset without asking, even on a terminal.")
@json_option()
@pass_ctx
def rm(ctx: Context, asset_id: str, yes: bool, as_json: bool) -> None:
    """Delete a library or workspace asset (row and file), by its id or the id's first 6 or more characters.

    A library asset is what its user kept for good, and the next sync deletes it on the server too: typed on a
    terminal, rm asks first (--yes does not). Piped or in a script, it asks nothing."""
    vault = ctx.vault()
    asset_id = vault.resolve_id(asset_id)
    if not yes and sys.stdin.isatty() and not _confirm_library_delete(vault.get(asset_id)):
        output.err_console.print("nothing deleted")
        if as_json:  # (a script reading stdout gets its answer)
            output.print_json({"deleted": None, "from": None})
        return
    where = vault.delete(asset_id)
    if as_json:
        output.print_json({"deleted": asset_id, "from": where})
    else:
        output.console.print(f"deleted {where} asset {asset_id}")


def _confirm_library_delete(asset: LibraryAsset | WorkspaceAsset) -> bool:
    """Whether the person at the terminal says yes to deleting ``asset`` (a workspace asset needs no yes)."""
    if isinstance(asset, WorkspaceAsset):
        return True
    named = f'"{asset.title}" ({asset.id})' if asset.title else asset.id
    try:
        return click.confirm(f"delete library asset {named}, here and at the next sync on the server?", err=True)
    except click.Abort:  # (click's answer to Ctrl-C or to the end of input)
        raise KeyboardInterrupt("no answer (Ctrl-C or end of input): nothing deleted") from None


@main.command()
@click.argument("asset_id")
@json_option("Print the asset as JSON.")
@pass_ctx
def show(ctx: Context, asset_id: str, as_json: bool) -> None:
    """Show one asset with its prompt, seed, model and settings (by its id, or the id's first 6 or more
    characters)."""
    vault = ctx.vault(reads_only=True)
    asset = vault.get(vault.resolve_id(asset_id))
    if as_json:
        output.print_json(asset)
        return
    for key, value in output.to_jsonable(asset).items():
        if value is not None and key != "generation_settings":
            shown = output.tag_list(value) if key == "tags" else value
            if key == "collection_id":  # (its name beside it: the id alone says nothing to a person)
                shown = f"{value} ({vault.collections.get(value).name})"
            output.console.print(Text.assemble((key, "bold"), f": {shown}"), highlight=False)
    if asset.generation_settings:
        output.console.print(Text("generation_settings:", "bold"))
    for name, setting in asset.generation_settings.items():
        output.console.print(Text.assemble(f"  {name}: ", _setting_text(setting)), highlight=False)


#: A setting longer than this as JSON (a ComfyUI graph: hundreds of lines) is summed up; --json shows it whole.
SETTING_WIDTH = 300


def _setting_text(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) <= SETTING_WIDTH:
        return text
    if isinstance(value, (dict, list)):
        return f"({type(value).__name__} of {len(value)} entries, {len(text):,} characters; 'show --json' prints it)"
    return output.short(text, SETTING_WIDTH)


@main.command()
@json_option()
@pass_ctx
def cleanup(ctx: Context, as_json: bool) -> None:
    """Remove expired workspace assets, rows and files."""
    with output.progress_bars(not as_json) as progress:
        result = ctx.vault(auto_cleanup=False).cleanup(progress=progress)  # so that the count is all of them
    if as_json:
        output.print_json(result)
    else:
        output.console.print(f"removed {result.assets_removed} expired workspace asset"
                             f"{'' if result.assets_removed == 1 else 's'}")


@main.command()
@click.option("--repair", is_flag=True, help="Fix what can be fixed: restore missing or damaged files from identical "
              "twins, move files without a row to the vault's recovered/ folder, remove stale temporary files, "
              "delete workspace rows whose file is gone for good (never a library row).")
@click.option("--quick", is_flag=True, help="Do not hash the files: only check that each exists and has its row.")
@json_option("Print the report as JSON.")
@pass_ctx
def verify(ctx: Context, repair: bool, quick: bool, as_json: bool) -> None:
    """Check every row against its file: orphans, missing files, hash mismatches."""
    with output.progress_bars(not as_json) as progress:
        result = ctx.vault(reads_only=not repair).verify(repair=repair, check_hashes=not quick, progress=progress)
    if as_json:
        output.print_json({**output.to_jsonable(result), "clean": result.clean})
    else:
        for finding in result.database_damage:
            output.console.print(f"database damaged: {finding}", highlight=False)
        output.console.print(f"checked {result.checked:,} file{'' if result.checked == 1 else 's'}")
        for label, items in (("missing", result.missing), ("orphan", result.orphans), ("hash mismatch", result.mismatched),
                             ("stale temp", result.stale_temps), ("unreadable", result.unreadable),
                             ("unreadable folder", result.unreadable_folders),
                             ("left by a write cut short (removed when the vault is next opened for writing)",
                              result.unsettled),
                             ("repaired", result.repaired), ("unrepairable", result.unrepairable),
                             ("moved to", result.recovered)):
            for item in items:
                asset = f" (asset {result.asset_ids[item]})" if item in result.asset_ids else ""
                output.console.print(f"{label}: {item}{asset}", highlight=False)
        if result.recovered:
            output.console.print(f"{len(result.recovered)} file(s) without a row were moved to "
                                 f"{ctx.vault().root / RECOVERED_FOLDER}: take back what you want to keep with "
                                 "'localvault add FILE' (then 'localvault save ID' for one that was in the library), "
                                 "and delete the rest", highlight=False)
        if result.clean:
            output.console.print("vault is clean")
        elif result.database_damage:
            output.console.print(f"{ctx.vault().db.path} is damaged: restore it from a backup (the files in the "
                                 "buckets are not affected), then verify again", highlight=False)
        elif result.unrepairable or result.unreadable or result.unreadable_folders:
            output.console.print("some files or folders could not be restored or read: make each readable, or "
                                 "put it back (from a backup or the bucket), or delete its asset with "
                                 "'localvault rm ID'; then verify again")
        else:
            output.console.print("problems found: 'verify --repair' fixes what it can, and says what it cannot")
    if not result.clean:
        raise SystemExit(1)


@main.command()
@click.argument("asset_id")
@click.argument("dest", type=click.Path())  # text: a trailing "/" (a folder to make) must survive
@json_option()
@pass_ctx
def export(ctx: Context, asset_id: str, dest: str, as_json: bool) -> None:
    """Copy an asset's file out of the vault to DEST: a file named with the asset's extension (.png, …), or a
    folder (one that exists, or DEST ending in /)."""
    vault = ctx.vault(reads_only=True)
    written = vault.export(vault.resolve_id(asset_id), dest)
    if as_json:
        output.print_json({"written": str(written)})
    else:
        output.console.print(f"wrote {written}", highlight=False)


@main.group()
def collections() -> None:
    """Create, list, rename and delete collections."""


@collections.command(name="create")
@click.argument("name")
@click.option("--description")
@json_option("Print the collection as JSON.")
@pass_ctx
def collections_create(ctx: Context, name: str, description: str | None, as_json: bool) -> None:
    """Create a collection."""
    _emit_one(ctx.vault().collections.create(name, description), as_json)


@collections.command(name="ls")
@json_option("Print JSON instead of a table.")
@pass_ctx
def collections_ls(ctx: Context, as_json: bool) -> None:
    """List collections with their asset counts."""
    found = ctx.vault(reads_only=True).collections.list()
    if as_json:
        output.print_json(found)
    else:
        output.table("collections", ["id", "name", "assets", "description"],
                     [(c.id, c.name, c.asset_count, output.short(c.description)) for c in found],
                     ids_by_prefix=False)  # (a collection is named by its name, or its whole id)


@collections.command(name="rename")
@click.argument("collection")
@click.argument("new_name")
@json_option("Print the collection as JSON.")
@pass_ctx
def collections_rename(ctx: Context, collection: str, new_name: str, as_json: bool) -> None:
    """Rename a collection (named by name or id)."""
    _emit_one(ctx.vault().collections.rename(collection, new_name), as_json)


@collections.command(name="describe")
@click.argument("collection")
@click.argument("description", required=False)
@json_option("Print the collection as JSON.")
@pass_ctx
def collections_describe(ctx: Context, collection: str, description: str | None, as_json: bool) -> None:
    """Set a collection's description (none given: remove it)."""
    _emit_one(ctx.vault().collections.describe(collection, description), as_json)


@collections.command(name="delete")
@click.argument("collection")
@json_option()
@pass_ctx
def collections_delete(ctx: Context, collection: str, as_json: bool) -> None:
    """Delete a collection; its assets stay in the library."""
    ctx.vault().collections.delete(collection)
    if as_json:
        output.print_json({"deleted": collection})
    else:
        output.console.print(f"deleted collection {collection}", highlight=False)


def _emit_one(item: object, as_json: bool, vault: Vault | None = None) -> None:
    """One line for what a command made or changed (``vault``: to name a library asset's collection)."""
    if as_json:
        output.print_json(item)
    elif isinstance(item, (WorkspaceAsset, LibraryAsset)):  # (a library asset: what save and update set too)
        kept = [item.title or "(no title)", f"tags: {output.tag_list(item.tags)}" if item.tags else "",
                "★" if item.is_favorite else "", item.visibility.value,
                f"in {vault.collections.get(item.collection_id).name}" if item.collection_id and vault else "",
                ] if isinstance(item, LibraryAsset) else []
        output.console.print("  ".join([item.id, item.mime_type.extension, *filter(None, kept),
                                        output.short(item.original_prompt)]), highlight=False)
    elif isinstance(item, Collection):
        output.console.print(f"{item.id}  {item.name}", highlight=False)
    else:
        output.console.print(str(getattr(item, "id", item)), highlight=False)
