"""Writing stage outputs: small, flat JSON files that `dvc metrics` reads."""

import json
from pathlib import Path


def write_json(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
