"""Put the segbench package next to scripts/ on sys.path.

Needed where segbench is not installed, e.g. in the conda environments of envs/
(`--software-deployment-method conda`). Snakemake puts this folder on sys.path.
"""

import sys
from pathlib import Path

_root = str(Path(__file__).resolve().parents[1])
if _root not in sys.path:
    sys.path.insert(0, _root)
