"""DVC stage `train`: train the final model with the best hyperparameters and log it to MLflow.

Usage: python pipeline/train.py --task TASK [--debug]. Same code as `modelyard train`.
"""

import sys

from modelyard.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
