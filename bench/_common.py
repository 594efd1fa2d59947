"""What every benchmark shares: the machine line and the docs/BENCHMARKS.md section writer."""

from __future__ import annotations

import os
import platform
import re
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
SHARED_DATA = ROOT.parent / "shared" / "data"  # never copied into the project (licences)


def shared_dataset(name: str):
    """(loader kind, Dataset) of one of ../shared/data's sets: MovieLens-100K in its own
    files, the others in the generic layout."""
    from training.data import load_dataset

    kind = "ml-100k" if name == "ml-100k" else "generic"
    return kind, load_dataset(kind, str(SHARED_DATA / name))


def machine() -> str:
    """Cores, CPU model, memory, OS, Python and the load average right now."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kb = next(
        (int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores (`nproc`), {cpu}, {mem_kb / 2**20:.0f} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}, "
        f"load average {load:.1f}"
    )


def write_section(heading: str, text: str, path: Path = DOC) -> None:
    """Replace (or append) the ``## <heading>`` section, keeping the other sections and,
    unless ``text`` brings its own, the hand-written ``### Reading`` subsection of this one."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    match = pattern.search(current)
    if match:
        reading = re.search(r"^### Reading\n.*", match.group(0), re.S | re.M)
        if reading and not re.search(r"^### Reading$", text, re.M):
            text = text.rstrip() + "\n\n" + reading.group(0).rstrip() + "\n"
        updated = current[: match.start()] + text.rstrip() + "\n\n" + current[match.end() :]
    else:
        updated = current.rstrip() + "\n\n" + text.rstrip() + "\n"
    path.write_text(updated.rstrip() + "\n")


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``);
    SIGKILL it if it has not exited within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
