"""One task's ObsIDs, start to finish; shared by every executor (local, Slurm, MPI).

For each ObsID: skip it when already done for this config; otherwise extract it
in private scratch, publish `lc/<obsid>.lc` by atomic rename, then its status
record the same way. A failing ObsID becomes a record, never an exception that
stops the task; a signal records the ObsID in flight as `interrupted`, cleans
scratch and ends the process with 128 + signal.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, TextIO

from rxte_hpc.core.version import __version__
from rxte_hpc.archive.factory import open_archive
from rxte_hpc.core.config import Config
from rxte_hpc.core.errors import DataError, Interrupted, NoDataError, RxteError, SiteError
from rxte_hpc.extract import ExtractContext, Extractor, make_extractor
from rxte_hpc.core.fsutil import describe_os_error, site_errors, write_atomic
from rxte_hpc.fits.lcfile import extraction_keywords, lightcurve_bytes
from rxte_hpc.core.manifest import Manifest, ManifestRow
from rxte_hpc.core.paths import RunPaths
from rxte_hpc.core.scratch import Workspace, task_workspace
from rxte_hpc.core.scratch import kill_tools_of
from rxte_hpc.run.preflight import Checked, preflight
from rxte_hpc.run.signals import interrupt_on_signals, on_second_signal
from rxte_hpc.core.status import StatusRecord, is_done, read_record, write_record

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def one_line(text: str, limit: int = 400) -> str:
    """Errors in records are one line: first line, trimmed."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


#: Bytes a `running` record occupies (padded with blanks, which JSON ignores): room for the final record.
RECORD_RESERVE = 4096


class _ToolLog:
    """The per-ObsID tool log: advisory, so a failing disk makes it incomplete, never fails the ObsID.

    (Whether the ObsID's own results reach the disk is decided by publishing them.)
    """

    def __init__(self, fh: TextIO) -> None:
        self._fh = fh
        self.problem: str | None = None

    def write(self, text: str) -> int:
        if self.problem is None:
            try:
                self._fh.write(text)
            except OSError as exc:
                self.problem = describe_os_error(exc, "write the tool log")
        return len(text)

    def flush(self) -> None:
        if self.problem is None:
            try:
                self._fh.flush()
            except OSError as exc:
                self.problem = describe_os_error(exc, "write the tool log")

    def __enter__(self) -> "_ToolLog":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._fh.close()
        except OSError as error:
            self.problem = self.problem or describe_os_error(error, "write the tool log")


class RunDirFailure(SiteError):
    """The run directory cannot take a light curve or a record: the task stops (see the module doc)."""


@dataclass(frozen=True)
class WorkerIdentity:
    """Who is working: a label for scratch and logs, plus the Slurm job and MPI rank if any."""

    label: str
    slurm_job: str | None = None
    rank: int | None = None
    host: str = socket.gethostname()

    @classmethod
    def for_task(cls, task: int, slurm_job: str | None = None, rank: int | None = None) -> "WorkerIdentity":
        return cls(label=f"task{task:05d}", slurm_job=slurm_job, rank=rank)


