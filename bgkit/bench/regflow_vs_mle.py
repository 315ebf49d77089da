"""RegFlow vs maximum likelihood, internal vs Cartesian coordinates: the same NSF, the same wall-clock budget.

    python -m bgkit.bench.regflow_vs_mle --system ala2 --seconds 600 [--coords internal cartesian]
                                         [--objectives mle regflow reflow --reflow DIR] [--n-eval 5000] [--out DIR]

Every (coordinates, objective) pair trains the same architecture on the
system's shipped train split (RegFlow on exact-OT targets in that flow space,
made first; their cost is reported separately, as it is paid once offline; ``reflow``: RegFlow on the
reflow targets folder ``--reflow`` made by ``bgkit targets reflow``, whose teacher and pair count are
reported). The number of steps of each run is
set from a short calibration of its step time so that the cosine schedule
ends at the budget; ``max_seconds`` enforces it. Each proposal is then
evaluated like ``bgkit evaluate``: ESS, E-W2 and T-W2 against the test split
(docs/methods.md definitions), and training samples/s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from bgkit.provenance import dumps_json



def _steps_for(budget: float, system: str, objective: str, targets: str | None, hparams: dict, batch: int,
               workdir: Path, data: str | None, coords: str) -> int:
    """Steps that fill ``budget`` seconds: the step time from two short runs (their difference
    removes the fixed start-up cost of loading data and building the flow)."""
    from bgkit.train.molecular import train_proposal

    def run(n: int) -> float:
        t = time.perf_counter()
        train_proposal(system, "nsf", objective, workdir / f"calib-{coords}-{objective}-{n}.pt", targets=targets,
                       data=data, hparams=hparams, coords=coords, progress=False,
                       config_overrides={"steps": n, "batch_size": batch, "warmup_steps": 0, "val_every": n,
                                         "ckpt_every": n})
        return time.perf_counter() - t

    short, long = run(10), run(60)
    per_step = max(long - short, 1e-3) / 50  # the budget (max_seconds) counts the training loop only
    return max(50, int(budget / per_step))


def main(argv: list[str] | None = None) -> None:
    import torch

    from bgkit.md.dataset import load_dataset, system_dataset
    from bgkit.systems import load_system
    from bgkit.train.molecular import make_ot_targets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", default="ala2")
    ap.add_argument("--data", default=None, help="dataset folder (default: the shipped one)")
    ap.add_argument("--seconds", type=float, default=600.0, help="training budget per objective (s)")
    ap.add_argument("--targets-frames", type=int, default=None, help="train frames used for OT targets (default all)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--hparams", default='{"hidden": 128, "n_layers": 8}')
    ap.add_argument("--n-eval", type=int, default=5000)
    ap.add_argument("--coords", nargs="+", default=["internal", "cartesian"], choices=["internal", "cartesian"])
    ap.add_argument("--objectives", nargs="+", default=["mle", "regflow"], choices=["mle", "regflow", "reflow"])
    ap.add_argument("--reflow", default=None, help="reflow targets folder (objective reflow)")
    ap.add_argument("--out", default="bench-regflow-vs-mle")
    args = ap.parse_args(argv)
    if "reflow" in args.objectives and not args.reflow:
        ap.error("objective reflow needs --reflow DIR (made by `bgkit targets reflow`)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hparams = json.loads(args.hparams)
    system = load_system(args.system)
    ds = load_dataset(args.data, system) if args.data else system_dataset(system)
    print(f"{args.system}: {ds.n_frames} frames ({ds.simulated_ns:.1f} ns) from {ds.folder}; "
          f"NSF {hparams}; budget {args.seconds:.0f} s per objective; torch threads {torch.get_num_threads()}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)
    rows = []
    for coords in args.coords:
        if "regflow" in args.objectives:
            t = time.perf_counter()
            info = make_ot_targets(args.system, out / f"targets-{coords}.npz", data=args.data, n=args.targets_frames,
                                   coords=coords)
            print(f"OT targets ({coords}): {info['frames']} pairs in blocks of {info['block_size']}: "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
        for objective in args.objectives:
            if objective == "reflow" and json.loads((Path(args.reflow) / "reflow.json").read_text())["coords"] != coords:
                continue  # reflow targets live in the flow space of their teacher
            rows.append(_run(args, coords, objective, hparams, out, ds))
    print(f"\n{'coords':9s} {'objective':9s} {'steps':>6s} {'train s':>8s} {'samples/s':>10s} {'ESS/N':>8s} "
          f"{'ESS/N clip':>10s} {'E-W2 q':>10s} {'E-W2 rw':>8s} {'T-W2 q':>7s} {'T-W2 rw':>8s} {'NLL':>8s}")
    for r in rows:
        print(f"{r['coords']:9s} {r['objective']:9s} {r['steps']:6d} {r['train_seconds']:8.0f} "
              f"{r['train_samples_per_s']:10.0f} {r['ess_fraction']:8.4f} {r['ess_fraction_clipped']:10.4f} "
              f"{r['e_w2_proposal']:10.3f} {r['e_w2_resampled']:8.3f} {r['t_w2_proposal']:7.3f} "
              f"{r['t_w2_resampled']:8.3f} {r['nll_test']:8.2f}")
    (out / "results.json").write_text(dumps_json({"rows": rows, "args": vars(args)}))


def _run(args, coords: str, objective: str, hparams: dict, out: Path, ds) -> dict:
    """Train one (coords, objective) NSF for the budget and evaluate it like ``bgkit evaluate``."""
    from bgkit.evaluate import compute_metrics
    from bgkit.proposal import Proposal
    from bgkit.sample import draw
    from bgkit.train.config import schedule_for
    from bgkit.train.molecular import train_proposal

    targets = {"regflow": str(out / f"targets-{coords}.npz"), "reflow": args.reflow}.get(objective)
    trained = "regflow" if objective == "reflow" else objective
    steps = _steps_for(args.seconds, args.system, trained, targets, hparams, args.batch_size, out, args.data, coords)
    path = out / f"{coords}-{objective}.pt"
    result = train_proposal(args.system, "nsf", trained, path, targets=targets, data=args.data, hparams=hparams,
                            coords=coords, progress=False,
                            config_overrides={**schedule_for(steps), "batch_size": args.batch_size,
                                              "max_seconds": args.seconds})
    proposal = Proposal.load(path, system=args.system)
    sample = draw(proposal, ds.system, n=args.n_eval, seed=1, progress=False)
    m = compute_metrics(sample, proposal, ds, seed=1)
    if objective == "reflow":
        from bgkit.train.reflow import open_reflow

        made = open_reflow(args.reflow).provenance
        print(f"reflow targets {args.reflow}: {made['n']} pairs from teacher {made['teacher']} "
              f"({made['teacher_objective']}), {made['method']} {made['steps']} steps", flush=True)
    row = {"coords": coords, "objective": objective, "steps": result.steps, "train_seconds": result.wall_time_s,
           "train_samples_per_s": result.samples_per_s,
           "ess_fraction_clipped": sample.summary()["ess_fraction_clipped"], **{k: m[k] for k in (
               "ess_fraction", "e_w2_proposal", "e_w2_resampled", "t_w2_proposal", "t_w2_resampled", "nll_test",
               "n_nonfinite", "n_wrong_chirality")}}
    print(dumps_json(row, indent=None), flush=True)
    return row


if __name__ == "__main__":
    main()
