"""The state file survives a kill -9 at any instant of a write: a reader sees the old or the new
state, never a torn one (write to temp, fsync, rename, fsync the directory)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from dynamo_launch.state import StateFile

ROOT = Path(__file__).resolve().parents[2]

WRITER = """
import sys
from dynamo_launch.state import StateFile
state = StateFile(sys.argv[1])
n = 0
while True:
    n += 1
    # big enough that a write takes a while: a kill lands mid-write often
    state.save({"n": n, "processes": {f"p{i}": {"pid": n * 1000 + i, "pad": "x" * 2000} for i in range(200)}})
    print(n, flush=True)
"""


def test_kill_9_mid_write_never_leaves_a_torn_state_file(tmp_path):
    rng = random.Random(3)
    state = StateFile(str(tmp_path))
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # at least one complete write
            time.sleep(rng.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        data = state.load()  # valid JSON, a whole state: never partial
        assert data is not None and len(data["processes"]) == 200
        assert all(p["pid"] // 1000 == data["n"] for p in data["processes"].values())
        assert os.stat(state.path).st_mode & 0o777 == 0o600
    # killed writes leave temp files behind; loading (at daemon start, under its lock) sweeps them
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    json.loads(Path(state.path).read_text())
