"""Uniform (or weighted) weight average of the fine-tuned models: a model soup; no θ0."""

from domainbed_recycle.merge_ops.base import merge_operator, weight_param


@merge_operator(
    "uniform", summary="Σ w_k θ_k / Σ w_k: the uniform soup when every w_k = 1", params=[weight_param()],
    reference="Wortsman et al. 2022", url="https://arxiv.org/abs/2203.05482", needs_base=False,
)
def uniform(base, models, *, weight):
    from domainbed_recycle import averaging

    if len(set(weight)) == 1:  # equal weights: the uniform average, exactly
        return averaging.uniform_average(models)
    return averaging.weighted_average(models, weight)
