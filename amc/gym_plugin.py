"""Gymnasium registration of the pruning environment, ``amc/YOLOv7Pruning-v0``, without importing ``envs``.

``pyproject.toml`` declares :func:`register_envs` as a ``gymnasium.envs`` entry point named ``amc``. Gymnasium
0.29 loads those entry points when it is imported (``gymnasium.envs.registration.load_plugin_envs``): it calls
the function inside ``namespace("amc")`` (the entry point's name is the id's namespace, and its value must name
a function to call, ``module:function``, not a bare module), so after ``pip install amc-yolov7``::

    import gymnasium
    env = gymnasium.make("amc/YOLOv7Pruning-v0", space=space, evaluate=evaluate, reward=reward, budget=budget)

Gymnasium 1.0 removed that plugin loader; there the id's module prefix does the same (gymnasium imports the
module named before the colon, which registers the id)::

    env = gymnasium.make("amc.gym_plugin:amc/YOLOv7Pruning-v0", space=space, ...)

Either way only this small module is imported up front; the environment's code (:mod:`envs.pruning_env`, torch)
is imported by ``gymnasium.make`` through the registered entry point string.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

ENV_ID = "amc/YOLOv7Pruning-v0"
ENTRY_POINT = "envs.pruning_env:PruningEnv"


def register_envs() -> None:
    """Register :data:`ENV_ID` with gymnasium (once: ``envs`` registers the same id when it is imported)."""
    if ENV_ID not in registry:
        register(id=ENV_ID, entry_point=ENTRY_POINT)


# importing the module registers the id: what gymnasium 1.x's "amc.gym_plugin:amc/YOLOv7Pruning-v0" relies on
register_envs()
