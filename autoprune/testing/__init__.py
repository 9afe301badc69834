"""Fixtures for autoprune's tests and benchmarks (as Optuna ships ``optuna.testing``).

Not part of the user API, and not imported by ``import autoprune``:

- :mod:`~autoprune.testing.models`: small reference models, one per architecture family
  that pruning tools tend to break on (``models.get_model("resnet")``).
- :mod:`~autoprune.testing.postgres`: a throw-away PostgreSQL server on 127.0.0.1.
- :mod:`~autoprune.testing.browser`: opens a report page in headless Chromium.
- :mod:`~autoprune.testing.studies`: studies written with Optuna as the search writes them.
- :mod:`~autoprune.testing.cli`: ``run_cli``, the ``autoprune`` command in this process.
"""

from __future__ import annotations

from autoprune.testing import models

__all__ = ["models"]
