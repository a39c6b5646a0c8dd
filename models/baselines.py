"""Baseline classifiers of paper 004 (scikit-learn and LightGBM), for the report only.

They are never stored in a bundle (no pickle): the live scorer uses the torch nets.

Examples
--------
>>> sorted(make_baselines(seed=0))
['bagging', 'decision_tree', 'lightgbm', 'logistic_regression', 'naive_bayes', 'random_forest']
"""

from __future__ import annotations

from typing import Any


def make_baselines(seed: int) -> dict[str, Any]:
    """Fresh, unfitted estimators with ``fit`` / ``predict_proba``, seeded."""
    import lightgbm as lgb
    from sklearn.ensemble import BaggingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.tree import DecisionTreeClassifier

    return {
        "naive_bayes": GaussianNB(),
        "logistic_regression": LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced"),
        "decision_tree": DecisionTreeClassifier(max_depth=4, min_samples_leaf=3, class_weight="balanced", random_state=seed),
        "random_forest": RandomForestClassifier(n_estimators=100, min_samples_leaf=2, class_weight="balanced_subsample",
                                                random_state=seed, n_jobs=1),
        "bagging": BaggingClassifier(DecisionTreeClassifier(min_samples_leaf=2), n_estimators=50, random_state=seed, n_jobs=1),
        "lightgbm": lgb.LGBMClassifier(n_estimators=150, learning_rate=0.05, num_leaves=8, min_child_samples=5,
                                       subsample=0.8, subsample_freq=1, colsample_bytree=0.8, class_weight="balanced",
                                       random_state=seed, deterministic=True, n_jobs=1, verbose=-1),
    }
