"""Where a source's files are, and how they get there safely: the folder someone named, the
cache, checked downloads and archive extraction that cannot write outside its target.

Every source follows one search rule. The recipe's `data.root` if given, and only there;
else $CNNLAB_DATA if set, and only there (a folder someone named is used, or the run stops
naming it: a silent fallback to another copy would train on data nobody chose); else the
source's own places (a system package, the cnnlab cache), downloading into the cache when
that is allowed.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

from cnnlab.errors import CnnlabError


def cache_dir(source: str) -> Path:
    """The cnnlab cache folder of one source (under $XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnlab" / source


def named_dir(root: str | None) -> tuple[Path, str] | None:
    """The folder someone named (data.root, else $CNNLAB_DATA) and its name; None = search."""
    if root:
        return Path(root).expanduser(), "data.root"
    if os.environ.get("CNNLAB_DATA"):
        return Path(os.environ["CNNLAB_DATA"]).expanduser(), "$CNNLAB_DATA"
    return None


def stays_inside(
    root: Path, rel: str, folders: dict[str, tuple[Path, bool]], link: bool | None = None
) -> bool:
    """Whether root/rel, links followed, stays inside `root` (resolved): no folder or file
    list may lead a source out of the folder it was given. Each folder is resolved once
    (`folders` keeps it and whether it is inside) and a file only when it is a link
    (`link`: known already, from a directory listing; None: looked up). Resolving every path
    instead, a system call per part of it, took 14 s for an image folder of 121,000 files."""
    parent, name = os.path.split(rel)
    if name in ("", ".", ".."):
        return (root / rel).resolve().is_relative_to(root)
    if parent not in folders:
        real = (root / parent).resolve()
        folders[parent] = real, real.is_relative_to(root)
    folder, inside = folders[parent]
    if link is None:
        link = (folder / name).is_symlink()
    if link:
        return (folder / name).resolve().is_relative_to(root)
    return inside  # a file that is no link lies where its folder does


Files = dict[str, Path]


def search(
    root: str | None,
    find: Callable[[Path], Files | None],
    places: list[Path],
    fetch: Callable[[Path], None],
    allow_download: bool,
) -> tuple[Files | None, str]:
    """The search rule: (files, "") where `find` succeeds, else (None, why not). A folder
    someone named is the only place looked in (its error is the caller's: it knows what the
    folder lacks); else `places` in order, then `fetch` into the last one (the cache)."""
    named = named_dir(root)
    if named:
        return find(named[0]), f"the folder {named[1]} names"
    for folder in places:
        found = find(folder)
        if found:
            return found, ""
    if not allow_download:
        return None, "downloads are disabled"
    try:
        fetch(places[-1])
    except CnnlabError as err:
        return None, str(err)
    found = find(places[-1])
    return found, "" if found else "the download holds no complete copy"


def why_not_here(folder: Path, lacking: list[list[str]]) -> str:
    """Why a folder someone named does not hold a source's files: no folder, a file, or
    what the best of its layouts lacks (`lacking`: the missing names, per layout)."""
    if not folder.exists():
        return "no such folder"
    if not folder.is_dir():
        return "a file, not a folder"
    return "missing " + ", ".join(min(lacking, key=len))


def download_checked(name: str, mirrors: list[str], target: Path, md5: str) -> Path:
    """`target/name` from the first mirror whose copy matches `md5`; a partial or wrong file
    never stays behind. Mirrors are URL prefixes ending in "/"."""
    from torchvision.datasets.utils import check_integrity, download_url  # seconds to import

    target.mkdir(parents=True, exist_ok=True)
    path = target / name
    if check_integrity(path, md5):
        return path
    errors = []
    for mirror in mirrors:
        try:
            download_url(mirror + name, str(target), filename=name, md5=md5)
            return path
        except Exception as err:  # network errors, HTTP errors, checksum mismatch
            path.unlink(missing_ok=True)
            errors.append(f"{mirror}: {err}")
    raise CnnlabError(f"download of {name} failed ({'; '.join(errors)})")


def extract_tar(archive: Path, target: Path) -> None:
    """Unpack a tar archive into `target` with Python's "data" filter, which refuses members
    that would land outside `target` (absolute paths, "..", links pointing out) and special
    files, so a crafted archive cannot write anywhere else."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise CnnlabError(f"{archive}: cannot extract ({err}); delete it and fetch again") from err
