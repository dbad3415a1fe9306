"""Same as `headway bench gpu-session` (its --help lists the options): every GPU measurement in
one command, for a short GPU lease."""

import sys

from headway.cli import app

if __name__ == "__main__":
    app(["bench", "gpu-session", *sys.argv[1:]])
