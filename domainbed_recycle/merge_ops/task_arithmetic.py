"""Task arithmetic: add the scaled sum of the task vectors to θ0."""

from domainbed_recycle.merge_ops.base import Param, merge_operator, weight_param


@merge_operator(
    "task_arithmetic", row="TaskArithmetic", summary="θ0 + λ·Σ w_k τ_k (λ = 1/K, w = 1: the uniform soup)",
    reference="Ilharco et al. 2023", url="https://arxiv.org/abs/2212.04089",
    params=[
        Param("lam", float, 1.0, "scale λ of the summed task vectors", per_k=True, scale=True,
              grid=(0.5, 1.0, 1.5, 2.0, 3.0), record="lambda"),
        weight_param(),
    ],
)
def task_arithmetic(base, models, *, lam, weight):
    from domainbed_recycle import merging

    return merging.task_arithmetic(base, models, lam, None if set(weight) == {1.0} else weight)
