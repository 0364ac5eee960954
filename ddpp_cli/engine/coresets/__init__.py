"""Coresets of real training images, the baselines distilled sets are compared with
(docs/evaluation.md, docs/methods.md): random, herding, forgetting (and its DeepCore setting)
and herding-random, each a :class:`CoresetInfo` of the registry (:func:`get_coreset`,
:func:`list_coresets`).

A coreset is a tensor of indices into the training pool, class-major. Random draws a new subset
per evaluation run; the others choose once, deterministically given the seed, so every run
trains on the same coreset and the runs differ in the evaluated network only.

Modules, one job each: ``registry`` (:class:`CoresetInfo`, the registry), ``pool`` (what a
selection is given, the ``--ipc`` check), and one per coreset: ``random``, ``herding`` (trained
features), ``forgetting`` (Toneva et al.'s counts; ``forgetting-deepcore``), ``herding_random``.
Each module describes its coreset(s); they are registered here, once, in the order tables and
``--baseline``'s choices list them (the paper's Table I first). Every public name is importable
from here.
"""

from ddpp_cli.engine.coresets.forgetting import (
    FORGETTING,
    FORGETTING_DEEPCORE,
    FORGETTING_EPOCHS,
    UNLEARNED,
    ForgettingConfig,
    ForgettingEpoch,
    forgetting_coreset,
    forgetting_counts,
    forgetting_network,
    forgetting_record,
    ranking_counts,
    record_presentations,
    select_most_forgotten,
)
from ddpp_cli.engine.coresets.herding import (
    FEATURE_BATCH,
    HERDING,
    HERDING_FEATURE_EPOCHS,
    FeatureEpoch,
    FeatureSource,
    embed,
    expert_feature_network,
    herding_on_features,
    herding_order,
    train_feature_network,
    trained_herding_coreset,
)
from ddpp_cli.engine.coresets.herding_random import HERDING_RANDOM, herding_coreset
from ddpp_cli.engine.coresets.pool import CoresetRequest, check_ipc
from ddpp_cli.engine.coresets.random import RANDOM, random_coreset
from ddpp_cli.engine.coresets.registry import (
    CoresetInfo,
    Selector,
    coreset_options,
    get_coreset,
    list_coresets,
    owner,
    register,
)

for _info in (RANDOM, HERDING, FORGETTING, FORGETTING_DEEPCORE, HERDING_RANDOM):
    register(_info)

__all__ = [
    "FEATURE_BATCH",
    "FORGETTING",
    "FORGETTING_DEEPCORE",
    "FORGETTING_EPOCHS",
    "HERDING",
    "HERDING_FEATURE_EPOCHS",
    "HERDING_RANDOM",
    "RANDOM",
    "UNLEARNED",
    "CoresetInfo",
    "CoresetRequest",
    "FeatureEpoch",
    "FeatureSource",
    "ForgettingConfig",
    "ForgettingEpoch",
    "Selector",
    "check_ipc",
    "coreset_options",
    "embed",
    "expert_feature_network",
    "forgetting_coreset",
    "forgetting_counts",
    "forgetting_network",
    "forgetting_record",
    "get_coreset",
    "herding_coreset",
    "herding_on_features",
    "herding_order",
    "list_coresets",
    "owner",
    "random_coreset",
    "ranking_counts",
    "record_presentations",
    "register",
    "select_most_forgotten",
    "train_feature_network",
    "trained_herding_coreset",
]
