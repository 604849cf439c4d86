"""Search agents: stable-baselines3 DDPG and the baselines (arrive with the search, issue 9)."""
