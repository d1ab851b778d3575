"""Checksummed downloads with pooch, registry files, a local HTTP server for toy data.

A *registry* is a small CSV file (columns ``file,url,hash,note``) listing every raw file a task
needs. ``url`` is either a full URL (``https://``, ``http://``, ``doi:``) or a bare file name
that is joined to a base URL given at download time (toy data served from a local folder).
``hash`` is ``md5:<hex>`` or ``sha256:<hex>``, or empty when it is not known; an unknown hash is
reported as such and never invented (``unroll3d data freeze-registry`` fills them from Zenodo).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import http.server
import io
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from unroll3d.utils import atomic_path

log = logging.getLogger("unroll3d.data")

REGISTRY_FIELDS = ("file", "url", "hash", "note")


class DataError(RuntimeError):
    """A raw or preprocessed data file is missing, corrupt or not in the expected format."""


@dataclass
class RegistryEntry:
    """One row of a registry file."""

    file: str
    url: str
    hash: str | None
    note: str = ""


def package_registry(task: str) -> Path:
    """Path of the registry shipped with the package for ``task`` ("cbct", "mri" or "weights")."""
    names = {
        "cbct": "walnut_registry.csv",
        "mri": "mri_registry.csv",
        "weights": "weights_registry.csv",
    }
    if task not in names:
        raise DataError(f"no package registry for {task!r}; known: {sorted(names)}")
    name = names[task]
    return Path(str(resources.files("unroll3d.data").joinpath(name)))


def read_registry(path: str | Path) -> dict[str, RegistryEntry]:
    """Read a registry CSV into ``{file: RegistryEntry}``.

    :raises DataError: if the file lacks a column or lists a file twice.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"registry file {path} does not exist")
    text = path.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    missing = set(REGISTRY_FIELDS) - set(reader.fieldnames or ())
    if missing:
        raise DataError(
            f"registry {path}: missing column(s) {sorted(missing)}; expected {REGISTRY_FIELDS}"
        )
    out: dict[str, RegistryEntry] = {}
    for row in reader:
        name = row["file"].strip()
        if name in out:
            raise DataError(f"registry {path}: file {name!r} is listed twice")
        h = (row["hash"] or "").strip() or None
        if h is not None and ":" not in h:
            raise DataError(
                f"registry {path}: hash of {name!r} must be 'md5:<hex>' or 'sha256:<hex>', got {h!r}"
            )
        out[name] = RegistryEntry(name, row["url"].strip(), h, (row.get("note") or "").strip())
    return out


def write_registry(path: str | Path, entries: dict[str, RegistryEntry], header: str = "") -> None:
    """Write ``entries`` as a registry CSV atomically (``header`` lines are written as comments)."""
    buf = io.StringIO()
    for line in header.splitlines():
        buf.write(f"# {line}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(REGISTRY_FIELDS)
    for e in entries.values():
        writer.writerow([e.file, e.url, e.hash or "", e.note])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def file_hash(path: str | Path, alg: str = "sha256", chunk: int = 1 << 22) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(alg)
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, chunk), b""):
            h.update(block)
    return h.hexdigest()


def split_hash(known: str) -> tuple[str, str]:
    """``"md5:abc"`` -> ``("md5", "abc")``; a bare hex string is sha256 (pooch's rule)."""
    if ":" in known:
        alg, value = known.split(":", 1)
        return alg.lower(), value.lower()
    return "sha256", known.lower()


def verify(path: str | Path, known: str | None) -> tuple[bool, str | None]:
    """Check ``path`` against ``known``; return ``(matches, "alg:actual")`` (``None`` if unknown)."""
    if known is None:
        return True, None
    alg, value = split_hash(known)
    actual = file_hash(path, alg)
    return actual == value, f"{alg}:{actual}"


def resolve_url(entry: RegistryEntry, base_url: str | None) -> str:
    """Full URL of an entry: absolute URLs are kept, bare names are joined to ``base_url``."""
    if entry.url.split(":", 1)[0] in ("http", "https", "ftp", "sftp", "doi"):
        return entry.url
    if not base_url:
        raise DataError(
            f"registry entry {entry.file!r} has a relative url {entry.url!r} but no base url was given"
        )
    return base_url.rstrip("/") + "/" + (entry.url or entry.file)


