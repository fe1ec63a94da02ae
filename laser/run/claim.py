"""A run owns its output folder: one claim file per folder, shared by every rank of the run.

`<output_dir>/.laser_claim.json` names the run (`run_id`), the host, the process, the start time and a
heartbeat. A second launch on a claimed folder stops at once naming the holder (or waits with
`wait=true`). A claim whose process is gone (same host) or whose heartbeat is older than `stale_after`
seconds (another host) is stale: the next launch takes it over with a warning.

All ranks of one run share the claim through the run id: the first process creates the file, the others
see their own run id in it and join. The run id comes from the launcher (`LASER_RUN_ID`, set for the
processes Lightning spawns), SLURM (job and step id), torchrun (`TORCHELASTIC_RUN_ID`) or a manual
multi-node launch (`MASTER_ADDR:MASTER_PORT`); a plain single process makes a new one.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CLAIM_FILE = ".laser_claim.json"
RUN_ID_ENV = "LASER_RUN_ID"
HEARTBEAT_SECONDS = 15.0
"""How often the holder rewrites its heartbeat."""
STALE_AFTER_SECONDS = 120.0
"""A claim from another host with no heartbeat for this long is stale (default of `claim.stale_after`)."""
WAIT_POLL_SECONDS = 5.0


class FolderClaimedError(RuntimeError):
    """The output folder belongs to another run that is still alive."""


def run_id_from_environment(environ: dict[str, str] | None = None) -> str | None:
    """The id every process of this run agrees on, or None for a single process that must make one."""
    env = os.environ if environ is None else environ
    if env.get(RUN_ID_ENV):
        return env[RUN_ID_ENV]
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
    if env.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    if env.get("MASTER_ADDR") and env.get("MASTER_PORT") and env.get("NODE_RANK") is not None:
        return f"ddp-{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    return None


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


@dataclass
class ClaimInfo:
    run_id: str
    host: str
    pid: int
    started: float
    heartbeat: float
    command: str

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        age = max(0.0, time.time() - self.heartbeat)
        return (f"run {self.run_id} (pid {self.pid} on {self.host}, started {started}, "
                f"last heartbeat {age:.0f} s ago)")


def read_claim(folder: str | Path) -> ClaimInfo | None:
    path = Path(folder) / CLAIM_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ClaimInfo(**{k: data[k] for k in ClaimInfo.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # a half-written claim (its writer died mid-write) is treated as stale by its age
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        return ClaimInfo("unreadable", "?", -1, mtime, mtime, "?")


SETTLE_SECONDS = 2.0
"""How long a reader retries a claim it cannot read before judging it (its writer may be mid-write)."""


def read_settled_claim(folder: str | Path, settle: float = SETTLE_SECONDS) -> ClaimInfo | None:
    """`read_claim`, retried for up to `settle` seconds while the claim is unreadable: a claim being
    written is never mistaken for another run's."""
    deadline = time.monotonic() + settle
    while True:
        claim = read_claim(folder)
        if claim is None or claim.run_id != "unreadable" or time.monotonic() >= deadline:
            return claim
        time.sleep(0.02)


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(claim: ClaimInfo, stale_after: float, now: float | None = None) -> bool:
    """Gone on this host, or silent for `stale_after` seconds on another."""
    if claim.host == socket.gethostname():
        return not process_alive(claim.pid)
    return (time.time() if now is None else now) - claim.heartbeat > stale_after


def _write_atomic(path: Path, info: ClaimInfo) -> None:
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(info)), encoding="utf-8")
    os.replace(tmp, path)


class FolderClaim:
    """The claim of one process on `folder`: `acquire()`, then `release()` (or use it as a context)."""

    def __init__(self, folder: str | Path, run_id: str | None = None, *, wait: bool = False,
                 stale_after: float = STALE_AFTER_SECONDS, heartbeat: float = HEARTBEAT_SECONDS):
        self.folder = Path(folder)
        self.path = self.folder / CLAIM_FILE
        self.run_id = run_id or run_id_from_environment() or new_run_id()
        self.wait = wait
        self.stale_after = stale_after
        self.heartbeat_seconds = heartbeat
        self.owner = False  # True in the process that created the file (it heartbeats and releases it)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- acquiring
    def acquire(self) -> FolderClaim:
        """Create or join the claim; raise `FolderClaimedError` naming the holder (unless `wait`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            if self._try_create():
                self.owner = True
                self._start_heartbeat()
                return self
            holder = read_settled_claim(self.folder)
            if holder is None:
                continue  # released between our attempt and the read: try again
            stale = is_stale(holder, self.stale_after)
            if holder.run_id == self.run_id and not stale:
                return self  # another rank of this run created it
            if stale:  # (a requeued job with the same id takes over its own dead claim too)
                self._take_over(holder)
                continue
            if not self.wait:
                raise FolderClaimedError(
                    f"{self.folder} is in use by {holder.describe()}; wait for it, stop it, or pass wait=true "
                    f"(a claim with no heartbeat for {self.stale_after:.0f} s is taken over)"
                )
            time.sleep(WAIT_POLL_SECONDS)

    def _info(self) -> ClaimInfo:
        now = time.time()
        return ClaimInfo(self.run_id, socket.gethostname(), os.getpid(), now, now, " ".join(sys.argv)[:500])

    def _try_create(self) -> bool:
        """Create the claim whole: the JSON goes to a private file first, which is then hard-linked into
        place (a link fails if the claim exists, so creation stays exclusive), so no reader ever sees a
        claim without its contents. Where the file system has no hard links, O_EXCL + write (readers then
        retry a claim that is still empty, `read_settled_claim`)."""
        tmp = self.path.with_name(f"{CLAIM_FILE}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.new")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(asdict(self._info()), handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network file systems)
            return self._try_create_exclusive()
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _try_create_exclusive(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(self._info()), handle)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def _take_over(self, holder: ClaimInfo) -> None:
        """Move the stale claim aside (one rename wins if several launches race), then retry creating."""
        aside = self.path.with_name(f"{CLAIM_FILE}.stale.{socket.gethostname()}.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        aside.unlink(missing_ok=True)
        warnings.warn(f"taking over the stale claim on {self.folder}: {holder.describe()}", stacklevel=3)
        print(f"laser: taking over the stale claim on {self.folder} of {holder.describe()}", file=sys.stderr)

    # ----------------------------------------------------------------- holding
    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_seconds):
                current = read_claim(self.folder)
                if current is None or current.run_id != self.run_id:
                    return  # taken over or released: stop claiming
                current.heartbeat = time.time()
                try:
                    _write_atomic(self.path, current)
                except OSError:
                    pass

        self._thread = threading.Thread(target=beat, name="laser-claim-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Remove the claim if this process created it and it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.owner:
            current = read_claim(self.folder)
            if current is not None and current.run_id == self.run_id:
                self.path.unlink(missing_ok=True)
            self.owner = False

    def __enter__(self) -> FolderClaim:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
