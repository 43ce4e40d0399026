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
