"""Metrics against hand-computed cases, brute-force definitions and the official weights table."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from apps.ecg.labels import (EQUIVALENT, NORMAL_CODE, SCORED_CODES, WEIGHT_CLASSES, WEIGHTS, LabelSpace,
                             class_abbr)
from apps.ecg.metrics import (accuracy, auroc_auprc_per_class, challenge_score, challenge_score_for, evaluate,
                              f1_per_class, modified_confusion, tune_thresholds)


def test_auroc_auprc_hand_computed():
    y = np.array([[1], [0], [1], [0]])
    s = np.array([[0.9], [0.8], [0.7], [0.1]])
    auroc, auprc = auroc_auprc_per_class(y, s)
    assert auroc[0] == pytest.approx(0.75)              # 3 of 4 (pos, neg) pairs ordered
    assert auprc[0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # ties count half; a class without positives is undefined
    auroc, auprc = auroc_auprc_per_class(np.array([[1, 0], [0, 0]]), np.array([[0.5, 0.2], [0.5, 0.3]]))
    assert auroc[0] == pytest.approx(0.5) and auprc[0] == pytest.approx(0.5)
    assert np.isnan(auroc[1]) and np.isnan(auprc[1])


def _brute_auroc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])


def _brute_ap(y, s):
    # the Challenge's loop: precision at each distinct threshold times the recall step
    ths = np.unique(s)[::-1]
    ap, prev_r = 0.0, 0.0
    for t in ths:
        o = s >= t
        tp = np.sum(o & (y == 1))
        r, p = tp / y.sum(), tp / o.sum()
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def test_auroc_auprc_match_definitions_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.random((60, 5)) < 0.3
    s = np.round(rng.random((60, 5)) + 0.4 * y, 1)  # rounding makes ties
    auroc, auprc = auroc_auprc_per_class(y, s)
    for k in range(5):
        assert auroc[k] == pytest.approx(_brute_auroc(y[:, k], s[:, k]))
        assert auprc[k] == pytest.approx(_brute_ap(y[:, k].astype(int), s[:, k]))


def test_f1_and_accuracy():
    y = np.array([[1, 0], [1, 1], [0, 0]])
    o = np.array([[1, 1], [0, 1], [0, 0]])
    np.testing.assert_allclose(f1_per_class(y, o), [2 / 3, 2 / 3])
    assert accuracy(y, o) == pytest.approx(1 / 3)
    assert np.isnan(f1_per_class(np.zeros((2, 1)), np.zeros((2, 1)))[0])


def test_challenge_score_hand_computed():
    w = np.array([[1, 0.5, 0], [0.5, 1, 0.2], [0, 0.2, 1]])
    y = np.array([[1, 0, 0], [0, 0, 1]])
    o = np.array([[0, 1, 0], [0, 0, 1]])
    a = modified_confusion(y, o)
    np.testing.assert_allclose(a, [[0, 0.5, 0], [0, 0, 0], [0, 0, 1]])
    # observed 0.5*0.5 + 1 = 1.25, correct 2, inactive (always class 2) 1
    assert challenge_score(y, o, w, normal_index=2) == pytest.approx(0.25)
    assert challenge_score(y, y, w, 2) == pytest.approx(1.0)


def test_official_weights_table():
    assert WEIGHTS.shape == (26, 26)
    np.testing.assert_array_equal(WEIGHTS, WEIGHTS.T)
    np.testing.assert_array_equal(np.diag(WEIGHTS), 1.0)
    assert WEIGHTS.min() == pytest.approx(0.15)
    # all 30 scored codes covered; 4 equivalence pairs
    assert set(EQUIVALENT) == set(SCORED_CODES)
    assert sorted(k for k in WEIGHT_CLASSES if "|" in k) == sorted(
        ["733534002|164909002", "713427006|59118001", "284470004|63593006", "427172004|17338001"])
    ix = {class_abbr(k): i for i, k in enumerate(WEIGHT_CLASSES)}
    # entries from the published 2021 weights.csv
    for a, b, v in [("AF", "AFL", 0.5), ("NSR", "QAb", 0.15), ("IAVB", "LPR", 0.5), ("BBB", "CLBBB|LBBB", 0.475),
                    ("LQRSV", "PRWP", 0.475), ("PAC|SVPB", "NSR", 0.4125), ("PVC|VPB", "PR", 0.5),
                    ("CRBBB|RBBB", "QAb", 0.3), ("AF", "NSR", 0.25), ("LQT", "TInv", 0.45), ("SB", "STach", 0.425)]:
        assert WEIGHTS[ix[a], ix[b]] == pytest.approx(v), (a, b)
    # the IAVB row of the published table
    row = [1, 0.3, 0.3, 0.5, 0.4, 0.5, 0.45, 0.45, 0.325, 0.375, 0.45, 0.425, 0.4625, 0.425, 0.5, 0.35, 0.2,
           0.45, 0.5, 0.5, 0.45, 0.425, 0.3, 0.3]
    order = ["IAVB", "AF", "AFL", "Brady", "CRBBB|RBBB", "IRBBB", "LAnFB", "LAD", "CLBBB|LBBB", "LQRSV", "NSIVCB",
             "PR", "PAC|SVPB", "PVC|VPB", "LPR", "LQT", "QAb", "RAD", "SA", "SB", "NSR", "STach", "TAb", "TInv"]
    np.testing.assert_allclose([WEIGHTS[ix["IAVB"], ix[o]] for o in order], row)


def test_challenge_score_perfect_and_inactive_on_26_classes():
    space = LabelSpace.scored()
    rng = np.random.default_rng(1)
    y = rng.random((40, 26)) < 0.1
    y[:5] = False  # records with no scored label
    assert challenge_score_for(space, y, y) == pytest.approx(1.0)
    inactive = np.zeros_like(y)
    inactive[:, space.classes.index(NORMAL_CODE)] = True
    assert challenge_score_for(space, y, inactive) == pytest.approx(0.0)
    # a space without sinus rhythm cannot be scored
    assert np.isnan(challenge_score_for(LabelSpace(["164889003"]), y[:, :1], y[:, :1]))


def test_evaluate_and_tuned_thresholds_improve_the_score():
    space = LabelSpace.scored()
    rng = np.random.default_rng(2)
    y = rng.random((200, 26)) < 0.15
    s = np.clip(0.25 * y + rng.random((200, 26)) * 0.6, 0, 1)  # informative but shifted scores
    base = evaluate(space, y, s)
    th = tune_thresholds(space, y, s)
    tuned = evaluate(space, y, s, th)
    assert tuned["challenge_score"] > base["challenge_score"]
    assert tuned["macro_auroc"] == base["macro_auroc"]
    assert len(tuned["per_class"]["threshold"]) == 26 and base["n_records"] == 200
