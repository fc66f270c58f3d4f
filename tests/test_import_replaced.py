"""A rig may replace a file (write a new one, rename it over the old) while the import works on the old one.

--link and --move hard-link the file that was read, and --move deletes the
source after the commit: both must act on that very file, never on the one
that has taken its place.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future
from pathlib import Path

import pytest
from conftest import without_dac_override
from test_import import USER, a1111, make_png

from localvault import Vault
from localvault._examine import Examined, StagingError, examine, row_values, stage
from localvault._import_commit import commit_batch
from localvault._intake import Candidate, JobGrouper, scan
from localvault.errors import StorageError
from localvault.files import TEMP_PREFIX, WORKSPACE_BUCKET
from localvault.models import GenerationInfo


def replace(path: Path, color: int) -> None:
    """What rigs do: write the new version beside it, then rename it over the old one."""
    fresh = make_png(path.with_name("new.png.part"), text_chunks=a1111("v2", 2), color=color)
    os.replace(fresh, path)


def rig_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return make_png(folder / "a.png", text_chunks=a1111("v1", 1), color=1)


def staged_names(vault: Vault) -> list[str]:
    return [n for _d, _s, names in os.walk(vault.root / WORKSPACE_BUCKET) for n in names if n.startswith(TEMP_PREFIX)]


def examined_and_staged(vault: Vault, candidate: Candidate, mode: str) -> tuple[Examined, Future[list[object]]]:
    """A file examined, given its job and staged in its job's folder: what a batch commit receives."""
    examined = examine(candidate, set(), in_memory_bytes=1 << 20)
    examined.job_id = JobGrouper(USER).job_for(examined.info, examined.sha256, candidate.mtime, examined.group)
    staging: Future[list[object]] = Future()
    staging.set_result([stage(vault.files, examined, mode, f"{USER}/{examined.job_id}")])
    return examined, staging


def test_a_file_replaced_after_it_was_read_is_not_linked_in(tmp_path: Path) -> None:
    source = rig_file(tmp_path / "out")
    (candidate,) = scan(tmp_path / "out").candidates
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        examined = examine(candidate, set(), in_memory_bytes=1 << 20)
        replace(source, color=2)
        with pytest.raises(StorageError, match="changed while it was being imported"):
            stage(vault.files, examined, "link", USER)
        assert staged_names(vault) == []
    assert source.read_bytes() != b"" and "v2" in source.read_bytes().decode("latin-1")


@pytest.mark.parametrize("how", ["replaced", "rewritten in place"])
def test_move_commits_the_bytes_it_read_and_keeps_a_source_changed_meanwhile(tmp_path: Path, how: str) -> None:
    """--move copies: a rig saving over the name in place between the staging and the commit cannot change the
    vault's bytes (a shared inode would), and the changed source, never imported, is kept."""
    source = rig_file(tmp_path / "out")
    original = source.read_bytes()
    (candidate,) = scan(tmp_path / "out").candidates
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        examined, staging = examined_and_staged(vault, candidate, "move")
        newer = make_png(tmp_path / "newer.png", text_chunks=a1111("v2", 2), color=2).read_bytes()
        if how == "replaced":
            replace(source, color=2)
            newer = source.read_bytes()
        else:
            with open(source, "r+b") as same_inode:
                same_inode.write(newer)
                same_inode.truncate()

        result = commit_batch(vault.workspace, vault.files, "move", [([examined], staging)], vault.db,  # type: ignore[list-item]
                              row_values(GenerationInfo(), None, None))

        assert len(result.imported) == 1
        asset = vault.workspace.get(result.imported[0].asset_id)
        assert Path(vault.workspace.file_path(asset)).read_bytes() == original
        assert vault.verify().clean
    assert source.read_bytes() == newer


def test_move_keeps_a_file_that_took_the_sources_place_after_the_commit_began(tmp_path: Path) -> None:
    source = rig_file(tmp_path / "out")
    (candidate,) = scan(tmp_path / "out").candidates
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        examined, staging = examined_and_staged(vault, candidate, "move")
        replace(source, color=2)  # after the vault's link was made, before the source is deleted

        result = commit_batch(vault.workspace, vault.files, "move", [([examined], staging)], vault.db,  # type: ignore[list-item]
                              row_values(GenerationInfo(), None, None))

        assert len(result.imported) == 1
        asset = vault.workspace.get(result.imported[0].asset_id)
        assert vault.files.sha256(WORKSPACE_BUCKET, asset.temp_storage_path) == asset.sha256 == examined.sha256
    assert source.exists() and "v2" in source.read_bytes().decode("latin-1")  # the new file was never imported: kept


def test_move_still_deletes_the_source_it_imported(tmp_path: Path) -> None:
    source = rig_file(tmp_path / "out")
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        result = vault.workspace.import_folder(tmp_path / "out", mode="move")
        assert len(result.imported) == 1 and not source.exists()


