"""The run's state on disk: the state folder, the Hypothesis database key of each property, the
reproducer files written as soon as a failure is known, and the journal ``--resume`` reads.

Every file is written atomically (a temporary file, then a rename) and fsynced, so a kill keeps
what was written.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import fields, is_dataclass

from .cases import case_from_repr
from .outcomes import Outcome, reproducer_script
from .profiles import profile_name

__all__ = ["STATE_DIR", "prepare_state_dir", "db_key", "fsync_write", "save_reproducer", "Journal", "run_key",
           "decide_once", "writable_file_path"]

#: where ``flashproof check`` and the pytest plugin keep their state by default (relative to the cwd)
STATE_DIR = ".flashproof"


def writable_file_path(path) -> bool:
    """Whether a file can be written at ``path`` now: not a folder, in an existing writable folder
    (``check --json`` and ``--flashproof-report`` check theirs before the run, which creates no folder)."""
    parent = os.path.dirname(os.path.abspath(path))
    return not os.path.isdir(path) and os.path.isdir(parent) and os.access(parent, os.W_OK)


def _key_text(target, profile) -> str:
    return f"{target.spec or target.name}|{profile_name(profile)}"


def db_key(name, target, profile) -> bytes:
    """Hypothesis database key of one property against one target and profile (Hypothesis's own
    key hashes the test function's source, which is the same closure for every property)."""
    return hashlib.sha384(f"flashproof|{name}|{_key_text(target, profile)}".encode()).digest()


def fsync_write(path, text, *, mode="w"):
    """Write (mode "w": atomically, through a temporary file) and fsync, so a kill keeps it."""
    path = os.fspath(path)
    if mode == "a":
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # the rename itself survives a crash only once the folder is synced
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def prepare_state_dir(path) -> str:
    """Create the state folder (with a ``.gitignore`` of ``*`` when flashproof creates it, so its
    files never show up in a checkout). Raises ValueError naming the path if it cannot be written."""
    path = os.fspath(path)
    existed = os.path.isdir(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"state directory {path!r}: cannot create it: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"state directory {path!r} is not writable")
    if not existed:
        _create_once(os.path.join(path, ".gitignore"), "# flashproof's state (Hypothesis database, reproducers, "
                     "journal): not source\n*\n")
    return path


def _create_once(path, text):
    """Write ``path`` unless it exists, atomically (a temporary file linked into place): of two
    processes creating the folder at once (pytest-xdist workers), one writes it, neither twice."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links: a rename (the last writer wins, same text)
        os.replace(tmp, path)
        return
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def decide_once(path, *, run, key, decide):
    """The decision of one run shared by its processes (pytest-xdist workers): the first process
    to get here computes ``decide() -> dict`` under an exclusive lock and writes it to ``path``
    with ``run`` (the run's id) and ``key``; the others wait for the lock and read it. A file of
    another run or key is replaced. Returns (the decision, whether this process made it)."""
    import fcntl

    with open(f"{path}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            try:
                with open(path, encoding="utf-8") as f:
                    rec = json.load(f)
                if rec.get("run") == run and rec.get("key") == key:
                    return rec["decision"], False
            except (OSError, ValueError, KeyError, AttributeError):
                pass
            decision = decide()
            fsync_write(path, json.dumps({"run": run, "key": key, "decision": decision}, indent=2) + "\n")
            return decision, True
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _jsonable(x):
    if is_dataclass(x) and not isinstance(x, type):
        return {"type": type(x).__name__, **{f.name: _jsonable(getattr(x, f.name)) for f in fields(x)}}
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)  # "nan", "inf", "-inf": JSON has no literal for them
    if isinstance(x, (list, tuple)):
        return [_jsonable(y) for y in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return repr(x)


def save_reproducer(ctx, name, case, *, status, message, minimal=True) -> str:
    """Write ``<reproducer_dir>/<property>-<hash>.py`` (runnable: exits 1 when it reproduces) and
    its ``.json`` (the case, structured) at once, fsynced; returns the .py path ("" if none).

    One pair per (property, target, profile): a later failure, or the shrunk example replacing
    the first one found, overwrites it."""
    if not ctx.reproducer_dir or case is None:
        return ""
    from flashproof import __version__

    target, profile = ctx.target, ctx.profile
    os.makedirs(ctx.reproducer_dir, exist_ok=True)
    stem = f"{name}-{hashlib.sha1(_key_text(target, profile).encode()).hexdigest()[:8]}"
    base = os.path.join(ctx.reproducer_dir, stem)
    found = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    length = getattr(ctx, "length", None)
    drawn = (f"drawn at {length.note()}; the case's lengths are explicit, so it replays the same at any max_len"
             if length is not None else "")
    code = reproducer_script(name, case, target, profile, status=status, message=message, minimal=minimal,
                             found=found, stem=stem, example_timeout=ctx.example_timeout,
                             notes=[drawn] if drawn else ())
    doc = {"property": name, "status": status, "target": target.spec, "target_name": target.name,
           "profile": profile, "minimal": minimal, "found": found, "flashproof": __version__,
           "max_len": ctx.limits.max_len, "length": length.as_dict() if length is not None else None,
           "message": message, "case_repr": repr(case), "case": _jsonable(case)}
    fsync_write(base + ".json", json.dumps(doc, indent=2) + "\n")
    fsync_write(base + ".py", code)
    return base + ".py"


class Journal:
    """``journal.jsonl``: a header with the run's key, then one line per finished property,
    appended and fsynced as each finishes. ``resume`` takes the finished ones of a journal with
    the same key; any other journal is replaced (and the reason is returned as a note)."""

    def __init__(self, path, key):
        self.path, self.key = os.fspath(path), key

    def start(self, *, resume):
        done, note = {}, None
        if resume:
            header, entries = self._read()
            if header is None:
                note = f"resume: no journal at {self.path}; starting fresh"
            elif header.get("key") != self.key:
                diff = [f"{k} {header.get('key', {}).get(k)!r} -> {v!r}" for k, v in self.key.items()
                        if header.get("key", {}).get(k) != v]
                note = (f"resume: the journal {self.path} is from another run ({'; '.join(diff)}): not resumed, "
                        f"starting fresh")
            else:
                for e in entries:
                    done[e["name"]] = Outcome(e["name"], e["status"], e.get("examples", 0), e.get("seconds", 0.0),
                                              e.get("message", ""), e.get("reproducer", ""),
                                              case_from_repr(e["case"]) if e.get("case") else None,
                                              e.get("slowest", 0.0), e.get("reproducer_file", ""), resumed=True)
                note = (f"resume: {len(done)} properties already finished in {self.path} (started "
                        f"{header.get('started', '?')}) are reported from it, not run again")
                fsync_write(self.path, json.dumps({"resumed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n",
                             mode="a")
                return done, note
        fsync_write(self.path, json.dumps({"journal": 1, "key": self.key,
                                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
        return done, note

    def _read(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:
            return None, []
        header, entries = None, []
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut short by a kill: everything before it stands
                continue
            if i == 0:
                if not isinstance(rec, dict) or "key" not in rec:
                    return None, []
                header = rec
            elif isinstance(rec, dict) and "name" in rec and "status" in rec:
                entries.append(rec)
        return header, entries

    def record(self, o: Outcome):
        rec = {"name": o.name, "status": o.status, "examples": o.examples, "seconds": round(o.seconds, 3),
               "slowest": round(o.slowest, 3), "message": o.message, "reproducer": o.reproducer,
               "reproducer_file": o.reproducer_file, "case": repr(o.case) if o.case is not None else None}
        fsync_write(self.path, json.dumps(rec) + "\n", mode="a")


def _file_digest(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except (OSError, TypeError):
        return None


def run_key(target, profile) -> dict:
    """What a journal must match to be resumed: the target (and the source file of its module),
    the profile, flashproof's version and a digest of the property suite's source."""
    from flashproof import __version__

    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for fn in sorted(os.listdir(here)):
        if fn.endswith(".py"):
            h.update(fn.encode() + b"\0" + (open(os.path.join(here, fn), "rb").read()))
    mod = sys.modules.get((target.spec or "").split(":")[0]) if target.spec else None
    return {"target": target.spec or target.name, "target_source": _file_digest(getattr(mod, "__file__", None)),
            "profile": profile_name(profile), "flashproof": __version__, "suite": h.hexdigest()[:16]}
