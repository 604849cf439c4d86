"""The pruning search as a Gymnasium environment (see :mod:`envs.pruning_env`).

Importing this package registers the environment as ``amc/YOLOv7Pruning-v0``::

    import gymnasium, envs
    env = gymnasium.make("amc/YOLOv7Pruning-v0", space=space, evaluate=evaluate, reward=reward,
                         budget=envs.Budget("flops", 0.5))
"""

import gymnasium

from amc.pruning.budget import METRICS, Budget, BudgetEnforcer
from envs.pruning_env import FEATURES, PruningEnv
from envs.stub import StubEvaluator

ENV_ID = "amc/YOLOv7Pruning-v0"

if ENV_ID not in gymnasium.registry:  # importing twice (e.g. a reload) must not re-register with a warning
    gymnasium.register(id=ENV_ID, entry_point="envs.pruning_env:PruningEnv")

__all__ = ["ENV_ID", "FEATURES", "METRICS", "Budget", "BudgetEnforcer", "PruningEnv", "StubEvaluator"]
