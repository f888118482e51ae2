"""TIES-merging: trim each task vector, elect a sign per entry, average the entries that agree."""

from domainbed_recycle.merge_ops.base import Param, merge_operator, weight_param

KEEP = Param("keep", float, 0.2, "fraction of each task vector kept by the trim (the paper's k)", low=0.0,
             high=1.0, low_open=True, grid=(0.2, 0.5, 1.0), per_model=True)
TRIM = Param("trim", str, "model", "rank the entries to keep over the whole task vector (model, the reference "
             "code) or within each tensor (tensor, mergekit)", choices=("model", "tensor"))


@merge_operator(
    "ties", row="TIES", reference="Yadav et al. 2023", url="https://arxiv.org/abs/2306.01708",
    summary="trim each τ_k to its top-k fraction, elect the sign of Σ w_k τ_k per entry, mean of the "
            "agreeing entries, ×λ",
    params=[Param("lam", float, 1.0, "scale λ of the merged task vector", scale=True, grid=(0.5, 1.0, 1.5),
                  record="lambda"), KEEP, weight_param(), TRIM],
)
def ties(base, models, *, lam, keep, weight, trim):
    from domainbed_recycle import merging

    return merging.ties_merge(base, models, lam, keep, None if set(weight) == {1.0} else weight, trim)
