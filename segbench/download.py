"""Downloads that resume, retry, verify and never leave a partial file that looks complete.

A download goes to `<dest>.part`; after the whole file is there and its checksum
matches it is renamed to `<dest>`. An interrupted transfer is resumed with an HTTP
Range request, by a retry or by the next run. Archives are unpacked into
`<dest>.part/` and renamed when complete.
"""

import hashlib
import logging
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from . import SegbenchError

log = logging.getLogger("segbench")
ALGORITHMS = ("sha256", "sha1", "md5")
UNPACKED_MARKER = ".segbench-unpacked"


class DownloadError(SegbenchError):
    pass


def parse_checksum(spec):
    """'sha256:<hex>' -> ('sha256', '<hex>'); None -> (None, None)."""
    if spec is None:
        return None, None
    algorithm, _, digest = spec.partition(":")
    if algorithm not in ALGORITHMS or not digest:
        raise DownloadError(f"checksum {spec!r}: expected '<algorithm>:<hex digest>' with one of {', '.join(ALGORITHMS)}")
    return algorithm, digest.lower()


def file_digest(path, algorithm="sha256"):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check(path, checksum, shown_as):
    algorithm, expected = parse_checksum(checksum)
    if algorithm is None:
        return
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DownloadError(f"{shown_as}: {algorithm} mismatch: expected {expected}, got {actual}")


class _Transient(Exception):
    """A failure worth retrying: the connection broke, timed out, or the server had a bad moment."""


def _transfer(url, part, timeout):
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "segbench"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            if offset and response.status == 206:
                mode = "ab"
            else:
                mode, offset = "wb", 0  # the server ignored the range: start over
            length = response.headers.get("Content-Length")
            expected = offset + int(length) if length is not None else None
            with open(part, mode) as f:
                shutil.copyfileobj(response, f, 1 << 20)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to send: the partial file is whole
            return
        if error.code in (408, 429) or error.code >= 500:
            raise _Transient(f"HTTP {error.code}") from None
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, HTTPException, ConnectionError, TimeoutError, OSError) as error:
        raise _Transient(str(getattr(error, "reason", error))) from None
    if expected is not None and part.stat().st_size < expected:
        raise _Transient(f"connection closed after {part.stat().st_size} of {expected} bytes")


def fetch(url, dest, checksum=None, retries=3, timeout=60, backoff=1.0):
    """Make `dest` a verified copy of `url`; return 'present' if it already was, else 'downloaded'."""
    dest = Path(dest)
    parse_checksum(checksum)  # a malformed checksum fails before any transfer
    if dest.exists():
        _check(dest, checksum, f"{dest} (already present; delete it to download again)")
        return "present"
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout)
            break
        except _Transient as error:
            if attempt == retries:
                raise DownloadError(f"{url}: download failed after {retries + 1} attempt(s): {error}; "
                                    f"{part} keeps what arrived, and the next run resumes from there") from None
            log.warning("%s: %s; retrying (%d/%d)", url, error, attempt + 1, retries)
            time.sleep(backoff * 2 ** attempt)
    try:
        _check(part, checksum, f"{dest} (downloaded from {url})")
    except DownloadError:
        part.unlink()  # wrong bytes: resuming them would never help
        raise
    os.replace(part, dest)
    if checksum is None:
        log.warning("%s: no checksum configured; its sha256 is %s (pin it in the config)", dest, file_digest(dest))
    return "downloaded"


def _inside(relative):
    parts = Path(relative).parts
    return bool(parts) and not Path(relative).is_absolute() and ".." not in parts


def unpack(archive, dest, strip="", members=(), add=None):
    """Extract `archive` (tar, any compression) into the folder `dest`, atomically.

    Only entries under `strip` are taken, with that prefix removed; with `members`,
    only those paths (files or folders) below it. `add` maps a path inside `dest` to
    a file to copy there (e.g. a split list published apart from the archive).
    """
    dest = Path(dest)
    if (dest / UNPACKED_MARKER).exists():
        return "present"
    if dest.exists() and any(dest.iterdir()):
        raise DownloadError(f"{dest}: exists but was not unpacked by segbench; move it away to unpack {archive}")
    prefix = strip.strip("/") + "/" if strip else ""
    staging = dest.with_name(dest.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    extracted = 0
    try:
        with tarfile.open(archive) as tar:
            for entry in tar:
                if not entry.name.startswith(prefix) or not entry.isfile():
                    continue
                relative = entry.name[len(prefix):]
                if members and not any(relative == m or relative.startswith(m.rstrip("/") + "/") for m in members):
                    continue
                if not _inside(relative):
                    raise DownloadError(f"{archive}: unsafe path in archive: {entry.name}")
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(entry) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                extracted += 1
        if not extracted:
            raise DownloadError(f"{archive}: no files under {prefix or '/'}{' matching ' + ', '.join(members) if members else ''}")
        for relative, source in (add or {}).items():
            if not _inside(relative):
                raise DownloadError(f"unpack add: {relative} must be a relative path inside {dest}")
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / relative)
        (staging / UNPACKED_MARKER).write_text(f"{archive}\n{extracted} files\n")
    except (tarfile.TarError, EOFError, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{archive}: cannot unpack: {error}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.exists():
        dest.rmdir()  # empty (checked above); Snakemake may have made it
    os.replace(staging, dest)
    log.info("unpacked %d files from %s into %s", extracted, archive, dest)
    return "unpacked"
