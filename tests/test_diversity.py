"""Diversity measures on small confusion examples computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from domainbed_recycle.diversity import (
    accuracy,
    disagreement,
    double_fault,
    ensemble_accuracy,
    mean_individual_accuracy,
    mean_pairwise,
    oracle_counts,
    pairwise_matrix,
    q_statistic,
    ratio_error,
)

# 10 samples, 3 classes.
#                 0  1  2  3  4  5  6  7  8  9
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
A = np.array([0, 1, 2, 0, 1, 0, 1, 2, 0, 1])  # right on 0-4; wrong on 5-9
B = np.array([0, 1, 2, 1, 2, 2, 0, 2, 1, 2])  # right on 0-2, 5, 6; wrong on 3, 4, 7, 8, 9
# Oracle table (a = A, b = B):
#   N11 both right   : samples 0, 1, 2          -> 3
#   N10 A right only : samples 3, 4             -> 2
#   N01 B right only : samples 5, 6             -> 2
#   N00 both wrong   : samples 7, 8, 9          -> 3
# Predicted labels differ on 3, 4, 5, 6, 8, 9 (7: both say 2)  -> disagreement 6/10
# ratio-error  = (N01 + N10) / N00 = 4 / 3
# Q            = (3*3 - 2*2) / (3*3 + 2*2) = 5 / 13
# double-fault = N00 / N = 3 / 10


def test_oracle_counts():
    assert oracle_counts(A, B, LABELS) == (3, 2, 2, 3)


def test_accuracy():
    assert accuracy(A, LABELS) == 0.5
    assert accuracy(B, LABELS) == 0.5


def test_disagreement():
    assert disagreement(A, B, LABELS) == pytest.approx(0.6)
    assert disagreement(A, B) == pytest.approx(0.6)  # labels not needed
    assert disagreement(A, A) == 0.0


def test_ratio_error():
    assert ratio_error(A, B, LABELS) == pytest.approx(4 / 3)
    # Identical models: no different error, 5 simultaneous errors -> 0.
    assert ratio_error(A, A, LABELS) == 0.0
    # Never wrong together (N00 = 0): undefined -> nan.
    assert math.isnan(ratio_error(LABELS, A, LABELS))


def test_q_statistic():
    assert q_statistic(A, B, LABELS) == pytest.approx(5 / 13)
    # Complementary errors: N11 = N00 = 0 -> Q = -N01*N10 / N01*N10 = -1.
    y = np.array([0, 0, 0, 0])
    assert q_statistic(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]), y) == -1.0
    # Always-right model: N01 = N00 = 0 -> 0/0 -> nan.
    assert math.isnan(q_statistic(LABELS, A, LABELS))


def test_double_fault():
    assert double_fault(A, B, LABELS) == pytest.approx(0.3)


def test_pairwise_matrix_and_mean():
    # C right on 0-7, wrong on 8, 9.
    C = np.array([0, 1, 2, 0, 1, 2, 0, 1, 0, 1])
    # A vs C: N11 = 5 (0-4), N10 = 0, N01 = 3 (5, 6, 7), N00 = 2 (8, 9) -> ratio 3/2
    # B vs C: N11 = 5 (0, 1, 2, 5, 6), N10 = 0, N01 = 3 (3, 4, 7), N00 = 2 (8, 9) -> ratio 3/2
    mat = pairwise_matrix([A, B, C], LABELS, "ratio_error")
    assert mat.shape == (3, 3)
    assert np.all(np.isnan(np.diag(mat)))
    np.testing.assert_allclose(mat, mat.T)
    assert mat[0, 1] == pytest.approx(4 / 3)
    assert mat[0, 2] == pytest.approx(1.5)
    assert mat[1, 2] == pytest.approx(1.5)
    # mean over the 3 pairs: (4/3 + 3/2 + 3/2) / 3 = 13/9
    assert mean_pairwise([A, B, C], LABELS, "ratio_error") == pytest.approx(13 / 9)
    assert mean_pairwise([A, B], LABELS, double_fault) == pytest.approx(0.3)  # callable metric


def test_mean_pairwise_skips_undefined_pairs():
    # (LABELS, A) and (LABELS, B) have N00 = 0 (nan); only (A, B) is defined.
    assert mean_pairwise([LABELS, A, B], LABELS, "ratio_error") == pytest.approx(4 / 3)
    assert math.isnan(mean_pairwise([LABELS, LABELS], LABELS, "ratio_error"))


def test_input_validation():
    with pytest.raises(ValueError, match="same length"):
        disagreement(A, B[:5])
    with pytest.raises(ValueError, match="zero samples"):
        double_fault(np.array([], dtype=int), np.array([], dtype=int), np.array([], dtype=int))
    with pytest.raises(ValueError, match="integer"):
        ratio_error(A.astype(float), B, LABELS)
    with pytest.raises(ValueError, match="unknown diversity metric"):
        pairwise_matrix([A, B], LABELS, "kappa")
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise([A], LABELS, "disagreement")


def test_ensemble_vs_individual_accuracy():
    # 2 models, 3 samples, 2 classes; labels (0, 1, 1).
    probs = np.array(
        [
            [[0.9, 0.1], [0.6, 0.4], [0.4, 0.6]],  # model 1 predicts 0, 0, 1 -> 2/3 right
            [[0.4, 0.6], [0.1, 0.9], [0.7, 0.3]],  # model 2 predicts 1, 1, 0 -> 1/3 right
        ]
    )
    labels = np.array([0, 1, 1])
    # mean probs: [0.65, 0.35], [0.35, 0.65], [0.55, 0.45] -> predicts 0, 1, 0 -> 2/3 right
    assert ensemble_accuracy(probs, labels) == pytest.approx(2 / 3)
    assert mean_individual_accuracy(probs, labels) == pytest.approx(0.5)  # (2/3 + 1/3) / 2


def test_ensemble_beats_members_on_complementary_errors():
    # 3 models, each confidently wrong on a different sample, mildly right elsewhere: every member
    # has accuracy 2/3, the ensemble corrects all three samples.
    right, wrong = [0.6, 0.2, 0.2], [0.1, 0.8, 0.1]
    probs = np.array([[wrong, right, right], [right, wrong, right], [right, right, wrong]])
    labels = np.array([0, 0, 0])
    assert mean_individual_accuracy(probs, labels) == pytest.approx(2 / 3)
    # mean on each sample: [(0.1 + 1.2)/3, (0.8 + 0.4)/3, ...] = [0.433, 0.4, 0.167] -> class 0
    assert ensemble_accuracy(probs, labels) == 1.0


def test_ensemble_shape_errors():
    with pytest.raises(ValueError, match=r"\[M, N, C\]"):
        ensemble_accuracy(np.zeros((3, 2)), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="N=2"):
        ensemble_accuracy(np.zeros((1, 2, 2)), np.array([0, 1, 0]))
