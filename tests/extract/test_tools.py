"""extract/tools.run_tool against real processes: how a task that dies is classified, and that it dies with its worker."""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rxte_hpc.core.errors import SiteError
from rxte_hpc.extract.tools import run_tool
from where import STANDIN



def fake_headas(tmp_path: Path, script: str) -> Path:
    """A HEADAS whose maketime is `script` (a shell script), with the stand-in's parameter files."""
    headas = tmp_path / "headas"
    (headas / "bin").mkdir(parents=True)
    shutil.copytree(STANDIN / "syspfiles", headas / "syspfiles")
    tool = headas / "bin" / "maketime"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)
    return headas


@pytest.mark.parametrize("sig, site", [(signal.SIGKILL, True), (signal.SIGTERM, True), (signal.SIGSEGV, False)])
def test_a_task_killed_from_outside_is_a_site_failure_and_a_crash_is_not(tmp_path, sig, site):
    headas = fake_headas(tmp_path, f"echo started\nkill -{int(sig)} $$\n")
    call = lambda: run_tool("maketime", [], headas=headas, env=dict(os.environ), cwd=tmp_path, tool_log=io.StringIO())  # noqa: E731
    if site:
        with pytest.raises(SiteError, match=f"killed by {sig.name}"):
            call()
    else:
        result = call()
        assert result.returncode == -int(sig) and result.failure() == f"exit status {-int(sig)}"


def test_a_task_dies_when_its_worker_is_killed_outright(tmp_path):
    """The kernel's parent-death signal: SIGKILL of the worker (no cleanup can run) still ends its task."""
    pidfile = tmp_path / "tool.pid"
    headas = fake_headas(tmp_path, f"echo $$ > {pidfile}\nexec sleep 60\n")
    worker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import io, os
        from pathlib import Path
        from rxte_hpc.extract.tools import run_tool
        run_tool("maketime", [], headas=Path({str(headas)!r}), env=dict(os.environ), cwd=Path({str(tmp_path)!r}),
                 tool_log=io.StringIO())
    """)])
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.is_file() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline and worker.poll() is None, "the tool never started"
            time.sleep(0.05)
        tool = int(pidfile.read_text())
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _alive(tool):
            assert time.monotonic() < deadline, f"tool {tool} outlived its killed worker"
            time.sleep(0.05)
    finally:
        if worker.poll() is None:
            worker.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
