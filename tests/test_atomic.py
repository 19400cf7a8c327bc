"""Atomic writes under kill -9: a reader in another process never sees half a file.

A writer process rewrites one ~2 MB JSON file in a loop; a reader process reads
and parses it in a loop; the test kills the writer with SIGKILL at a random
moment (right after a random number of completed writes, so inside the next
one), starts it again, and repeats. ``write_json_atomic`` must never show the
reader a partial file. The same harness with a plain ``Path.write_text`` writer
is the control: it shows that the harness can catch a torn read at all.
Every wait is bounded by a count and pytest's timeout, never by a sleep.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from coordinator.atomic import write_json_atomic
from tests.conftest import subprocess_env

BLOB_CHARS = 2 * 1024 * 1024

# argv: PATH MODE(atomic|plain) FIRST_GEN. Prints one line per completed write.
WRITER = r"""
import json, sys
from pathlib import Path
from coordinator.atomic import write_json_atomic
path, mode, gen = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
blobs = ["a" * BLOB_CHARS, "b" * BLOB_CHARS]
while True:
    data = {"gen": gen, "blob": blobs[gen % 2]}
    if mode == "atomic":
        write_json_atomic(path, data)
    else:
        path.write_text(json.dumps(data, separators=(",", ":")))
    sys.stdout.write(f"{gen}\n")
    sys.stdout.flush()
    gen += 1
""".replace("BLOB_CHARS", str(BLOB_CHARS))

# argv: PATH STOP_FILE TORN_MARKER. Prints "ready" after its first whole read, then a JSON summary.
READER = r"""
import json, os, sys
path, stop, marker = sys.argv[1], sys.argv[2], sys.argv[3]
reads = torn = 0
gens = set()
first_bad = None
while True:
    stopping = os.path.exists(stop)
    raw = b""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        data = json.loads(raw)
        whole = isinstance(data, dict) and isinstance(data.get("gen"), int) \
            and len(data.get("blob", "")) == BLOB_CHARS
    except (OSError, ValueError):
        whole = False
    reads += 1
    if whole:
        gens.add(data["gen"])
    else:
        torn += 1
        if first_bad is None:
            first_bad = len(raw)
            open(marker, "w").close()
    if reads == 1:
        print("ready", flush=True)
    if stopping:
        break
print(json.dumps({"reads": reads, "torn": torn, "gens": len(gens), "first_bad_len": first_bad}), flush=True)
""".replace("BLOB_CHARS", str(BLOB_CHARS))


@dataclass
class Outcome:
    reads: int
    torn: int
    gens: int
    rounds: int
    first_bad_len: int | None


def run_harness(tmp_path: Path, mode: str, *, kills: int, stop_when_torn: bool = False) -> Outcome:
    """Kill and restart a ``mode`` writer ``kills`` times while a reader reads; the reader's tally."""
    target = tmp_path / "state.json"
    stop, marker = tmp_path / "stop", tmp_path / "torn"
    write_json_atomic(target, {"gen": 0, "blob": "a" * BLOB_CHARS})
    env = subprocess_env()
    reader = subprocess.Popen([sys.executable, "-c", READER, str(target), str(stop), str(marker)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    rng = random.Random(os.getpid())
    rounds = 0
    gen = 1
    try:
        assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
        for rounds in range(1, kills + 1):
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), mode, str(gen)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            try:
                for _ in range(rng.randint(1, 4)):  # then kill it inside the next write
                    line = writer.stdout.readline()
                    assert line, f"writer exited early: {writer.stderr.read()}"
                    gen = int(line) + 1
            finally:
                os.kill(writer.pid, signal.SIGKILL)
                writer.wait(timeout=30)
                writer.stdout.close()
                writer.stderr.close()
            gen += 1
            if stop_when_torn and marker.exists():
                break
        stop.touch()
        out, err = reader.communicate(timeout=60)
    finally:
        reader.kill()
        reader.wait(timeout=30)
    assert reader.returncode == 0, err
    tally = json.loads(out.strip().splitlines()[-1])
    return Outcome(reads=tally["reads"], torn=tally["torn"], gens=tally["gens"], rounds=rounds,
                   first_bad_len=tally["first_bad_len"])


def test_a_reader_never_sees_a_partial_file_while_the_writer_is_killed(tmp_path: Path) -> None:
    outcome = run_harness(tmp_path, "atomic", kills=8)
    assert outcome.rounds == 8
    assert outcome.torn == 0
    # The reader really read while files were being replaced: it saw several generations.
    assert outcome.gens >= 2 and outcome.reads >= outcome.gens
    assert json.loads((tmp_path / "state.json").read_text())["gen"] >= 1


def test_the_harness_catches_a_plain_writer_tearing_the_file(tmp_path: Path) -> None:
    """The control. A plain write truncates, then writes 2 MB; a kill in between leaves the
    file torn until the next writer replaces it, so the reader is bound to see it. Bounded
    to 30 kills (in practice the first one suffices) so it cannot loop forever."""
    outcome = run_harness(tmp_path, "plain", kills=30, stop_when_torn=True)
    assert outcome.torn >= 1, f"no torn read in {outcome.rounds} kills and {outcome.reads} reads"
    # What it saw was cut short, or whole-length but mixing two writes (a reader racing the writer).
    assert 0 <= outcome.first_bad_len <= BLOB_CHARS
