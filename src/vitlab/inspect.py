"""`vitlab.inspect`: the same functions as `vitlab.inspection` (the paper's figures of what a ViT learned).

Inside the package, `import inspect` still means the standard library's module: imports are absolute.
"""

from .inspection import *  # noqa: F401,F403
from .inspection import __all__  # noqa: F401
