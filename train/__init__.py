"""Training: `python -m train --help`."""
