"""``python -m bench``: the paired benchmark (see bench/README.md)."""

import sys

from bench.run import main

sys.exit(main())
