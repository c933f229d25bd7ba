"""DVC stage `ingest`: read a task's source into data/<task>/raw.parquet.

Usage: python pipeline/ingest.py --task TASK [--debug]. Same code as `modelyard ingest`.
"""

import sys

from modelyard.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
