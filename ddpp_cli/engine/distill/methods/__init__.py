"""The distillation methods (``--method``): the registry (:mod:`.registry`), one module per
family declaring its :class:`MethodInfo`, and their registration below, in ``--method``'s order.
Adding a method is one module here and one entry below."""

from ddpp_cli.engine.distill.methods import cafe, dm, gradient, kip, tm
from ddpp_cli.engine.distill.methods.base import MethodStep, fresh_network
from ddpp_cli.engine.distill.methods.registry import (
    DEFAULT_METHOD,
    CompareRow,
    MethodInfo,
    compare_rows,
    get_method,
    iterations_help,
    list_methods,
    method_help,
    method_settings,
    register,
)

for _info in (tm.TM, gradient.DC, gradient.DSA, dm.DM, cafe.CAFE, cafe.CAFE_DSA, kip.KIP):
    register(_info)

__all__ = [
    "DEFAULT_METHOD",
    "CompareRow",
    "MethodInfo",
    "MethodStep",
    "compare_rows",
    "fresh_network",
    "get_method",
    "iterations_help",
    "list_methods",
    "method_help",
    "method_settings",
    "register",
]
