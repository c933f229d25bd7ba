"""DVC stage `tune`: Optuna study over the search space, one MLflow child run per trial.

Usage: python pipeline/tune.py --task TASK [--debug]. Same code as `modelyard tune`.
"""

import sys

from modelyard.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
