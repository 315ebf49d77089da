"""Energy throughput: plain single-Context OpenMM loop vs EnergyModel with 1 and 2 workers.

    python -m bgkit.bench.energy [--systems ala2,ala3,ala4] [--seconds 3] [--repeats 3]

Each contender evaluates the same frames (reference structure + 0.01 nm noise)
on the platform the EnergyModel picks; contenders are interleaved and the best
of ``--repeats`` rounds is kept, so background load hurts all alike. Targets on
a 2-core machine: 2 workers >= 1.7x the plain loop (ala2), 1 worker >= 0.85x.
"""
from __future__ import annotations

import argparse
import os
import platform as _platform
import time

import numpy as np


def plain_loop(system, platform: str):
    import openmm
    from openmm import unit

    props = {"Threads": "1"} if platform == "CPU" else {}
    ctx = openmm.Context(system.openmm_system(), openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName(platform), props)
    kj = unit.kilojoule_per_mole

    def run(xyz: np.ndarray) -> np.ndarray:
        out = np.empty(len(xyz))
        for i, frame in enumerate(xyz):
            ctx.setPositions(frame)
            out[i] = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(kj) / system.kT
        return out

    return run


def frames_for(system, seconds: float, rate_guess: float) -> np.ndarray:
    n = max(200, int(seconds * rate_guess))
    rng = np.random.default_rng(0)
    return system.positions[None] + 0.01 * rng.standard_normal((n, system.n_atoms, 3))


def main(argv: list[str] | None = None) -> None:
    from bgkit.energy import EnergyModel
    from bgkit.systems import load_system

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default="ala2,ala3,ala4")
    ap.add_argument("--seconds", type=float, default=3.0, help="target duration of one plain-loop round")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"machine: {_platform.processor() or _platform.machine()}, {os.cpu_count()} cores; OpenMM "
          f"{__import__('openmm').__version__}; best of {args.repeats} interleaved rounds")
    print(f"{'system':6s} {'platform':9s} {'frames':>7s} {'plain/s':>9s} {'1 worker/s':>11s} {'2 workers/s':>12s}"
          f" {'1w/plain':>9s} {'2w/plain':>9s}")
    for name in args.systems.split(","):
        system = load_system(name)
        platform = system.preferred_platform()
        plain = plain_loop(system, platform)
        probe = frames_for(system, 0.0, 0)[:200]
        t = time.perf_counter()
        plain(probe)
        xyz = frames_for(system, args.seconds, len(probe) / (time.perf_counter() - t))
        with EnergyModel(system, n_workers=1) as m1, EnergyModel(system, n_workers=2) as m2:
            ref = plain(xyz)
            assert np.allclose(m1(xyz[:50]), ref[:50], rtol=1e-5) and np.allclose(m2(xyz[:50]), ref[:50], rtol=1e-5)
            best = {"plain": np.inf, "1": np.inf, "2": np.inf}
            for _ in range(args.repeats):
                for key, fn in (("plain", plain), ("1", m1), ("2", m2)):
                    t = time.perf_counter()
                    fn(xyz)
                    best[key] = min(best[key], time.perf_counter() - t)
        rate = {k: len(xyz) / v for k, v in best.items()}
        print(f"{name:6s} {platform:9s} {len(xyz):7d} {rate['plain']:9.0f} {rate['1']:11.0f} {rate['2']:12.0f}"
              f" {rate['1'] / rate['plain']:9.2f} {rate['2'] / rate['plain']:9.2f}", flush=True)


if __name__ == "__main__":
    main()
