"""sqlite-utils, imported without numpy.

sqlite-utils imports numpy when it is installed, only to map numpy scalars to column types, and
the store never hands it one. onnxruntime installs numpy, which costs ~15 MiB resident: hidden
for this import, a gateway without a model stays small. Once numpy is loaded this changes nothing.
"""

from __future__ import annotations

import sys

if "numpy" in sys.modules:
    import sqlite_utils
else:
    sys.modules["numpy"] = None  # type: ignore[assignment]  # `import numpy` raises ImportError
    try:
        import sqlite_utils
    finally:
        del sys.modules["numpy"]

__all__ = ["sqlite_utils"]
