"""DVC stage `evaluate`: test metrics and plots for the trained model.

Usage: python pipeline/evaluate.py --task TASK [--debug]. Same code as `modelyard evaluate`.
"""

import sys

from modelyard.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
