"""Browser sandboxes: Chromium's zygotes and renderers (`--type=zygote|renderer|utility|gpu-process`)
and Firefox content processes (`-contentproc … tab|rdd|socket|utility`)."""

from __future__ import annotations

from namespacefs.containers.candidate import Candidate, option
from namespacefs.containers.model import Identity

CHROMIUM = ("chrome", "chromium", "chromium-browse", "chrome_crashpad", "headless_shell", "msedge", "brave")


def identify(c: Candidate) -> Identity | None:
    argv = c.init.cmdline
    chromium = c.init.comm in CHROMIUM or any(n in (argv[0] if argv else "") for n in ("chrom", "headless_shell"))
    if chromium and (kind := option(argv, "--type")):  # (the cheap test first: every candidate is asked)
        return Identity("chromium", f"chromium-{kind}", None, {"type": kind})
    if "-contentproc" in argv:
        kind = argv[-1] if argv else "content"
        return Identity("firefox", f"firefox-{kind}", None, {"type": kind})
    return None
