"""Speed of a reverse-KL training step (maximum likelihood + KL to exp(−u)), against a maximum-likelihood step.

    python -m bgkit.bench.kl --system ala2 [--model PATH] [--batch-size 256] [--kl-batch-sizes 256,1024,2048]

One run measures, for the system's proposal (default: its shipped ``proposal.pt``), with one torch thread
and one energy worker (two cores):

1. a maximum-likelihood step on ``--batch-size`` MD train frames (forward, backward, AdamW);
2. the ``kl`` objective's step (the same frames + k flow samples with energies and forces), for each k of
   ``--kl-batch-sizes``, with the forces computed by the worker while the likelihood term is evaluated
   (``BoltzmannTarget(energy_model=...)``, what ``bgkit train --objective kl`` runs), and
3. the same step with the energy evaluated inside autograd (``BoltzmannTarget(energy=torch_energy)``),
   the synchronous path the overlap replaces.

Printed: KL samples per second and per core (two cores: the torch thread and the worker), each the best
of ``--repeats`` timed blocks of ``--steps`` steps, measured in this one run.
"""
from __future__ import annotations

import argparse
import os
import platform
import time


def main(argv: list[str] | None = None) -> None:
    import torch

    from bgkit.energy import EnergyModel
    from bgkit.md.dataset import system_dataset
    from bgkit.proposal import Proposal
    from bgkit.provenance import atomic_write_json, provenance
    from bgkit.systems import load_system
    from bgkit.train import TrainConfig
    from bgkit.train.kl import BoltzmannTarget
    from bgkit.train.objectives import OBJECTIVES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", default="ala2")
    ap.add_argument("--model", default=None, help="proposal checkpoint (default: the system's shipped proposal.pt)")
    ap.add_argument("--batch-size", type=int, default=256, help="MD frames per step (the likelihood term)")
    ap.add_argument("--kl-batch-sizes", default="256,1024,2048", help="flow samples per step, comma-separated")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=2, help="timed blocks (the best counts)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    system = load_system(args.system)
    proposal = Proposal.load(args.model or system.folder / "proposal.pt", system=system)
    flow = proposal.flow.train()
    frames = torch.as_tensor(system_dataset(system).split("train")[: args.batch_size], dtype=torch.float64)
    data = proposal.transform.to_flow(frames)[0].to(proposal.dtype)
    opt = torch.optim.AdamW(flow.parameters(), lr=1e-12)  # steps are timed, not wanted
    print(f"{system.name}: {proposal.info['arch']} {proposal.info['hparams']}, {args.batch_size} MD frames per step, "
          f"1 torch thread + 1 energy worker, {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
          flush=True)

    def timed(step) -> float:
        step()  # warm
        best = float("inf")
        for _ in range(max(1, args.repeats)):
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            best = min(best, (time.perf_counter() - t) / args.steps)
        return best

    def make_step(objective: str, cfg: TrainConfig, target=None):
        loss_fn = OBJECTIVES[objective].loss

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss, _ = loss_fn(flow, (data,), cfg, target=target)
            loss.backward()
            opt.step()

        return step

    rows: dict = {"batch_size": args.batch_size, "mle_step_s": None, "kl": []}
    rows["mle_step_s"] = timed(make_step("mle", TrainConfig(objective="mle", batch_size=args.batch_size)))
    print(f"maximum likelihood step: {rows['mle_step_s'] * 1e3:7.1f} ms "
          f"({args.batch_size / rows['mle_step_s']:6.0f} frames/s)", flush=True)
    with EnergyModel(system, n_workers=1) as model:
        model.evaluate(frames[:10].numpy())  # worker started and warm
        for k in (int(s) for s in args.kl_batch_sizes.split(",")):
            cfg = TrainConfig(objective="kl", batch_size=args.batch_size, kl_batch_size=k, kl_weight=1.0)
            cap = cfg.kl_energy_cap
            overlapped = timed(make_step("kl", cfg, BoltzmannTarget(proposal.transform, energy_cap=cap,
                                                                   energy_model=model)))
            inline = timed(make_step("kl", cfg, BoltzmannTarget(proposal.transform, model.torch_energy, cap)))
            rows["kl"].append({"kl_batch_size": k, "step_s": overlapped, "step_s_inline_energy": inline,
                               "kl_samples_per_s": k / overlapped, "kl_samples_per_s_per_core": k / overlapped / 2,
                               "kl_samples_per_s_inline_energy": k / inline})
            print(f"kl step, {k:5d} flow samples: {overlapped * 1e3:7.1f} ms, {k / overlapped:6.0f} samples/s "
                  f"({k / overlapped / 2:5.0f} per core); energy inside autograd {inline * 1e3:7.1f} ms "
                  f"({k / inline:6.0f} samples/s)", flush=True)
    if args.json:
        atomic_write_json({"results": rows, "provenance": provenance(system=system.name)}, args.json)


if __name__ == "__main__":
    main()
