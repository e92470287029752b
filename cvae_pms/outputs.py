"""Output files of the commands: checked before any work, never overwritten silently, one writer.

- :func:`check_output_file` / :func:`check_output_dir`: the folder exists and a file can be
  created in it (tried, not guessed from permission bits), the target is not a folder (or a
  file), and an existing file is only replaced with ``overwrite`` (``--overwrite``).
- :class:`OutputLock`: an exclusive lock file ``<output>.lock`` next to an output, held while
  a process writes it. The lock is an ``flock`` on that file, so the kernel releases it when
  its process dies (even by ``kill -9``): a lock file left behind by a dead process is
  recognised as stale and taken over. The file records the holder's pid, host and command
  for the message a second writer gets. Released (and removed) on exit.

Every problem is a :class:`OutputError` naming the path.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from cvae_pms.errors import CvaePmsError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_SUFFIX = ".lock"


class OutputError(CvaePmsError):
    """An output cannot be written: missing or read-only folder, existing file, held lock."""


def writable_problem(directory: str | os.PathLike) -> str | None:
    """Why no file can be created in ``directory`` (None when one can): tried with a probe."""
    d = Path(directory)
    if not d.is_dir():
        return f"{d} does not exist" if not d.exists() else f"{d} is not a directory"
    probe = d / f".cvae-pms-write-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return f"cannot create files in {d} ({exc.strerror or exc})"
    os.close(fd)
    try:
        probe.unlink()
    except OSError:
        pass
    return None


def check_output_file(path: str | os.PathLike, overwrite: bool = False,
                      what: str = "output") -> Path:
    """Fail unless ``path`` can be written: folder exists and is writable, not a folder, and
    (without ``overwrite``) no file there yet. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: {what} is a directory, expected a file name")
    if not path.parent.is_dir():
        raise OutputError(f"{path}: {what} directory {path.parent} does not exist")
    problem = writable_problem(path.parent)
    if problem:
        raise OutputError(f"{path}: {what} not writable: {problem}")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: {what} exists; use --overwrite to replace it "
                          f"(or another name)")
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Fail unless files can be created in the folder ``path`` (or, when it does not exist
    yet, in its nearest existing parent, where it will be created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: {what} is a file, expected a directory")
    base = path
    while not base.exists() and base != base.parent:
        base = base.parent
    problem = writable_problem(base)
    if problem:
        raise OutputError(f"{path}: {what} not writable: {problem}")
    return path


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """Exclusive lock ``<target>.lock`` for one writer of ``target`` (see the module doc).

    ``acquire`` raises :class:`OutputError` naming the target, the lock file and the holder
    when another live process holds it; ``stale`` is then the record of a dead holder whose
    lock file was taken over (None when there was none).
    """

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)
        self.path = self.target.with_name(self.target.name + LOCK_SUFFIX)
        self.fd: int | None = None
        self.stale: dict | None = None

    def _record(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "command": " ".join(sys.argv)[:500]}).encode()

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return json.loads(os.read(fd, 4096).decode() or "{}")
        except (OSError, ValueError):
            return {}

    def _held(self, rec: dict) -> OutputError:
        who = (f"process {rec.get('pid', '?')} on {rec.get('host', '?')}, started "
               f"{rec.get('started', '?')}" if rec else "another process")
        return OutputError(f"{self.target}: being written by {who} (lock {self.path}); wait "
                           f"for it to finish or choose another output")

    def acquire(self) -> "OutputLock":
        for _ in range(10):
            try:
                os.makedirs(os.path.dirname(os.fspath(self.path)) or ".", exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"{self.target}: cannot create the lock file {self.path} "
                                  f"({exc.strerror or exc})") from exc
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                rec = self._read(fd)
                os.close(fd)
                raise self._held(rec) from None
            except OSError:  # no flock on this file system: fall back to the recorded pid
                rec = self._read(fd)
                if (rec.get("host") == socket.gethostname() and rec.get("pid") != os.getpid()
                        and pid_alive(int(rec.get("pid", 0) or 0))):
                    os.close(fd)
                    raise self._held(rec) from None
            # The file locked must still be the one at the path (a releasing holder unlinks
            # it after we opened it): else retry on the new file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = self._read(fd)
            self.stale = old or None
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, self._record())
            os.fsync(fd)
            self.fd = fd
            return self
        raise OutputError(f"{self.target}: could not take the lock {self.path} (it kept "
                          f"changing); another process is starting on the same output")

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def output_locks(targets: Iterable[str | os.PathLike | None], log=None
                 ) -> Iterator[list[OutputLock]]:
    """Hold an :class:`OutputLock` on every (not None) target, in a fixed order; say when a
    stale lock of a dead process was taken over."""
    unique = sorted({str(Path(t).absolute()) for t in targets if t is not None})
    with ExitStack() as stack:
        locks = []
        for t in unique:
            lock = stack.enter_context(OutputLock(t))
            if lock.stale and log:
                log(f"{lock.path}: stale lock of process {lock.stale.get('pid', '?')} "
                    f"(no longer running) taken over")
            locks.append(lock)
        yield locks
