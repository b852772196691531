"""Every runnable snippet of the README runs as written, at the small sizes named here.

The Python blocks run in order in one namespace, as a reader pasting them into one session would;
the `collapse analyze` command on the published table runs as printed. The only changes are the
substitutions below (a local tagged corpus instead of the Brown download, fewer steps), each of
which must still find its text, so a README edit cannot silently bypass them. The "Real models"
block is a synopsis with placeholders in capitals (PATH, TABLE.csv), not a runnable snippet.
"""

import re
import shlex
from pathlib import Path

import pytest

from experiments.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TAGGED = ["The/at cat/nn sat/vbd on/in the/at mat/nn ./.", "The/at dog/nn sat/vbd on/in the/at rug/nn ./.",
          "A/at cat/nn ran/vbd to/in the/at mat/nn ./.", "The/at dog/nn ran/vbd to/in a/at rug/nn ./."] * 4

# block index -> (text in the README, what the test runs instead)
SUBSTITUTIONS = {
    2: [("steps=20_000", "steps=300")],
    4: [('fetch("brown-tagged")', "TAGGED_DIR"), ("vocab_size=200", "vocab_size=10"), ("min_count=20", "min_count=2"),
        ("FiniteLMConfig(dim=128, layers=4, steps=1000)", "FiniteLMConfig(dim=16, layers=2, steps=20)")],
}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_python_snippets_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippets write stats.safetensors and tf.ckpt where they run
    tagged = tmp_path / "tagged"
    tagged.mkdir()
    (tagged / "ca01.txt").write_text("\n".join(TAGGED) + "\n")
    blocks = python_blocks()
    assert len(blocks) == 6 and set(SUBSTITUTIONS) <= set(range(len(blocks)))
    namespace = {"TAGGED_DIR": str(tagged)}
    for i, code in enumerate(blocks):
        for old, new in SUBSTITUTIONS.get(i, []):
            assert old in code, f"README block {i} no longer holds {old!r}"
            code = code.replace(old, new)
        exec(compile(code, f"README python block {i}", "exec"), namespace)
    # What the blocks promise, on what they computed.
    assert namespace["stats"].num_classes == 10 and (tmp_path / "stats.safetensors").is_file()
    assert namespace["result"].H.shape == (32, 60) and namespace["L_in"].shape == (30, 60)
    assert namespace["run"].history[-1]["step"] == 20 and (tmp_path / "tf.ckpt").is_file()
    assert namespace["W"].shape == (24, 16)
    assert namespace["r"].history[-1]["objective"] == pytest.approx(0.00512407, rel=1e-6)


def test_the_published_table_command_runs_as_printed(tmp_path, capsys):
    command = re.search(r"```bash\n(collapse analyze .*?)```", README, re.S).group(1).replace("\\\n", " ")
    argv = shlex.split(command)[1:]
    assert argv[argv.index("--out") + 1] == "runs/lc-table"
    argv[argv.index("--out") + 1] = str(tmp_path / "lc-table")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for label, r2 in (("log10(cdnv_mean)", "0.916"), ("matches", "0.891"), ("interfere_std", "0.875"),
                      ("log_norm_cov", "0.865"), ("log_dist_std", "0.858"), ("unc3_cov", "0.693"),
                      ("sims_mean", "0.312")):
        assert re.search(rf"\| {re.escape(label)} \| 230 \| {r2} \|", printed), label


@pytest.mark.parametrize("phrase", ["../shared", "shared/data"])
def test_the_project_reads_nothing_outside_its_clone(phrase):
    """Reference data lives in data/ (with its source); no code, test or doc reaches beside the clone."""
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and p.suffix in (".py", ".md", ".toml", ".cfg") and ".venv" not in p.parts
                 and p.resolve() != Path(__file__).resolve() and phrase in p.read_text(errors="ignore")]
    assert offenders == []
    assert (ROOT / "data" / "lc-2024_05_18.csv").stat().st_size == 108_362
    assert "rhubarbwu/linguistic-collapse" in (ROOT / "data" / "README.md").read_text()
