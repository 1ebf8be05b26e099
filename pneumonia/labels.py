"""The class names and the one error type users see: no dependency beyond Python."""

# Classifier index -> name, alphabetical like the Kaggle folders (and imagefolder's ClassLabel).
LABEL_NAMES = ("NORMAL", "PNEUMONIA")
POSITIVE_LABEL = "PNEUMONIA"


class UsageError(Exception):
    """A problem with the user's input: printed as one line naming the problem and the fix."""
