"""What agents and environments agree on beyond Gymnasium's own API: the protocol of batched rollouts.

Agents (:mod:`agents`) and environments (:mod:`envs`) never import each other; an agent sees an environment through
``gymnasium.Env`` (``reset``, ``step``, ``action_space``, ``env.unwrapped``'s documented attributes) and the
``info`` dictionaries it returns. Playing several episodes in lockstep on a ``VecEnv`` needs two more words, both
defined here so that either side can use them without the other.
"""

IDLE_ACTION = float("nan")
"""The action a batched rollout sends to an environment that sits out the batch (fewer episodes left than
environments): :class:`envs.vector.LockstepEnv` answers it without stepping or evaluating anything."""

STEP_REWARD = "step_reward"
"""``info`` key where :class:`envs.vector.LockstepEnv` keeps the environment's own float reward (a ``VecEnv`` may
store rewards as float32, and the serial loop reports the float64 one)."""
