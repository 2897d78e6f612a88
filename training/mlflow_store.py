"""Create an MLflow tracking store and experiment safely when many processes start at once.

MLflow creates and migrates a fresh SQLite store in whichever process opens it first, with no
lock, so processes that start together collide ("table experiments already exists", alembic
errors). ``prepare_store`` does that step under an exclusive lock on ``<db>.lock`` beside the
database, then gets or creates the experiment, so ``mlflow.set_experiment`` afterwards only reads.
"""
from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file named by a ``sqlite:`` URI (relative to the cwd if relative), else None."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    try:
        url = make_url(tracking_uri)
    except ArgumentError as error:
        raise ValueError(f"malformed sqlite tracking URI {tracking_uri!r}") from error
    if url.host or not url.database or url.database == ":memory:":
        raise ValueError(
            f"malformed sqlite tracking URI {tracking_uri!r}: "
            "expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    return Path(url.database)


@contextmanager
def file_lock(db_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``<db_path>.lock``, creating the folder if needed."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db_path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, creating it; a concurrent creation that wins is reused."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        found = client.get_experiment_by_name(name)  # a concurrent caller created it first
    if found.lifecycle_stage == "deleted":
        raise ValueError(f"experiment {name!r} is deleted; restore it or use another name")
    return found.experiment_id


def prepare_store(tracking_uri: str, experiment: str | None = None) -> str | None:
    """Make sure the store at tracking_uri exists and is migrated, and the experiment exists;
    safe when many processes call it at once. Returns the experiment id (or None when
    experiment is None)."""
    db_path = sqlite_path(tracking_uri)
    with file_lock(db_path) if db_path is not None else nullcontext():
        # Opening the store (or its first query) creates and migrates a SQLite database.
        client = MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)
        return get_or_create_experiment(client, experiment) if experiment is not None else None
