"""DVC stage `split`: seeded train / validation / test split.

Usage: python pipeline/split.py --task TASK [--debug]. Same code as `modelyard split`.
"""

import sys

from modelyard.cli import main

if __name__ == "__main__":
    sys.exit(main(["split", *sys.argv[1:]]))
