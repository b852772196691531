"""Benchmark: the convex twins at three sizes, on one thread.

    python -m benchmarks.convex              # (V, m) = (8, 10), (30, 60), (104, 404)
    python -m benchmarks.convex --skip-cvxpy # first-order solves only

For each size: the NTP-SVM (cvxpy; the solver chosen from the problem's size: Clarabel while its
KKT matrix fits, else SCS), solve_logits at lambda = 1e-3 from a cold start (FISTA), a path of four
lambdas with warm starts against four cold solves (iterations and seconds), and, where Clarabel
fits, the same lambda = 1e-3 problem in cvxpy for the time and objective of the interior-point
solver. (104, 404) is Zhao et al.'s "simplified TinyStories" size: supports of 1-6 tokens.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ufm.convex import LogitsProblem, choose_solver, interior_point_bytes, ntp_svm_result
from ufm.targets import random_supports

SIZES = {(8, 10): (1, 3), (30, 60): (2, 5), (104, 404): (1, 6)}
PATH = [1e-2, 1e-3, 1e-4, 1e-5]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-cvxpy", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("one thread; times in seconds")
    for (v, m), support in SIZES.items():
        t = random_supports(m, v, support, probs="zipf", seed=0)
        S = t.support()
        print(f"\n(V, m) = ({v}, {m}), supports {support[0]}-{support[1]}, entropy {t.entropy:.4f}; "
              f"Clarabel KKT estimate {interior_point_bytes(v + m) / 2**30:.3g} GiB -> {choose_solver(v + m, None)}")
        if not args.skip_cvxpy:
            svm, sec = timed(lambda: ntp_svm_result(S))
            top = (svm.solution * S).sum(0) / S.sum(0)
            margin = (top - np.where(S > 0, -np.inf, svm.solution).max(0)).min()
            print(f"  ntp_svm ({svm.solver}, {svm.status}): {sec:.2f} s, ||L_mm||_* {svm.value:.6f}, "
                  f"solver residual {svm.residual:.2e}, smallest margin after polishing {margin:.12f}")
        one, sec = timed(lambda: LogitsProblem(t).solve(1e-3))
        print(f"  solve_logits(1e-3) FISTA cold: {sec:.2f} s, {one.iterations} iterations, objective "
              f"{one.value:.10f}, duality gap {one.residual:.2e}")
        cold, sec_cold = timed(lambda: [LogitsProblem(t).solve(lam) for lam in PATH])
        warm, sec_warm = timed(lambda: LogitsProblem(t).path(PATH))
        print(f"  path {PATH}: warm {sec_warm:.2f} s / {sum(r.iterations for r in warm)} iterations, "
              f"cold {sec_cold:.2f} s / {sum(r.iterations for r in cold)} iterations, "
              f"warm/cold time {sec_warm / sec_cold:.2f}")
        if not args.skip_cvxpy and choose_solver(v + m, None) == "CLARABEL":
            ref, sec = timed(lambda: LogitsProblem(t, solver="CLARABEL").solve(1e-3))
            print(f"  solve_logits(1e-3) Clarabel: {sec:.2f} s, objective {ref.value:.10f} "
                  f"(FISTA - Clarabel {one.value - ref.value:+.2e}); FISTA / Clarabel time {one.seconds / sec:.3f}")


if __name__ == "__main__":
    main()