class ResumableDownloader:
    """A pooch downloader that resumes an interrupted transfer with an HTTP Range request.

    Bytes are appended to ``part_path`` (kept across retries and runs, with the URL they came
    from beside it in ``<part>.url``: a part file of another URL is discarded, never resumed,
    so an unpinned file cannot become two files joined); once the server has
    sent everything the part file is moved to pooch's temporary output, whose checksum pooch
    then verifies. ``doi:`` URLs are resolved to the repository's HTTPS URL first (network).
    """

    def __init__(
        self,
        part_path: str | Path,
        timeout: float = 60.0,
        verify: bool = True,
        chunk: int = 1 << 20,
    ):
        self.part_path = Path(part_path)
        self.timeout = timeout
        self.verify = verify
        self.chunk = chunk

    def __call__(self, url: str, output_file, pooch_obj=None, check_only: bool = False):
        import shutil

        import requests

        if url.startswith("doi:"):
            from pooch.downloaders import doi_to_repository

            doi, name = url[len("doi:") :].rsplit("/", 1)
            url = doi_to_repository(doi, timeout=self.timeout).download_url(name)
        if check_only:
            r = requests.head(url, allow_redirects=True, timeout=self.timeout, verify=self.verify)
            return r.status_code == 200
        part = self.part_path
        source = part.with_name(part.name + ".url")  # which URL the part file's bytes came from
        if part.exists() and source.exists() and source.read_text() != url:
            log.info(
                "%s: its bytes came from %s, not %s; discarding it, restarting at byte 0",
                part.name,
                source.read_text(),
                url,
            )
            part.unlink()
        pos = part.stat().st_size if part.exists() else 0
        part.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(url)
        headers = {"Range": f"bytes={pos}-"} if pos else {}
        with requests.get(
            url, headers=headers, stream=True, timeout=self.timeout, verify=self.verify
        ) as r:
            if pos and r.status_code == 416:  # the part file already holds everything
                log.info("%s: complete part file found (%d bytes)", part.name, pos)
            else:
                r.raise_for_status()
                mode = "ab" if pos and r.status_code == 206 else "wb"
                if pos:
                    log.info(
                        "%s: %s at byte %d",
                        part.name,
                        "resuming" if mode == "ab" else "restarting",
                        pos,
                    )
                with open(part, mode) as f:
                    for block in r.iter_content(self.chunk):
                        f.write(block)
        shutil.move(str(part), str(output_file))
        source.unlink(missing_ok=True)


def download(
    entry: RegistryEntry,
    dest_dir: str | Path,
    base_url: str | None = None,
    retries: int = 3,
    manual_hint: str | None = None,
    timeout: float = 60.0,
    verify_tls: bool = True,
) -> Path:
    """Download one registry entry into ``dest_dir`` with pooch and verify its checksum.

    * An existing file with the right hash is kept (no network access).
    * An existing file with a wrong hash is deleted (the message names it and both hashes), then
      downloaded again.
    * A download goes to ``.<file>.part`` (an interrupted transfer resumes from there with an
      HTTP Range request, on the next retry or the next run), then to a temporary name, and is
      moved into place only if its hash matches (pooch); ``retries`` extra attempts; a final
      mismatch raises :class:`DataError` naming the file and both hashes (the bad bytes are
      deleted).
    * An unknown hash is logged as *unpinned* together with the md5 and sha256 of what arrived.
    * If the host cannot be reached, :class:`DataError` carries ``manual_hint`` (how to place
      the file by hand; its checksum is still verified on the next run).
    """
    import pooch
    import requests

    dest_dir = Path(dest_dir)
    dest = dest_dir / entry.file
    if dest.exists():
        ok, actual = verify(dest, entry.hash)
        if ok:
            if entry.hash is None:
                log.warning(
                    "%s exists; its checksum is not pinned in the registry (unverified)", dest
                )
            else:
                log.info("%s present, %s verified", dest, entry.hash)
            return dest
        log.warning(
            "checksum mismatch for %s: expected %s, got %s; deleting it and downloading again",
            dest,
            entry.hash,
            actual,
        )
        dest.unlink()
    url = resolve_url(entry, base_url)
    dest_dir.mkdir(parents=True, exist_ok=True)
    downloader = ResumableDownloader(
        dest_dir / f".{entry.file}.part", timeout=timeout, verify=verify_tls
    )
    pup = pooch.create(
        path=dest_dir,
        base_url="",
        registry={entry.file: entry.hash},
        urls={entry.file: url},
        retry_if_failed=retries,
        allow_updates=True,
    )
    try:
        pup.fetch(entry.file, downloader=downloader)
    except ValueError as err:
        if "hash" in str(err):
            raise DataError(
                f"checksum mismatch for {dest} downloaded from {url}: expected {entry.hash} "
                f"(pooch: {err}); the bad download was deleted"
            ) from err
        raise DataError(f"download of {entry.file} from {url} failed: {err}") from err
    except (requests.exceptions.RequestException, OSError) as err:
        hint = f"\n{manual_hint}" if manual_hint else ""
        raise DataError(f"could not download {entry.file} from {url}: {err}{hint}") from err
    if entry.hash is None:
        log.warning(
            "%s downloaded but UNPINNED (no checksum in the registry): md5:%s sha256:%s",
            dest,
            file_hash(dest, "md5"),
            file_hash(dest, "sha256"),
        )
    return dest


