"""Cross-site evaluation: metrics with uncertainty, figures, Grad-CAM, reports, run comparison.

Modules:
    metrics: AUC, bootstrap confidence intervals, thresholds, calibration (numpy only).
    plots: ROC, confusion, reliability and comparison figures (matplotlib, Agg).
    gradcam: Grad-CAM heat maps for a Keras binary classifier and their montage.
    report: per-site full and leak-free metrics, MLflow metric names, HTML/markdown report.
    compare: AUC with 95% CI across the runs of an MLflow experiment.
    mlflow_server: start/stop a local MLflow tracking server (UI + REST API) on the project's store.

This package knows nothing of training or of how images are loaded; it takes
labels, scores and prediction rows.
"""
