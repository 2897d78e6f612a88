"""The training engine under the ``train_distributed.py`` CLI.

Modules, one concern each:
    config: grouped frozen settings (data, model, trainer, runtime, tracking, evaluation, augment).
    cluster: distribution strategy, SLURM resolution, precision policy.
    model: the ResNet50 classifier and its custom layers (registered with Keras on import).
    steps: distributed train and predict steps.
    state: train state, the early-stopping / learning-rate schedule, checkpoints.
    loop: prepare data, fit, evaluate, finish (``run_training``).
    evaluation: the per-site evaluation and report, also for saved models.
    predict: load a model from a file, a run or a models:/ URI; score new images (``predict``).
    tracking: MLflow logging (chief only); mlflow_store: safe creation of a shared store.
    faults: exit statuses and stop signals; console: progress lines; ablation: grids of runs.

Raises ``ValueError`` for anything the user must fix; never imports click.
"""
