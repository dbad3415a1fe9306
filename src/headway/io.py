"""Writing files so that an interrupted run never leaves a half-written one behind, and run
folders that belong to one run: one process at a time, one set of settings."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from headway.errors import InputError, first_line

_umask_lock = threading.Lock()


def _umask() -> int:
    with _umask_lock:
        umask = os.umask(0)
        os.umask(umask)
    return umask


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file under the process's umask."""
    return 0o666 & ~_umask()


# What the operating system's refusals mean to someone who asked headway to write a file.
_WRITE_REASONS = {
    errno.ENAMETOOLONG: "a name in the path is too long (at most {limit} bytes per name)",
    errno.EISDIR: "a folder is in the way of the file",
    errno.ENOTDIR: "a file is in the way of a folder on the path",
    errno.EEXIST: "a file is in the way of a folder on the path",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "the file is larger than this system allows",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}

_WRITING = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EISDIR}

NAME_MAX = 255  # bytes per file or folder name on the file systems headway is used on


def environment_failure(error: OSError, path: str | Path | None = None) -> InputError | None:
    """One line for an ``OSError`` the machine raised while headway wrote (or read) a file —
    name too long, a folder where a file goes, no space, read-only — or None for anything
    else (which would be a bug in headway)."""
    reason = _WRITE_REASONS.get(error.errno or -1)
    if reason is None:
        return None
    where = path if path is not None else (error.filename or "a file")
    verb = "write" if error.errno in _WRITING else "use"  # EACCES etc. happen on reads too
    return InputError(f"cannot {verb} {where}: {reason.format(limit=NAME_MAX)}")


def can_create_in(folder: Path) -> str | None:
    """None when a file can be made in ``folder``, else the system's reason. Tried for real:
    ``os.access`` answers yes to root everywhere, even in /proc or on a read-only mount."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".headway-probe-", suffix=".tmp"):
            pass
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def check_name_lengths(path: str | Path, what: str) -> None:
    """Refuse, before any work, a path with a file or folder name over ``NAME_MAX`` bytes
    (the OS would refuse it only when the file is written, after the work was done)."""
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise InputError(
                f"{what} {path}: the name {part[:40]}… is {len(os.fsencode(part))} bytes; "
                f"at most {NAME_MAX} bytes per name"
            )


def check_file_targets(folder: str | Path, names: list[str] | tuple[str, ...]) -> None:
    """Refuse, before any work, a folder standing where a file of ``folder`` will be written
    (it would only fail at the end, after the work)."""
    for name in names:
        target = Path(folder) / name
        if target.is_dir() and not target.is_symlink():
            raise InputError(f"{target} is a folder, where headway writes a file; move it away")


@contextlib.contextmanager
def os_refusals_named(path: str | Path) -> Iterator[None]:
    """Within the block, an ``OSError`` the machine raises (no space, a folder in the way…)
    becomes one line naming ``path``; any other exception passes unchanged."""
    try:
        yield
    except OSError as error:
        failure = environment_failure(error, path)
        if failure is None:
            raise
        raise failure from None


def make_folder(path: str | Path) -> Path:
    """``mkdir -p`` with the OS's refusals as one line naming the folder."""
    path = Path(path)
    with os_refusals_named(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder and a rename; on any failure the
    temporary file is removed and the OS's refusal becomes one line naming ``path``."""
    check_name_lengths(path, "file")
    make_folder(path.parent)
    temporary = None
    with os_refusals_named(path):
        try:
            # the temporary's name is short whatever the file's: a 250-byte name still fits
            handle, temporary = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.name[:40]}.", suffix=".tmp"
            )
            os.close(handle)
            write(temporary)
            os.chmod(temporary, _file_mode())  # mkstemp makes 0600 files; honour the umask
            os.replace(temporary, path)
        except BaseException:
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)
            raise


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove what a killed build of ``target`` left beside it: hidden staging folders and
    old folders moved aside, named with the process id that made them, whose process is
    gone; an old folder whose target is absent (killed between two renames) is put back.
    Returns what was removed (a folder of a live process is never touched)."""
    parent = target.absolute().parent
    pattern = re.compile(rf"^\.{re.escape(target.name[:40])}\.(?:staging|old)-(\d+)(?:\..*)?$")
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _process_alive(int(match.group(1))):
            if not entry.is_dir() or entry.is_symlink():
                continue
            if ".old-" in entry.name and not os.path.lexists(target):
                with contextlib.suppress(OSError):  # killed between two renames: put it back
                    os.replace(entry, target)
                continue  # the only copy of the earlier folder: never removed
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def staging_folder(target: Path) -> Path:
    """A new hidden folder beside ``target`` to build it in (then :func:`replace_folder`),
    with the permissions a plain ``mkdir`` would give (``mkdtemp`` makes 0700 folders). Its
    name carries this process's id, so a later build removes it if this process is killed
    before it is renamed (:func:`remove_stale_staging`, called here)."""
    parent = make_folder(target.absolute().parent)
    remove_stale_staging(target)
    with os_refusals_named(parent):
        staging = Path(
            tempfile.mkdtemp(dir=parent, prefix=f".{target.name[:40]}.staging-{os.getpid()}.")
        )
    os.chmod(staging, 0o777 & ~_umask())
    return staging


def replace_folder(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` (on the same file system) in ``target``'s place: the
    old ``target``, if any, is moved aside first and removed after, so ``target`` is always
    the old folder, the new one, or (only if the process dies between two renames) absent."""
    aside = None
    try:
        with os_refusals_named(target):
            try:
                if target.exists():
                    aside = target.with_name(f".{target.name[:40]}.old-{os.getpid()}")
                    os.replace(target, aside)
                os.replace(new, target)
            except OSError:
                if aside is not None and not target.exists():
                    os.replace(aside, target)  # put the old one back
                    aside = None
                raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def cache_root() -> Path:
    """Where headway keeps what it can rebuild (exported graphs, the C++ runner, compiled
    packages): ``$HEADWAY_CACHE`` or ``~/.cache/headway``."""
    return Path(os.environ.get("HEADWAY_CACHE") or Path.home() / ".cache" / "headway")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` through a temporary file in the same folder and a rename."""
    _atomic(Path(path), lambda temporary: Path(temporary).write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` through a temporary file in the same folder and a rename."""
    _atomic(Path(path), lambda temporary: Path(temporary).write_bytes(data))


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` through a temporary file in the same folder and a rename."""
    import torch

    def save(temporary: str) -> None:
        # through a Python file: a full disk is then an OSError (torch's own writer raises a
        # RuntimeError without the reason)
        with open(temporary, "wb") as stream:
            torch.save(obj, stream)

    _atomic(Path(path), save)


