"""Run every benchmarks/bench_*.py in turn with its default arguments (what `make bench` does).

Each benchmark prints its own figures and ratios against its anchor; this only sequences them,
reports which failed, and exits non-zero if any did.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n=== {script.name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode
        print(
            f"=== {script.name}: exit {code} in {time.monotonic() - started:.0f}s ===", flush=True
        )
        if code != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
