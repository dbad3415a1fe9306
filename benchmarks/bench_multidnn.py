"""Same as `headway bench multidnn` (its --help lists the options); kept so that the
commands quoted in docs/ keep working."""

import sys

from headway.cli import app

if __name__ == "__main__":
    app(["bench", "multidnn", *sys.argv[1:]])
