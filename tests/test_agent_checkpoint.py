"""The agents' checkpoints, the stable-baselines3 way and safe.

AMCDDPG round-trips through SB3's own ``save`` / ``load``; plain ``stable_baselines3.DDPG.load`` reads a search's
``model.zip`` and its actor acts the same; the replay buffer round-trips as an ``.npz``; a checkpoint of amc before
this format (``agent.pt``) still resumes exactly. amc's loaders refuse hostile files (pickle payloads planted in the
zip's data, a state dict or the buffer file; sizes that would cost gigabytes) without running code or allocating,
while SB3's pickle-based ``load`` runs the very same payload (which is why amc never uses it on a resume).
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import stable_baselines3
import torch
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.save_util import save_to_pkl

from agents import DDPGAgent, SearchAgent
from agents.base import AGENT_FILE, LEGACY_FILE
from agents.ddpg import AMCDDPG, MODEL_FILE, REPLAY_ARRAYS, REPLAY_FILE, SeededReplayBuffer
from amc.errors import CheckpointError, UnsafeCheckpointError
from hostile_inputs import deflated_zeros, raw_zip
from toy_env import Recorder, ToyPruningEnv

SMALL = dict(actor_hidden=[32, 32], critic_hidden=[32, 32], batch_size=16)
MIB = 1 << 20

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def trained(seed: int = 0, episodes: int = 4, env=None) -> DDPGAgent:
    agent = DDPGAgent(env if env is not None else ToyPruningEnv(), seed, warmup=2, **SMALL)
    agent.run(episodes)
    return agent


def same_tensors(a, b) -> bool:
    """Equal nested state dicts (tensors bit for bit, everything else by ==)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def observations(n: int = 8) -> np.ndarray:
    return np.random.default_rng(7).random((n, 11), dtype=np.float32)


class Payload:
    """A pickle that runs code when loaded: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def rewrite_zip(path: Path, replace: dict[str, bytes]) -> None:
    """Rewrite the zip at ``path`` with some entries' contents replaced."""
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries.update(replace)
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)


def plant_in_data(path: Path, key: str, marker: Path) -> None:
    """Replace ``data[key]`` of an SB3 zip with a cloudpickle-style serialized value that runs code."""
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    data[key] = {":type:": "<class 'float'>", ":serialized:": base64.b64encode(pickle.dumps(Payload(marker))).decode()}
    rewrite_zip(path, {"data": json.dumps(data).encode()})


# -- the stable-baselines3 way ------------------------------------------------------------------------------------

def test_amcddpg_round_trips_through_sb3_save_and_load_and_continues_exactly(tmp_path):
    model = trained().model
    model.save(tmp_path / "model")  # SB3's suffix rule: model.zip
    model.save_replay_buffer(tmp_path / "buffer")  # and buffer.npz
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buffer.npz", "model.zip"]
    sb3_loaded = AMCDDPG.load(tmp_path / "model.zip", env=ToyPruningEnv())  # SB3's loader: a file we made
    safely_loaded = AMCDDPG.safe_load(tmp_path / "model.zip", ToyPruningEnv())
    for other in (sb3_loaded, safely_loaded):
        assert type(other) is AMCDDPG and type(other.replay_buffer) is SeededReplayBuffer
        assert same_tensors(other.policy.state_dict(), model.policy.state_dict())
        assert same_tensors(other.actor.optimizer.state_dict(), model.actor.optimizer.state_dict())
        assert same_tensors(other.critic.optimizer.state_dict(), model.critic.optimizer.state_dict())
        assert (other.lr_actor, other.lr_critic, other.moving_alpha, other.reward_baseline, other._n_updates) == (
            model.lr_actor, model.lr_critic, model.moving_alpha, model.reward_baseline, model._n_updates)
        assert other.rng.bit_generator.state == model.rng.bit_generator.state
        other.load_replay_buffer(tmp_path / "buffer")
    # the loaded models sample the same batches and take the same steps as the one that was saved
    metrics = [m.train(6, 16) for m in (model, sb3_loaded, safely_loaded)]
    assert metrics[0] == metrics[1] == metrics[2] and metrics[0]["gradient_steps"] == 6
    assert same_tensors(sb3_loaded.policy.state_dict(), model.policy.state_dict())
    assert same_tensors(safely_loaded.policy.state_dict(), model.policy.state_dict())


class RecordingUnpickler(pickle.Unpickler):
    """Records every global a pickle names (the pickles here are our own: loading them is safe)."""

    def __init__(self, raw: bytes) -> None:
        super().__init__(io.BytesIO(raw))
        self.modules: set[str] = set()

    def find_class(self, module: str, name: str):
        self.modules.add(module)
        return super().find_class(module, name)


