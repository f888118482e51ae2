"""DARE-TIES: DARE's drop and rescale, then TIES-merging."""

from domainbed_recycle.merge_ops.base import Param, merge_operator, weight_param
from domainbed_recycle.merge_ops.dare import SEED_PARAM, P
from domainbed_recycle.merge_ops.ties import KEEP, TRIM


@merge_operator(
    "dare_ties", reference="Yu et al. 2024", url="https://arxiv.org/abs/2311.03099",
    summary="DARE's drop and rescale of each τ_k, then TIES",
    params=[Param("lam", float, 1.0, "scale λ of the merged task vector", record="lambda"),
            KEEP, P, SEED_PARAM, weight_param(), TRIM],
)
def dare_ties(base, models, *, lam, keep, p, seed, weight, trim):
    from domainbed_recycle import merging

    dropped = list(merging.dare(base, models, p, seed))
    return merging.ties_merge(base, dropped, lam, keep, None if set(weight) == {1.0} else weight, trim)
