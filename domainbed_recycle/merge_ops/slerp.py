"""SLERP: spherical interpolation between θ0 and one fine-tuned model, tensor by tensor."""

from domainbed_recycle.merge_ops.base import Param, merge_operator


@merge_operator(
    "slerp", row="SLERP", max_models=1, reference="Shoemake 1985", url="https://en.wikipedia.org/wiki/Slerp",
    summary="per tensor, the point at fraction t of the great-circle arc from θ0 to θ_ft (linear where "
            "the two are nearly colinear)",
    params=[Param("t", float, 0.5, "position t along the arc (0: θ0, 1: the fine-tuned model)", low=0.0, high=1.0,
                  grid=(0.0, 0.25, 0.5, 0.75, 1.0))],
)
def slerp(base, models, *, t):
    from domainbed_recycle import merging

    return merging.slerp(base, models[0], t)
