"""Same-run CPU-time ratio of `nsfs shift --chown` to `chown -R` on the shift benchmark's tree (tmpfs).

    sudo .venv/bin/python bench/shift_cpu_ratio.py [FILES] [RUNS]

CPU time = user + system of the command and its children (RUSAGE_CHILDREN), so a loaded machine
changes the ratio little; each run prints one line. Results: bench/RESULTS-shift.md (by hand).
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from namespacefs import kernel
from shift_bench import NSFS, make_template


def cpu(argv: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one command."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return round(used, 3), round(time.perf_counter() - start, 3)


def main() -> int:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    work = Path(tempfile.mkdtemp(prefix="nsfs-shift-ratio-"))
    mnt, journal = work / "mnt", work / "j.db"
    mnt.mkdir()
    kernel.mount("tmpfs", str(mnt), "tmpfs", 0, "size=2g,nr_inodes=2m")
    try:
        src = mnt / "t"
        make_template(src, files)
        for _ in range(runs):
            ours = cpu([*NSFS, "shift", "--chown", str(src), "--map", "0:100000:65536", "--journal", str(journal),
                        "--no-progress"])
            back = cpu([*NSFS, "unshift", "--chown", str(src), "--journal", str(journal), "--no-progress"])
            chown = cpu(["chown", "-R", "100000:100000", str(src)])
            cpu(["chown", "-R", "0:0", str(src)])
            for suffix in ("", "-wal", "-shm"):
                Path(f"{journal}{suffix}").unlink(missing_ok=True)
            print(f"ours {ours} rollback {back} chown-R {chown} cpu ratio {ours[0] / chown[0]:.2f}", flush=True)
    finally:
        kernel.umount(str(mnt), kernel.MNT_DETACH)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
