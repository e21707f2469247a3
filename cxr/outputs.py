"""Output folders that a command owns: it writes only into a folder that is new, empty, or marked by cxr, never
over a file it did not write, with one writer at a time, and a rerun on its own finished output reuses it.

Each folder a command writes holds two hidden files: `.cxr-output.json` (which commands wrote here, with what
settings, and whether they finished) and `.cxr-lock` (an exclusive lock for as long as a command writes: a second
process is refused at once instead of racing the first). The lock dies with its process, so a killed task's
retry is never locked out. A command that fails before writing anything leaves no record of its settings, so the
corrected command is not refused; a single file (`new_file`) appears under its name only once it is complete.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cxr.errors import UserError

RECORD = ".cxr-output.json"
LOCK = ".cxr-lock"
OWN_FILES = (RECORD, LOCK)


@dataclass
class Claim:
    """A folder one command may write into, held until the `with` block of `claim` ends."""

    folder: Path
    command: str
    finished: bool  # the same command with the same settings completed here before: reuse what it wrote
    others: frozenset[str]  # the other cxr commands whose files share this folder

    def finish(self) -> None:
        """Record that the command completed; call after its last file is written."""
        records = _read_records(self.folder)
        records[self.command]["finished"] = True
        _write_records(self.folder, records)


def _read_records(folder: Path) -> dict:
    path = folder / RECORD
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{path} is damaged: {folder} cannot be told apart from someone else's folder; "
                        "choose a new output folder") from None


def _write_records(folder: Path, records: dict) -> None:
    write_atomically(folder / RECORD, json.dumps(records, indent=1, sort_keys=True))


def make_folder(folder: Path, option: str) -> None:
    """Create `folder` (and its parents) or say in one line why it cannot be an output folder."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{option} {folder}: cannot create it ({error.strerror or error})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{option} {folder}: not writable")


def _refuse_foreign(folder: Path, option: str) -> None:
    if not (folder / RECORD).is_file() and any(p.name not in OWN_FILES for p in folder.iterdir()):
        raise UserError(f"{option} {folder} is not empty and was not written by cxr; choose an empty or new "
                        "folder (nothing in it is changed)")


def _lock(folder: Path, option: str):
    try:
        handle = open(folder / LOCK, "a+")  # noqa: SIM115 - held until release, beyond this function
    except OSError as error:
        raise UserError(f"{option} {folder}: cannot write there ({error.strerror or error})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise UserError(f"{option} {folder} is being written by another cxr process right now; wait for it "
                            "or choose another folder") from None
        raise
    return handle


def _written(folder: Path) -> frozenset[str]:
    """Every file under `folder` but cxr's own: what a command has written there (a folder holding nothing else,
    such as a nested claim's, counts as nothing)."""
    found = set()
    for parent, _, names in os.walk(folder):
        for name in names:
            if name not in OWN_FILES and name != _partial(RECORD):
                found.add((Path(parent) / name).relative_to(folder).as_posix())
    return frozenset(found)


def _forget(folder: Path, command: str) -> None:
    """Drop `command`'s record: it wrote nothing, so a rerun with other settings is a first run. The record
    file stays (perhaps empty), so the folder is still known as cxr's."""
    records = _read_records(folder)
    records.pop(command, None)
    _write_records(folder, records)


def unfinished(folder: Path, command: str) -> bool:
    """Whether the folder's record says `command` started there and did not finish (False without a record: a
    copy of the folder may have lost its hidden files, and then its own files are all there is to check)."""
    folder = Path(folder)
    if not (folder / RECORD).is_file():
        return False
    record = _read_records(folder).get(command)
    return isinstance(record, dict) and not record.get("finished")


