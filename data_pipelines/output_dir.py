"""A build's output directory: complete or absent, current, from one build.

* ``input_fingerprint``: what a build read (per input file: size, mtime, a content hash
  where cheap), stored in the manifest; a build is reused only when config and inputs match.
* ``swap_into_place``: the finished temporary directory replaces the output in one atomic
  step (Linux ``renameat2(RENAME_EXCHANGE)``), or, where that is unavailable, by two renames
  that ``recover_interrupted`` undoes after a kill between them; the old output is kept
  until the new one is complete either way.
* ``recover_interrupted``: removes the temporary directories of builds whose process is
  gone (a SIGKILL leaves them) and restores an output a swap was interrupted in.
* ``terminate_as_interrupt``: SIGTERM raises like SIGINT while a build runs, so its
  ``finally`` clean-up runs on both.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Iterable, List, Optional

FULL_HASH_MAX_BYTES = 64 << 20   # inputs up to this size are hashed whole; larger: head + tail
EDGE_BYTES = 1 << 20


class BuildInterrupted(KeyboardInterrupt):
    """SIGTERM during a build (SIGINT raises KeyboardInterrupt itself)."""


def _files(paths: Iterable[str]) -> List[Path]:
    out = []
    for p in paths:
        p = Path(p)
        out.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    return out


def input_fingerprint(paths: Iterable[str]) -> List[dict]:
    """[{path, size, mtime_ns, sha256}] of every input file (folders: each file inside);
    ``sha256`` covers the whole file up to 64 MB, else its size, first and last MB."""
    out = []
    for f in _files(paths):
        if not f.exists():
            out.append({"path": str(f), "missing": True})
            continue
        st = f.stat()
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            if st.st_size <= FULL_HASH_MAX_BYTES:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(fh.read(EDGE_BYTES))
                fh.seek(st.st_size - EDGE_BYTES)
                h.update(fh.read(EDGE_BYTES))
        out.append({"path": str(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                    "sha256" if st.st_size <= FULL_HASH_MAX_BYTES else "sha256_head_tail": h.hexdigest()})
    return out


def same_inputs(old: Optional[List[dict]], new: List[dict]) -> bool:
    """Whether a recorded input fingerprint still describes the inputs. A file whose whole
    content hash (and size) is unchanged is the same input even when its mtime moved (a copy,
    a fresh checkout, a re-provisioned data folder); a file hashed by its first and last MB
    only keeps the mtime in the comparison, since its middle could have changed."""
    def key(d: dict) -> dict:
        return {k: v for k, v in d.items() if k != "mtime_ns"} if "sha256" in d else d
    return old is not None and len(old) == len(new) and all(key(a) == key(b) for a, b in zip(old, new))


def describe_input_change(old: List[dict], new: List[dict]) -> str:
    before = {d["path"]: d for d in old or []}
    after = {d["path"]: d for d in new}
    changes = []
    for path in sorted(set(before) | set(after)):
        a, b = before.get(path), after.get(path)
        if a == b:
            continue
        if a is None:
            changes.append(f"{path} is new")
        elif b is None:
            changes.append(f"{path} is no longer an input")
        else:
            what = [k for k in ("size", "mtime_ns", "sha256", "sha256_head_tail", "missing") if a.get(k) != b.get(k)]
            changes.append(f"{path} changed ({', '.join(what)})")
    return "; ".join(changes) or "no recorded inputs"


def temporary_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.building-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(path: Path) -> Optional[int]:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def recover_interrupted(out: Path) -> List[str]:
    """Undo what killed builds of ``out`` left behind; returns what was done (for the log)."""
    done = []
    if not out.parent.exists():
        return done
    for old in sorted(out.parent.glob(f".{out.name}.old-*")):
        pid = _owner_pid(old)
        if pid is None or (pid != os.getpid() and _pid_alive(pid)):
            continue
        if not out.exists() and (old / "manifest.json").exists():
            old.rename(out)          # a two-rename swap was killed between its renames
            done.append(f"restored {out} from {old.name}")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old.name}")
    for tmp in sorted(out.parent.glob(f".{out.name}.building-*")):
        pid = _owner_pid(tmp)
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue                 # another build of the same output is running
        shutil.rmtree(tmp, ignore_errors=True)
        done.append(f"removed stale {tmp.name}")
    return done


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return rc == 0


def swap_into_place(tmp: Path, out: Path) -> None:
    """Make the complete ``tmp`` the output ``out``; at every instant ``out`` is either the
    old complete output or the new one (or, on the fallback path, briefly absent with the
    old one kept as ``.<name>.old-<pid>``, restored by ``recover_interrupted``)."""
    if not out.exists():
        tmp.rename(out)
        return
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)   # tmp now holds the old output
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def terminate_as_interrupt():
    """While active (main thread only), SIGTERM raises ``BuildInterrupted`` so ``finally``
    blocks clean up; a handler someone else installed is left alone."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def raise_interrupted(signum, frame):
        raise BuildInterrupted("build interrupted by SIGTERM")

    signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
