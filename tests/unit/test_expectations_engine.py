"""Great Expectations as the check engine: loading it writes nothing of GX's to a task's log, only
one line saying that this process imported it (what a preloaded task process never says), and a
second load in the same process is the same module, not a second import."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
from governance import expectations
assert not expectations.is_loaded()
gx = expectations.load()
assert expectations.is_loaded()
assert expectations.load() is gx
context = expectations.ephemeral_context()
print("context", type(context).__name__)
"""


def test_loading_great_expectations_logs_only_its_own_import_line_and_loads_once() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    # GX's own registry logs hundreds of INFO lines while importing; a task log gets none of them.
    assert [line for line in lines if line.startswith("great_expectations")] == []
    assert [line for line in lines if line.startswith("governance.expectations")] == [
        next(line for line in lines if "Great Expectations imported in this process" in line)
    ]
    assert "context EphemeralDataContext" in done.stdout
