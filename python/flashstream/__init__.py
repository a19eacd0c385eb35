"""flashstream: kernels for streaming inference.

Importing the package loads the compiled core (``flashstream._C``), which registers every op as
``torch.ops.flashstream.*``; the typed wrappers live in :mod:`flashstream.ops` and the reusable
modules in :mod:`flashstream.nn`.
"""

import torch  # noqa: F401  (libtorch must be loaded before the extension)

from . import _C  # noqa: F401  (registers torch.ops.flashstream.*)
from . import cache, nn, ops
from . import lowrank  # noqa: E402  (svd_compress, LowRankLinear)

__version__ = "0.1.0"

__all__ = ["ops", "nn", "cache", "lowrank", "__version__"]
