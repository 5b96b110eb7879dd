"""segbench: accuracy and speed of pretrained semantic-segmentation models."""

__version__ = "0.1.0"


class SegbenchError(Exception):
    """An error the user can act on: the message names the file or setting at fault."""
