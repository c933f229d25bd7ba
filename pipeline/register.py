"""DVC stage `register`: register the model; promote it to champion only if it beats the current one.

Usage: python pipeline/register.py --task TASK [--debug]. Same code as `modelyard register`.
"""

import sys

from modelyard.cli import main

if __name__ == "__main__":
    sys.exit(main(["register", *sys.argv[1:]]))
