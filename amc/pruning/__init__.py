"""Pruning engine: the pruning space of a YOLOv7 model, policies, criteria, physical and masked pruning.

Data flows one way: a model gives a :class:`PruningSpace` (units, exact analytic cost); a policy (one ratio
per unit) gives kept channel counts; a :class:`Criterion` picks the channels (:class:`ChannelSelection`);
:func:`prune_model` slices a smaller model, or :class:`ChannelMasks` masks the unpruned one (the search's
fast path, same outputs).
"""

from amc.pruning.apply import apply_policy, select_channels
from amc.pruning.baselines import BaselineResult, global_magnitude_policy, uniform_policy
from amc.pruning.budget import Budget, BudgetEnforcer
from amc.pruning.criteria import CRITERIA, Criterion, make_criterion
from amc.pruning.masks import ChannelMasks
from amc.pruning.physical import prune_model
from amc.pruning.policy import Policy
from amc.pruning.selection import ChannelSelection, top_channels
from amc.pruning.space import ChannelRounding, PolicyCost, PruningSpace, PruningUnit

__all__ = ["CRITERIA", "BaselineResult", "Budget", "BudgetEnforcer", "ChannelMasks", "ChannelRounding",
           "ChannelSelection", "Criterion", "Policy", "PolicyCost", "PruningSpace", "PruningUnit", "apply_policy", "global_magnitude_policy",
           "make_criterion", "prune_model", "select_channels", "top_channels", "uniform_policy"]
