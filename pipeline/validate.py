"""DVC stage `validate`: check the raw data with Great Expectations (Data Docs in data/<task>/data_docs).

Usage: python pipeline/validate.py --task TASK [--debug]. Same code as `modelyard validate`.
"""

import sys

from modelyard.cli import main

if __name__ == "__main__":
    sys.exit(main(["validate", *sys.argv[1:]]))
