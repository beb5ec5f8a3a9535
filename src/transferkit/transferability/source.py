"""Scores from the source model's class probabilities on the target inputs.

``source_probs`` [N, Z] are, e.g., the ImageNet softmax outputs of the
pretrained classifier on the N target samples; ``labels`` are the target classes.

- LEEP: Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate
  Transferability of Learned Representations", ICML 2020.
- NCE: Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised
  Classification Tasks", ICCV 2019.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import check_source_probs, register_score

_EPS = 1e-12  # guards log(0) and division by an empty source class


@register_score("leep", "source_probs", "LEEP (Nguyen et al. 2020): log expected empirical prediction")
def leep(source_probs: Any, labels: Any) -> float:
    """LEEP: mean_i log sum_z P(y_i | z) theta_i(z); at most 0, higher is better."""
    theta, y, c = check_source_probs(source_probs, labels)
    n = len(y)
    joint = np.zeros((c, theta.shape[1]))  # P(y, z)
    np.add.at(joint, y, theta)
    joint /= n
    cond = joint / np.maximum(joint.sum(axis=0, keepdims=True), _EPS)  # P(y | z)
    eep = np.einsum("nz,nz->n", theta, cond[y])  # sum_z P(y_i | z) theta_i(z)
    return float(np.mean(np.log(np.maximum(eep, _EPS))))


@register_score("nce", "source_probs", "NCE (Tran et al. 2019): -H(Y | Z) with Z the source argmax")
def nce(source_probs: Any, labels: Any) -> float:
    """NCE = -H(Y | Z) for hard source labels z_i = argmax theta_i; at most 0."""
    theta, y, c = check_source_probs(source_probs, labels)
    z = theta.argmax(axis=1)
    joint = np.zeros((c, theta.shape[1]))
    np.add.at(joint, (y, z), 1.0)
    joint /= len(y)
    cond = joint / np.maximum(joint.sum(axis=0, keepdims=True), _EPS)
    nz = joint > 0  # 0 log 0 = 0
    return float(np.sum(joint[nz] * np.log(cond[nz])))
