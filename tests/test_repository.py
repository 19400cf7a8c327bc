"""What holds for the checkout itself: no half-resolved merge left in any tracked file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^(<{7} |={7}$|>{7} )", re.MULTILINE)


def test_no_tracked_file_holds_a_merge_conflict_marker() -> None:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    if listed.returncode != 0:  # not a git checkout (an sdist): nothing to check
        return
    found = []
    for name in listed.stdout.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file() or path.suffix in {".png", ".pickle"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{name}:{text[:m.start()].count(chr(10)) + 1}" for m in MARKER.finditer(text)]
    assert found == [], f"merge conflict markers left in: {found}"
