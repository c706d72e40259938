"""`make nemesis SEED=... MINUTES=...`: one long campaign (or the replay of a failing seed),
its report printed, exit status 1 when it found a problem."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from nemesis_campaign import run  # noqa: E402
from support import diskfull, netns  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data and logs")
    args = parser.parse_args()
    reason = netns.available()
    if reason is not None:
        print(f"the nemesis needs network namespaces: {reason}", file=sys.stderr)
        return 2
    netns.sweep()
    diskfull.sweep()
    root = Path(tempfile.mkdtemp(prefix=f"limedb-nemesis-{args.seed}-"))
    with netns.NetLab() as lab:
        result = run(args.seed, args.minutes, root, lab)
    print(result.report())
    if args.keep or result.problems:
        print(f"node data and logs: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
