"""`uv run python -m bench`: run the benchmarks and write bench/RESULTS.md."""

import sys

from bench.run import main

sys.exit(main())
