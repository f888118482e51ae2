"""WiSE-FT: interpolate linearly between θ0 and one fine-tuned model."""

from domainbed_recycle.merge_ops.base import Param, merge_operator


@merge_operator(
    "wise_ft", row="WiSE-FT", max_models=1, reference="Wortsman et al. 2022", url="https://arxiv.org/abs/2109.01903",
    summary="(1 − α)·θ0 + α·θ_ft",
    params=[Param("alpha", float, 0.5, "weight α of the fine-tuned model", scale=True,
                  grid=(0.0, 0.25, 0.5, 0.75, 1.0))],
)
def wise_ft(base, models, *, alpha):
    from domainbed_recycle import merging

    return merging.wise_ft(base, models[0], alpha)
