"""`python -m bench`: run the benchmark (options: `python -m bench --help`)."""

from __future__ import annotations

from bench.cli import main

raise SystemExit(main())
