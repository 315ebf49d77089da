"""Cost of log q: a RegFlow student (one inverse pass) against its CNF teacher (an ODE solve with the
exact divergence), as a ratio measured in one run.

    python -m bgkit.bench.likelihood --system ala2 --student S.pt --teacher T.pt [--n 200000]

Both evaluate log q of the same MD frames (the system's test split, repeated as needed), in
interleaved rounds (best of each). The student is timed on ``--n-student`` frames and the teacher on
``--n-teacher`` frames; both times are extrapolated linearly to ``--n`` (the cost per frame is
constant at these batch sizes) and printed with the ratio, stating which numbers are extrapolated.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def _frames(dataset, n: int) -> np.ndarray:
    test = dataset.split("test")
    reps = -(-n // len(test))
    return np.concatenate([test] * reps)[:n]


def main(argv: list[str] | None = None) -> None:
    import torch

    from bgkit.md.dataset import system_dataset
    from bgkit.proposal import Proposal
    from bgkit.provenance import atomic_write_json, provenance
    from bgkit.systems import load_system

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", default="ala2")
    ap.add_argument("--student", required=True, help="RegFlow (or any classical flow) proposal")
    ap.add_argument("--teacher", required=True, help="CNF teacher checkpoint")
    ap.add_argument("--n", type=int, default=200_000, help="number of samples the times are stated for")
    ap.add_argument("--n-student", type=int, default=20_000)
    ap.add_argument("--n-teacher", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    student = Proposal.load(args.student, system=args.system)
    teacher = Proposal.load(args.teacher, system=args.system)
    dataset = system_dataset(load_system(args.system))  # the system folder's own md/
    xs, xt = _frames(dataset, args.n_student), _frames(dataset, args.n_teacher)
    print(f"{args.system}: student {student.info['arch']} ({args.n_student} frames), teacher "
          f"{teacher.info['arch']} {teacher.info['hparams'].get('method')} atol {teacher.info['hparams'].get('atol')} "
          f"rtol {teacher.info['hparams'].get('rtol')} ({args.n_teacher} frames); torch threads "
          f"{torch.get_num_threads()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)
    best = {"student": np.inf, "teacher": np.inf}
    nfe = 0
    for _ in range(args.rounds):
        for name, prop, x in (("student", student, xs), ("teacher", teacher, xt)):
            t = time.perf_counter()
            prop.log_prob(x, batch_size=2000)
            best[name] = min(best[name], time.perf_counter() - t)
            if name == "teacher":
                nfe = teacher.flow.nfe
    per = {"student": best["student"] / args.n_student, "teacher": best["teacher"] / args.n_teacher}
    row = {"n": args.n, "student_seconds_per_frame": per["student"], "teacher_seconds_per_frame": per["teacher"],
           f"student_seconds_for_n (extrapolated from {args.n_student})": per["student"] * args.n,
           f"teacher_seconds_for_n (extrapolated from {args.n_teacher})": per["teacher"] * args.n,
           "ratio_teacher_over_student": per["teacher"] / per["student"], "teacher_nfe_last_batch": nfe}
    for key, value in row.items():
        print(f"{key:60s} {value:.4g}" if isinstance(value, float) else f"{key:60s} {value}")
    if args.json:
        atomic_write_json({**row, "args": vars(args), "provenance": provenance()}, args.json)


if __name__ == "__main__":
    main()
