#!/usr/bin/env python
"""Train an RL agent on a cascade-gym role, evaluate it and the heuristic baselines on
every scenario, and write a report.

    python train.py                      # the default job: a PPO market maker on calm for a
                                         # few minutes, then the evaluation report in
                                         # runs/default/report.md
    python train.py [train] --role market_maker --scenario calm [--variant V] --algo ppo \
        -n 200000 --n-envs 64 --seed 0 --run-dir runs/NAME [--eval-scenario X] \
        [--eval-freq N] [--resume] [-params key:value ...] [--device cpu] [--no-eval]
        [--backend jax [--updates-per-call K]]
    python train.py evaluate --run-dir runs/NAME [--seeds K] [--scenarios A B ...]
    python train.py evaluate --baselines-only --role market_maker --run-dir runs/NAME

Hyperparameters: configs/train/<algo>.yaml (per role), overridden by `-params`. A run
folder holds the model, its VecNormalize statistics, checkpoints, TensorBoard logs
(`tensorboard --logdir runs/NAME/tb`), the evaluation callback's results, config.yaml and,
after evaluation, report.md, results.csv, episodes.csv and plots/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROLES = ("market_maker", "arbitrageur", "leveraged_trader")
ALGOS = ("ppo", "sac", "td3", "a2c")
ENGINES = ("scan", "loop")
BACKENDS = ("sb3", "jax")

# `python train.py` with no arguments: a few minutes on a 2-core CPU. PPO in JAX (the
# whole rollout and update loop in one compiled program, ~3-4k env steps/s on the
# calm_and_crashes distribution on two cores, against ~1k for SB3 at 16 envs) on half calm,
# half the four crash types; learning stops at `time_limit_s` (after compilation) or at
# `n_timesteps`, whichever comes first. SB3 stays the trainer of `--backend sb3` (the CLI's
# default when arguments are given) and of every algorithm but PPO.
DEFAULT_RUN = {
    "role": "market_maker",
    "scenario": "calm_and_crashes",
    "algo": "ppo",
    "backend": "jax",
    "run_dir": "runs/default",
    "n_timesteps": 2_097_152,
    "time_limit_s": 180,
    "n_envs": 256,
    "params": {
        "n_steps": 64,  # x 256 envs = 16,384 transitions per update
        "batch_size": 2048,
        "env_kwargs.max_episode_steps": 720,  # 6 h at 30 s: every crash's event fits
        # Kickstarted PPO: the actor is first cloned from Avellaneda-Stoikov (128 steps of
        # every env, 300 passes), then PPO trains with a squared-distance term to its
        # actions (weight 5) and a small step size and exploration noise. Without the
        # teacher, three minutes of PPO end below `flat` in calm (benchmarks/RESULTS.md).
        "pretrain.policy": "avellaneda_stoikov",
        "pretrain.steps": 128,
        "pretrain.epochs": 300,
        "pretrain.coef": 5.0,
        "learning_rate": 1e-4,
        "policy_kwargs.log_std_init": -1.5,
    },
    "eval_seeds": 2,
    "eval_max_steps": 720,  # 6 h at 30 s: every crash scenario's event fits
}


def _scenarios() -> list[str]:
    import jaxsim

    return list(jaxsim.list_scenarios())


def _distributions() -> list[str]:
    from jaxsim.config.distribution import list_distributions

    return list_distributions()


def _training_scenario(value: str) -> str:
    """--scenario: a scenario name, or a distribution (name under configs/distributions/
    or a YAML path with `members:`)."""
    from jaxsim.config.distribution import is_distribution

    if value in _scenarios() or is_distribution(value):
        return value
    raise argparse.ArgumentTypeError(
        f"invalid choice: '{value}' (choose a scenario from {_scenarios()}, a distribution "
        f"from {_distributions()}, or a distribution YAML path)"
    )


def _distribution(run_cfg: dict[str, Any]):
    """The training distribution of a run config (None for a single scenario)."""
    from jaxsim.config.distribution import is_distribution, load_distribution

    rec = run_cfg.get("distribution")
    name = (rec or {}).get("path") or run_cfg.get("scenario")
    if name and is_distribution(name):
        return load_distribution(name)
    return None


def eval_splits(run_cfg: dict[str, Any], configs) -> dict[tuple, str] | None:
    """(scenario, variant) -> 'in-distribution' (a member of the training distribution),
    'held-out' (listed under the distribution's held_out) or 'not trained on'; None for a
    run trained on one scenario."""
    dist = _distribution(run_cfg)
    if dist is None:
        return None
    out = {}
    for c in configs:
        if dist.in_distribution(c.scenario, c.variant):
            out[(c.scenario, c.variant)] = "in-distribution"
        elif dist.is_held_out(c.scenario, c.variant):
            out[(c.scenario, c.variant)] = "held-out"
        else:
            out[(c.scenario, c.variant)] = "not trained on"
    return out


# ============================================================== argument parsing


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and its subcommand parsers by name."""
    scen = _scenarios()
    ap = argparse.ArgumentParser(
        prog="python train.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `python train.py train -h` / `python train.py evaluate -h` for options.",
    )
    sub = ap.add_subparsers(dest="command")

    tr = sub.add_parser("train", help="train an agent (then evaluate it unless --no-eval)")
    tr.add_argument(
        "--role", choices=ROLES, default=None, help="role to learn (default: market_maker)"
    )
    tr.add_argument(
        "--scenario",
        type=_training_scenario,
        default=None,
        metavar="SCENARIO|DISTRIBUTION",
        help=f"training scenario ({', '.join(scen)}) or scenario distribution "
        f"({', '.join(_distributions())} under configs/distributions/, or a YAML path): "
        "each env then draws its member at every reset (default: calm)",
    )
    tr.add_argument("--variant", default=None, help="variant of the training scenario")
    tr.add_argument("--algo", choices=ALGOS, default=None, help="SB3 algorithm (default: ppo)")
    tr.add_argument(
        "-n", "--n-timesteps", type=int, default=None, help="env steps (default: from YAML)"
    )
    tr.add_argument("--n-envs", type=int, default=None, help="batch size (default: from YAML)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument(
        "--run-dir", default=None, help="run folder (default runs/<algo>_<role>_<scenario>)"
    )
    tr.add_argument(
        "--eval-scenario",
        default="auto",
        help="held-out scenario of the evaluation callback ('auto' = the first scenario "
        "other than the training one, 'none' = no callback)",
    )
    tr.add_argument(
        "--eval-freq", type=int, default=None, help="callback every N env steps (default n/4)"
    )
    tr.add_argument("--eval-episode-steps", type=int, default=None, help="callback episode length")
    tr.add_argument(
        "--save-freq", type=int, default=None, help="checkpoint every N env steps (default n/4)"
    )
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    tr.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop training after this many seconds of learning even if -n is not reached",
    )
    tr.add_argument(
        "-params",
        "--hyperparams",
        nargs="+",
        default=[],
        metavar="KEY:VALUE",
        help="override hyperparameters, e.g. -params learning_rate:1e-4 n_steps:128 "
        "env_kwargs.max_episode_steps:512",
    )
    tr.add_argument("--device", default="cpu", help="torch device (cpu, cuda, auto)")
    tr.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        metavar="N",
        help="torch intra-op threads for SB3 training (default: 1 for a small MLP policy on "
        "the CPU, which trains faster than torch's one thread per core; else torch's default)",
    )
    tr.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="'sb3': stable-baselines3 on the batched VecEnv; 'jax': PPO written in JAX "
        "(agents/jax_ppo.py), rollouts and updates in one jitted program (ppo only)",
    )
    tr.add_argument(
        "--updates-per-call",
        type=int,
        default=None,
        help="jax backend: PPO updates per compiled call (default: all in one call, or a "
        "tenth of them with --time-limit)",
    )
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    tr.add_argument("-v", "--verbose", type=int, default=0, help="SB3 verbosity")
    _eval_options(tr, prefix="eval-")

    ev = sub.add_parser("evaluate", help="evaluate a run (or the baselines) on every scenario")
    ev.add_argument("--run-dir", required=True, help="run folder (report goes there)")
    ev.add_argument("--baselines-only", action="store_true", help="no trained policy")
    ev.add_argument("--role", choices=ROLES, default=None, help="role (default: the run's)")
    ev.add_argument("--algo", choices=ALGOS, default=None, help="algorithm (default: the run's)")
    _eval_options(ev, prefix="")
    return ap, {"train": tr, "evaluate": ev}


