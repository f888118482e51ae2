"""Cross-check: this harness's merging operators against mergekit's and FusionBench's, on the same inputs.

    python scripts/merging_crosscheck.py [--out results/merging_crosscheck]

Needs `pip install -e '.[crosscheck]'`: mergekit and fusion-bench (one not installed is reported as skipped). The
inputs are the state dicts of a two-layer MLP θ0 (float32) and K fine-tuned models θ0 + τ_k, with a
shared direction in the τ_k so that their cosines are positive (Model Stock's regime). Every operator is
called through its registered declaration (`merge_ops`), as `drecycle merge` and the strategies call it;
each library through its public entry point (mergekit `merge_state_dicts`, FusionBench's algorithm
classes on a `BaseModelPool`). Each case where the two definitions agree must give the same tensors to
float tolerance; each case where they differ is measured, and says how. Writes `report.md` and
`crosscheck.json` in --out. `tests/test_merging_crosscheck.py` runs the same cases when the libraries are
installed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import math
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from domainbed_recycle import merge_ops, merging, provenance

ATOL, RTOL = 1e-6, 1e-5  # float32 inputs: the harness computes in float64, the libraries in float32
SEED = 1234


@dataclass
class Case:
    """One comparison: our operator and another library's on the same inputs."""

    operator: str
    library: str
    theirs: str  # their call
    ours: str  # our call
    expect_equal: bool  # True: the definitions agree here; False: a measured difference
    run: Callable[[], tuple[dict, dict]]  # -> (our state dict, theirs)
    note: str = ""


def mlp() -> nn.Module:
    """8 -> 16 -> 4; every tensor's size (128, 16, 64, 4) and the total (212) are multiples of 4, so a kept
    fraction of 0.25 or 0.5 is a whole number of entries for every library's rounding."""
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def inputs(k: int = 3) -> tuple[nn.Module, list[nn.Module]]:
    """θ0 and K fine-tuned copies: τ_k = 0.05·shared + 0.05·own noise (pairwise cosines about 0.5)."""
    torch.manual_seed(SEED)
    base = mlp()
    shared = {name: torch.randn_like(p) for name, p in base.named_parameters()}
    models = []
    for _ in range(k):
        model = copy.deepcopy(base)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.add_(0.05 * shared[name] + 0.05 * torch.randn_like(p))
        models.append(model)
    return base, models


