"""Agent settings tried in seconds instead of hours: a surrogate of a measured reward, searched with many seeds.

A ``reward=recovery`` search's reward is minus the distillation loss left after the recovery proxy's steps; on the
demo at 30% FLOPs it is largely a smooth function of the per-unit ratios. This script

1. fits that function from the policies a ``bench=compare`` run has already scored (every search's
   ``episodes.jsonl``: ratios -> ``recover_loss``): ridge regression on the ratios and their squares, reporting
   its 5-fold cross-validated R^2 and rank correlation, and how well a fit without DDPG's own explored policies
   predicts them (the policies a learning agent moves to are not the ones it was fitted on);
2. runs each agent setting (``--variant``) with ``--seeds`` seeds on the real pruning environment (model, pruning
   space, budget wall, state embedding: ``evaluator=stub`` builds them without data) whose evaluator returns the
   surrogate loss plus Gaussian noise of std ``--noise`` (the part of the measured loss the fit does not explain
   behaves like noise to an agent: the cross-validated residual std is printed next to it);
3. reports, per setting, the noise-free surrogate loss of the policy each search would export (its best-reward
   episode) and the mean loss of its last 15 episodes, over seeds: how good and how reliable each setting is.

It ranks agent settings on a stand-in for the real reward: a setting it favours must then be measured with
``amc-bench bench=compare`` (README, "Does the search pay?"); the surrogate's numbers are not mAP.

Usage:
    python scripts/surrogate_agents.py docs/results/compare-recovery-reward-0.3-120 --seeds 8 --noise 0.04 \\
        --variant lr_actor_1e-3=agent.lr_actor=0.001 --variant sigma_decay_0.99=agent.sigma_decay=0.99
Each ``--variant NAME=OVERRIDE[,OVERRIDE...]`` adds amc-search overrides to
amc-search's default agent (conf/agent/ddpg-demo.yaml), or to random search for a variant whose NAME starts
with ``random`` (an environment setting such as ``action_mode=relative`` must be tried on both); ``random`` (random
search) and ``ddpg`` (that agent as is) always run. A seed *fails* (issue 20) when its exported policy is a warm-up
draw or its last 15 episodes' mean reward is no better than its warm-up's. ``--jobs N`` runs N searches at once (one process each, same results). Writes ``--out``
(JSON) when given.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # amc, agents, envs, conf of this checkout; search_learning beside it
from search_learning import read_episodes  # noqa: E402

from amc.bench.common import spearman  # noqa: E402


# ---------------------------------------------------------------------------------------------- the surrogate
def load_scored_policies(run_dirs: Sequence[Path], budget: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct policy the runs' searches scored at ``budget``: ratios, recovery loss, and whether DDPG
    chose it after its warm-up (phase ``explore``). Penalized episodes and ones without a loss are left out."""
    seen: dict[tuple, tuple[float, bool]] = {}
    for run_dir in run_dirs:
        for path in sorted(Path(run_dir, "cells", f"flops-{budget}").glob("*/seed*/search/episodes.jsonl*")):
            method = path.parts[-4]
            for e in read_episodes(path):
                if e.get("penalized") or e.get("recover_loss") is None:
                    continue
                key = tuple(np.round(e["ratios"], 6))
                seen[key] = (float(e["recover_loss"]), method == "ddpg" and e.get("phase") == "explore")
    if len(seen) < 20:
        raise SystemExit(f"only {len(seen)} scored policies with a recover_loss at flops-{budget} under "
                         f"{', '.join(map(str, run_dirs))}: give bench=compare runs made with reward=recovery")
    ratios = np.array(list(seen), dtype=np.float64)
    loss = np.array([v[0] for v in seen.values()])
    explored = np.array([v[1] for v in seen.values()])
    return ratios, loss, explored


class RidgeSurrogate:
    """Ridge regression of the loss on the ratios and their squares (features centred, intercept the mean)."""

    def __init__(self, ratios: np.ndarray, loss: np.ndarray, lam: float) -> None:
        features = self.features(ratios)
        self.n_units = ratios.shape[1]
        self.mean_x, self.mean_y = features.mean(0), float(loss.mean())
        x = features - self.mean_x
        self.w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ (loss - self.mean_y))

    @staticmethod
    def features(ratios: np.ndarray) -> np.ndarray:
        ratios = np.atleast_2d(np.asarray(ratios, dtype=np.float64))
        return np.hstack([ratios, ratios**2])

    def __call__(self, ratios: np.ndarray) -> np.ndarray:
        return (self.features(ratios) - self.mean_x) @ self.w + self.mean_y


def fit_report(ratios: np.ndarray, loss: np.ndarray, explored: np.ndarray, lam: float) -> dict[str, float]:
    """5-fold cross-validated R^2, rho and residual std; and the fit without DDPG's explored policies, on them."""
    order = np.random.default_rng(0).permutation(len(loss))
    predicted = np.empty_like(loss)
    for fold in np.array_split(order, 5):
        train = np.setdiff1d(order, fold)
        predicted[fold] = RidgeSurrogate(ratios[train], loss[train], lam)(ratios[fold])
    residual = predicted - loss
    report = {"policies": int(len(loss)), "cv_r2": float(1 - (residual**2).sum() / ((loss - loss.mean())**2).sum()),
              "cv_rho": spearman(predicted, loss), "cv_residual_std": float(residual.std())}
    if explored.sum() >= 10 and (~explored).sum() >= 20:
        held_out = RidgeSurrogate(ratios[~explored], loss[~explored], lam)(ratios[explored])
        report.update(ddpg_explored=int(explored.sum()), ddpg_explored_rho=spearman(held_out, loss[explored]))
    return report