def _eval_options(p: argparse.ArgumentParser, prefix: str) -> None:
    scen = _scenarios()
    p.add_argument(f"--{prefix}seeds", type=int, default=4, help="episodes per scenario/variant")
    p.add_argument(f"--{prefix}seed", type=int, default=1000, help="first evaluation seed")
    p.add_argument(
        f"--{prefix}scenarios",
        nargs="+",
        choices=scen,
        default=None,
        help="scenarios to evaluate on (default: all)",
    )
    p.add_argument(f"--{prefix}base-only", action="store_true", help="skip the scenario variants")
    p.add_argument(
        f"--{prefix}max-steps",
        type=int,
        default=0,
        help="cap on each scenario's horizon in steps (0 = full horizon)",
    )
    p.add_argument(
        f"--{prefix}policies",
        nargs="+",
        default=None,
        help="heuristics to include (default: every one of the role)",
    )
    p.add_argument(
        f"--{prefix}engine",
        choices=ENGINES,
        default="scan",
        help="trained policy: 'scan' (converted to JAX, one lax.scan with the heuristics) "
        "or 'loop' (SB3 predict in a NumPy loop over the batched env)",
    )
    p.add_argument(
        f"--{prefix}chunk", type=int, default=None, help="episodes per compiled call (memory)"
    )
    p.add_argument(f"--{prefix}no-dashboard", action="store_true", help="skip the dashboards")
    p.add_argument(f"--{prefix}no-plots", action="store_true", help="skip all PNG plots")


