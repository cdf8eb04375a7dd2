"""Profile the job at fleet scale: `python bench/profiling.py --devices N [--keygen ...] [--top K]`.

Builds the repository of `bench/scale.py` and runs plan (empty inventory), the first apply and
a no-op apply under cProfile, one after the other; prints the top K functions of each by
cumulative and by own time (worker processes, if any, are not profiled: their share shows as
waiting in the parent).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import scale  # noqa: E402

from controller import jobs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--keygen", choices=("device", "server"), default="device")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    os.environ.setdefault(jobs.PASSPHRASE_ENV, "bench-only-passphrase")
    with scale.workspace() as work:
        repo = scale.build_repo(work, args.devices, args.keygen, 10)
        state = jobs.StateDir(work / "state")
        now = jobs.now_utc()
        for label, call in (("plan", lambda: jobs.plan(repo, state, now)),
                            ("apply_first", lambda: jobs.apply(repo, state, now)),
                            ("noop", lambda: jobs.apply(repo, state, now))):
            profiler = cProfile.Profile()
            profiler.runcall(call)
            for order in ("cumulative", "tottime"):
                text = io.StringIO()
                stats = pstats.Stats(profiler, stream=text)
                stats.sort_stats(order).print_stats(args.top)
                print(f"=== {label} by {order} ===")
                print(text.getvalue().split("\n", 6)[-1] if order == "tottime" else
                      text.getvalue())


if __name__ == "__main__":
    main()
