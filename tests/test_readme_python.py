"""The README's "From Python" block runs as written and prints what its comment says."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import FAREQUOTE, ROOT


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    marker = text.index("<!-- python-example:")
    found = re.search(r"```python\n(.*?)```", text[marker:], re.DOTALL)
    assert found is not None
    return found.group(1)


def test_readme_python_block_runs_and_continues_on_a_second_run(tmp_path):
    code = readme_python_block()
    assert '"adjobs-data"' in code and "examples/farequote.json" in code
    # The block's relative paths assume the repository root as the working directory.
    code = (code.replace('"adjobs-data"', repr(str(tmp_path / "adjobs-data")))
                .replace("examples/farequote.json", str(ROOT / "examples" / "farequote.json"))
                .replace("../shared/data/farequote-2021.csv", str(FAREQUOTE)))
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120, check=True)
    assert first.stdout.split() == ["147", "86127"]
    # The second run continues the stored job: the newest bucket counts again, the rest
    # is older than the job's latest record.
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert second.stdout.split() == ["147", "86127"]
    assert (tmp_path / "adjobs-data" / "adjobs.db").is_file()
