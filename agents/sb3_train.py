"""stable-baselines3 training on the batched SB3 VecEnv (RL Zoo conventions).

Hyperparameters come from `configs/train/<algo>.yaml`: the `default` entry merged with
the role's entry, then the command-line overrides (`-params key:value`, dotted keys for
nested values). Keys that are not constructor arguments of the algorithm:

- `n_timesteps`, `n_envs`: budget and batch size (the CLI's `-n` / `--n-envs` win);
- `policy`: SB3 policy name (MlpPolicy);
- `normalize`: VecNormalize keyword arguments, or false;
- `env_kwargs`: `CascadeSB3VecEnv` keyword arguments (`max_episode_steps`, role settings);
- `noise_type` / `noise_std`: action noise of TD3 / SAC ("normal" or "ornstein-uhlenbeck").

Strings "lin_<x>" for `learning_rate` / `clip_range` are linear schedules from x to 0;
`policy_kwargs.activation_fn` is a name ("tanh", "relu", "elu", ...).

A run folder holds: `model.zip` + `vecnormalize.pkl` (final), `checkpoints/` (periodic
`model_<steps>_steps.zip` with `model_vecnormalize_<steps>_steps.pkl`, and the replay
buffer for off-policy algorithms), `tb/` (TensorBoard), `eval/` and `best/` (the
evaluation callback on the held-out scenario), and `config.yaml` (everything needed to
evaluate or resume).
"""

from __future__ import annotations

import copy
import inspect
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
)
from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecMonitor, VecNormalize

from agents.sb3_policy import ALGOS, MODEL_FILE, VECNORM_FILE
from envs.sb3 import CascadeSB3VecEnv

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG_DIR = REPO_ROOT / "configs" / "train"
RUN_CONFIG = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "model"
NON_ALGO_KEYS = (
    "n_timesteps",
    "n_envs",
    "policy",
    "normalize",
    "env_kwargs",
    "noise_type",
    "noise_std",
)
ACTIVATIONS = {
    "tanh": torch.nn.Tanh,
    "relu": torch.nn.ReLU,
    "elu": torch.nn.ELU,
    "leaky_relu": torch.nn.LeakyReLU,
    "silu": torch.nn.SiLU,
    "gelu": torch.nn.GELU,
}


class TrainConfigError(ValueError):
    """A bad hyperparameter file or override (the message names the key)."""


