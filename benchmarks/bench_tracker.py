"""Paper A's executor comparison (Fig. 10-12, Table 1) on this machine.

Same as ``headway bench tracker``; e.g.
    python benchmarks/bench_tracker.py --config default --frames 20 --json tracker.json
"""

import sys

from headway.cli import app

if __name__ == "__main__":
    app(["bench", "tracker", *sys.argv[1:]])
