"""Offline metrics of the tag model, in numpy (no extra dependency)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum formula, ties counted as half; None without both classes."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores).ravel()
    pos = int(labels.sum())
    neg = labels.size - pos
    if pos == 0 or neg == 0:
        return None
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Per-user AUC weighted by the user's impressions (rows), over users with both classes."""
    frame = pd.DataFrame({"u": np.asarray(users).ravel(), "y": np.asarray(labels).ravel(),
                          "s": np.asarray(scores).ravel()})
    total, weight = 0.0, 0
    for _, g in frame.groupby("u", sort=False):
        a = auc(g["y"].to_numpy(), g["s"].to_numpy())
        if a is not None:
            total += a * len(g)
            weight += len(g)
    return total / weight if weight else None


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs).ravel(), EPS, 1 - EPS)
    y = np.asarray(labels).ravel()
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean prediction over the observed rate (1.0 is calibrated)."""
    rate = float(np.mean(labels))
    return float(np.mean(probs)) / rate if rate > 0 else None


def dwell_errors(true_sec: np.ndarray, pred_sec: np.ndarray) -> dict[str, float | None]:
    if len(true_sec) == 0:
        return {"dwell_rmse_sec": None, "dwell_mae_sec": None}
    err = np.asarray(pred_sec).ravel() - np.asarray(true_sec).ravel()
    return {"dwell_rmse_sec": float(math.sqrt(np.mean(err ** 2))), "dwell_mae_sec": float(np.mean(np.abs(err)))}


def all_metrics(users, click, p_click, dwell_true_sec, dwell_pred_sec, dwell_known=None) -> dict:
    """CTR AUC, GAUC, log loss, calibration over every row; dwell errors over clicked rows
    (seconds) whose dwell is known (``dwell_known``; every clicked row when None). Either
    prediction may be None for a single-task model."""
    out: dict = {"rows": int(len(click)), "clicks": int(np.sum(click))}
    if p_click is not None:
        out.update(auc=auc(click, p_click), gauc=gauc(users, click, p_click), log_loss=log_loss(click, p_click),
                   calibration=calibration(click, p_click))
    if dwell_pred_sec is not None:
        clicked = np.asarray(click).ravel() > 0
        if dwell_known is not None:
            clicked &= np.asarray(dwell_known).ravel().astype(bool)
        out.update(dwell_errors(np.asarray(dwell_true_sec).ravel()[clicked], np.asarray(dwell_pred_sec).ravel()[clicked]))
    return out