def test_a_streamed_file_rewritten_between_its_reading_and_its_copy_is_refused(tmp_path: Path) -> None:
    """A file too big to hold in memory is read twice (examined, then copied): the copy's hash must match the
    examined one, or its row would carry the metadata and hash of bytes it does not hold."""
    source = rig_file(tmp_path / "out")
    (candidate,) = scan(tmp_path / "out").candidates
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        examined = examine(candidate, set(), in_memory_bytes=0)  # streamed, as a file over IN_MEMORY_BYTES is
        assert examined.data is None
        changed = bytearray(source.read_bytes())
        changed[-20] ^= 0xFF  # same size, other bytes
        source.write_bytes(bytes(changed))
        with pytest.raises(StorageError, match="changed while it was being imported"):
            stage(vault.files, examined, "copy", USER)
        assert staged_names(vault) == []


def test_a_streamed_source_unreadable_at_its_copy_is_refused_as_its_own_fault(tmp_path: Path) -> None:
    """Not as the vault's (a StagingError, which the watcher retries every 5 s without end)."""
    source = rig_file(tmp_path / "out")
    (candidate,) = scan(tmp_path / "out").candidates
    with Vault.create(tmp_path / "v", user_id=USER) as vault, without_dac_override():
        examined = examine(candidate, set(), in_memory_bytes=0)
        os.chmod(source, 0)
        with pytest.raises(StorageError, match="cannot read") as caught:
            stage(vault.files, examined, "copy", USER)
        assert not isinstance(caught.value, StagingError)
        assert staged_names(vault) == []


@pytest.mark.parametrize("same_size", [False, True])
def test_a_file_rewritten_in_place_after_it_was_linked_is_refused(tmp_path: Path, same_size: bool) -> None:
    """A rig saving over an existing name keeps the inode: the vault's link would hold bytes other than the hashed
    ones. Bytes of the same length too: only the modification time tells them apart."""
    source = rig_file(tmp_path / "out")
    (candidate,) = scan(tmp_path / "out").candidates
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        examined, staging = examined_and_staged(vault, candidate, "link")
        if same_size:
            changed = bytearray(source.read_bytes())
            changed[-20] ^= 0xFF
            newer = bytes(changed)
        else:
            newer = make_png(tmp_path / "newer.png", text_chunks=a1111("v2", 2), color=2).read_bytes()
        with open(source, "r+b") as same_inode:  # after the vault's link was made, before the commit
            same_inode.write(newer)
            same_inode.truncate()

        result = commit_batch(vault.workspace, vault.files, "link", [([examined], staging)], vault.db,  # type: ignore[list-item]
                              row_values(GenerationInfo(), None, None))

        assert result.imported == [] and "changed while it was being imported" in result.refused[str(source)]
        assert vault.workspace.count() == 0 and staged_names(vault) == []
    assert source.read_bytes() == newer  # kept


@pytest.mark.parametrize("mode", ["link", "move"])
def test_a_symbolic_link_in_the_folder_brings_its_file_in(tmp_path: Path, mode: str) -> None:
    """Linux's link() links a symlink itself: the import must link (and hash) the file it points to."""
    out = tmp_path / "out"
    target = rig_file(out)
    os.symlink(target.name, out / "0-link-to-a.png")  # sorts first: taken before its target
    data = target.read_bytes()
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        result = vault.workspace.import_folder(out, mode=mode)

        assert result.refused == {} and len(result.imported) == 1 and len(result.duplicates) == 1
        asset = vault.workspace.get(result.imported[0].asset_id)
        assert Path(vault.workspace.file_path(asset)).read_bytes() == data
        assert not Path(vault.workspace.file_path(asset)).is_symlink()
        assert vault.verify().clean
    assert os.path.exists(target) and target.read_bytes() == data  # the link went (--move); the file it pointed to stays


def test_a_copy_counted_as_duplicate_is_imported_when_the_first_copy_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """a.png and b.png hold the same bytes; a.png is replaced before its link is made, so it is refused:
    b.png, skipped as its duplicate, must then be imported, not reported as a duplicate of nothing."""
    from localvault import importer

    first = rig_file(tmp_path / "out")
    copy = tmp_path / "out" / "b.png"
    copy.write_bytes(first.read_bytes())
    os.utime(first, (1_000_000, 1_000_000))  # a.png comes first
    original = copy.read_bytes()
    stage_for_real = importer.Importer._stage

    def stage_after_the_rig_replaced_a(self: importer.Importer, ready: Examined) -> object:
        if ready.candidate.path == str(first) and "v1" in first.read_bytes().decode("latin-1"):
            replace(first, color=2)  # the timing is the only thing arranged: the replacement is real
        return stage_for_real(self, ready)

    monkeypatch.setattr(importer.Importer, "_stage", stage_after_the_rig_replaced_a)
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        result = vault.workspace.import_folder(tmp_path / "out", mode="link")
        assert set(result.refused) == {str(first)} and "changed while" in result.refused[str(first)]
        assert result.duplicates == [] and [item.source for item in result.imported] == [str(copy)]
        asset = vault.workspace.get(result.imported[0].asset_id)
        assert Path(vault.files.full_path(WORKSPACE_BUCKET, asset.temp_storage_path)).read_bytes() == original
        assert staged_names(vault) == []


