"""`python -m prefetch ...` and the `prefetch` console script (see `prefetch.cli`).

Example:
    $ python -m prefetch bench --demo
"""

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
