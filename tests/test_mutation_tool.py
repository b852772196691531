"""tools/mutation.py's sample, equivalents list and score, on verdicts written by hand (no mutmut)."""

import importlib.util
import math
from pathlib import Path

_spec = importlib.util.spec_from_file_location("mutation_tool", Path(__file__).resolve().parents[1] / "tools" / "mutation.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    centre = (k / n + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(k / n * (1 - k / n) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_score_leaves_out_only_the_equivalent_survivors():
    by_module = {"m.py": {"a1": "killed", "a2": "killed", "a3": "timeout", "a4": "survived", "a5": "survived",
                          "a6": "not checked", "a7": "no tests"}}
    # a4 is equivalent; a1 is listed too but a test kills it: it stays a kill, out of neither count.
    row = tool.report(by_module, {"a4", "a1"}).splitlines()[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # 7 mutants, 6 checked: 2 killed, 1 timeout, 2 survived, 1 no tests; 1 equivalent; 3 / (6 - 1).
    assert cells[:9] == ["`m.py`", "7", "6", "2", "1", "2", "1", "1", "60.0%"]
    low, high = _wilson(3, 5)
    assert cells[9] == f"{low:.1%} - {high:.1%}"


def test_a_module_with_nothing_checked_has_no_score():
    row = tool.report({"m.py": {"a": "not checked"}}, set()).splitlines()[2]
    assert row.endswith("| 0 | 0 | - | - |")


def test_sample_is_seeded_per_module(tmp_path):
    by_module = {"a.py": {f"a{i}": "not checked" for i in range(10)}, "b.py": {"b0": "not checked"}}
    names = tool.sample(by_module, 3, seed=0)
    assert names == tool.sample(by_module, 3, seed=0)
    assert len([n for n in names if n.startswith("a")]) == 3 and names[-1] == "b0"  # b.py has only one
    assert {frozenset(tool.sample(by_module, 3, seed=s)) for s in range(5)} != {frozenset(names)}


def test_equivalent_list_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "equivalent.txt"
    path.write_text("# header\n\nmod.x_f__mutmut_1  # a reason\n  mod.x_g__mutmut_2\n")
    assert tool.equivalent_names(path) == {"mod.x_f__mutmut_1", "mod.x_g__mutmut_2"}
    assert tool.equivalent_names(tmp_path / "absent.txt") == set()
