"""fasland's command line: `fasland COMMAND …` (fasland/cli.py). The library is training/, landscape/ and
analysis/; see docs/ARCHITECTURE.md."""
