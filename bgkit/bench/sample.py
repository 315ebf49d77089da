"""Time to draw N samples with log q and reduced energies from a proposal, split into flow and energy time.

    python -m bgkit.bench.sample --system ala2 [--n 200000] [--model PATH] [--batch-size 2000]

Three measurements in one run, on the same samples:

1. flow only: ``Proposal.sample`` (prior draw, flow, log q in nm coordinates) for all N, the faster of
   one batch at a time on all torch threads and one batch per thread (one intra-op thread each),
   best of ``--rounds``;
2. energy only: ``EnergyModel.evaluate`` of those N configurations (all cores);
3. the ``bgkit sample`` pipeline (``bgkit.sample.draw``), where flow threads draw the next batches
   while the energy workers score the last ones, so its wall time is less than the sum of 1 and 2;
   printed as a ratio to the slower of 1 and 2 (1.0: the overlap hides the faster one completely) and
   to N / (time 1 + time 2), the most any schedule can reach when both stages need the same cores.

With ``--compare`` (default on), step 1 is repeated for a proposal of the same architecture
and size in the other coordinate representation (internal <-> cartesian, freshly initialised:
the cost of a flow does not depend on its weights), interleaved over ``--rounds`` rounds
(best of each), and the ratio of samples/s is printed.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def main(argv: list[str] | None = None) -> None:
    import torch

    from bgkit.energy import EnergyModel, default_n_workers
    from bgkit.proposal import Proposal
    from bgkit.provenance import atomic_write_json, provenance
    from bgkit.sample import draw
    from bgkit.systems import load_system

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", default="ala2")
    ap.add_argument("--model", default=None, help="proposal checkpoint (default: the system's shipped proposal.pt)")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--no-compare", dest="compare", action="store_false",
                    help="skip the same-size proposal in the other coordinate representation")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the flow-only comparison")
    ap.add_argument("--workers", type=int, default=None,
                    help="energy workers of the pipeline (default: all cores; energy only always uses all cores)")
    args = ap.parse_args(argv)
    system = load_system(args.system)
    proposal = Proposal.load(args.model or system.folder / "proposal.pt", system=system)
    all_cores = default_n_workers()
    workers = args.workers or all_cores
    print(f"{system.name}: N={args.n}, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"{workers} energy workers in the pipeline, {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
          flush=True)

    def flow_only(p) -> tuple[float, np.ndarray]:
        generator = torch.Generator().manual_seed(0)
        t = time.perf_counter()
        chunks = [p.sample(min(args.batch_size, args.n - i), generator=generator)
                  for i in range(0, args.n, args.batch_size)]
        return time.perf_counter() - t, np.concatenate([c[0] for c in chunks])

    def flow_only_streams(p) -> float:
        """The same draws as independent batches on one thread per core, one intra-op thread each."""
        threads = torch.get_num_threads()
        generator = torch.Generator().manual_seed(0)
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads) as pool:
                t = time.perf_counter()
                futures = [pool.submit(p.from_prior, p.prior_sample(min(args.batch_size, args.n - i), generator))
                           for i in range(0, args.n, args.batch_size)]
                for f in futures:
                    f.result()
                return time.perf_counter() - t
        finally:
            torch.set_num_threads(threads)

    twin = _twin(proposal, system) if args.compare else None
    times: dict[str, list[float]] = {proposal.transform.kind: []}
    if twin is not None:
        times[twin.transform.kind] = []
    for _ in range(max(1, args.rounds)):
        s_main, xyz = flow_only(proposal)
        times[proposal.transform.kind].append(s_main)
        if twin is not None:
            times[twin.transform.kind].append(flow_only(twin)[0])
    flow_intra_s = min(times[proposal.transform.kind])
    flow_streams_s = min(flow_only_streams(proposal) for _ in range(max(1, args.rounds)))
    flow_s = min(flow_intra_s, flow_streams_s)  # the flow alone at its best on these cores

    with EnergyModel(system, n_workers=all_cores) as model:
        model.evaluate(xyz[:100])  # workers started and warm
        t = time.perf_counter()
        batch = model.evaluate(xyz)
        energy_s = time.perf_counter() - t

    result = draw(proposal, system, n=args.n, batch_size=args.batch_size, seed=0, n_workers=workers, progress=False)
    rows = {
        "n": args.n,
        "energy_workers": workers,
        "torch_threads": torch.get_num_threads(),
        "flow_only_s": flow_s,
        "flow_only_intra_op_s": flow_intra_s,
        "flow_only_streams_s": flow_streams_s,
        "energy_only_s": energy_s,
        "pipeline_s": result.seconds,
        "pipeline_flow_s": result.flow_seconds,
        "pipeline_energy_wait_s": result.energy_seconds,
        "flow_samples_per_s": args.n / flow_s,
        "energy_per_s": args.n / energy_s,
        "pipeline_samples_per_s": args.n / result.seconds,
        "n_nonfinite_energy": int((~np.isfinite(batch.energy_kt)).sum()),
        "coords": proposal.transform.kind,
        "flow_only_s_by_coords": {k: min(v) for k, v in times.items()},
    }
    print(f"flow only   (sample + log q): {flow_s:8.1f} s  {rows['flow_samples_per_s']:9.0f} samples/s "
          f"(best of: one batch at a time on {torch.get_num_threads()} intra-op threads {flow_intra_s:.1f} s, "
          f"{torch.get_num_threads()} batches at a time on one thread each {flow_streams_s:.1f} s)")
    print(f"energy only ({all_cores} workers):     {energy_s:8.1f} s  {rows['energy_per_s']:9.0f} energies/s")
    rows["pipeline_over_slower"] = max(flow_s, energy_s) / result.seconds
    # both stages share the cores: no schedule beats doing each at its full-machine rate, one after the other
    rows["work_bound_samples_per_s"] = args.n / (flow_s + energy_s)
    rows["pipeline_over_work_bound"] = (flow_s + energy_s) / result.seconds
    rows["pipeline_over_flow_intra_op"] = max(flow_intra_s, energy_s) / result.seconds
    print(f"bgkit sample pipeline:        {result.seconds:8.1f} s  {rows['pipeline_samples_per_s']:9.0f} samples/s "
          f"(flow {result.flow_seconds:.1f} s + waiting for energies {result.energy_seconds:.1f} s); "
          f"{rows['pipeline_over_slower']:.2f}x the slower of flow only and energy only")
    print(f"  {rows['pipeline_over_work_bound']:.2f}x the bound of flow and energies sharing the cores "
          f"({rows['work_bound_samples_per_s']:.0f} samples/s = N / (flow only + energy only)); "
          f"{rows['pipeline_over_flow_intra_op']:.2f}x flow only on intra-op threads")
    if twin is not None:
        kinds = {k: args.n / min(v) for k, v in times.items()}
        ratio = kinds["cartesian"] / kinds["internal"]
        rows["cartesian_over_internal_samples_per_s"] = ratio
        print(f"flow only, same {proposal.info['arch']} size: " + ", ".join(f"{k} {v:.0f} samples/s" for k, v in kinds.items())
              + f"; cartesian / internal = {ratio:.2f} (best of {args.rounds} interleaved rounds)")
    if args.json:
        atomic_write_json({"results": rows, "provenance": provenance(system=system.name)}, args.json)



def _twin(proposal, system):
    """A freshly initialised proposal of the same architecture and hyperparameters in the other representation."""
    from bgkit.coords import fit_representation
    from bgkit.md.dataset import system_dataset
    from bgkit.flows import build_flow
    from bgkit.proposal import Proposal

    kind = "cartesian" if proposal.transform.kind == "internal" else "internal"
    rep = fit_representation(kind, system_dataset(system).split("train")[::10], system)
    hp = {k: v for k, v in proposal.info["hparams"].items() if k not in ("periodic", "circular_bins")}
    if rep.periodic:
        hp["periodic"] = list(rep.periodic)
    flow = build_flow(proposal.info["arch"], rep.dim, **hp).to(proposal.dtype).eval()
    return Proposal(flow, rep, proposal.system_info, {"arch": proposal.info["arch"], "hparams": hp})


if __name__ == "__main__":
    main()