def _normalize_argv(argv: list[str]) -> list[str]:
    if not argv:
        return argv
    if argv[0] in ("train", "evaluate", "-h", "--help"):
        return argv
    return ["train", *argv]


# ============================================================== evaluation


def _eval_settings(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    g = lambda k: getattr(args, (prefix + k).replace("-", "_"))
    return {
        "seeds": g("seeds"),
        "seed": g("seed"),
        "scenarios": g("scenarios"),
        "base_only": g("base_only"),
        "max_steps": g("max_steps"),
        "policies": g("policies"),
        "engine": g("engine"),
        "chunk": g("chunk"),
        "dashboard": not g("no_dashboard") and not g("no_plots"),
        "plots": not g("no_plots"),
    }


def scenario_dashboards(configs, seeds: int = 1, seed: int = 0) -> dict[str, tuple]:
    """Events of each base scenario without the agent, for `jaxsim.tools.plots.dashboard`.

    One compiled rollout serves every scenario (shared name, common length; each is
    trimmed to its own horizon).
    """
    import jaxsim
    from jaxsim.tools.simulate import run_batch

    base = [c for c in configs if c.variant is None]
    if not base:
        return {}
    n_ticks = max(c.steps for c in base)
    out = {}
    for c in base:
        params = jaxsim.load_scenario(c.scenario)
        ev, _, _ = run_batch(params.replace(name="dashboard"), n_ticks, seeds, seed)
        out[c.scenario] = ({k: v[:, : c.steps] for k, v in ev.items()}, params)
    return out


def run_evaluation(
    run_dir: Path,
    role: str,
    settings: dict[str, Any],
    *,
    algo: str | None = None,
    baselines_only: bool = False,
    run_cfg: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the run's trained policy (unless baselines_only) and the role's heuristics
    on every scenario / variant; write the report into run_dir."""
    from agents import evaluate as E
    from agents.heuristics import ROLE_POLICIES, heuristic
    from agents.report import write_report

    run_cfg = run_cfg or {}
    t0 = time.perf_counter()
    names = settings["policies"] or list(ROLE_POLICIES[role])
    bad = [n for n in names if n not in ROLE_POLICIES[role]]
    if bad:
        raise ValueError(
            f"unknown heuristic(s) {bad} for role '{role}'; allowed: {list(ROLE_POLICIES[role])}"
        )
    policies = [heuristic(role, n) for n in names]
    variants = False if settings["base_only"] else True
    configs = E.scenario_configs(settings["scenarios"], variants, settings["max_steps"] or None)
    env_kwargs = {
        k: v
        for k, v in ((run_cfg.get("hyperparams") or {}).get("env_kwargs") or {}).items()
        if k != "max_episode_steps"
    }
    trained = None
    loop_traj = None
    if not baselines_only:
        # The trained policy as a JAX `Policy` (scan engine) or a NumPy actor (loop engine).
        if run_cfg.get("backend") == "jax":
            from agents.jax_ppo import load_policy, numpy_actor

            algo = "ppo"
            pol = load_policy(run_dir, role, run_cfg.get("hyperparams") or {}, name=algo)
            as_policy, as_actor = (lambda: pol), (lambda: numpy_actor(pol))
        else:
            from agents.sb3_policy import jax_policy, load_run, numpy_actor

            algo = algo or run_cfg.get("algo") or "ppo"
            model, vecnorm = load_run(run_dir, algo)
            as_policy = lambda: jax_policy(model, vecnorm, role, name=algo)  # noqa: E731
            as_actor = lambda: numpy_actor(model, vecnorm)  # noqa: E731
        trained = algo
        if settings["engine"] == "scan":
            policies = [as_policy(), *policies]
        else:
            loop_traj = E.run_loop(
                role,
                as_actor(),
                configs,
                settings["seeds"],
                settings["seed"],
                name=algo,
                num_envs=run_cfg.get("n_envs"),
                env_kwargs=env_kwargs,
            )
    batch = E.build_batch(
        role, policies, configs, settings["seeds"], settings["seed"], env_kwargs=env_kwargs
    )
    n_steps = int(sum(batch.steps))
    print(
        f"evaluating {len(policies) + (loop_traj is not None)} policies x {len(configs)} "
        f"scenario/variants x {settings['seeds']} seeds = "
        f"{batch.size + (0 if loop_traj is None else len(loop_traj.rows))} episodes "
        f"({n_steps} env steps in one compiled scan)..."
    )
    traj = E.run_scan(batch, settings["chunk"])
    if loop_traj is not None:
        traj = E.merge([loop_traj, traj])
    eval_s = time.perf_counter() - t0
    dashboards = {}
    if settings["dashboard"]:
        dashboards = scenario_dashboards(configs, seeds=1, seed=settings["seed"])
    intro = [
        f"Role **{role}**; policies: {', '.join(dict.fromkeys(r['policy'] for r in traj.rows))}."
    ]
    if trained:
        hist = run_cfg.get("history") or []
        learn = sum(h.get("learn_s", 0) for h in hist)
        intro.append(
            f"Trained policy `{trained}`: {run_cfg.get('algo', algo)} on "
            f"`{run_cfg.get('scenario')}`"
            + (f"/{run_cfg['variant']}" if run_cfg.get("variant") else "")
            + f", {run_cfg.get('trained_timesteps', '?')} env steps, "
            f"{run_cfg.get('n_envs', '?')} envs, {learn:.0f} s of training"
            + (" (JAX backend)" if run_cfg.get("backend") == "jax" else "")
            + "; evaluated deterministically ("
            + (
                ("in the compiled scan" if run_cfg.get("backend") == "jax" else "converted to JAX")
                if settings["engine"] == "scan"
                else ("NumPy loop" if run_cfg.get("backend") == "jax" else "SB3 predict loop")
            )
            + ")."
        )
    intro.append(
        f"{settings['seeds']} seeds per scenario/variant (seed s uses the same market key for "
        f"every policy); evaluation took {eval_s:.0f} s."
    )
    splits = eval_splits(run_cfg, configs) if trained else None
    if splits:
        dist = run_cfg.get("distribution") or {}
        intro.append(
            f"Training distribution `{dist.get('name', run_cfg.get('scenario'))}` "
            f"({dist.get('pool_size', '?')} members): "
            + ", ".join(
                f"{m['scenario']}/{m['variant'] or 'base'} {100 * m['prob']:.0f}%"
                for m in dist.get("members", [])
            )
            + "; scenarios and variants are marked in-distribution, held-out or not trained on."
        )
    res = write_report(
        run_dir,
        traj,
        splits=splits,
        role=role,
        trained=trained,
        intro=intro,
        dashboards=dashboards,
        seeds=settings["seeds"],
        plots=settings["plots"],
    )
    _print_summary(res["summary"], trained)
    print(f"report: {res['report']}  (numbers: {res['results']}, per episode: {res['episodes']})")
    return res


def _print_summary(summary: list[dict], trained: str | None) -> None:
    from agents.report import headline

    try:
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown("\n".join(f"- {x}" for x in headline(summary, trained))))
    except ImportError:  # pragma: no cover
        for line in headline(summary, trained):
            print(f"- {line}")


# ============================================================== commands


def _auto_eval_scenario(value: str | None, train_scenario: str) -> str | None:
    if value in (None, "none", ""):
        return None
    scen = _scenarios()
    dist = _distribution({"scenario": train_scenario})
    if value == "auto" and dist is not None:
        # The first held-out scenario, else the first that is no member.
        held = [s for s, _ in dist.held_out]
        others = held + [s for s in scen if not any(m.scenario == s for m in dist.members)]
        return others[0] if others else None
    if value == "auto":
        others = [s for s in scen if s != train_scenario]
        return others[0] if others else None
    return value


def cmd_train(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    import jaxsim
    from agents.sb3_train import TrainConfigError, parse_overrides, train

    _run_identity(args, ap)
    scen = _scenarios()
    dist = _distribution({"scenario": args.scenario})
    if dist is not None and args.variant is not None:
        ap.error(f"argument --variant: '{args.scenario}' is a distribution, it takes no variant")
    if (
        dist is None
        and args.variant is not None
        and args.variant not in jaxsim.list_variants(args.scenario)
    ):
        ap.error(
            f"argument --variant: '{args.variant}' is not a variant of '{args.scenario}' "
            f"(choose from {jaxsim.list_variants(args.scenario)})"
        )
    eval_scen = _auto_eval_scenario(args.eval_scenario, args.scenario)
    if eval_scen is not None and eval_scen not in scen:
        ap.error(f"argument --eval-scenario: invalid choice '{eval_scen}' (choose from {scen})")
    for name in ("n_timesteps", "n_envs", "eval_seeds", "torch_threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"argument --{name.replace('_', '-')}: must be >= 1, got {v}")
    try:
        overrides = parse_overrides(args.hyperparams)
    except TrainConfigError as e:
        ap.error(str(e))
    run_dir = Path(args.run_dir or f"runs/{args.algo}_{args.role}_{Path(args.scenario).stem}")
    if args.backend == "jax":
        if args.algo != "ppo":
            ap.error(f"--backend jax trains ppo only, got --algo {args.algo}")
        if args.updates_per_call is not None and args.updates_per_call < 1:
            ap.error(f"argument --updates-per-call: must be >= 1, got {args.updates_per_call}")
        cfg = _train_jax(args, overrides, run_dir)
        if cfg is None:
            return 2
        cfg = _record_distribution(run_dir, cfg, dist)
        if args.no_eval:
            return 0
        run_evaluation(run_dir, args.role, _eval_settings(args, "eval_"), algo="ppo", run_cfg=cfg)
        return 0
    n = args.n_timesteps
    eval_freq = args.eval_freq
    if eval_freq is None:
        eval_freq = max((n or 100_000) // 4, 1)
    t0 = time.perf_counter()
    try:
        cfg = train(
            role=args.role,
            scenario=args.scenario,
            variant=args.variant,
            algo=args.algo,
            run_dir=run_dir,
            n_timesteps=n,
            n_envs=args.n_envs or _resumed_n_envs(args, run_dir),
            seed=args.seed,
            overrides=overrides,
            eval_scenario=eval_scen,
            eval_freq=eval_freq,
            eval_episode_steps=args.eval_episode_steps,
            save_freq=args.save_freq,
            resume=args.resume,
            time_limit_s=args.time_limit,
            device=args.device,
            torch_threads=args.torch_threads,
            progress_bar=not args.no_progress,
            verbose=args.verbose,
        )
    except TrainConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = _record_distribution(run_dir, cfg, dist)
    print(
        f"trained {cfg['trained_timesteps']} steps in {time.perf_counter() - t0:.0f} s: "
        f"{run_dir / 'model.zip'} (+ vecnormalize.pkl, checkpoints/, tb/)"
    )
    if args.no_eval:
        return 0
    settings = _eval_settings(args, "eval_")
    run_evaluation(run_dir, args.role, settings, algo=args.algo, run_cfg=cfg)
    return 0


# What a training run is: with --resume these come from the run's config.yaml.
RUN_IDENTITY = {
    "role": "market_maker",
    "scenario": "calm",
    "variant": None,
    "algo": "ppo",
    "backend": "sb3",
}


def _run_identity(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    """Fill --role, --scenario, --variant, --algo and --backend: with --resume, the
    run's (from its config.yaml; a different value given explicitly is an error, as a
    resumed run continues the same training); else the given ones or the defaults."""
    if args.resume and args.run_dir:
        from agents.sb3_train import read_run_config

        prev = read_run_config(Path(args.run_dir))
        for name in RUN_IDENTITY:
            was, got = prev.get(name), getattr(args, name)
            if name == "backend" and prev and was is None:
                was = "sb3"  # runs from before the JAX backend recorded none
            if got is None:
                setattr(args, name, was)
            elif was is not None and Path(str(got)).stem != Path(str(was)).stem:
                ap.error(
                    f"argument --{name}: --resume continues {args.run_dir}, trained with "
                    f"--{name} {was}; got {got}"
                )
    for name, default in RUN_IDENTITY.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def _record_distribution(run_dir: Path, cfg: dict[str, Any], dist) -> dict[str, Any]:
    """Add the training distribution (members, probabilities, held-out list) to the run's
    config.yaml, so `evaluate` knows what was in-distribution."""
    if dist is None:
        return cfg
    from agents.sb3_train import write_run_config

    cfg = {**cfg, "distribution": dist.summary()}
    write_run_config(run_dir, cfg)
    return cfg


def _resumed_n_envs(args: argparse.Namespace, run_dir: Path) -> int | None:
    """With --resume and no --n-envs: the batch size the run was trained with."""
    if not args.resume:
        return None
    from agents.sb3_train import read_run_config

    return read_run_config(run_dir).get("n_envs")


def _train_jax(args: argparse.Namespace, overrides: dict, run_dir: Path) -> dict | None:
    """`train --backend jax`: PPO in JAX; None after printing an error."""
    from agents import jax_ppo
    from agents.sb3_train import (
        TrainConfigError,
        _merge,
        _set_dotted,
        load_hyperparams,
        read_run_config,
    )

    previous = read_run_config(run_dir) if args.resume else {}
    if args.resume and previous.get("backend", "sb3") != "jax":
        print(f"error: --resume: {run_dir} is not a JAX-backend run", file=sys.stderr)
        return None
    try:
        hp = load_hyperparams("ppo", args.role, overrides)
        if args.resume and previous.get("hyperparams"):
            hp = _merge(previous["hyperparams"], {})
            for k, v in overrides.items():
                _set_dotted(hp, k, v)
        total = int(args.n_timesteps or hp.get("n_timesteps", 100_000))
        if args.eval_scenario not in (None, "auto", "none", ""):
            print("note: the JAX backend has no periodic evaluation callback (see progress.csv)")
        t0 = time.perf_counter()
        cfg = jax_ppo.train(
            role=args.role,
            scenario=args.scenario,
            variant=args.variant,
            run_dir=run_dir,
            hp=hp,
            n_timesteps=total,
            n_envs=args.n_envs or previous.get("n_envs"),  # resume: the run's batch
            seed=args.seed,
            updates_per_call=args.updates_per_call,
            time_limit_s=args.time_limit,
            resume=args.resume,
            previous=previous,
        )
    except (TrainConfigError, jax_ppo.JaxPPOConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    print(
        f"trained {cfg['trained_timesteps']} steps in {time.perf_counter() - t0:.0f} s: "
        f"{run_dir / jax_ppo.MODEL_FILE} (+ checkpoints/, progress.csv)"
    )
    return cfg


def cmd_evaluate(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    from agents.sb3_train import read_run_config

    run_dir = Path(args.run_dir)
    cfg = read_run_config(run_dir)
    role = args.role or cfg.get("role")
    if role is None:
        ap.error(
            f"--role is needed ({run_dir / 'config.yaml'} does not exist); choose from {list(ROLES)}"
        )
    model_file = "jax_model.msgpack" if cfg.get("backend") == "jax" else "model.zip"
    if not args.baselines_only and not (run_dir / model_file).exists():
        ap.error(
            f"no trained model in {run_dir} ({model_file}); train first or pass --baselines-only"
        )
    if cfg.get("role") and role != cfg["role"] and not args.baselines_only:
        ap.error(f"--role {role} differs from the run's role {cfg['role']}")
    if args.seeds < 1:
        ap.error(f"argument --seeds: must be >= 1, got {args.seeds}")
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = _eval_settings(args, "")
    try:
        run_evaluation(
            run_dir,
            role,
            settings,
            algo=args.algo,
            baselines_only=args.baselines_only,
            run_cfg=cfg,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def default_argv() -> list[str]:
    """The command line `python train.py` (no arguments) runs."""
    d = DEFAULT_RUN
    return [
        "train",
        "--role", d["role"],
        "--scenario", d["scenario"],
        "--algo", d["algo"],
        "--backend", d["backend"],
        "-n", str(d["n_timesteps"]),
        "--n-envs", str(d["n_envs"]),
        "--time-limit", str(d["time_limit_s"]),
        "--run-dir", d["run_dir"],
        "--eval-seeds", str(d["eval_seeds"]),
        "--eval-max-steps", str(d["eval_max_steps"]),
        "-params", *[f"{k}:{v}" for k, v in d["params"].items()],
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = default_argv()
        print("python train.py " + " ".join(argv))
    t0 = time.perf_counter()
    from agents import enable_compile_cache

    enable_compile_cache()
    ap, subs = build_parser()
    args = ap.parse_args(_normalize_argv(argv))
    if args.command == "evaluate":
        rc = cmd_evaluate(args, subs["evaluate"])
    else:
        rc = cmd_train(args, subs["train"])
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
