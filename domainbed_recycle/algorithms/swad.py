"""SWAD (Cha et al. 2021): dense weight averaging over a validation "loss valley".

`LossValley` (pure Python, no torch) decides, from one validation loss per evaluation, which
evaluation segments form the averaging window; `SWAD` keeps a running average of the iterates of
each segment (`averaging.RunningAverage`) and combines the segments of the window.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from domainbed_recycle.algorithms.base import ALGORITHMS, Minibatches
from domainbed_recycle.algorithms.erm import ERM
from domainbed_recycle.averaging import RunningAverage, weighted_average
from domainbed_recycle.hparams_spec import Define, Integer, Real


class LossValley:
    """SWAD's loss-valley window, counted in evaluations.

    Segment k is the set of iterates trained between evaluation k-1 and evaluation k (0-based; segment
    0 starts at the first step); `losses[k]` is the validation loss measured at evaluation k, i.e. at
    the end of segment k.

    - Start. At the first evaluation t >= n_converge - 1 whose last `n_converge` losses have their
      minimum at the oldest one (m = t - n_converge + 1, ties count as a minimum), the valley is found:
      threshold = mean(losses[m..t]) * (1 + tolerance_ratio). Segment m is in the window, and so are
      up to `n_tolerance - n_converge - 1` segments before it: segment j < m is kept iff j >= 1,
      j - 1 >= m - (n_tolerance - n_converge) and every loss from losses[j-1] to losses[m-1] is
      <= threshold (a segment is kept only if the evaluations at both of its ends are inside).
    - Middle. Segment j > m is decided once `n_tolerance` losses from losses[j] on are known: kept if
      min(losses[j .. j + n_tolerance - 1]) <= threshold, else the valley is dead: the window ends
      before j and never changes again.
    - End. `window()` also holds the undecided segments that SWAD's final model would take if training
      stopped now: in order, segment j while min(losses[j..]) <= threshold.

    This follows `LossValley` of the SWAD code (khanrc/swad, `domainbed/swad.py`), minus two quirks
    of that code: its valley segment m is averaged twice, and, when the valley is found before
    `n_tolerance` evaluations, its first segment is averaged repeatedly; here each segment counts
    once. It also checks the threshold for segments after m already decided at the start (possible
    only when n_tolerance < n_converge), where the SWAD code keeps them unchecked.

    Args:
        n_converge: evaluations in the convergence test (SWAD's N_s, default 3).
        n_tolerance: evaluations in the smoothed end test (SWAD's N_e, default 6).
        tolerance_ratio: r, the threshold is (1 + r) x the mean loss of the convergence window.
    """

    def __init__(self, n_converge: int, n_tolerance: int, tolerance_ratio: float) -> None:
        if n_converge < 1 or n_tolerance < 1:
            raise ValueError(f"n_converge and n_tolerance must be >= 1, got {n_converge}, {n_tolerance}")
        if not math.isfinite(tolerance_ratio) or tolerance_ratio < 0:
            raise ValueError(f"tolerance_ratio must be finite and >= 0, got {tolerance_ratio}")
        self.n_converge = n_converge
        self.n_tolerance = n_tolerance
        self.tolerance_ratio = tolerance_ratio
        self.losses: list[float] = []
        self.valley: int | None = None  # m, the segment where the loss reached its plateau
        self.threshold: float | None = None
        self.included: list[int] = []  # decided segments in the window, increasing
        self.decided = 0  # segments < decided are decided (in `included` or excluded)
        self.dead = False

    @property
    def converged(self) -> bool:
        return self.valley is not None

    @property
    def lookback(self) -> int:
        return max(self.n_tolerance - self.n_converge, 0)

    def add(self, loss: float) -> None:
        """Record the validation loss of the next evaluation and update the decisions."""
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"validation loss must be finite, got {loss}")
        self.losses.append(loss)
        if self.dead:
            return
        t = len(self.losses) - 1
        if self.valley is None:
            if len(self.losses) < self.n_converge:
                return
            recent = self.losses[t - self.n_converge + 1 :]
            if recent[0] > min(recent):
                return
            m = t - self.n_converge + 1
            self.valley = m
            self.threshold = sum(recent) / len(recent) * (1.0 + self.tolerance_ratio)
            self.included = [
                j for j in range(max(1, m - self.lookback + 1), m)
                if all(loss <= self.threshold for loss in self.losses[j - 1 : m])
            ] + [m]
            self.decided = m + 1
        self._decide_ready()

    def _decide_ready(self) -> None:
        assert self.threshold is not None
        while self.decided + self.n_tolerance <= len(self.losses):
            j = self.decided
            if min(self.losses[j : j + self.n_tolerance]) > self.threshold:
                self.dead = True
                return
            self.included.append(j)
            self.decided += 1

    def window(self) -> list[int]:
        """Segments averaged by SWAD's final model if training ended now ([] before the valley)."""
        if self.valley is None:
            return []
        assert self.threshold is not None
        tail: list[int] = []
        if not self.dead:
            for j in range(self.decided, len(self.losses)):
                if min(self.losses[j:]) > self.threshold:
                    break
                tail.append(j)
        return self.included + tail

    def earliest_needed(self) -> int:
        """Smallest segment index that may still enter the window (older ones can be forgotten)."""
        if self.dead:
            return len(self.losses) + 1
        if self.valley is not None:
            return self.decided
        next_valley = len(self.losses) - self.n_converge + 1
        return max(0, next_valley - self.lookback + 1)


def training_validation_loss(record: dict[str, Any]) -> float:
    """1 - mean training-domain validation accuracy of an evaluation record (the trainer's `val`).

    Uses `env{i}_out_acc_iterate` (accuracy of the current iterate, if the trainer provides it) in
    preference to `env{i}_out_acc` (accuracy of whatever `predict` returned).
    """
    test_envs = set(record["args"]["test_envs"])
    envs = sorted(int(m.group(1)) for key in record if (m := re.fullmatch(r"env(\d+)_out_acc", key)))
    train_envs = [i for i in envs if i not in test_envs]
    if not train_envs:
        raise ValueError("the record has no training-domain validation accuracy (env{i}_out_acc)")
    suffix = "_iterate" if all(f"env{i}_out_acc_iterate" in record for i in train_envs) else ""
    return 1.0 - sum(float(record[f"env{i}_out_acc{suffix}"]) for i in train_envs) / len(train_envs)


@dataclass
class _Segment:
    state: dict[str, torch.Tensor]  # mean of the segment's iterates (on the CPU)
    count: int  # number of iterates


@ALGORITHMS.register()
class SWAD(ERM):
    """ERM whose evaluated model is the average of every iterate inside SWAD's loss valley.

    Each training step folds the new weights into the running average of the current segment
    (`averaging.RunningAverage`). At each evaluation (`end_of_evaluation`) the segment is closed,
    its validation loss given to `LossValley`, and the window's segments are combined with weights
    proportional to their number of iterates, so the result is the mean of all iterates in the window.
    `predict` and `eval_state_dict` use that average once the valley is found, before it the current
    network.

    Deviations from the paper / SWAD code:
      - Validation "loss" is 1 - training-domain validation accuracy (`training_validation_loss`):
        the trainer records accuracies only. Defaults (3, 6, 0.3) are SWAD's, counted in evaluations
        as in the SWAD code.
      - The accuracy in the record is that of `predict`, hence, once the valley is found, of the
        averaged model rather than of the current iterate as in SWAD; the window's end is then decided
        on the averaged model's accuracy (it ends later). If the trainer supplies
        `env{i}_out_acc_iterate` (from `iterate_predict`), that is used instead, as in SWAD.
      - No early stop when the valley dies (the trainer has no such hook): training goes on, the
        average stops changing.
      - Before the valley is found the current network is evaluated (the SWAD code would return the
        last segment's average).
      - Segments are weighted by their number of iterates (the SWAD code weights segments equally:
        the same thing when evaluations are evenly spaced). See `LossValley` for its two quirks.
      - No BatchNorm statistics re-estimation (the built-in CNN has none; ResNets freeze theirs).
    """

    @classmethod
    def define_hparams(cls, define: Define, profile: str) -> None:
        super().define_hparams(define, profile)
        # SWAD (Cha et al. 2021) defaults: converge/tolerance windows counted in evaluations.
        define("swad_n_converge", 3, None, Integer(low=1))
        define("swad_n_tolerance", 6, None, Integer(low=1))
        define("swad_tolerance_ratio", 0.3, None, Real(low=0))

    def __init__(self, arch: dict[str, Any], num_domains: int, hparams: dict[str, Any]) -> None:
        super().__init__(arch, num_domains, hparams)
        self.valley = LossValley(
            int(hparams["swad_n_converge"]), int(hparams["swad_n_tolerance"]),
            float(hparams["swad_tolerance_ratio"]),
        )
        self.segment = RunningAverage()
        self._segments: dict[int, _Segment] = {}  # closed segments that may still enter the window
        self._kept: _Segment | None = None  # combined average of the decided segments of the window
        self._n_kept = 0  # how many of `valley.included` are folded into `_kept`
        self.network_average = copy.deepcopy(self.network)
        self._average_stale = True

    def train_step(self, minibatches: Minibatches, unlabeled: list[torch.Tensor] | None = None) -> dict[str, float]:
        out = super().train_step(minibatches, unlabeled)
        if not self.valley.dead:
            self.segment.update(self.network)
        return out

    _VALLEY_FIELDS = ("losses", "valley", "threshold", "included", "decided", "dead")

    def extra_resume_state(self) -> dict[str, Any]:
        def segment(seg: _Segment | None) -> dict[str, Any] | None:
            return None if seg is None else {"state": seg.state, "count": seg.count}

        return super().extra_resume_state() | {
            "valley": {name: getattr(self.valley, name) for name in self._VALLEY_FIELDS},
            "segment": self.segment.state(),
            "segments": {str(j): segment(seg) for j, seg in self._segments.items()},
            "kept": segment(self._kept), "n_kept": self._n_kept,
        }

    def load_extra_resume_state(self, extra: dict[str, Any]) -> None:
        super().load_extra_resume_state(extra)
        for name in self._VALLEY_FIELDS:
            setattr(self.valley, name, extra["valley"][name])
        self.segment.load_state(extra["segment"])
        self._segments = {int(j): _Segment(seg["state"], int(seg["count"])) for j, seg in extra["segments"].items()}
        kept = extra["kept"]
        self._kept = None if kept is None else _Segment(kept["state"], int(kept["count"]))
        self._n_kept = int(extra["n_kept"])
        self._average_stale = True

    def end_of_evaluation(self, record: dict[str, Any]) -> None:
        """Close the current segment and update the window with this evaluation's validation loss."""
        if self.segment.count == 0:  # evaluation before any step, or after the valley died
            return
        index = len(self.valley.losses)
        state = {key: value.cpu() for key, value in self.segment.average().items()}
        self._segments[index] = _Segment(state, self.segment.count)
        self.segment.reset()
        self.valley.add(training_validation_loss(record))
        for j in self.valley.included[self._n_kept :]:
            self._kept = self._combine([seg for seg in (self._kept, self._segments[j]) if seg is not None])
        self._n_kept = len(self.valley.included)
        earliest = self.valley.earliest_needed()
        self._segments = {j: seg for j, seg in self._segments.items() if j >= earliest}
        self._average_stale = True

    @staticmethod
    def _combine(segments: list[_Segment]) -> _Segment:
        """Iterate-weighted mean of segment averages = mean of all their iterates."""
        if len(segments) == 1:
            return segments[0]
        counts = [seg.count for seg in segments]
        return _Segment(weighted_average([seg.state for seg in segments], counts), sum(counts))

    def window(self) -> list[int]:
        """Indices of the evaluation segments averaged now (see `LossValley.window`)."""
        return self.valley.window()

    def _averaged(self) -> torch.nn.Module:
        if not self.valley.converged:
            return self.network
        if self._average_stale:
            tail = [self._segments[j] for j in self.valley.window()[self._n_kept :]]
            kept = [self._kept] if self._kept is not None else []
            self.network_average.load_state_dict(self._combine(kept + tail).state)
            self._average_stale = False
        return self.network_average

    def iterate_predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] of the current iterate (the network being trained)."""
        return self.network(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self._averaged()(x)

    def eval_state_dict(self) -> dict[str, torch.Tensor]:
        return self._averaged().state_dict()