@contextmanager
def claim(folder: Path, command: str, settings: dict | None = None, option: str = "--out") -> Iterator[Claim]:
    """Hold `folder` for `command` while the block runs.

    Refused, with one line naming the folder: a file or an unwritable place; a folder another process is writing;
    a non-empty folder that cxr did not write; a folder where `command` ran before with other `settings`.
    Another cxr command's files may share the folder (evaluate writes beside train's model), never be replaced.
    When the block raises before writing any file, the record of this first run is dropped again: a bad input
    found late (a download that fails, a damaged model) does not tie the folder to the bad settings.
    """
    folder = Path(folder)
    make_folder(folder, option)
    _refuse_foreign(folder, option)  # before the lock file: nothing is added to someone else's folder
    handle = _lock(folder, option)
    try:
        _refuse_foreign(folder, option)
        records = _read_records(folder)
        wanted = json.loads(json.dumps(settings or {}, sort_keys=True, default=str))
        previous = records.get(command)
        if previous is not None and previous["settings"] != wanted:
            changed = sorted(k for k in set(wanted) | set(previous["settings"])
                             if wanted.get(k) != previous["settings"].get(k))
            raise UserError(f"{option} {folder} holds a `cxr {command}` with other settings "
                            f"({', '.join(changed)}); choose a new folder")
        done = bool(previous and previous["finished"])
        before = _written(folder)
        if previous is None:
            records[command] = {"settings": wanted, "finished": False}
            _write_records(folder, records)
        try:
            yield Claim(folder, command, done, frozenset(records) - {command})
        except BaseException:
            if previous is None and _written(folder) == before:
                _forget(folder, command)
            raise
    finally:
        handle.close()


@contextmanager
def new_file(path: Path, option: str = "--out", encoding: str = "utf-8") -> Iterator[IO[str]]:
    """A text file that appears at `path` only once the block has written all of it: it is written under a
    temporary name beside `path`, then linked to `path`, which fails if `path` exists (never over a file, and no
    window between the check and the write). An error or a crash in the block leaves no `path`, so a rerun is
    not blocked by a half-written file."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise UserError(f"{option} {path} exists already; choose another {option}")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:  # mode 0o666 less the umask, as for any file the user creates (mkstemp's would be 0o600)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:  # a missing or read-only folder, a path through a file
        raise UserError(f"{option} {path}: cannot write it ({error.strerror or error})") from None
    try:
        with open(descriptor, "w", encoding=encoding, newline="") as handle:
            yield handle
        _link_new(temporary, path, option)
    finally:
        temporary.unlink(missing_ok=True)


def _partial(name: str) -> str:
    """The name write_atomically gives a file while it is being written."""
    return f".{name}.partial"


def write_atomically(path: Path, text: str) -> None:
    """Write `path` in a command's own folder so that it is either the old file or the whole new one, never a
    part: a crash mid-write cannot leave a truncated file for a reader (or a rerun) to trip on."""
    path = Path(path)
    temporary = path.with_name(_partial(path.name))
    temporary.write_text(text)
    os.replace(temporary, path)


def _link_new(temporary: Path, path: Path, option: str) -> None:
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise UserError(f"{option} {path} exists already; choose another {option}") from None
    except OSError:  # a file system without hard links: rename, after a last check
        if path.exists():
            raise UserError(f"{option} {path} exists already; choose another {option}") from None
        os.rename(temporary, path)



def owner_of(path: Path) -> tuple[Path, list[str]] | None:
    """The nearest folder at or above `path` that cxr commands own (it holds RECORD), with those commands; None
    when there is none. For outputs that are files, not folders: they must not land among another command's."""
    for folder in [Path(path).resolve(), *Path(path).resolve().parents]:
        if (folder / RECORD).is_file():
            try:
                return folder, sorted(json.loads((folder / RECORD).read_text()))
            except (OSError, json.JSONDecodeError):
                return folder, []
    return None


def read_json(path: Path) -> dict:
    """A JSON file another step wrote; an empty, truncated or missing one is one line naming it."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"missing {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is damaged or empty ({type(error).__name__}); write it again with the step "
                        "that made it") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} is damaged: expected a JSON object")
    return value
