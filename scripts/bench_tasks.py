"""Benchmark task loading: cold parse of N small task files, then warm refreshes. Prints JSON.

Usage: python scripts/bench_tasks.py [N] [--nested]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from coordinator.config import FleetConfig
from coordinator.tasks import TaskIndex

TASK = '''prompt = """Write the parser for module {i}.
Keep it fast and small."""
priority = "{priority}"
depends_on = [{deps}]
labels = ["bench", "module-{i}"]

[vars]
n = {i}
'''


def write_fleet(root: Path, count: int, nested: bool) -> None:
    """Write ``count`` task files, in 100 subfolders when nested."""
    for i in range(count):
        folder = root / "tasks" / (f"group-{i % 100:03d}" if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        deps = f'"t{i - 1}"' if i % 10 else ""
        text = TASK.format(i=i, priority=("high", "normal", "low")[i % 3], deps=deps)
        (folder / f"t{i}.toml").write_text(text)
    old = time.time() - 3600  # past the index's racy window, as files normally are
    for path in (root / "tasks").rglob("*.toml"):
        os.utime(path, (old, old))


def timed(fn) -> tuple[float, object]:
    """Wall-clock seconds of fn() and its value."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def cpu_timed(fn) -> tuple[float, object]:
    """CPU seconds of fn() (steadier than wall clock on a busy machine) and its value."""
    start = time.process_time()
    value = fn()
    return time.process_time() - start, value


def main() -> None:
    count = int(next((a for a in sys.argv[1:] if a.isdigit()), "10000"))
    nested = "--nested" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fleet(root, count, nested)
        config = FleetConfig(root=root)
        index = TaskIndex(config)
        cold_s, taskset = timed(index.refresh)
        cold_cpu_s, _ = cpu_timed(TaskIndex(config).refresh)
        warm = [timed(index.refresh)[0] for _ in range(5)]
        warm_cpu = [cpu_timed(index.refresh)[0] for _ in range(5)]
        edited = root / "tasks" / ("group-007" if nested else "") / "t7.toml"
        edited.write_text(edited.read_text().replace('"low"', '"critical"').replace('"high"', '"critical"')
                          .replace('"normal"', '"critical"'))
        parsed_before = index.parsed
        one_edit_s, _ = timed(index.refresh)
        print(json.dumps({
            "files": count, "nested": nested, "valid": len(taskset.tasks), "invalid": len(taskset.invalid),
            "cold_refresh_s": round(cold_s, 4), "cold_us_per_file": round(cold_s / count * 1e6, 1),
            "cold_cpu_s": round(cold_cpu_s, 4), "warm_cpu_s_min": round(min(warm_cpu), 4),
            "warm_refresh_s_min": round(min(warm), 4), "warm_refresh_s_max": round(max(warm), 4),
            "one_edit_refresh_s": round(one_edit_s, 4), "one_edit_reparsed": index.parsed - parsed_before,
        }))


if __name__ == "__main__":
    main()