def read_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` of a file headway or a user wrote: tensors and plain data only (never
    pickled code), with a one-line error when the file is missing, truncated or foreign."""
    import torch

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for unreadable files
        reason = first_line(error)
        if reason.startswith("Weights only load failed"):
            reason = "it holds objects other than tensors and plain data, which headway does not "
            reason += "unpickle (that could run code)"
        raise InputError(
            f"{what} {path} cannot be read (truncated or not a torch file): {reason}"
        ) from None


def require_folder(path: str | Path, what: str) -> Path:
    """``path`` if it is a folder, else one line saying whether it is missing or a file."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.exists():
        raise InputError(f"{path}: {what} is a file, not a folder")
    raise InputError(f"{path}: {what} does not exist")


def read_text_file(path: str | Path, what: str = "file") -> str:
    """A text file's contents, or one line naming it when it is missing, a folder, binary or
    not UTF-8 (a byte-order mark is dropped)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a file")
    if path.exists() and not path.is_file():  # read, a pipe would wait for a writer forever
        raise InputError(f"{what} {path} is not a regular file (a pipe, socket or device)")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{what} {path} cannot be read: {error.strerror}") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InputError(f"{what} {path} is UTF-16 text; headway reads UTF-8 (save it as UTF-8)")
    if b"\x00" in data:
        raise InputError(f"{what} {path} is binary, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(f"{what} {path}:{line}: not UTF-8 text") from None


def read_json_file(path: str | Path, what: str = "file") -> dict[str, Any]:
    """A JSON object headway wrote beside its results (run.json, stage times, records), or one
    line naming the file when it is not UTF-8 text, not JSON, or not an object."""
    text = read_text_file(path, what)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{what} {path}:{error.lineno}: not JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise InputError(f"{what} {path} holds {type(record).__name__}, not a JSON object")
    return record


def read_number_rows(
    path: str | Path, columns: int, what: str = "file", allow_nan: bool = True
) -> np.ndarray:
    """Rows of ``columns`` numbers (separated by commas, tabs or spaces; blank lines skipped)
    as float64 (rows, columns). One line names the file and line of anything else: text that
    is not a number, a wrong count, an infinite value (and NaN unless ``allow_nan``: the
    tracking conventions each have their rule for NaN rows)."""
    rows = []
    for number, line in enumerate(read_text_file(path, what).splitlines(), start=1):
        fields = [f for f in re.split(r"[,\s]+", line.strip()) if f]
        if not fields:
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise InputError(f"{path}:{number}: not a number in {line.strip()!r}") from None
        if len(values) != columns:
            raise InputError(f"{path}:{number}: expected {columns} values, got {len(values)}")
        if any(math.isinf(v) for v in values) or (not allow_nan and any(map(math.isnan, values))):
            raise InputError(f"{path}:{number}: {line.strip()!r} is not finite")
        rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, columns)


def _manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".manifest")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(path: str | Path) -> None:
    """Record a cached file's size and SHA-256 beside it (``<name>.manifest``), written after
    the file itself: a cache entry without a matching manifest is never used."""
    path = Path(path)
    record = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    atomic_write_text(_manifest_path(path), json.dumps(record))


def manifest_matches(path: str | Path) -> bool:
    """Whether ``path`` is a file whose size and SHA-256 are the ones its manifest recorded
    (a truncated, garbled, emptied or replaced cache entry is not)."""
    path = Path(path)
    try:
        record = json.loads(_manifest_path(path).read_text())
        if not path.is_file() or path.stat().st_size != record["size"]:
            return False
        return file_sha256(path) == record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def discard_cached(path: str | Path) -> None:
    """Remove a cache entry (file or, by mistake, folder) and its manifest, whatever is left."""
    path = Path(path)
    for target in (_manifest_path(path), path):
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


def save_figure(figure: Any, path: str | Path) -> Path:
    """Lay out, write (creating the folder, atomically) and close a matplotlib figure; returns
    the path written (``.png`` added to a name without a suffix)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")  # what matplotlib would add; the caller prints this
    kind = path.suffix.lstrip(".").lower()
    try:
        if kind not in figure.canvas.get_supported_filetypes():
            supported = ", ".join(sorted(figure.canvas.get_supported_filetypes()))
            raise InputError(f"{path}: cannot draw a .{kind} figure; use one of {supported}")
        figure.tight_layout()
        # the format comes from the final name: the temporary one ends in .tmp
        _atomic(path, lambda temporary: figure.savefig(temporary, format=kind))
    finally:
        plt.close(figure)
    return path


def atomic_write_with(path: str | Path, write: Any) -> None:
    """Any writer (``write(temporary_path)``, e.g. PIL's ``Image.save``) through a temporary
    file and a rename, with the OS's refusals as one line."""
    _atomic(Path(path), write)


LOCK_NAME = ".headway.lock"


@contextlib.contextmanager
def locked_folder(folder: str | Path, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) while the block runs, so a
    second headway process writing into the same folder stops with a clear error instead of
    mixing its files with ours (``wait``: it waits its turn instead, as for a shared cache).
    The lock dies with the process: nothing stale is left. Within one process, callers on
    several threads must serialise themselves (the lock is per open file)."""
    folder = Path(folder)
    lock_path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a")  # noqa: SIM115 - closed by the with below
    except OSError as error:  # a file in the way, a folder named like the lock, read-only
        where = error.filename or folder
        raise InputError(f"{folder} cannot be used: {error.strerror} ({where})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"{folder} is in use by another headway process; wait for it or choose "
                "another folder"
            ) from None
        try:
            yield folder
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def differing_settings(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``key: stored → wanted`` for every key of ``wanted`` whose stored value differs."""
    return [
        f"{key}: {stored.get(key)!r} → {value!r}"
        for key, value in wanted.items()
        if stored.get(key) != value
    ]


def check_settings(path: str | Path, settings: Mapping[str, Any], what: str) -> bool:
    """Whether ``path`` holds these settings already (False: no such file); one line when it
    holds others. Writes nothing: a rerun with other settings is refused before its work (an
    ``auto`` tuning, say), not after."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        stored = read_json_file(path, "settings file")
    except InputError as error:
        raise InputError(f"{error}; choose another folder") from None
    changes = differing_settings(stored, json.loads(json.dumps(settings)))
    if changes:
        raise InputError(
            f"{path.parent} holds a {what} made with other settings ({'; '.join(changes)}); "
            "choose another folder, or rerun with the same settings to resume"
        )
    return True


def record_settings(
    path: str | Path,
    settings: Mapping[str, Any],
    what: str,
    context: Mapping[str, Any] | None = None,
) -> None:
    """Write ``settings`` (JSON, with ``context`` such as versions beside them) to ``path``
    before the work starts; if the file exists from an earlier run, refuse unless it holds the
    same settings (``context`` is not compared), so a folder never describes settings that did
    not produce it."""
    path = Path(path)
    wanted = json.loads(json.dumps(settings))  # the JSON form is what is compared
    if check_settings(path, wanted, what):
        return
    record = {**json.loads(json.dumps(context or {})), **wanted}
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True))
