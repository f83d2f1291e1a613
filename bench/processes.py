"""Child processes of a benchmark: started in sessions of their own, stopped in order, never left behind.

Every child also gets SIGTERM from the kernel if the benchmark itself dies (PR_SET_PDEATHSIG), so not
even a SIGKILL of the benchmark leaves a server running. CPU time and peak memory are read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None

    def log_tail(self, characters: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-characters:]
        except FileNotFoundError:
            return ""


@dataclass
class Children:
    """The processes a run started; `close()` stops whatever still runs, newest first."""

    started: list[Child] = field(default_factory=list)

    async def spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> Child:
        # A file, not a pipe: a pipe nobody reads fills up and then blocks the child on its next line.
        with log.open("ab") as output:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        child = Child(name, process, log)
        self.started.append(child)
        return child

    async def stop(self, child: Child, grace: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; answers the exit code."""
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.process.wait(), timeout=grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
        if child in self.started:
            self.started.remove(child)
        return child.process.returncode

    async def close(self, grace: float = 10.0) -> None:
        for child in reversed(list(self.started)):
            await self.stop(child, grace)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # After the command name: state is field 3 of the man page, utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def listen_overflows() -> int:
    """Connections the kernel dropped because a listening socket's accept queue was full (TcpExt
    ListenOverflows, the whole machine): a burst of connections must not be measured through them."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """Every process's name and CPU seconds so far (what the machine is busy with)."""
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


def foreign_cpu(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    mine: set[int],
    shared: set[str],
) -> float:
    """CPU seconds other processes used between two snapshots: not ours (`mine`) and not the servers
    we use (`shared` names, e.g. postgres, redis-server). Processes that ended meanwhile are missed."""
    total = 0.0
    for pid, (name, seconds) in after.items():
        if pid in mine or name in shared:
            continue
        total += seconds - before.get(pid, (name, 0.0))[1]
    return total
