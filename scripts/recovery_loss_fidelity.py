"""Does the recovery proxy's distillation loss rank policies like their fine-tuned mAP? (what reward=recovery uses)

At 30% FLOPs the recovery proxy's mAP is ~0 for most policies, so the search's reward is sparse. The loss left
after the recovery steps (``ProxyResult.recover_loss``) grades every policy. This script re-scores the 12 policies
of an ``amc-bench bench=fidelity`` run (the same policies: same config and seed) with the recovery proxy and prints
Spearman's rho of its mAP and of minus its loss (``reward=recovery``) against the fine-tuned mAP that run measured.

Usage: python scripts/recovery_loss_fidelity.py docs/results/fidelity-recover-0.3/results.json [--steps 30]
"""

from __future__ import annotations

import argparse
import json

import torch
from omegaconf import OmegaConf

from amc.bench.common import demo_splits, seeded_model, spearman
from amc.bench.fidelity import fidelity_policies
from amc.factory import rounding_from_config
from amc.pruning.space import PruningSpace
from amc.reward.proxy import ProxyEvaluator, proxy_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results.json of an amc-bench bench=fidelity run on the demo")
    parser.add_argument("--steps", type=int, default=30, help="proxy.recover_steps")
    parser.add_argument("--bn-batch-size", type=int, default=None, help="proxy.bn_batch_size (default: the proxy's)")
    parser.add_argument("--bn-batches", type=int, default=None, help="proxy.bn_batches (default: the proxy's)")
    parser.add_argument("--val-images", type=int, default=None, help="proxy.val_images (default: the proxy's)")
    parser.add_argument("--img-size", type=int, default=None, help="proxy.recover_img_size (default: the proxy's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ref = json.load(open(args.results))
    b = OmegaConf.load("conf/bench/fidelity.yaml")  # the bench's defaults, with that run's budget and seed
    b.budget, seed = float(ref["settings"]["budget"]), int(ref["settings"]["seed"])
    _, train, search = demo_splits(b)
    model = seeded_model(str(b.model), b.get("nc"), seed)
    space = PruningSpace.from_model(model, int(b.img_size), rounding_from_config(b.pruning))
    policies = fidelity_policies(model, space, b, seed)
    if [round(p["flops_ratio"], 6) for p in policies] != [round(p["flops_ratio"], 6) for p in ref["policies"]]:
        raise SystemExit("these are not the policies of that run (another config or seed)")
    finetuned = [p["finetuned_map50_95"] for p in ref["policies"]]
    overrides = {"recover_steps": args.steps, "bn_batch_size": args.bn_batch_size, "bn_batches": args.bn_batches,
                 "val_images": args.val_images, "recover_img_size": args.img_size}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    proxy = ProxyEvaluator(model, space, search, train, proxy_settings(overrides))
    scores = [proxy(p["selection"]) for p in policies]
    proxy.close()
    seconds = sorted(r.total_s for r in scores)[len(scores) // 2]
    print(f"budget {float(b.budget):g}, {len(policies)} policies, {overrides}, median {seconds:.2f} s per policy")
    print(f"rho(recovered mAP, fine-tuned mAP)     {spearman([r.map50_95 for r in scores], finetuned):.3f}")
    print(f"rho(-distillation loss, fine-tuned mAP) {spearman([-r.recover_loss for r in scores], finetuned):.3f}")


if __name__ == "__main__":
    main()
