"""The reward evaluator: proxy mAP of a policy, its cost on the target device, and the reward functions."""
