"""Mutation-testing helpers around mutmut (docs/mutation.md), outside CI.

    python tools/mutation.py sample --per-module 60 --seed 0   # names of a random sample of mutants
    python tools/mutation.py report                            # verdicts per module, with the score

Both read mutmut's own records (``mutants/**/*.py.meta``) and run where mutmut is installed:
``sample`` needs the mutants generated (any ``mutmut run``), ``report`` the verdicts. Mutants judged equivalent are listed, with the reason,
in ``docs/mutation-equivalent.txt``; the score is killed / (checked - equivalent), with a Wilson 95%
interval when only a sample was checked.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "docs" / "mutation-equivalent.txt"
UNCHECKED = "not checked"  # mutmut's verdict for a mutant not run yet


def verdicts(mutants: Path) -> dict[str, dict[str, str]]:
    """{module file: {mutant name: verdict}} from mutmut's records, named by mutmut's own table."""
    from mutmut.stats import status_by_exit_code  # installed for mutation runs only

    out = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        out[str(meta.relative_to(mutants))[: -len(".meta")]] = {k: status_by_exit_code[v] for k, v in codes.items()}
    return out


def equivalent_names(path: Path = EQUIVALENT) -> set[str]:
    """Mutant names from lines ``name  # reason`` (blank lines and comments skipped)."""
    if not path.exists():
        return set()
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line}


def sample(by_module: dict[str, dict[str, str]], per_module: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = []
    for module, mutants in by_module.items():
        keys = sorted(mutants)
        names += rng.sample(keys, min(per_module, len(keys)))
    return names


def report(by_module: dict[str, dict[str, str]], equivalent: set[str]) -> str:
    rows = ["| module | mutants | checked | killed | timeout | survived | no tests | equivalent | score | 95% interval |",
            "|" + " --- |" * 10]
    for module, mutants in by_module.items():
        counts = Counter(mutants.values())
        checked = sum(n for v, n in counts.items() if v != UNCHECKED)
        # Only a survivor can be equivalent: a listed mutant that a test now kills counts as killed.
        equiv = sum(1 for k, v in mutants.items() if k in equivalent and v == "survived")
        kills = counts["killed"] + counts["timeout"]
        judged = checked - equiv
        score, interval = "-", "-"
        if judged > 0:
            score = f"{kills / judged:.1%}"
            ci = binomtest(kills, judged).proportion_ci(method="wilson")
            interval = f"{ci.low:.1%} - {ci.high:.1%}"
        rows.append(f"| `{module}` | {len(mutants)} | {checked} | {counts['killed']} | {counts['timeout']} | "
                    f"{counts['survived']} | {counts['no tests']} | {equiv} | {score} | {interval} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", type=Path, default=ROOT / "mutants", help="mutmut's working folder")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="print the names of a random sample of mutants, per module")
    s.add_argument("--per-module", type=int, default=60)
    s.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report", help="verdicts per module as a Markdown table, and the survivors")
    r.add_argument("--survivors", action="store_true", help="also list the surviving mutants not judged equivalent")
    args = parser.parse_args(argv)
    by_module = verdicts(args.mutants)
    if not by_module:
        parser.error(f"no mutmut records under {args.mutants}: run `mutmut run` first")
    if args.command == "sample":
        print(" ".join(sample(by_module, args.per_module, args.seed)))
        return
    equivalent = equivalent_names()
    print(report(by_module, equivalent))
    if args.survivors:
        for mutants in by_module.values():
            for name, verdict in sorted(mutants.items()):
                if verdict in ("survived", "no tests") and name not in equivalent:
                    print(verdict, name)


if __name__ == "__main__":
    main()
