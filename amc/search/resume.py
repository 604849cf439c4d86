"""How an ``amc-search`` run is resumed: its config file and the settings a resume may change.

Kept free of torch so that the CLI checks a ``resume=`` command line before anything heavy is imported (and
before Hydra writes into the folder); :mod:`amc.search.runner` does the resuming itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from amc.atomic import complete_dir
from amc.resume import DISPLAY_ONLY, ResumeRule

CONFIG_FILE = "search_config.yaml"
CHECKPOINT_DIR = "checkpoint"
RUN_MARKER = "amc_search"
"""Key of ``search_config.yaml`` that marks a folder as an amc-search run directory."""

#: Settings that change what a search shows, how often it saves itself or what its end-of-search report does, never
#: which policies its episodes choose or the scores they get. A resume may change them, and a benchmark that
#: compares searches (``bench=compare``'s cell fingerprints) leaves them out of the settings a result depends on.
RESULT_NEUTRAL: dict[str, str] = {
    **DISPLAY_ONLY,
    "checkpoint_every": "how often the state is saved; the episodes played do not depend on it",
    "final.export_model": "the end-of-search export only",
    "final.latency_runs": "the end-of-search timing only",
    "final.latency_rounds": "the end-of-search timing only",
    "final.max_latency_spread": "when the end-of-search timing is called too noisy; the report only",
}

#: The settings ``amc-search resume=DIR`` may change, and why each may. Every other setting a resume's command
#: line gives must equal the run's own (else the resume is refused naming the key and both values): the
#: episodes already played were chosen and scored with those settings, and a run that changed them halfway
#: would be neither the old search nor the new one.
MUTABLE_ON_RESUME: dict[str, str] = {
    "episodes": "extends the search (a finished one plays the extra episodes, then exports again); never below "
                "the episodes already played",
    **RESULT_NEUTRAL,
}


def episodes_played(run_dir: Path) -> int:
    """Episodes the run's last complete checkpoint holds (0 without one: a resume starts it over)."""
    checkpoint = complete_dir(Path(run_dir) / CHECKPOINT_DIR)
    if checkpoint is None:
        return 0
    try:
        return int(json.loads((checkpoint / "state.json").read_text())["episodes_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # an unreadable state: the runner reports it when it loads the checkpoint


def _check_changes(run_dir: Path, changes: dict[str, Any]) -> str | None:
    episodes = changes.get("episodes")
    played = episodes_played(run_dir)
    if isinstance(episodes, int) and not isinstance(episodes, bool) and episodes < played:
        return (f"episodes={episodes} is fewer than the {played} episodes that run has played (ask for at least "
                f"{played}; more extends the search)")
    return None


SEARCH_RESUME = ResumeRule(command="amc-search", config_file=CONFIG_FILE, marker=RUN_MARKER,
                           mutable=MUTABLE_ON_RESUME, check_changes=_check_changes)
