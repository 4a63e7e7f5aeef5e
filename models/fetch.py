"""MovieLens-100K in RecBole atomic format, taken from the recbole 1.2.1 wheel on PyPI.

The wheel ships ``recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}``. It is fetched
with ``pip download`` (recbole is never installed or imported) and the three members are read
with :mod:`zipfile`, checked against pinned sha256 sums and renamed into place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

REQUIREMENT = "recbole==1.2.1"
WHEEL_NAME = "recbole-1.2.1-py3-none-any.whl"
MEMBER_DIR = "recbole/dataset_example/ml-100k"
# Expected sha256 per file name; read at call time, so tests can swap entries.
EXPECTED_SHA256 = {
    WHEEL_NAME: "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")

Downloader = Callable[[Path], None]
"""Puts ``WHEEL_NAME`` into the given cache directory, or raises."""


class DataFetchError(RuntimeError):
    """The dataset could not be fetched or did not match its pinned checksums."""


def fetch_movielens_100k(
    target_dir: Path, wheel: Path | None = None, downloader: Downloader | None = None
) -> Path:
    """Put ml-100k.inter/.user/.item under ``target_dir/ml-100k`` and return that directory.

    Does nothing when the three files are already there with the pinned checksums. The wheel
    is ``wheel`` if given, else ``target_dir/.cache/WHEEL_NAME``, which ``downloader``
    (default: ``pip download``) fills when it is missing.
    """
    out_dir = Path(target_dir) / "ml-100k"
    stale = [name for name in FILES if _sha256_of(out_dir / name) != EXPECTED_SHA256[name]]
    if not stale:
        logger.info("%s already holds verified ml-100k files", out_dir)
        return out_dir
    if wheel is None:
        cache_dir = Path(target_dir) / ".cache"
        wheel = cache_dir / WHEEL_NAME
        if not wheel.is_file():
            _download(downloader or _pip_download, cache_dir, out_dir)
        if not wheel.is_file():
            raise DataFetchError(f"no {wheel} after downloading; {_how_to_fix(out_dir)}")
    elif not (wheel := Path(wheel)).is_file():
        raise DataFetchError(f"no wheel at {wheel}: pass the path of a downloaded {WHEEL_NAME}")
    _check(WHEEL_NAME, _sha256_of(wheel), f"{wheel} (delete it and run again)")
    contents = _read_members(wheel)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in stale:
        tmp = out_dir / f".{name}.tmp-{os.getpid()}"
        try:
            tmp.write_bytes(contents[name])
            os.replace(tmp, out_dir / name)
        finally:
            tmp.unlink(missing_ok=True)
    logger.info("wrote %s to %s", ", ".join(stale), out_dir)
    return out_dir


def _read_members(wheel: Path) -> dict[str, bytes]:
    """Read and verify the three files from the wheel; nothing is written on a mismatch."""
    contents: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name in FILES:
                contents[name] = archive.read(f"{MEMBER_DIR}/{name}")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DataFetchError(
            f"{wheel} is not a {REQUIREMENT} wheel with {MEMBER_DIR}/ ({exc}); delete it and "
            "run again"
        ) from exc
    for name, data in contents.items():
        _check(name, hashlib.sha256(data).hexdigest(), f"{name} in {wheel}")
    return contents


def _check(name: str, actual: str | None, where: str) -> None:
    expected = EXPECTED_SHA256[name]
    if actual != expected:
        raise DataFetchError(
            f"sha256 mismatch for {where}: expected {expected}, got {actual}; the file is "
            "corrupt or not the pinned release"
        )


def _download(downloader: Downloader, cache_dir: Path, out_dir: Path) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s into %s", REQUIREMENT, cache_dir)
    try:
        downloader(cache_dir)
    except DataFetchError:
        raise
    except (OSError, subprocess.SubprocessError) as exc:
        raise DataFetchError(
            f"could not download {REQUIREMENT} from PyPI ({exc}); {_how_to_fix(out_dir)}"
        ) from exc


def _pip_download(cache_dir: Path) -> None:
    """Run ``pip download`` for the wheel into ``cache_dir``; raise DataFetchError if it fails."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--no-input", REQUIREMENT, "-d", str(cache_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataFetchError(
            f"`pip download {REQUIREMENT}` failed ({detail[0]}); "
            f"{_how_to_fix(cache_dir.parent / 'ml-100k')}"
        )


def _how_to_fix(out_dir: Path) -> str:
    cache_dir = out_dir.parent / ".cache"
    return (
        f"run again with network access to PyPI, or put {WHEEL_NAME} into {cache_dir} (or pass "
        f"wheel=...), or copy {', '.join(FILES)} into {out_dir}"
    )


def _sha256_of(path: Path) -> str | None:
    """sha256 hex of the file at ``path``, or None when there is no such file."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