def sd(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def ours(name: str, base: nn.Module | None, models: list[nn.Module], **given) -> dict:
    """Our registered operator `name`, with its parameters checked as the command line checks them."""
    op = merge_ops.get(name)
    merged, _ = op(sd(base) if base is not None else None, [sd(m) for m in models],
                   **op.arguments(len(models), given))
    return merged


# ---------------------------------------------------------------- mergekit


def mergekit_cases() -> list[Case]:
    from mergekit.merge_methods.api import merge_state_dicts

    def mk(method: str, base: nn.Module, models: list[nn.Module], **parameters) -> dict:
        return merge_state_dicts([sd(base), *map(sd, models)], method, parameters=parameters, base=0)

    def task_arithmetic() -> tuple[dict, dict]:
        base, models = inputs()
        return (ours("task_arithmetic", base, models, lam=0.3, weight=[0.5, 1.0, 2.0]),
                mk("task_arithmetic", base, models, weight=[0.5, 1.0, 2.0], **{"lambda": 0.3}))

    def ties_tensor() -> tuple[dict, dict]:
        base, models = inputs()
        return (ours("ties", base, models, keep=0.25, lam=1.3, weight=[0.5, 1.0, 2.0], trim="tensor"),
                mk("ties", base, models, density=0.25, weight=[0.5, 1.0, 2.0], **{"lambda": 1.3}))

    def ties_model() -> tuple[dict, dict]:
        base, models = inputs()
        return ours("ties", base, models, keep=0.25), mk("ties", base, models, density=0.25, weight=1.0)

    def dare_masks(base: nn.Module, models: list[nn.Module], density: float) -> list[dict[str, torch.Tensor]]:
        """The masks mergekit's random sparsification draws: torch.bernoulli on the global generator, tensor by
        tensor and, within a tensor, model by model (the order `merge_state_dicts` merges in)."""
        torch.manual_seed(SEED)
        masks: list[dict[str, torch.Tensor]] = [{} for _ in models]
        for key, t in sd(base).items():
            for index in range(len(models)):
                masks[index][key] = torch.bernoulli(torch.full_like(t, density, dtype=torch.float32)).bool()
        return masks

    def dare_same(p: float, *, ties: bool, rescale: bool) -> tuple[dict, dict]:
        base, models = inputs()
        masks = dare_masks(base, models, 1 - p)
        theta0 = sd(base)
        dropped = [merging.drop_and_rescale(theta0, sd(m), mask, p) for m, mask in zip(models, masks, strict=True)]
        mine = merging.ties_merge(theta0, dropped, 1.0, 1.0) if ties else merging.task_arithmetic(theta0, dropped, 1.0)
        torch.manual_seed(SEED)
        if ties:  # its disjoint mean divides by the weights, so 1/(1 - p) goes to lambda
            theirs = mk("dare_ties", base, models, density=1 - p, weight=1.0, rescale=False, normalize=True,
                        **{"lambda": 1 / (1 - p)})
        else:
            theirs = mk("dare_linear", base, models, density=1 - p, weight=1 / (1 - p) if not rescale else 1.0,
                        rescale=rescale)
        return mine, theirs

    def model_stock(k: int) -> Callable[[], tuple[dict, dict]]:
        def run() -> tuple[dict, dict]:
            base, models = inputs(k)
            return ours("model_stock", base, models), mk("model_stock", base, models)
        return run

    def slerp() -> tuple[dict, dict]:
        base, models = inputs()
        with torch.no_grad():  # one tensor colinear with θ0's: both fall back to linear interpolation
            models[0][2].bias.copy_(1.5 * base[2].bias)
        return ours("slerp", base, models[:1], t=0.3), mk("slerp", base, models[:1], t=0.3)

    def linear() -> tuple[dict, dict]:
        base, models = inputs()
        return (ours("uniform", None, models, weight=[1.0, 2.0, 3.0]),
                merge_state_dicts([*map(sd, models)], "linear", parameters={"weight": [1.0, 2.0, 3.0]}))

    def wise_ft() -> tuple[dict, dict]:
        base, models = inputs()
        return (ours("wise_ft", base, models[:1], alpha=0.3),
                merge_state_dicts([sd(base), sd(models[0])], "linear", parameters={"weight": [0.7, 0.3]}))

    return [
        Case("task_arithmetic", "mergekit", "task_arithmetic, weight [0.5, 1, 2], lambda 0.3",
             "task_arithmetic, weight [0.5, 1, 2], lam 0.3", True, task_arithmetic),
        Case("ties", "mergekit", "ties, density 0.25, weight [0.5, 1, 2], lambda 1.3",
             "ties, keep 0.25, weight [0.5, 1, 2], lam 1.3, trim tensor", True, ties_tensor),
        Case("ties", "mergekit", "ties, density 0.25", "ties, keep 0.25 (trim model, the default)", False,
             ties_model, "mergekit trims each tensor to its top 25%; the reference code (and our default) "
             "ranks the whole task vector: a different set of entries survives"),
        Case("dare", "mergekit", "dare_linear, density 0.5, rescale false, weight 1/(1 − p) = 2",
             "drop_and_rescale with mergekit's masks, p 0.5, then task_arithmetic, lam 1", True,
             lambda: dare_same(0.5, ties=False, rescale=False),
             "same masks: replayed from the global generator in mergekit's order (tensor, then model); mergekit "
             "has no 1/(1 − p) rescale, so the weight carries it"),
        Case("dare", "mergekit", "dare_linear, density 0.5 (rescale true, its default)",
             "same masks, 1/(1 − p) rescale", False, lambda: dare_same(0.5, ties=False, rescale=True),
             "mergekit's rescale matches each dropped tensor's L1 norm to the undropped one's; DARE's paper "
             "(and we) divide by 1 − p"),
        Case("dare_ties", "mergekit", "dare_ties, density 0.5, rescale false, normalize true, lambda 2",
             "same masks, then ties_merge, keep 1 (no magnitude trim), lam 1", True,
             lambda: dare_same(0.5, ties=True, rescale=False),
             "mergekit's dare_ties has no magnitude trim and, by default (normalize false), sums the agreeing "
             "entries instead of averaging them"),
        Case("model_stock", "mergekit", "model_stock, 2 models", "model_stock, 2 models", True, model_stock(2)),
        Case("model_stock", "mergekit", "model_stock, 3 models", "model_stock, 3 models", True, model_stock(3)),
        Case("slerp", "mergekit", "slerp, t 0.3 (base θ0)", "slerp, t 0.3", True, slerp),
        Case("uniform", "mergekit", "linear, weight [1, 2, 3]", "uniform, weight [1, 2, 3]", True, linear),
        Case("wise_ft", "mergekit", "linear on [θ0, θ_ft], weight [0.7, 0.3]", "wise_ft, alpha 0.3", True, wise_ft),
    ]


# ---------------------------------------------------------------- FusionBench


def fusion_bench_cases() -> list[Case]:
    from fusion_bench.method.dare.task_arithmetic import DareTaskArithmetic
    from fusion_bench.method.dare.ties_merging import DareTiesMerging
    from fusion_bench.method.model_stock.model_stock import ModelStock
    from fusion_bench.method.simple_average import SimpleAverageAlgorithm
    from fusion_bench.method.slerp.slerp import SlerpMergeAlgorithm
    from fusion_bench.method.task_arithmetic.task_arithmetic import TaskArithmeticAlgorithm
    from fusion_bench.method.ties_merging.ties_merging import TiesMergingAlgorithm
    from fusion_bench.method.weighted_average.weighted_average import WeightedAverageAlgorithm
    from fusion_bench.modelpool import BaseModelPool

    def pool(base: nn.Module | None, models: list[nn.Module]) -> BaseModelPool:
        named = {f"m{i}": copy.deepcopy(m) for i, m in enumerate(models)}  # its algorithms edit models in place
        return BaseModelPool({"_pretrained_": copy.deepcopy(base), **named} if base is not None else named)

    def task_arithmetic() -> tuple[dict, dict]:
        base, models = inputs()
        return ours("task_arithmetic", base, models, lam=0.3), sd(TaskArithmeticAlgorithm(scaling_factor=0.3).run(
            pool(base, models)))

    def ties() -> tuple[dict, dict]:
        base, models = inputs()
        d = sum(p.numel() for p in base.parameters())
        n_keep = math.ceil(0.25 * d)  # ours keeps ceil(k·d); FusionBench int(K·d) + 1 (see the note)
        algorithm = TiesMergingAlgorithm(scaling_factor=1.3, threshold=(n_keep - 0.5) / d, remove_keys=[],
                                         merge_func="mean")
        return ours("ties", base, models, keep=0.25, lam=1.3), sd(algorithm.run(pool(base, models)))

    def ties_fraction() -> tuple[dict, dict]:
        base, models = inputs()
        algorithm = TiesMergingAlgorithm(scaling_factor=1.3, threshold=0.25, remove_keys=[], merge_func="mean")
        return ours("ties", base, models, keep=0.25, lam=1.3), sd(algorithm.run(pool(base, models)))

    def dare() -> tuple[dict, dict]:
        base, models = inputs()
        mine = ours("dare", base, models, p=0.6, seed=SEED, lam=0.7)
        torch.manual_seed(SEED)  # its masks come from the global generator: the same stream as our seeded one
        algorithm = DareTaskArithmetic(scaling_factor=0.7, sparsity_ratio=0.6, only_on_linear_weights=False)
        return mine, sd(algorithm.run(pool(base, models)))

    def dare_ties() -> tuple[dict, dict]:
        base, models = inputs()
        mine = ours("dare_ties", base, models, p=0.6, seed=SEED, lam=1.3, keep=0.25)
        d = sum(p.numel() for p in base.parameters())
        torch.manual_seed(SEED)
        algorithm = DareTiesMerging(sparsity_ratio=0.6, only_on_linear_weights=False, rescale=True, scaling_factor=1.3,
                                    threshold=(math.ceil(0.25 * d) - 0.5) / d, remove_keys=[], merge_func="mean")
        return mine, sd(algorithm.run(pool(base, models)))

    def model_stock(k: int) -> Callable[[], tuple[dict, dict]]:
        def run() -> tuple[dict, dict]:
            base, models = inputs(k)
            return ours("model_stock", base, models), sd(ModelStock().run(pool(base, models)))
        return run

    def slerp() -> tuple[dict, dict]:
        base, models = inputs()
        with torch.no_grad():
            models[0][2].bias.copy_(1.5 * base[2].bias)
        two = BaseModelPool({"a": copy.deepcopy(base), "b": copy.deepcopy(models[0])})  # θ0 first: t = 0
        theirs = SlerpMergeAlgorithm(t=0.3).run(two)
        return ours("slerp", base, models[:1], t=0.3), sd(theirs)

    def uniform() -> tuple[dict, dict]:
        base, models = inputs()
        return ours("uniform", None, models), sd(SimpleAverageAlgorithm().run(pool(None, models)))

    def weighted() -> tuple[dict, dict]:
        base, models = inputs()
        algorithm = WeightedAverageAlgorithm(normalize=True, weights=[1.0, 2.0, 3.0], verbose=False)
        return ours("uniform", None, models, weight=[1.0, 2.0, 3.0]), sd(algorithm.run(pool(None, models)))

    return [
        Case("uniform", "FusionBench", "SimpleAverageAlgorithm()", "uniform", True, uniform),
        Case("uniform", "FusionBench", "WeightedAverageAlgorithm(normalize=True, weights=[1, 2, 3])",
             "uniform, weight [1, 2, 3]", True, weighted),
        Case("task_arithmetic", "FusionBench", "TaskArithmeticAlgorithm(scaling_factor=0.3)",
             "task_arithmetic, lam 0.3", True, task_arithmetic),
        Case("ties", "FusionBench", "TiesMergingAlgorithm(scaling_factor=1.3, threshold=(n − ½)/d, merge_func=mean)",
             "ties, keep 0.25, lam 1.3", True, ties,
             "FusionBench (as the TIES reference code) keeps int(K·d) + 1 entries of the d-entry task vector "
             "(kthvalue(d − int(K·d)) with ≥): one more than K·d; given K = (n − ½)/d it keeps our n = ⌈0.25·d⌉"),
        Case("ties", "FusionBench", "TiesMergingAlgorithm(scaling_factor=1.3, threshold=0.25, merge_func=mean)",
             "ties, keep 0.25, lam 1.3", False, ties_fraction,
             "the same fraction K = 0.25 of d = 212 entries: FusionBench keeps 54 per task vector, we keep 53"),
        Case("dare", "FusionBench", "DareTaskArithmetic(scaling_factor=0.7, sparsity_ratio=0.6), torch.manual_seed(s)",
             "dare, p 0.6, seed s, lam 0.7", True, dare,
             "same masks: its torch.rand_like(τ) > p on the global generator seeded with s draws the stream our "
             "seeded generator draws (u ≥ p: the two differ only where u = p exactly)"),
        Case("dare_ties", "FusionBench", "DareTiesMerging(sparsity_ratio=0.6, rescale=True, scaling_factor=1.3, "
             "threshold=(n − ½)/d, merge_func=mean), torch.manual_seed(s)",
             "dare_ties, p 0.6, seed s, lam 1.3, keep 0.25", True, dare_ties,
             "same masks as for DARE; the keep count as for TIES"),
        Case("model_stock", "FusionBench", "ModelStock(), 2 models", "model_stock, 2 models", True, model_stock(2)),
        Case("model_stock", "FusionBench", "ModelStock(), 3 models", "model_stock, 3 models", False, model_stock(3),
             "with N > 2 models FusionBench averages the pairwise angles and takes the cosine of the mean; we "
             "(and mergekit) average the pairwise cosines"),
        Case("slerp", "FusionBench", "SlerpMergeAlgorithm(t=0.3)", "slerp, t 0.3", True, slerp),
    ]


# operators registered here that a library has no working entry point for, and why (checked in `report`)
NOT_COMPARED = {
    ("wise_ft", "FusionBench"): "its LinearInterpolationAlgorithm (fusion-bench 0.2.33) asserts "
    "`modelpool.all_model_names == 2`, a list against an int, so every call fails; the same interpolation is its "
    "WeightedAverageAlgorithm, compared as `uniform`",
}

LIBRARIES = {"mergekit": ("mergekit", mergekit_cases), "FusionBench": ("fusion-bench", fusion_bench_cases)}


def compare(ours_sd: dict, theirs_sd: dict) -> dict:
    """Max |difference| over every entry, whether all are equal to float tolerance, and how far our merge
    moved from θ0 (max |merged − θ0|: an 'equal' between two copies of θ0 would prove nothing)."""
    theta0 = sd(inputs(1)[0])
    if set(ours_sd) != set(theirs_sd):
        return {"max_abs_diff": None, "equal": False, "keys": sorted(set(ours_sd) ^ set(theirs_sd))}
    diff = max(float((ours_sd[k].double() - theirs_sd[k].double()).abs().max()) for k in ours_sd)
    equal = all(torch.allclose(ours_sd[k].double(), theirs_sd[k].double(), atol=ATOL, rtol=RTOL) for k in ours_sd)
    changed = sum(int((ours_sd[k] != theirs_sd[k]).sum()) for k in ours_sd)
    total = sum(ours_sd[k].numel() for k in ours_sd)
    moved = max(float((ours_sd[k].double() - theta0[k].double()).abs().max()) for k in ours_sd)
    return {"max_abs_diff": diff, "equal": equal, "entries_not_bitwise_equal": f"{changed}/{total}",
            "max_moved_from_theta0": moved}


def run_cases(library: str) -> list[dict]:
    """Every case of `library` (ImportError when it is not installed)."""
    _, cases = LIBRARIES[library]
    results = []
    for case in cases():
        mine, theirs = case.run()
        results.append({"operator": case.operator, "library": library, "theirs": case.theirs, "ours": case.ours,
                        "definitions_agree": case.expect_equal, "note": case.note, **compare(mine, theirs)})
    return results


def report(results: list[dict], versions: dict[str, str], skipped: dict[str, str]) -> str:
    lines = ["# Merging operators: this harness vs mergekit and FusionBench", "",
             "Produced by `pip install -e '.[crosscheck]'; python scripts/merging_crosscheck.py` (do not edit by hand)."
             " Inputs: a two-layer MLP "
             "θ0 (float32, 212 entries) and 3 fine-tuned models θ0 + τ_k. 'equal': every entry within "
             f"atol {ATOL:g} + rtol {RTOL:g} (we compute in float64, the libraries in float32).", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    for library, reason in skipped.items():
        lines += [f"**{library} not compared**: {reason}", ""]
    lines += ["| operator | library | their call | our call | definitions | max \\|ours − θ0\\| "
              "| max \\|ours − theirs\\| | equal |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        diff = "—" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
        moved = "—" if r.get("max_moved_from_theta0") is None else f"{r['max_moved_from_theta0']:.2e}"
        lines.append(f"| `{r['operator']}` | {r['library']} | {r['theirs']} | {r['ours']} | "
                     f"{'agree' if r['definitions_agree'] else 'differ'} | {moved} | {diff} | "
                     f"{'**yes**' if r['equal'] else 'no'} |")
    lines += ["", "## Where the definitions differ (and which follows the paper)", ""]
    for r in results:
        if r["note"]:
            lines.append(f"- `{r['operator']}` vs {r['library']} ({r['theirs']}): {r['note']}.")
    lines += ["", "## Operators not compared", ""]
    for library in LIBRARIES:
        if library in skipped:
            continue
        compared = {r["operator"] for r in results if r["library"] == library}
        for name in sorted(set(merge_ops.MERGE_OPS.names()) - compared):
            why = NOT_COMPARED.get((name, library), "no case written for it")
            lines.append(f"- `{name}` vs {library}: {why}.")
    lines += ["", "Which one this harness follows: TIES trims over the whole task vector, as the paper's reference "
              "code (`trim tensor` gives mergekit's per-tensor trim) and keeps ⌈k·d⌉ entries, the paper's top-k% "
              "(the reference code keeps one more); DARE rescales by 1/(1 − p), as the paper; Model Stock "
              "averages pairwise cosines for N > 2 (the paper states the N = 2 case; mergekit does the same) "
              "and clips a negative mean cosine to 0 (θ0 kept; mergekit keeps θ0 only at the singular point); "
              "SLERP is the per-tensor definition both libraries use. Sign election: an entry whose trimmed "
              "task vectors sum to exactly 0 gets no update here; mergekit elects + and FusionBench the sign of "
              "the whole vector's majority (no such entry occurs on these inputs).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/merging_crosscheck", help="folder for report.md and crosscheck.json")
    args = parser.parse_args(argv)
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "domainbed-recycle": provenance.versions().get("domainbed-recycle", "?"),
                "git commit": str(provenance.git_commit())}
    results, skipped = [], {}
    for library, (distribution, _) in LIBRARIES.items():
        try:
            versions[distribution] = importlib.metadata.version(distribution)
            results += run_cases(library)
        except ImportError as error:  # not installed here (or one of its own imports is missing)
            skipped[library] = f"cannot import it here ({error})"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crosscheck.json").write_text(json.dumps({"versions": versions, "skipped": skipped, "results": results},
                                                    indent=1))
    (out / "report.md").write_text(report(results, versions, skipped))
    failed = [r for r in results if r["definitions_agree"] and not r["equal"]]
    print(report(results, versions, skipped))
    print(f"{len(results)} comparisons, {len(failed)} unequal where the definitions agree", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