def test_plain_sb3_ddpg_loads_a_search_checkpoint_and_acts_the_same(tmp_path):
    agent = trained()
    agent.save(tmp_path / "agent")
    assert sorted(p.name for p in (tmp_path / "agent").iterdir()) == [AGENT_FILE, MODEL_FILE, REPLAY_FILE]
    path = tmp_path / "agent" / MODEL_FILE
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    modules: set[str] = set()
    for value in data.values():  # the pickled values name SB3's, Gymnasium's and NumPy's classes, never amc's
        if isinstance(value, dict) and ":serialized:" in value:
            unpickler = RecordingUnpickler(base64.b64decode(value[":serialized:"]))
            unpickler.load()
            modules |= unpickler.modules
    assert modules and all(m.split(".")[0] in {"stable_baselines3", "gymnasium", "numpy", "builtins", "copyreg",
                                                "collections", "_codecs"} for m in modules), modules
    plain = stable_baselines3.DDPG.load(path)
    assert type(plain) is stable_baselines3.DDPG and type(plain.replay_buffer) is ReplayBuffer
    obs = observations()
    expected = np.array(agent.actor_actions(obs), np.float32)
    with torch.no_grad():
        np.testing.assert_array_equal(plain.actor(torch.as_tensor(obs)).numpy().reshape(-1), expected)
    # predict rescales from [-1, 1] to the action space's bounds (here the same), which may cost an ulp
    np.testing.assert_allclose(plain.predict(obs, deterministic=True)[0].reshape(-1), expected, atol=1e-6)
    with np.load(tmp_path / "agent" / REPLAY_FILE, allow_pickle=False) as npz:  # SB3's array names, no pickle
        for name in REPLAY_ARRAYS:
            np.testing.assert_array_equal(npz[name], getattr(agent.replay_buffer, name))
        assert (int(npz["pos"]), bool(npz["full"])) == (agent.replay_buffer.pos, agent.replay_buffer.full)


def test_replay_buffer_round_trip_and_sb3_pickles_refused(tmp_path):
    source = trained(episodes=3).model
    fresh = trained(seed=1, episodes=0).model
    stream = io.BytesIO()
    source.save_replay_buffer(stream)  # file objects as well as paths, as SB3's methods take
    stream.seek(0)
    fresh.load_replay_buffer(stream)
    for name in REPLAY_ARRAYS:
        np.testing.assert_array_equal(getattr(fresh.replay_buffer, name), getattr(source.replay_buffer, name))
    assert (fresh.replay_buffer.pos, fresh.replay_buffer.full) == (source.replay_buffer.pos, False)
    assert fresh.replay_buffer.size() == source.replay_buffer.size() == 18
    fresh.rng.bit_generator.state = source.rng.bit_generator.state
    a, b = source.replay_buffer.sample(16), fresh.replay_buffer.sample(16)
    assert torch.equal(a.observations, b.observations) and torch.equal(a.rewards, b.rewards)
    save_to_pkl(tmp_path / "sb3.pkl", source.replay_buffer)  # SB3's own format: a pickle, never read by amc
    with pytest.raises(CheckpointError, match="not a readable zip archive"):
        fresh.load_replay_buffer(tmp_path / "sb3.pkl")


def legacy_state(agent: DDPGAgent) -> dict:
    """The one-file checkpoint amc wrote before stable-baselines3 zips (its ``DDPGAgent.state_dict``)."""
    buffer, model = agent.replay_buffer, agent.model
    return {"agent": "ddpg", "seed": agent.seed, "options": dict(agent.options), "episodes_done": agent.episodes_done,
            "rng": agent.rng.bit_generator.state, "n_units": 6, "obs_shape": (11,),
            "policy": model.policy.state_dict(), "actor_optimizer": model.actor.optimizer.state_dict(),
            "critic_optimizer": model.critic.optimizer.state_dict(),
            "replay": {"pos": int(buffer.pos), "full": bool(buffer.full),
                       **{k: torch.from_numpy(np.array(getattr(buffer, k))) for k in REPLAY_ARRAYS}},
            "reward_baseline": model.reward_baseline, "n_updates": int(model._n_updates)}


def test_a_legacy_agent_pt_still_resumes_exactly(tmp_path):
    full_env = Recorder(ToyPruningEnv())
    trained(3, episodes=7, env=full_env)
    first = trained(3, episodes=4)
    torch.save(legacy_state(first), tmp_path / LEGACY_FILE)
    resumed_env = Recorder(ToyPruningEnv())
    resumed = SearchAgent.load(tmp_path, resumed_env)
    assert isinstance(resumed, DDPGAgent) and resumed.episodes_done == 4
    resumed.run(7)
    assert resumed_env.actions == full_env.actions[4 * 6:]


# -- hostile files ----------------------------------------------------------------------------------------------