def hash_record_path(path: str | Path) -> Path:
    """The file next to ``path`` that records its SHA-256 (``<file>.sha256``)."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def read_hash_record(path: str | Path) -> tuple[str, bool] | None:
    """``(sha256 hex, pinned)`` recorded next to ``path`` by :func:`download_recorded`, or ``None``.

    :raises DataError: a record that does not start with ``sha256:<64 hex>``.
    """
    rec = hash_record_path(path)
    if not rec.is_file():
        return None
    words = rec.read_text().split()
    alg, value = split_hash(words[0]) if words else ("", "")
    if alg != "sha256" or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise DataError(f"{rec}: not a checksum record (expected 'sha256:<64 hex digits> ...')")
    return value, words[1:2] == ["pinned"]


def download_recorded(entry: RegistryEntry, dest_dir: str | Path, **kwargs) -> Path:
    """:func:`download`, then record the file's SHA-256 next to it (``<file>.sha256``).

    An entry without a pinned hash is trusted on its first download only: the record says
    ``unpinned`` and every later run checks the file (and any new download) against it, so a
    file that changes upstream is refused instead of used silently. ``kwargs`` go to
    :func:`download`.
    """
    dest = Path(dest_dir) / entry.file
    record = read_hash_record(dest)
    if entry.hash is None and record is not None:
        entry = RegistryEntry(entry.file, entry.url, f"sha256:{record[0]}", entry.note)
    path = download(entry, dest_dir, **kwargs)
    if record is None:
        pinned = entry.hash is not None
        sha = file_hash(path, "sha256")
        how = "pinned in the registry" if pinned else "unpinned: recorded at the first download"
        with atomic_path(hash_record_path(path)) as tmp:
            tmp.write_text(
                f"sha256:{sha} {'pinned' if pinned else 'unpinned'} ({how}; {entry.url})\n"
            )
        if not pinned:
            log.warning("%s: UNPINNED; sha256:%s recorded in %s", path, sha, hash_record_path(path))
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=N-`` support (so that resumed downloads are exercised)."""

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        log.debug("http: " + format, *args)

    def send_head(self):
        import os
        import re

        m = re.fullmatch(r"bytes=(\d+)-", (self.headers.get("Range") or "").strip())
        path = self.translate_path(self.path)
        if not m or not os.path.isfile(path):
            return super().send_head()
        size, start = os.path.getsize(path), int(m.group(1))
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        f = open(path, "rb")  # noqa: SIM115 - closed by the base class after copying
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return f


@contextlib.contextmanager
def serve_directory(directory: str | Path) -> Iterator[str]:
    """Serve ``directory`` read-only over HTTP on 127.0.0.1 (a free port); yield the base URL.

    Used for toy data so that the download goes through exactly the same pooch code path as a
    real download.
    """
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise DataError(f"cannot serve {directory}: not a directory")
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def zenodo_registry_from_doi(doi: str) -> dict[str, str]:
    """``{file name: "md5:<hex>"}`` of a Zenodo record, through pooch's DOI support (network)."""
    import tempfile

    import pooch

    with tempfile.TemporaryDirectory() as tmp:
        pup = pooch.create(path=tmp, base_url=f"doi:{doi}/", registry=None)
        pup.load_registry_from_doi()
        return dict(pup.registry)


def doi_of(entry: RegistryEntry) -> str | None:
    """The DOI part of a ``doi:<doi>/<file>`` url, else ``None``."""
    if not entry.url.startswith("doi:"):
        return None
    return entry.url[len("doi:") :].rsplit("/", 1)[0]


def freeze_registry(
    path: str | Path,
    fetch: Callable[[str], dict[str, str]] = zenodo_registry_from_doi,
    out: str | Path | None = None,
) -> dict[str, list[str]]:
    """Fill the missing checksums of a registry from the Zenodo API (one query per DOI).

    Known hashes are never overwritten; a Zenodo hash that disagrees with a pinned one is
    reported in ``"conflict"``. Returns ``{"filled": [...], "still_unknown": [...],
    "conflict": [...]}``. ``fetch`` is injectable for tests (no network there).
    """
    entries = read_registry(path)
    header = "".join(
        ln[2:] + "\n" for ln in Path(path).read_text().splitlines() if ln.startswith("# ")
    ).rstrip("\n")
    by_doi: dict[str, dict[str, str]] = {}
    report: dict[str, list[str]] = {"filled": [], "still_unknown": [], "conflict": []}
    for e in entries.values():
        doi = doi_of(e)
        if doi is None:
            if e.hash is None:
                report["still_unknown"].append(e.file)
            continue
        if doi not in by_doi:
            try:
                by_doi[doi] = fetch(doi)
            except Exception as err:  # network, API change: report, never invent
                log.error("could not query %s: %s", doi, err)
                by_doi[doi] = {}
        remote = by_doi[doi].get(e.file)
        if remote is None:
            if e.hash is None:
                report["still_unknown"].append(e.file)
            continue
        if ":" not in remote:
            remote = f"md5:{remote}"  # the Zenodo API reports md5
        if e.hash is None:
            e.hash = remote
            e.note = (e.note + "; " if e.note else "") + f"md5 from Zenodo API ({doi})"
            report["filled"].append(e.file)
        elif split_hash(e.hash)[0] == split_hash(remote)[0] and split_hash(e.hash) != split_hash(
            remote
        ):
            report["conflict"].append(f"{e.file}: registry {e.hash} vs Zenodo {remote}")
    write_registry(out or path, entries, header=header)
    return report
