"""The search runner behind ``amc-search``: builds model, data, evaluator, environment and agent from the
config, runs the episodes with TensorBoard logging and checkpoints, exports the best policy and the pruned model.

Data flows one way: model -> pruning space (:mod:`amc.pruning`) -> environment (:mod:`envs`) -> agent
(:mod:`agents`) -> evaluator (:mod:`amc.reward`, wrapped by :mod:`amc.search.evaluation`) -> export.
"""
