"""Model Stock: move each layer from θ0 toward the models' mean by a ratio its task vectors' angle gives."""

from domainbed_recycle.merge_ops.base import merge_operator


@merge_operator(
    "model_stock", row="ModelStock", min_models=2, reference="Jang et al. 2024", url="https://arxiv.org/abs/2403.19522",
    summary="per layer t = N·cos/(1 + (N − 1)·cos), cos = mean pairwise cosine of the τ_k (≥ 0); "
            "t·mean θ_k + (1 − t)·θ0",
)
def model_stock(base, models):
    from domainbed_recycle import merging

    state, ratios = merging.model_stock(base, models)
    t = list(ratios.values())
    return state, {"ratio_mean": sum(t) / len(t), "ratio_min": min(t), "ratio_max": max(t)}
