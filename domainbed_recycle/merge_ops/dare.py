"""DARE: drop each task-vector entry at random, rescale the survivors, then task arithmetic."""

from domainbed_recycle.merge_ops.base import SEED, Param, merge_operator, weight_param

P = Param("p", float, 0.5, "drop rate of each task-vector entry", low=0.0, high=1.0, high_open=True,
          grid=(0.3, 0.6, 0.9), per_model=True)
SEED_PARAM = Param(SEED, int, 0, "seed of the drop masks (a strategy seeds them per cell)")


@merge_operator(
    "dare", row="DARE", reference="Yu et al. 2024", url="https://arxiv.org/abs/2311.03099",
    summary="drop each τ entry with probability p, rescale by 1/(1 − p) (seeded masks), then task arithmetic",
    params=[Param("lam", float, 1.0, "scale λ of the summed task vectors", per_k=True, scale=True,
                  grid=(0.5, 1.0, 2.0), record="lambda"), P, SEED_PARAM, weight_param()],
)
def dare(base, models, *, lam, p, seed, weight):
    from domainbed_recycle import merging

    dropped = merging.dare(base, models, p, seed)
    return merging.task_arithmetic(base, dropped, lam, None if set(weight) == {1.0} else weight)