class TaskRunner:
    """Processes ObsIDs one by one inside one scratch workspace (a context manager).

    Executors open one runner per task (local, Slurm) or per rank (MPI) and
    call `process(row)` for each ObsID they are given.
    """

    def __init__(
        self,
        config: Config,
        manifest: Manifest,
        identity: WorkerIdentity,
        *,
        force: bool = False,
        extractor_factory: Callable[[ExtractContext], Extractor] = make_extractor,
        checked: Checked | None = None,
    ) -> None:
        self.config = config
        self.checked = checked  # the executor's preflight; None: this runner checks before anything is written
        self.manifest = manifest
        self.identity = identity
        self.force = force
        self.paths = RunPaths(config.run_dir)
        self.config_hash = config.hash()
        self._extractor_factory = extractor_factory
        self._stack = ExitStack()
        self.workspace: Workspace | None = None
        self.extractor: Extractor | None = None
        self._task_log: TextIO | None = None
        self.counts: dict[str, int] = {}
        self.busy_seconds = 0.0

    def __enter__(self) -> "TaskRunner":
        try:
            if self.checked is None:  # before anything is written (and before the archive is opened)
                self.checked = preflight(self.config, self.manifest, factory=self._extractor_factory)
            context = ExtractContext(self.config, self.paths, open_archive(self.config, self.paths))
            self.extractor = self._extractor_factory(context)
            with site_errors("create the run directory's folders"):
                self.paths.make_dirs()
            self._stack.enter_context(interrupt_on_signals())
            self.workspace = self._stack.enter_context(
                task_workspace(
                    self.config.scratch.root,
                    self.config.scratch.min_free_mb,
                    self.identity.label,
                    self.identity.slurm_job,
                )
            )
            # A second signal ends the process at once: take the tools of this workspace along.
            root = self.workspace.root
            self._stack.enter_context(on_second_signal(lambda: kill_tools_of(root)))
            with site_errors("open the task log"):
                self._task_log = self._stack.enter_context(open(self.paths.task_log(self.identity.label), "a"))
        except BaseException:
            self._stack.close()
            raise
        self._say(f"start on {self.identity.host} pid {os.getpid()} scratch {self.workspace.root}")
        return self

    def __exit__(self, *exc: object) -> None:
        done = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items())) or "nothing"
        self._say(f"end: {done}; {self.busy_seconds:.1f} s extracting")
        try:
            self._stack.close()
        except OSError as error:  # closing the task log flushes it: a full disk must not hide the real outcome
            log.warning("%s: %s", self.identity.label, describe_os_error(error, "close the task log"))

    def _say(self, message: str) -> None:
        line = f"{_now()} {self.identity.label}: {message}"
        log.info("%s: %s", self.identity.label, message)
        if self._task_log is None:
            return
        try:
            self._task_log.write(line + "\n")
            self._task_log.flush()
        except OSError as exc:
            log.warning("%s: %s; going on without it", self.identity.label, describe_os_error(exc, "write the task log"))
            self._task_log = None  # closed by the stack; the records are what counts

    def process(self, row: ManifestRow) -> StatusRecord:
        """Extract one ObsID (or skip it when done) and return its final record.

        Raises RunDirFailure (a SiteError) when the run directory cannot take
        the result, after recording the ObsID as well as the disk allows.
        """
        obsid = row.obsid.text
        existing = read_record(self.paths, obsid)
        if not self.force and is_done(existing, self.paths, self.config_hash):
            assert existing is not None
            self._count("skipped")
            return existing
        started = _now()
        t0 = time.monotonic()
        wrote_running = False
        try:  # from the running record on: a signal anywhere here still leaves a final record
            cannot = self._write(self._record(row, "running", started))
            if cannot is not None:  # not even a small record fits: extracting would be wasted
                raise RunDirFailure(f"{obsid}: cannot record that it started: {cannot}")
            wrote_running = True
            record = self._extract(row, started, t0)
        except Interrupted as stop:
            self._interrupted(row, started, t0, stop)
            raise
        except RunDirFailure as exc:
            record = self._record(row, "failed", started, t0, error=str(exc), error_kind="site")
            self._write_final(record, wrote_running)
            self._count("failed")
            self._say(f"{obsid} failed: {exc}; stopping this task")
            raise
        try:
            problem = self._write_final(record, wrote_running)
        except Interrupted:  # the signal came while publishing the result: publish it again, then stop
            self._write_final(record, True)
            raise
        self.busy_seconds += record.seconds or 0.0
        self._count(record.state)
        tail = f": {record.error}" if record.error else ""
        self._say(f"{obsid} {record.state} in {record.seconds:.2f} s{tail}")
        if problem is not None:
            raise RunDirFailure(f"{obsid}: cannot record its result: {problem}")
        return record

    def _interrupted(self, row: ManifestRow, started: str, t0: float, stop: Interrupted) -> None:
        """Record the ObsID in flight as interrupted (whatever had been written for it)."""
        record = self._record(row, "interrupted", started, t0, error=f"interrupted by signal {stop.signum}",
                              error_kind="site")
        self._write_final(record, True)
        self._say(f"{row.obsid} interrupted by signal {stop.signum}")

    def _extract(self, row: ManifestRow, started: str, t0: float) -> StatusRecord:
        assert self.workspace is not None and self.extractor is not None
        obsid = row.obsid.text
        try:
            try:
                tool_log = _ToolLog(open(self.paths.log(obsid), "w"))
            except OSError as exc:
                raise RunDirFailure(describe_os_error(exc, "write the tool log")) from exc
            with tool_log:
                tool_log.write(f"# {obsid} backend {self.extractor.name} on {self.identity.host} at {started}\n")
                tool_log.flush()
                try:  # work/ is empty here: new with the workspace, emptied after every ObsID below
                    curves = self.extractor.extract(row, self.workspace, tool_log)  # type: ignore[arg-type]
                    if not curves or all(c.n_rows == 0 for c in curves):
                        raise NoDataError("the light curve has no rows")
                    data = lightcurve_bytes(curves, self._provenance(row, curves))
                    try:
                        write_atomic(self.paths.lc(row.obsid), data)
                    except SiteError as exc:
                        raise RunDirFailure(str(exc)) from exc
                except (RxteError, OSError) as exc:
                    tool_log.write(f"# {type(exc).__name__}: {exc}\n")
                    raise
                except Exception as exc:  # an extractor bug must not stop the task: record it
                    tool_log.write(traceback.format_exc())
                    raise DataError(f"internal error in {self.extractor.name} extractor: {type(exc).__name__}: {exc}") from exc
                finally:
                    self.workspace.fresh_work()
            if tool_log.problem is not None:
                self._say(f"{obsid}: its tool log is incomplete ({tool_log.problem})")
        except NoDataError as exc:
            return self._record(row, "no_data", started, t0, error=str(exc), error_kind="data")
        except DataError as exc:
            return self._record(row, "failed", started, t0, error=str(exc), error_kind="data")
        except RunDirFailure:
            raise
        except SiteError as exc:
            return self._record(row, "failed", started, t0, error=str(exc), error_kind="site")
        except OSError as exc:  # scratch, archive, cache: this ObsID failed on the machine, the task goes on
            return self._record(row, "failed", started, t0, error=describe_os_error(exc, "use"), error_kind="site")
        return self._record(
            row,
            "done",
            started,
            t0,
            output=str(self.paths.lc(row.obsid).relative_to(self.paths.root)),
            n_rows=int(curves[0].n_rows),
            bands=tuple(c.name for c in curves),
        )

    def _provenance(self, row: ManifestRow, curves: list) -> dict:
        assert self.extractor is not None
        ex = self.config.extract
        return {
            **extraction_keywords(self.extractor.name, ex.pculist, ex.layerlist, ex.filter),
            "OBS_ID": row.obsid.text,
            "CREATOR": f"rxte-hpc {__version__}",
            "BACKEND": self.extractor.name,
            "CONFHASH": self.config_hash,
            "NBANDS": len(curves),
        }

    def _record(self, row: ManifestRow, state: str, started: str, t0: float | None = None, **fields: object) -> StatusRecord:
        assert self.extractor is not None
        finished = None if state == "running" else _now()
        seconds = None if t0 is None else round(time.monotonic() - t0, 4)
        if "error" in fields and fields["error"] is not None:
            fields["error"] = one_line(str(fields["error"]))
        return StatusRecord(
            obsid=row.obsid.text,
            task=row.task,
            state=state,
            backend=self.extractor.name,
            config_hash=self.config_hash,
            started=started,
            finished=finished,
            seconds=seconds,
            host=self.identity.host,
            slurm_job=self.identity.slurm_job,
            rank=self.identity.rank,
            **fields,  # type: ignore[arg-type]
        )

    def _write(self, record: StatusRecord) -> str | None:
        """Publish a record; None on success, else why not (said in the task log)."""
        try:
            if record.state == "running":
                # Advisory (no fsync), and padded: its blocks are the room a final record needs on a full disk.
                write_atomic(self.paths.status(record.obsid), record.to_json().encode().ljust(RECORD_RESERVE),
                             durable=False)
            else:
                write_record(self.paths, record)
        except SiteError as exc:
            self._say(f"{record.obsid}: cannot write its {record.state} record ({exc})")
            return str(exc)
        return None

    def _write_final(self, record: StatusRecord, wrote_running: bool) -> str | None:
        """Publish a final record, never leaving our `running` one behind.

        When the disk is full the final record is written over the running one
        in place, into the blocks the running record reserved (see `_write`);
        failing that, the running record is removed, so the ObsID is at worst
        `missing` (which `rerun` redoes), never a stale `running`.
        """
        problem = self._write(record)
        if problem is None or not wrote_running:
            return problem
        path = self.paths.status(record.obsid)
        data = record.to_json().encode()
        if len(data) <= RECORD_RESERVE:
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, data.ljust(RECORD_RESERVE), 0)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                # Readers cache a shard while its folder's mtime and its files' inodes stay the same
                # (statusindex): an in-place write changes neither, so move the folder's mtime.
                os.utime(path.parent)
                self._say(f"{record.obsid}: {record.state} record written in place of its running one")
                return None
            except OSError as exc:
                self._say(f"{record.obsid}: cannot write its record in place ({describe_os_error(exc, 'write')})")
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # read-only now: nothing more can be done here; the executor reports it
            self._say(f"{record.obsid}: cannot remove its running record ({describe_os_error(exc, 'remove')})")
        return problem

    def _count(self, state: str) -> None:
        self.counts[state] = self.counts.get(state, 0) + 1


def run_task(
    config: Config,
    manifest: Manifest,
    task: int,
    *,
    force: bool = False,
    slurm_job: str | None = None,
    rank: int | None = None,
    extractor_factory: Callable[[ExtractContext], Extractor] = make_extractor,
    checked: Checked | None = None,
) -> list[StatusRecord]:
    """What array element `task` runs (and `work --task`): every ObsID of the task."""
    rows = manifest.rows_for_task(task)
    if not force:  # a finished task writes nothing at all (no scratch, no task log): a read-only run works
        paths, config_hash = RunPaths(config.run_dir), config.hash()
        existing = [read_record(paths, row.obsid.text) for row in rows]
        if all(is_done(rec, paths, config_hash) for rec in existing):
            return [rec for rec in existing if rec is not None]
    identity = WorkerIdentity.for_task(task, slurm_job=slurm_job, rank=rank)
    with TaskRunner(config, manifest, identity, force=force, extractor_factory=extractor_factory,
                    checked=checked) as runner:
        return [runner.process(row) for row in rows]