# ============================================================== hyperparameters


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """["learning_rate:1e-3", "policy_kwargs.net_arch:[32, 32]"] -> dotted-key dict.

    Values are parsed as YAML ("1e-3" -> float, "[32, 32]" -> list, "true" -> bool).
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, val = item.partition(":")
        if not sep or not key.strip():
            raise TrainConfigError(f"-params expects key:value, got {item!r}")
        try:
            value = yaml.safe_load(val)
        except yaml.YAMLError as e:
            raise TrainConfigError(f"-params {key}: cannot parse {val!r} ({e})") from None
        if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
            value = float(value)  # YAML 1.1 reads "1e-3" as a string
        out[key.strip()] = value
    return out


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[parts[-1]] = value


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _fix_floats(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _fix_floats(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_fix_floats(v) for v in x]
    if isinstance(x, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", x):
        return float(x)
    return x


def load_hyperparams(
    algo: str, role: str, overrides: dict[str, Any] | None = None, config_dir: Path | None = None
) -> dict[str, Any]:
    """`default` <- role entry <- overrides of `configs/train/<algo>.yaml` (plain dict).

    Raises:
        TrainConfigError: missing file or role entry.
    """
    path = Path(config_dir or TRAIN_CONFIG_DIR) / f"{algo}.yaml"
    if not path.exists():
        raise TrainConfigError(f"no hyperparameter file {path}")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    hp = _merge(data.get("default") or {}, data.get(role) or {})
    for k, v in (overrides or {}).items():
        _set_dotted(hp, k, v)
    return _fix_floats(hp)


def linear_schedule(start: float):
    """Linear decay from `start` to 0 over training (SB3 passes progress_remaining)."""

    def f(progress_remaining: float) -> float:
        return progress_remaining * start

    return f


def algo_kwargs(algo: str, hp: dict[str, Any], n_actions: int) -> dict[str, Any]:
    """Constructor keyword arguments of the algorithm from resolved hyperparameters.

    Raises:
        TrainConfigError: a key that is neither an argument of the algorithm nor one of
            NON_ALGO_KEYS, listing the allowed ones.
    """
    kw = {k: v for k, v in hp.items() if k not in NON_ALGO_KEYS}
    allowed = set(inspect.signature(ALGOS[algo].__init__).parameters) - {
        "self",
        "policy",
        "env",
        "seed",
        "device",
        "tensorboard_log",
        "verbose",
        "_init_setup_model",
    }
    bad = sorted(set(kw) - allowed)
    if bad:
        raise TrainConfigError(
            f"{algo} has no hyperparameter {bad}; allowed: {sorted(allowed | set(NON_ALGO_KEYS))}"
        )
    for k in ("learning_rate", "clip_range", "clip_range_vf"):
        v = kw.get(k)
        if isinstance(v, str) and v.startswith("lin_"):
            kw[k] = linear_schedule(float(v[4:]))
    pk = dict(kw.get("policy_kwargs") or {})
    act = pk.get("activation_fn")
    if isinstance(act, str):
        if act not in ACTIVATIONS:
            raise TrainConfigError(
                f"policy_kwargs.activation_fn '{act}' unknown; allowed: {sorted(ACTIVATIONS)}"
            )
        pk["activation_fn"] = ACTIVATIONS[act]
    if pk:
        kw["policy_kwargs"] = pk
    noise = hp.get("noise_type")
    if noise:
        std = float(hp.get("noise_std", 0.1))
        mean, sigma = np.zeros(n_actions), std * np.ones(n_actions)
        if noise == "normal":
            kw["action_noise"] = NormalActionNoise(mean, sigma)
        elif noise == "ornstein-uhlenbeck":
            kw["action_noise"] = OrnsteinUhlenbeckActionNoise(mean, sigma)
        else:
            raise TrainConfigError(
                f"noise_type '{noise}' unknown; allowed: normal, ornstein-uhlenbeck"
            )
    return kw


# ============================================================== envs and checkpoints


def make_vec_env(
    role: str,
    scenario: str,
    variant: str | None,
    n_envs: int,
    env_kwargs: dict[str, Any] | None = None,
    max_episode_steps: int | None = None,
) -> VecEnv:
    """`CascadeSB3VecEnv` (one jitted batched step) wrapped in `VecMonitor`."""
    kw = dict(env_kwargs or {})
    if max_episode_steps is not None:
        kw["max_episode_steps"] = int(max_episode_steps)
    venv = CascadeSB3VecEnv(role, n_envs, scenario=scenario, variant=variant, **kw)
    return VecMonitor(venv)


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(timesteps, model path) of the run's checkpoints, oldest first."""
    d = Path(run_dir) / CHECKPOINT_DIR
    out = []
    for p in d.glob(f"{CHECKPOINT_PREFIX}_*_steps.zip"):
        m = re.fullmatch(rf"{CHECKPOINT_PREFIX}_(\d+)_steps\.zip", p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def checkpoint_file(run_dir: str | Path, kind: str, steps: int) -> Path:
    """Companion file of a checkpoint: kind "vecnormalize_" or "replay_buffer_"."""
    return Path(run_dir) / CHECKPOINT_DIR / f"{CHECKPOINT_PREFIX}_{kind}{steps}_steps.pkl"


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_CONFIG
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def write_run_config(run_dir: str | Path, cfg: dict[str, Any]) -> None:
    with open(Path(run_dir) / RUN_CONFIG, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


# ============================================================== training


class StopOnTimeLimit(BaseCallback):
    """Stop `learn` once `limit_s` seconds of training have passed (a wall-clock budget
    instead of a step budget; the steps done are what the run reports). The clock starts
    after the first env step, so compiling the exchange step does not count."""

    def __init__(self, limit_s: float):
        super().__init__()
        self.limit_s = float(limit_s)
        self.hit = False
        self._t0: float | None = None

    def _on_step(self) -> bool:
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        if now - self._t0 >= self.limit_s:
            self.hit = True
            return False
        return True


SMALL_MLP_WIDTH = 256  # an MLP policy whose hidden layers are at most this wide is "small"


def _layer_widths(arch: Any) -> list[int]:
    """Every int in a `net_arch` value (list, dict pi/vf/qf, or SB3's older mixed list)."""
    if isinstance(arch, (int, np.integer)):
        return [int(arch)]
    if isinstance(arch, dict):
        return [w for v in arch.values() for w in _layer_widths(v)]
    if isinstance(arch, (list, tuple)):
        return [w for v in arch for w in _layer_widths(v)]
    return []


def torch_threads_for(
    hp: dict[str, Any], device: str, requested: int | None = None
) -> tuple[int | None, str]:
    """Intra-op threads torch should train with, and why.

    `requested` wins. Otherwise one thread for an `MlpPolicy` on the CPU whose hidden
    layers are at most SMALL_MLP_WIDTH wide (the default 64x64): the per-step forward
    passes and the minibatch updates of such a net are too small to gain from threads,
    and on a small, shared CPU torch's default (one thread per core) competes with the
    JAX env step and the other processes for the same cores (SB3 PPO market maker, 16
    envs, 2-core CPU: see benchmarks/RESULTS.md). Any other policy or device keeps
    torch's default (None).

    Returns:
        (threads or None, reason): the reason is "flag", "small MLP on CPU" or "torch
        default".
    """
    if requested is not None:
        if int(requested) < 1:
            raise TrainConfigError(f"torch threads must be >= 1, got {requested}")
        return int(requested), "flag"
    policy = hp.get("policy", "MlpPolicy")
    arch = (hp.get("policy_kwargs") or {}).get("net_arch", [64, 64])
    widths = _layer_widths(arch)
    on_cpu = str(device).lower().split(":")[0] == "cpu"
    if on_cpu and policy == "MlpPolicy" and widths and max(widths) <= SMALL_MLP_WIDTH:
        return 1, "small MLP on CPU"
    return None, "torch default"


def train(*, torch_threads: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """Train (or resume) an SB3 agent; returns the run config written to `config.yaml`.

    `torch_threads`: torch's intra-op threads during training (None = `torch_threads_for`'s
    choice: 1 for a small MLP on the CPU, else torch's default). Set for the call and
    restored afterwards; the run config records the number used (`torch_threads`) and
    why (`torch_threads_rule`). Other arguments: see `_train`.
    """
    algo, role = kwargs.get("algo"), kwargs.get("role")
    hp = load_hyperparams(algo, role, kwargs.get("overrides")) if algo in ALGOS else {}
    if kwargs.get("resume"):
        hp = read_run_config(kwargs["run_dir"]).get("hyperparams") or hp
    threads, rule = torch_threads_for(hp, kwargs.get("device", "cpu"), torch_threads)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(torch_info=(torch.get_num_threads(), rule), **kwargs)
    finally:
        torch.set_num_threads(before)


def _train(
    *,
    role: str,
    scenario: str,
    variant: str | None,
    algo: str,
    run_dir: str | Path,
    n_timesteps: int | None = None,
    n_envs: int | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    eval_scenario: str | None = None,
    eval_freq: int = 0,
    eval_episode_steps: int | None = None,
    save_freq: int | None = None,
    resume: bool = False,
    time_limit_s: float | None = None,
    device: str = "cpu",
    progress_bar: bool = True,
    verbose: int = 0,
    torch_info: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """Train (or resume) an SB3 agent; returns the run config written to `config.yaml`.

    Args:
        role, scenario, variant: what to train on.
        algo: "ppo", "sac", "td3" or "a2c".
        run_dir: run folder (created).
        n_timesteps: total budget in env steps (resume: the total to reach, counting the
            steps already done); None = the hyperparameter file's.
        n_envs: batch size; None = the hyperparameter file's.
        overrides: dotted-key hyperparameter overrides.
        eval_scenario: held-out scenario of the evaluation callback (None = none).
        eval_freq: evaluate every this many env steps (0 = never).
        eval_episode_steps: episode length of the evaluation env (None = the training
            episode length, capped by the scenario's horizon by the env itself).
        save_freq: checkpoint every this many env steps (None = a quarter of the budget).
        resume: continue from the latest checkpoint in `run_dir/checkpoints`.
        time_limit_s: stop learning after this many seconds even if n_timesteps is not
            reached (None = no limit).
        device: torch device.
        torch_info: (torch threads in use, why), recorded in the run config.

    Raises:
        TrainConfigError: bad hyperparameters; FileNotFoundError: resume without a
        checkpoint.
    """
    if algo not in ALGOS:
        raise TrainConfigError(f"unknown algorithm '{algo}'; allowed: {sorted(ALGOS)}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_run_config(run_dir) if resume else {}
    hp = load_hyperparams(algo, role, overrides)
    if resume and previous.get("hyperparams"):
        # The saved run's hyperparameters, with this call's overrides on top.
        hp = _merge(previous["hyperparams"], {})
        for k, v in (overrides or {}).items():
            _set_dotted(hp, k, v)
    n_envs = int(n_envs or hp.get("n_envs", 16))
    total = int(n_timesteps or hp.get("n_timesteps", 100_000))
    env_kwargs = dict(hp.get("env_kwargs") or {})
    normalize = hp.get("normalize", True)
    norm_kw = dict(normalize) if isinstance(normalize, dict) else {}
    norm_kw.setdefault("gamma", float(hp.get("gamma", 0.99)))
    set_random_seed(seed)

    t0 = time.perf_counter()
    venv = make_vec_env(role, scenario, variant, n_envs, env_kwargs)
    algo_cls = ALGOS[algo]
    tb = str(run_dir / "tb")
    off_policy = issubclass(algo_cls, OffPolicyAlgorithm)
    if resume:
        found = checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(
                f"--resume: no checkpoint in {run_dir / CHECKPOINT_DIR} "
                f"(expected {CHECKPOINT_PREFIX}_<steps>_steps.zip)"
            )
        steps, path = found[-1]
        vn = checkpoint_file(run_dir, "vecnormalize_", steps)
        if normalize and vn.exists():
            venv = VecNormalize.load(str(vn), venv)
            venv.training = True
        elif normalize:
            venv = VecNormalize(venv, **norm_kw)
        model = algo_cls.load(path, env=venv, device=device, tensorboard_log=tb)
        rb = checkpoint_file(run_dir, "replay_buffer_", steps)
        if off_policy and rb.exists():
            model.load_replay_buffer(rb)
        print(f"resuming from {path} ({model.num_timesteps} steps done, target {total})")
    else:
        if normalize:
            venv = VecNormalize(venv, **norm_kw)
        kw = algo_kwargs(algo, hp, venv.action_space.shape[0])
        model = algo_cls(
            hp.get("policy", "MlpPolicy"),
            venv,
            seed=seed,
            tensorboard_log=tb,
            device=device,
            verbose=verbose,
            **kw,
        )
    setup_s = time.perf_counter() - t0

    save_freq = int(save_freq or max(total // 4, n_envs))
    callbacks: list = [
        CheckpointCallback(
            save_freq=max(save_freq // n_envs, 1),
            save_path=str(run_dir / CHECKPOINT_DIR),
            name_prefix=CHECKPOINT_PREFIX,
            save_replay_buffer=off_policy,
            save_vecnormalize=bool(normalize),
        )
    ]
    eval_env = None
    if eval_scenario and eval_freq > 0:
        steps = eval_episode_steps or env_kwargs.get("max_episode_steps")
        eval_env = make_vec_env(role, eval_scenario, None, n_envs, env_kwargs, steps)
        if normalize:
            eval_env = VecNormalize(eval_env, training=False, norm_reward=False, **_obs_kw(norm_kw))
        callbacks.append(
            EvalCallback(
                eval_env,
                n_eval_episodes=n_envs,
                eval_freq=max(eval_freq // n_envs, 1),
                log_path=str(run_dir / "eval"),
                best_model_save_path=str(run_dir / "best"),
                deterministic=True,
                verbose=verbose,
            )
        )

    stopper = None
    if time_limit_s is not None:
        stopper = StopOnTimeLimit(time_limit_s)
        callbacks.append(stopper)

    remaining = total - model.num_timesteps
    t1 = time.perf_counter()
    if remaining > 0:
        model.learn(
            total_timesteps=remaining,
            callback=CallbackList(callbacks),
            progress_bar=progress_bar,
            reset_num_timesteps=not resume,
            tb_log_name=algo,
        )
    else:
        print(f"nothing to do: {model.num_timesteps} steps done >= target {total}")
    learn_s = time.perf_counter() - t1
    if stopper is not None and stopper.hit:
        print(f"time limit of {time_limit_s:g} s reached after {model.num_timesteps} steps")

    model.save(run_dir / MODEL_FILE)
    vec = model.get_vec_normalize_env()
    if vec is not None:
        vec.save(str(run_dir / VECNORM_FILE))
    # The final model is also the latest checkpoint, so --resume continues from it.
    steps_done = int(model.num_timesteps)
    model.save(run_dir / CHECKPOINT_DIR / f"{CHECKPOINT_PREFIX}_{steps_done}_steps.zip")
    if vec is not None:
        vec.save(str(checkpoint_file(run_dir, "vecnormalize_", steps_done)))
    if off_policy and model.replay_buffer is not None:
        model.save_replay_buffer(checkpoint_file(run_dir, "replay_buffer_", steps_done))
    venv.close()
    if eval_env is not None:
        eval_env.close()

    history = list(previous.get("history") or [])
    history.append(
        {
            "timesteps": steps_done,
            "setup_s": round(setup_s, 1),
            "learn_s": round(learn_s, 1),
            "resumed": bool(resume),
            "time_limited": bool(stopper is not None and stopper.hit),
        }
    )
    cfg = {
        "role": role,
        "scenario": scenario,
        "variant": variant,
        "algo": algo,
        "seed": seed,
        "n_envs": n_envs,
        "n_timesteps": total,
        "trained_timesteps": steps_done,
        "eval_scenario": eval_scenario,
        "hyperparams": _plain(hp),
        "history": history,
    }
    if torch_info is not None:
        cfg["torch_threads"], cfg["torch_threads_rule"] = int(torch_info[0]), torch_info[1]
    write_run_config(run_dir, cfg)
    return cfg


def _obs_kw(norm_kw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in norm_kw.items() if k in ("norm_obs", "clip_obs", "epsilon")}


def _plain(x: Any) -> Any:
    """YAML-safe copy (numbers, strings, lists, dicts)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)
