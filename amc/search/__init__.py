"""The search behind ``amc-search``: :mod:`~amc.search.settings` (the config, checked),
:mod:`~amc.search.setup` (model, pruning space, evaluator and environment built from it),
:mod:`~amc.search.runner` (the agent playing the episodes, TensorBoard logging, checkpoints, resume),
:mod:`~amc.search.report` (the end: uniform at the same budget, export, timing, results), in one run directory
(:mod:`~amc.search.rundir`); :mod:`~amc.search.parallel` builds the worker processes of parallel episodes.

Data flows one way: model -> pruning space (:mod:`amc.pruning`) -> environment (:mod:`envs`) -> agent
(:mod:`agents`) -> evaluator (:mod:`amc.reward`) -> export.
"""
