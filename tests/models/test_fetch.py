"""Fetching ml-100k from the recbole wheel: a fake wheel with injected checksums, no network."""

from __future__ import annotations

import hashlib
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

import models.fetch as fetch
from models.data import load_dataset
from models.fetch import FILES, MEMBER_DIR, WHEEL_NAME, DataFetchError, fetch_movielens_100k

REAL_WHEEL = Path("/tmp/rb") / WHEEL_NAME
CONTENT = {
    "ml-100k.inter": b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t3\t5\n",
    "ml-100k.user": b"user_id:token\tage:token\n1\t24\n",
    "ml-100k.item": b"item_id:token\tmovie_title:token_seq\n10\tToy Story\n",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def never_called(cache_dir: Path) -> None:
    raise AssertionError(f"no download expected, asked to fill {cache_dir}")


@pytest.fixture
def fake_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A wheel holding CONTENT, with the expected checksums swapped for its own."""
    wheel = tmp_path / "wheels" / WHEEL_NAME
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in CONTENT.items():
            archive.writestr(f"{MEMBER_DIR}/{name}", data)
        archive.writestr("recbole/__init__.py", b"")
    for name, data in CONTENT.items():
        monkeypatch.setitem(fetch.EXPECTED_SHA256, name, sha256(data))
    monkeypatch.setitem(fetch.EXPECTED_SHA256, WHEEL_NAME, sha256(wheel.read_bytes()))
    return wheel


def test_extracts_the_three_files_from_a_given_wheel(tmp_path: Path, fake_wheel: Path) -> None:
    out = fetch_movielens_100k(tmp_path / "data", wheel=fake_wheel, downloader=never_called)
    assert out == tmp_path / "data" / "ml-100k"
    assert {path.name: path.read_bytes() for path in out.iterdir()} == CONTENT
    assert len(load_dataset(out).interactions) == 1


def test_uses_a_wheel_already_in_the_cache_without_downloading(
    tmp_path: Path, fake_wheel: Path
) -> None:
    cache = tmp_path / "data" / ".cache"
    cache.mkdir(parents=True)
    shutil.copy(fake_wheel, cache / WHEEL_NAME)
    out = fetch_movielens_100k(tmp_path / "data", downloader=never_called)
    assert sorted(path.name for path in out.iterdir()) == sorted(FILES)


def test_downloads_into_the_cache_when_the_wheel_is_missing(
    tmp_path: Path, fake_wheel: Path
) -> None:
    asked: list[Path] = []

    def downloader(cache_dir: Path) -> None:
        asked.append(cache_dir)
        shutil.copy(fake_wheel, cache_dir / WHEEL_NAME)

    fetch_movielens_100k(tmp_path / "data", downloader=downloader)
    assert asked == [tmp_path / "data" / ".cache"]


def test_second_call_rewrites_nothing(tmp_path: Path, fake_wheel: Path) -> None:
    out = fetch_movielens_100k(tmp_path / "data", wheel=fake_wheel)
    stamps = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    fake_wheel.unlink()  # the second call must not even need the wheel
    assert fetch_movielens_100k(tmp_path / "data", wheel=fake_wheel, downloader=never_called) == out
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == stamps


def test_replaces_only_a_corrupt_file(tmp_path: Path, fake_wheel: Path) -> None:
    out = fetch_movielens_100k(tmp_path / "data", wheel=fake_wheel)
    (out / "ml-100k.user").write_bytes(b"half a fi")
    stamp = (out / "ml-100k.inter").stat().st_mtime_ns
    fetch_movielens_100k(tmp_path / "data", wheel=fake_wheel)
    assert (out / "ml-100k.user").read_bytes() == CONTENT["ml-100k.user"]
    assert (out / "ml-100k.inter").stat().st_mtime_ns == stamp


def test_member_checksum_mismatch_names_the_file_and_writes_nothing(
    tmp_path: Path, fake_wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(fetch.EXPECTED_SHA256, "ml-100k.item", "0" * 64)
    with pytest.raises(DataFetchError, match=r"ml-100k\.item"):
        fetch_movielens_100k(tmp_path / "data", wheel=fake_wheel)
    assert not (tmp_path / "data" / "ml-100k").exists()


def test_wheel_checksum_mismatch_names_the_wheel(
    tmp_path: Path, fake_wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(fetch.EXPECTED_SHA256, WHEEL_NAME, "0" * 64)
    with pytest.raises(DataFetchError, match=WHEEL_NAME):
        fetch_movielens_100k(tmp_path / "data", wheel=fake_wheel)


def test_offline_download_failure_says_how_to_proceed(tmp_path: Path) -> None:
    def offline(cache_dir: Path) -> None:
        raise OSError("Network is unreachable")

    with pytest.raises(DataFetchError) as caught:
        fetch_movielens_100k(tmp_path / "data", downloader=offline)
    message = str(caught.value)
    assert "Network is unreachable" in message and "network access to PyPI" in message
    assert str(tmp_path / "data" / ".cache") in message and WHEEL_NAME in message
    assert str(tmp_path / "data" / "ml-100k") in message


def test_failing_pip_download_becomes_a_fetch_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found' >&2\nexit 1\n")
    fake_python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake_python))
    with pytest.raises(DataFetchError, match="No matching distribution found.*network access"):
        fetch_movielens_100k(tmp_path / "data")


def test_a_missing_explicit_wheel_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataFetchError, match="no wheel at"):
        fetch_movielens_100k(tmp_path / "data", wheel=tmp_path / "absent.whl")


def test_a_wheel_without_the_dataset_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = tmp_path / WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("recbole/__init__.py", b"")
    monkeypatch.setitem(fetch.EXPECTED_SHA256, WHEEL_NAME, sha256(wheel.read_bytes()))
    with pytest.raises(DataFetchError, match="delete it"):
        fetch_movielens_100k(tmp_path / "data", wheel=wheel)


@pytest.mark.slow
@pytest.mark.skipif(not REAL_WHEEL.is_file(), reason=f"needs {REAL_WHEEL}")
def test_real_wheel_gives_ml100k_with_943_users_1682_items_100000_interactions(
    tmp_path: Path,
) -> None:
    dataset = load_dataset(
        fetch_movielens_100k(tmp_path, wheel=REAL_WHEEL, downloader=never_called)
    )
    inter = dataset.interactions
    assert len(inter) == 100_000
    assert len(set(inter.user_ids.tolist())) == 943 and len(set(inter.item_ids.tolist())) == 1682
    assert dataset.users is not None and len(dataset.users) == 943
    assert dataset.items is not None and len(dataset.items) == 1682
    assert dataset.items.columns["release_year"][dataset.items.index("item_id")["267"]] == "unkonwn"
