"""DVC stage `featurize`: fit encoders and scaling on the training split; transform all splits.

Usage: python pipeline/featurize.py --task TASK [--debug]. Same code as `modelyard featurize`.
"""

import sys

from modelyard.cli import main

if __name__ == "__main__":
    sys.exit(main(["featurize", *sys.argv[1:]]))
