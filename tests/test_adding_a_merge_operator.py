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


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)


def test_the_readme_operator_appears_in_the_cli_the_strategies_and_the_table(tmp_path):
    (python,) = blocks("python")
    (tmp_path / "my_merge.py").write_text(python)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "DRECYCLE_PLUGINS": "my_merge"}
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
    done = _run([sys.executable, "-m", "domainbed_recycle.cli", *listed], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| `median` | `Median` (auxiliary pool) |" in done.stdout
    assert "`lam` default 1, grid {0.5, 1, 2}" in done.stdout

    helped = _run([sys.executable, "-m", "domainbed_recycle.cli", "merge", "--help"], env, tmp_path)
    assert re.search(r"--method \{[^}]*median", helped.stdout) and "--lam LAM" in helped.stdout

    code = ("import json\nfrom domainbed_recycle.strategies import STRATEGIES\n"
            "from domainbed_recycle import merge_ops\ns = STRATEGIES.get('Median')\n"
            "print(json.dumps({'variants': list(s.variants), 'op': s.op.name, 'pools': s.op.members_text(),\n"
            "                  'grid': merge_ops.strategy_grid(s.op)}))\n")
    found = _run([sys.executable, "-c", code], env, tmp_path)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == {"variants": ["Median"], "op": "median", "pools": "auxiliary pool",
                                        "grid": [{"lam": 0.5}, {"lam": 1.0}, {"lam": 2.0}]}

    argv = [str(paths.get(word, word)) for word in merge]
    out = tmp_path / argv[argv.index("--out") + 1]
    merged = _run([sys.executable, "-m", "domainbed_recycle.cli", *argv], env, tmp_path)
    assert merged.returncode == 0, merged.stderr
    models = [load_checkpoint(paths[name])[0] for name in ("RUN_A", "RUN_B", "RUN_C")]
    result = load_checkpoint(out)[0]
    for key, theta0 in base.items():
        if theta0.is_floating_point():
            median = torch.stack([m[key] - theta0 for m in models]).median(dim=0).values
            assert torch.allclose(result[key], theta0 + 0.5 * median, atol=1e-6), key
        else:
            assert torch.equal(result[key], theta0)
