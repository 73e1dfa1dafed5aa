"""The ``crystalformer-rl`` console script, also ``python -m crystalformer_rl.cli`` (as ``accelerate launch -m
crystalformer_rl.cli rl ...`` runs it). The command line itself is :mod:`crystalformer_rl.commands`."""

import sys

from .commands import main


if __name__ == "__main__":
    sys.exit(main())