# ---------------------------------------------------------------------------------------------- the searches
def surrogate_search(agent_overrides: Sequence[str], seed: int, budget: str, episodes: int,
                     surrogate: RidgeSurrogate, noise: float) -> dict[str, float]:
    """One search on the pruning environment whose evaluator returns the surrogate loss (+ noise)."""
    from hydra import compose, initialize_config_module

    from agents import agent_from_config
    from amc.config import plain
    from amc.search.setup import SearchSetup

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("search", overrides=["evaluator=stub", "reward=recovery", f"budget.flops={budget}",
                                           f"seed={seed}", f"episodes={episodes}", *agent_overrides])
    setup = SearchSetup(cfg, Path("."))
    setup.build_env()
    if setup.env.n_units != surrogate.n_units:
        raise SystemExit(f"the runs' policies do not have the demo model's {setup.env.n_units} units: this script "
                         f"searches the demo model (conf/search.yaml's model)")
    stub, draws = setup.env.evaluate, np.random.default_rng(10_000 + seed)

    def evaluate(ratios: np.ndarray):  # noqa: ANN202 (an EpisodeOutcome)
        loss = float(surrogate(np.asarray(ratios))[0]) + noise * float(draws.standard_normal())
        return dataclasses.replace(stub(ratios), recover_loss=loss)

    setup.env.evaluate = evaluate
    agent = agent_from_config(plain(cfg.agent), setup.env, seed)
    rewards: list[float] = []
    true_loss: list[float] = []
    warmup: list[bool] = []

    def on_episode(report) -> None:  # noqa: ANN001 (agents.EpisodeReport)
        rewards.append(report.reward)
        true_loss.append(float(surrogate(np.asarray(report.ratios))[0]))
        warmup.append(report.phase == "warmup")

    started = time.perf_counter()
    agent.run(episodes, on_episode)
    best = int(np.argmax(rewards))
    # issue 20's failed seed: the exported policy is a warm-up draw, or the last 15 episodes' mean reward is no
    # better than the warm-up's (searches without a warm-up, random search, cannot fail this way)
    warm = [r for r, w in zip(rewards, warmup) if w]
    failed = bool(warm) and (warmup[best] or float(np.mean(rewards[-15:])) <= float(np.mean(warm)))
    return {"seed": seed, "best_episode": best, "best_loss": true_loss[best],
            "last15_loss": float(np.mean(true_loss[-15:])), "failed": failed,
            "seconds": time.perf_counter() - started}


def ddpg_overrides() -> list[str]:
    """The DDPG agent of plain amc-search (conf/agent/ddpg-demo.yaml, the default agent): no overrides."""
    return []


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="bench=compare run dirs made with reward=recovery")
    parser.add_argument("--budget", default="0.3", help="the FLOPs budget whose cells are read and searched")
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0..N-1 of every setting")
    parser.add_argument("--episodes", type=int, default=120)
    parser.add_argument("--noise", type=float, default=0.04, help="std of the Gaussian noise added to the loss")
    parser.add_argument("--ridge", type=float, default=0.1, help="ridge penalty of the fit")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDE[,OVERRIDE...]",
                        help="a DDPG setting: overrides added to amc-search's default DDPG agent")
    parser.add_argument("--jobs", type=int, default=1, help="searches run at once, one process each")
    parser.add_argument("--variants-only", action="store_true",
                        help="run only the --variant settings (random and ddpg as they are: known from an earlier run)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    ratios, loss, explored = load_scored_policies(args.run_dirs, args.budget)
    fit = fit_report(ratios, loss, explored, args.ridge)
    print("surrogate: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in fit.items()))
    surrogate = RidgeSurrogate(ratios, loss, args.ridge)
    ddpg = ddpg_overrides()
    settings = {} if args.variants_only else {"random": ["agent=random"], "ddpg": ddpg}
    for variant in args.variant:
        name, _, overrides = variant.partition("=")
        if not name or not overrides:
            raise SystemExit(f"--variant {variant!r}: write NAME=OVERRIDE[,OVERRIDE...]")
        # a variant named random... changes random search instead (an environment setting must apply to both)
        settings[name] = (["agent=random"] if name.startswith("random") else ddpg) + overrides.split(",")
    tasks = [(overrides, seed, args.budget, args.episodes, surrogate, args.noise)
             for overrides in settings.values() for seed in range(args.seeds)]
    if args.jobs > 1:  # every search is seeded and independent: processes change no result, only the wall time
        # spawned, not forked: a fork of a process whose torch threads hold locks can hang
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(surrogate_search, *zip(*tasks)))
    else:
        done = [surrogate_search(*task) for task in tasks]
    results: dict[str, dict] = {}
    print(f"{'setting':18} {'exported loss mean ± std':>25} {'worst':>7} {'last-15 loss':>12} {'failed':>6}   per seed")
    for k, (name, overrides) in enumerate(settings.items()):
        runs = done[k * args.seeds:(k + 1) * args.seeds]
        best = np.array([r["best_loss"] for r in runs])
        last = np.array([r["last15_loss"] for r in runs])
        results[name] = {"overrides": overrides, "best_loss_mean": float(best.mean()), "best_loss_std": float(best.std()),
                         "best_loss_worst": float(best.max()), "last15_loss_mean": float(last.mean()),
                         "failed_seeds": sum(r["failed"] for r in runs), "runs": runs}
        print(f"{name:18} {best.mean():>16.3f} ± {best.std():.3f} {best.max():>7.3f} {last.mean():>12.3f} "
              f"{results[name]['failed_seeds']:>6}   "
              + " ".join(f"{b:.3f}" for b in best), flush=True)
    out = {"budget": args.budget, "noise": args.noise, "episodes": args.episodes, "seeds": args.seeds, "fit": fit,
           "settings": results}
    if args.out is not None:
        from amc.atomic import atomic_write_json

        atomic_write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
