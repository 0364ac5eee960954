"""ddpp: dataset distillation by trajectory matching with parameter pruning."""

import os

__version__ = "0.1.0"

# PyTorch's CPU allocator asks the kernel for transparent huge pages when this is set before
# torch is first imported: about 8 % less time per distillation iteration on the CPU
# (docs/performance.md). Every entry point imports this package first; a user's own value wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
