"""The episode evaluator: proxy mAP of a policy (proxy, recovery), its cost on the target device (latency_table),
its outcome (evaluation) and the reward functions (functions)."""