def test_copies_refused_one_after_another_are_all_reported_refused(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Five identical files, each replaced before its link is made: each round offers the rest again, and
    after REOFFERS rounds the last ones are refused with the reason, never left counted as duplicates."""
    from localvault import importer

    folder = tmp_path / "out"
    first = rig_file(folder)
    copies = [first]
    for n in range(1, 5):
        copy = folder / f"copy{n}.png"
        copy.write_bytes(first.read_bytes())
        os.utime(copy, (1_000_000 + n, 1_000_000 + n))
        copies.append(copy)
    os.utime(first, (1_000_000, 1_000_000))
    stage_for_real = importer.Importer._stage
    replaced: set[str] = set()

    def stage_after_the_rig_replaced_it(self: importer.Importer, ready: Examined) -> object:
        if ready.candidate.path not in replaced:
            replaced.add(ready.candidate.path)
            fresh = make_png(Path(ready.candidate.path).with_name("fresh.part"), text_chunks=a1111("v2", 2),
                             color=len(replaced) + 10)
            os.replace(fresh, ready.candidate.path)
        return stage_for_real(self, ready)

    monkeypatch.setattr(importer.Importer, "_stage", stage_after_the_rig_replaced_it)
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        result = vault.workspace.import_folder(folder, mode="link")
        assert result.imported == [] and result.duplicates == []
        assert set(result.refused) == {str(c) for c in copies}
        assert result.refused[str(copies[-1])].startswith(f"a copy of {copies[-2]}, which was refused")
        assert staged_names(vault) == []


@pytest.mark.parametrize("bucket", ["workspace", "library"])
def test_a_file_added_while_a_rig_replaces_it_gets_the_metadata_of_the_bytes_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket: str) -> None:
    """add() reads the prompt and seed from the copy it keeps, not from the source a moment earlier.

    The rig's timing is forced: the file is replaced just before its copy starts (after its type was checked).
    """
    source = rig_file(tmp_path / "out")
    import localvault.ingest as ingest

    real_check = ingest.media.check_source
    replaced: list[bool] = []

    def check_then_replace(path: Path) -> object:
        checked = real_check(path)
        if not replaced:
            replace(source, color=2)
            replaced.append(True)
        return checked

    monkeypatch.setattr(ingest.media, "check_source", check_then_replace)
    with Vault.create(tmp_path / "v", user_id=USER) as vault:
        added = vault.workspace.add(source) if bucket == "workspace" else vault.library.add(source)
        kept = (vault.root / ("workspace-temp" if bucket == "workspace" else "user-library")
                / (added.temp_storage_path if bucket == "workspace" else added.storage_path))  # type: ignore[union-attr]
        assert "v2" in kept.read_bytes().decode("latin-1")
        assert (added.original_prompt, added.generation_seed) == ("v2", 2)
    assert replaced


@pytest.mark.parametrize("moment", ["after its metadata", "after its type check"])
def test_a_streamed_file_replaced_while_it_is_examined_is_read_as_one_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str) -> None:
    """A file too big to hold in memory is checked, read for metadata and hashed as a stream: all from one open
    file, so a rig renaming a new version over it between those steps cannot pair one version's prompt and
    seed with the other's hash (the copy, which must match that hash, then keeps the other's bytes).

    The rig's timing is forced: the file is replaced right after the step named by ``moment``.
    """
    import localvault.media
    import localvault.metadata

    source = rig_file(tmp_path / "out")
    first = source.read_bytes()
    (candidate,) = scan(tmp_path / "out").candidates
    name, module = (("read", localvault.metadata) if moment == "after its metadata"
                    else ("check_open", localvault.media))
    real = getattr(module, name)

    def step_then_replace(*args: object, **kwargs: object) -> object:
        outcome = real(*args, **kwargs)
        replace(source, color=2)
        return outcome

    monkeypatch.setattr(module, name, step_then_replace)
    examined = examine(candidate, set(), in_memory_bytes=0)  # streamed, as a file over IN_MEMORY_BYTES is
    assert "v2" in source.read_bytes().decode("latin-1")  # the rig did replace it
    assert examined.sha256 == hashlib.sha256(first).hexdigest() and examined.size == len(first)
    assert (examined.info.prompt, examined.info.seed) == ("v1", 1)
    assert examined.facts is not None and (examined.facts.width, examined.facts.height) == (64, 64)
