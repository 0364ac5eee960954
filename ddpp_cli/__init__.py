"""ddpp: dataset distillation by trajectory matching with parameter pruning."""

__version__ = "0.1.0"