def test_pickle_payloads_are_refused_or_ignored_never_run(tmp_path):
    marker = tmp_path / "code-ran"
    folder = tmp_path / "agent"
    trained().save(folder)
    model_zip, replay = folder / MODEL_FILE, folder / REPLAY_FILE
    pristine = {name: (folder / name).read_bytes() for name in (MODEL_FILE, REPLAY_FILE)}

    # a value amc reads as plain JSON, replaced by a serialized (pickled) one: refused, unread
    plant_in_data(model_zip, "reward_baseline", marker)
    with pytest.raises(CheckpointError, match="reward_baseline"):
        SearchAgent.load(folder, ToyPruningEnv())
    with pytest.raises(CheckpointError, match="reward_baseline"):
        AMCDDPG.safe_load(model_zip, ToyPruningEnv())
    assert not marker.exists()
    AMCDDPG.load(model_zip)  # stable-baselines3's own loader unpickles it: the payload is live
    assert marker.exists()
    marker.unlink()

    # in a value that SB3 pickles anyway (the observation space): amc never decodes it, the checkpoint loads
    model_zip.write_bytes(pristine[MODEL_FILE])
    plant_in_data(model_zip, "observation_space", marker)
    assert SearchAgent.load(folder, ToyPruningEnv()).episodes_done == 4
    assert not marker.exists()

    # a state dict that pickles more than tensors
    model_zip.write_bytes(pristine[MODEL_FILE])
    evil = io.BytesIO()
    torch.save({"mu.0.weight": Payload(marker)}, evil)
    rewrite_zip(model_zip, {"policy.pth": evil.getvalue()})
    with pytest.raises(UnsafeCheckpointError, match="policy.pth holds a pickle of more than tensors"):
        SearchAgent.load(folder, ToyPruningEnv())
    assert not marker.exists()

    # a replay buffer array that is a pickle (an object array)
    model_zip.write_bytes(pristine[MODEL_FILE])
    with np.load(io.BytesIO(pristine[REPLAY_FILE])) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["rewards"] = np.array([Payload(marker)], dtype=object)
    np.savez(replay, **arrays)
    with pytest.raises(CheckpointError, match="array 'rewards' is object"):
        SearchAgent.load(folder, ToyPruningEnv())
    assert not marker.exists()


def test_declared_sizes_are_refused_before_memory_is_spent(tmp_path):
    folder = tmp_path / "agent"
    trained().save(folder)
    pristine = {name: (folder / name).read_bytes() for name in (AGENT_FILE, MODEL_FILE, REPLAY_FILE)}
    meta = json.loads(pristine[AGENT_FILE])
    started = time.perf_counter()

    # options declaring networks or a replay buffer far beyond what the files hold (tens of GB, 600 MB)
    for options in ({"actor_hidden": [100_000, 100_000]}, {"replay_episodes": 1_000_000}):
        (folder / AGENT_FILE).write_text(json.dumps({**meta, "options": {**meta["options"], **options}}))
        with pytest.raises(CheckpointError, match="its options declare .* bytes .* refusing to build the agent"):
            SearchAgent.load(folder, ToyPruningEnv())
    (folder / AGENT_FILE).write_bytes(pristine[AGENT_FILE])

    # a replay array declaring one transition more than the buffer has
    with np.load(io.BytesIO(pristine[REPLAY_FILE])) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(folder / REPLAY_FILE, **{**arrays, "rewards": np.zeros((601, 1), np.float32)})
    with pytest.raises(CheckpointError, match=r"'rewards' is float32 \(601, 1\) where float32 \(600, 1\)"):
        SearchAgent.load(folder, ToyPruningEnv())
    (folder / REPLAY_FILE).write_bytes(pristine[REPLAY_FILE])

    # a zip bomb in place of the policy: 64 MiB declared in 64 kB, refused before a byte is inflated
    with zipfile.ZipFile(io.BytesIO(pristine[MODEL_FILE])) as archive:
        rows = [(n, archive.read(n)) for n in archive.namelist()]
    bomb = [(n, deflated_zeros(64 * MIB), 8, 0, 64 * MIB) if n == "policy.pth" else (n, d, 0, zlib.crc32(d), len(d))
            for n, d in rows]
    raw_zip(folder / MODEL_FILE, bomb)
    with pytest.raises(CheckpointError, match="'policy.pth' declares 67,108,864 bytes where at most"):
        SearchAgent.load(folder, ToyPruningEnv())

    # ... and inside a state dict's own torch.save archive, whose records torch would allocate as declared
    inner = raw_zip(tmp_path / "inner.pth", [("archive/data.pkl", deflated_zeros(64 * MIB), 8, 0, 64 * MIB)])
    (folder / MODEL_FILE).write_bytes(pristine[MODEL_FILE])
    rewrite_zip(folder / MODEL_FILE, {"policy.pth": inner.read_bytes()})
    with pytest.raises(CheckpointError, match="records declare 67,108,864 bytes"):
        SearchAgent.load(folder, ToyPruningEnv())

    # an optimizer moment of the right shape that is a stride-0 view of one stored value (it would be copied whole)
    (folder / MODEL_FILE).write_bytes(pristine[MODEL_FILE])
    with zipfile.ZipFile(io.BytesIO(pristine[MODEL_FILE])) as archive:
        state = torch.load(io.BytesIO(archive.read("actor.optimizer.pth")), weights_only=True)
    state["state"][0]["exp_avg"] = torch.zeros(1).expand(*state["state"][0]["exp_avg"].shape)
    stream = io.BytesIO()
    torch.save(state, stream)
    rewrite_zip(folder / MODEL_FILE, {"actor.optimizer.pth": stream.getvalue()})
    with pytest.raises(CheckpointError, match="actor.optimizer's 'exp_avg' of parameter 0 is"):
        SearchAgent.load(folder, ToyPruningEnv())
    assert time.perf_counter() - started < 5.0
