"""The one-shot pruning workflow behind ``amc-prune`` (:mod:`amc.prune.workflow`): a model pruned once, by a policy
file or a baseline at a FLOPs budget, or sparsified weight by weight. The pruning engine it drives is
:mod:`amc.pruning`."""
