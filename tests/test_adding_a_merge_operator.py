"""README's "Adding a merging operator", as written: its Python block becomes a user module outside the
package, `DRECYCLE_PLUGINS` names it, and the new operator is a `drecycle merge --method` with its own
option, a row of `--list` (README's table), a strategy row, and its README command merges real files
into the tensors the block's formula gives. One file, nothing else edited."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from domainbed_recycle.checkpoints import load_checkpoint, save_checkpoint
from domainbed_recycle.networks import build_model

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Adding a merging operator"
ARCH = {"featurizer": "small_cnn", "input_shape": [3, 28, 28], "num_classes": 4, "width": 4}


def section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    part = text[text.index(HEADING) + len(HEADING):]
    return part[: re.search(r"^## ", part, flags=re.M).start()]


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", section(), flags=re.M | re.S)


CHECK = """
import contextlib, io, json, sys
from domainbed_recycle import cli, merge_ops
from domainbed_recycle.strategies import STRATEGIES

def main(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        code = cli.main(argv)
    return out.getvalue()

strategy = STRATEGIES.get("Median")
print(json.dumps({"list": main(sys.argv[1].split()), "help": main(["merge", "--help"]),
                  "variants": list(strategy.variants), "op": strategy.op.name, "pools": strategy.op.members_text(),
                  "grid": merge_ops.strategy_grid(strategy.op), "merge": cli.main(json.loads(sys.argv[2]))}))
"""


def test_the_readme_operator_appears_in_the_cli_the_strategies_and_the_table(tmp_path):
    (python,) = blocks("python")
    (tmp_path / "my_merge.py").write_text(python)
    torch.manual_seed(0)
    base = build_model(ARCH).state_dict()
    paths = {"LP_RUN": save_checkpoint(tmp_path / "base.safetensors", base, {"arch": ARCH})}
    for name in ("RUN_A", "RUN_B", "RUN_C"):
        state = {k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.items()}
        paths[name] = save_checkpoint(tmp_path / f"{name}.safetensors", state, {"arch": ARCH})
    commands = [shlex.split(line.split("drecycle ", 1)[1]) for line in blocks("bash")[0].splitlines()
                if "drecycle " in line]
    listed, merge = commands
    assert listed == ["merge", "--list"]
    argv = [str(paths.get(word, word)) for word in merge]

    # one process, as a user's: the plugin is imported from $DRECYCLE_PLUGINS, nothing else names it
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "DRECYCLE_PLUGINS": "my_merge"}
    done = subprocess.run([sys.executable, "-c", CHECK, " ".join(listed), json.dumps(argv)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert "| `median` | `Median` (auxiliary pool) |" in found["list"]
    assert "`lam` default 1, grid {0.5, 1, 2}" in found["list"]
    assert re.search(r"--method \{[^}]*median", found["help"]) and "--lam LAM" in found["help"]
    assert {k: found[k] for k in ("variants", "op", "pools", "grid")} == {
        "variants": ["Median"], "op": "median", "pools": "auxiliary pool",
        "grid": [{"lam": 0.5}, {"lam": 1.0}, {"lam": 2.0}]}
    assert found["merge"] == 0

    out = tmp_path / argv[argv.index("--out") + 1]
    models = [load_checkpoint(paths[name])[0] for name in ("RUN_A", "RUN_B", "RUN_C")]
    result = load_checkpoint(out)[0]
    for key, theta0 in base.items():
        if theta0.is_floating_point():
            median = torch.stack([m[key] - theta0 for m in models]).median(dim=0).values
            assert torch.allclose(result[key], theta0 + 0.5 * median, atol=1e-6), key
        else:
            assert torch.equal(result[key], theta0)
