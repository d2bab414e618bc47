"""Ingest skip: files already known (same path, size, mtime) are neither opened nor hashed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pseudolabel.data import ingest
from pseudolabel.data.ingest import scan_folder
from pseudolabel.data.ledger import Ledger


@pytest.fixture()
def pool(tmp_path: Path) -> Path:
    root = tmp_path / "pool"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(200):
        folder = root / "sub" if i % 2 else root
        Image.fromarray(rng.integers(0, 256, (6, 4 + i % 3, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the calls that read a file: the hash and the decode."""
    calls = {"hash": 0, "decode": 0}
    real_hash, real_load = ingest.sha256_file, ingest.load_rgb

    def hash_(path: Path) -> str:
        calls["hash"] += 1
        return real_hash(path)

    def load(path: Path):  # type: ignore[no-untyped-def]
        calls["decode"] += 1
        return real_load(path)

    monkeypatch.setattr(ingest, "sha256_file", hash_)
    monkeypatch.setattr(ingest, "load_rgb", load)
    return calls


def _rescan(root: Path, ledger: Ledger) -> ingest.ScanResult:
    # What loops/round.py's ingest does with the skip (3 lines there).
    result = scan_folder(root, known=ledger.known_files())
    ledger.remember_files(result.file_rows())
    ledger.forget_files(set(ledger.known_files()) - set(result.files))
    return result


def test_second_scan_opens_nothing(pool: Path, tmp_path: Path, counted: dict[str, int]) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        first = _rescan(pool, ledger)
        assert counted == {"hash": 200, "decode": 200} and first.reused == 0
        assert len(ledger.known_files()) == 200
        counted.update(hash=0, decode=0)
        second = _rescan(pool, ledger)
    assert counted == {"hash": 0, "decode": 0}
    assert second.reused == 200
    assert second.items == first.items  # same ids, paths, pixel sizes, same order
    assert {(it.width, it.height) for it in second.items} == {(4, 6), (5, 6), (6, 6)}


def test_changed_file_is_reread_and_deleted_file_disappears(
    pool: Path, tmp_path: Path, counted: dict[str, int]
) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        first = _rescan(pool, ledger)
        by_path = {it.path: it for it in first.items}
        rewritten, touched, deleted = pool / "000.png", pool / "sub" / "001.png", pool / "002.png"
        Image.fromarray(np.zeros((9, 7, 3), dtype=np.uint8)).save(rewritten)  # new bytes and size
        st = touched.stat()
        os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same bytes, new mtime
        deleted.unlink()
        counted.update(hash=0, decode=0)
        second = _rescan(pool, ledger)
        known = ledger.known_files()

    assert counted == {"hash": 2, "decode": 2}
    assert second.reused == 197 and len(second.items) == 199
    new = {it.path: it for it in second.items}
    assert new[rewritten].id != by_path[rewritten].id and (new[rewritten].width, new[rewritten].height) == (7, 9)
    assert new[touched] == by_path[touched]  # re-hashed, same content, same item
    assert deleted not in new and str(deleted) not in second.files and str(deleted) not in known
    assert known[str(rewritten)][2] == new[rewritten].id


def test_duplicates_and_bad_files_with_known(pool: Path, tmp_path: Path, counted: dict[str, int]) -> None:
    shutil.copy(pool / "000.png", pool / "zcopy.png")
    (pool / "broken.png").write_bytes(b"not a png")
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        first = _rescan(pool, ledger)
        counted.update(hash=0, decode=0)
        second = _rescan(pool, ledger)
    assert first.duplicates == second.duplicates == [(pool / "zcopy.png", first.items[0].id)]
    # The unusable file is not remembered: it is retried (and quarantined again) every scan.
    assert [q.path.name for q in second.quarantined] == ["broken.png"]
    assert counted == {"hash": 1, "decode": 1} and second.reused == 201


def test_without_known_nothing_changes(pool: Path, counted: dict[str, int]) -> None:
    a = scan_folder(pool)
    b = scan_folder(pool)
    assert counted["hash"] == 400 and a.reused == b.reused == 0 and a.items == b.items
    assert len(a.files) == 200


def test_bad_known_and_rows_rejected(pool: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected \\(size, mtime_ns, item_id, width, height\\)"):
        scan_folder(pool, known={str(pool / "000.png"): (1, 2)})  # type: ignore[dict-item]
    with Ledger(tmp_path / "ledger.sqlite") as ledger, pytest.raises(ValueError, match="row 0"):
        ledger.remember_files([("a.png", 1, 2)])
