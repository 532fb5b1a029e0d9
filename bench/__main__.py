"""`python -m bench`: run the benchmark (QUICK=1 and BENCH_* variables configure it)."""

import sys

from bench.runner import main

sys.exit(main())
