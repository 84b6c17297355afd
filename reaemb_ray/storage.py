"""Where outputs live: `output_dir` as a local folder or a URI (s3://, gs://, file:// on a shared mount).

`Store(output_dir)` is the one way stages, actors and Ray Train workers reach it, on whichever node they run:
- reads go through `fetch(rel)`: a local store returns the path itself; a URI is copied into a node-local
  cache (`{cache_dir}/stores/...`), keyed by a digest of the remote listing (names, sizes, modification
  times), so a folder that changed in the bucket is fetched again and one that did not is reused;
- writes go through `put(local, rel)` (a file or a folder) or `write_bytes`/`write_json` (one object,
  atomic: a local file is renamed into place, an object store makes an upload visible only when complete).
A `Store` pickles as its root, so it can be handed to actors and Ray Train workers.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


CACHE_FOLDER = "stores"  # under data.cache_dir: what `fetch` copied to this node


def is_uri(path: str) -> bool:
    return "://" in path


class Store:
    def __init__(self, root: str, cache_dir: str = "~/.cache/reaemb_ray"):
        import pyarrow.fs as pafs

        self.root, self.cache_dir = str(root), str(cache_dir)
        self.remote = is_uri(self.root)
        if self.remote:
            try:
                self.fs, self.base = pafs.FileSystem.from_uri(self.root.rstrip("/"))
            except Exception as e:  # pyarrow raises ArrowInvalid / OSError with its own wording
                raise ConnectionError(
                    f"cannot open storage {self.root!r} ({e}); check the URI scheme and credentials (s3:// needs "
                    "AWS credentials, gs:// GCP credentials), or use a local output_dir") from None
        else:
            self.fs, self.base = pafs.LocalFileSystem(), str(Path(self.root).expanduser().resolve())

    def __reduce__(self):
        return Store, (self.root, self.cache_dir)

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # ------------------------------------------------------------------------------------ names

    def _path(self, rel: str) -> str:
        return "/".join(p for p in (self.base.rstrip("/"), rel.strip("/")) if p)

    def uri(self, rel: str = "") -> str:
        """The full location of `rel`, for messages and for tools that take a URI (Ray Train's storage_path)."""
        return "/".join(p for p in (self.root.rstrip("/") if self.remote else self.base, rel.strip("/")) if p)

    def local(self, rel: str = "") -> Path | None:
        """`rel` as a local path when this store is a local folder, else None."""
        return None if self.remote else Path(self._path(rel))

    # ------------------------------------------------------------------------------------ reads

    def _info(self, rel: str):
        return self.fs.get_file_info(self._path(rel))

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self._info(rel).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(rel)} does not exist") from None

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly inside `rel` (empty when it does not exist)."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self._path(rel), allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def files(self, rel: str = "") -> dict[str, tuple[int, int]]:
        """Every file under `rel` (or `rel` itself when it is a file): relative name -> (size, mtime in ns)."""
        import pyarrow.fs as pafs

        info = self._info(rel)
        if info.type == pafs.FileType.File:
            return {info.base_name: (info.size, info.mtime_ns or 0)}
        root = self._path(rel).rstrip("/") + "/"
        infos = self.fs.get_file_info(pafs.FileSelector(self._path(rel), recursive=True, allow_not_found=True))
        return {i.path[len(root):]: (i.size, i.mtime_ns or 0) for i in infos if i.type == pafs.FileType.File}

    def fetch(self, rel: str = "") -> Path:
        """A local path holding `rel` (file or folder): the path itself, or a node-local cached copy."""
        if not self.remote:
            path = Path(self._path(rel))
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist")
            return path
        listing = self.files(rel)
        if not listing:
            raise FileNotFoundError(f"{self.uri(rel)} does not exist or is empty")
        digest = hashlib.sha256(json.dumps(sorted(listing.items())).encode()).hexdigest()[:16]
        slot = Path(self.cache_dir).expanduser() / CACHE_FOLDER / _short(self.uri(rel))
        dest = slot / digest / Path(rel.strip("/") or "root").name
        if (slot / digest / ".complete").exists():
            return dest
        slot.mkdir(parents=True, exist_ok=True)
        with _file_lock(slot / ".lock"):  # actors on one node fetch once
            if not (slot / digest / ".complete").exists():
                partial = Path(tempfile.mkdtemp(dir=slot, prefix=".partial-"))
                self._download(rel, partial / dest.name)
                (partial / ".complete").touch()
                shutil.rmtree(slot / digest, ignore_errors=True)
                os.replace(partial, slot / digest)
                log.info("fetched %s -> %s", self.uri(rel), dest)
        return dest

    def _download(self, rel: str, dest: Path) -> None:
        import pyarrow.fs as pafs

        is_file = self._info(rel).type == pafs.FileType.File
        (dest.parent if is_file else dest).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self._path(rel), str(dest), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())

    # ----------------------------------------------------------------------------------- writes

    def write_bytes(self, rel: str, data: bytes) -> None:
        """One object, visible complete or not at all."""
        if not self.remote:
            path = Path(self._path(rel))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            return
        self._parent_dir(rel)
        with self.fs.open_output_stream(self._path(rel)) as f:
            f.write(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def put(self, local: str | Path, rel: str) -> None:
        """Copy a local file or folder to `rel` (merging into an existing folder)."""
        import pyarrow.fs as pafs

        local = Path(local)
        if not self.remote:
            dest = Path(self._path(rel))
            if dest.resolve() == local.resolve():
                return
            dest.parent.mkdir(parents=True, exist_ok=True)
            if local.is_dir():
                shutil.copytree(local, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(local, dest)
            return
        if local.is_dir():
            self.fs.create_dir(self._path(rel), recursive=True)
        else:
            self._parent_dir(rel)
        pafs.copy_files(str(local), self._path(rel), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    def _parent_dir(self, rel: str) -> None:
        """Object stores have no folders; a file:// store (a local filesystem) needs the parent to exist."""
        import pyarrow.fs as pafs

        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(self._path(rel).rsplit("/", 1)[0], recursive=True)

    def copy(self, src: str, dst: str) -> None:
        """Copy `src` (file or folder) to `dst` inside the store (server-side where the store can)."""
        import pyarrow.fs as pafs

        self.delete(dst)
        if self._info(src).type == pafs.FileType.Directory:
            self.fs.create_dir(self._path(dst), recursive=True)
        else:
            self._parent_dir(dst)
        pafs.copy_files(self._path(src), self._path(dst), source_filesystem=self.fs, destination_filesystem=self.fs)

    def delete(self, rel: str) -> None:
        """Remove a file or a folder; nothing when it does not exist."""
        import pyarrow.fs as pafs

        info = self._info(rel)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self._path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self._path(rel))

    @contextlib.contextmanager
    def writing(self, rel: str):
        """A local folder to write `rel` into; uploaded when the block ends without an error.

        For a local store it is the destination folder itself (nothing is copied)."""
        if not self.remote:
            path = Path(self._path(rel))
            path.mkdir(parents=True, exist_ok=True)
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="reaemb-out-") as tmp:
            yield Path(tmp)
            self.put(tmp, rel)


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def store_for(cfg) -> Store:
    """The store of `cfg.output_dir`, with the node-local cache under `data.cache_dir`."""
    return Store(cfg.output_dir, cfg.data.cache_dir)
