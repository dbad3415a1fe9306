"""Same as `headway bench vit` (its --help lists the options); kept so that the
commands quoted in docs/ keep working."""

import sys

from headway.cli import app

if __name__ == "__main__":
    app(["bench", "vit", *sys.argv[1:]])
