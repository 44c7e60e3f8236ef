import logging
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples"

# `make test` runs the suite in pytest-xdist workers, as many as cores: each worker, and every process its tests
# start, gets one compute thread, so that the workers share the cores instead of oversubscribing them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# W&B must never prompt, sync or write outside the run directory during tests.
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture(autouse=True)
def _no_kit_log_handler_outlives_its_test():
    """A command run in-process (``cli.main``) configures the root logger for its one job, as a process would; in a
    test worker that handler would go on writing into later tests' captured output. The run console handler, which
    follows ``sys.stdout`` and is reused by every run, stays."""
    root = logging.getLogger()
    before = set(map(id, root.handlers))
    yield
    for handler in root.handlers[:]:
        if (id(handler) not in before and type(handler).__module__.startswith("deepsynth_ocr")
                and not getattr(handler, "_deepsynth_console", False)):
            root.removeHandler(handler)


def pytest_collection_modifyitems(config, items):
    """Slow tests first: the xdist workers take a test file at a time in this order, so the longest files start
    early and the short ones fill in at the end, instead of one worker finishing a long file alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def tiny_parts():
    """Tokenizer, processor and family of the tiny model (cheap; build a model per test)."""
    from deepsynth_ocr.models import tiny
    from deepsynth_ocr.models.families import get_family

    family = get_family("tiny")
    tokenizer = tiny.build_tiny_tokenizer()
    processor = tiny.build_tiny_processor(tokenizer, family.tiny_geometry)
    return tokenizer, processor, family


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory) -> Path:
    """A folder every xdist worker of this session sees (the base temp folder's parent under xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture
def smoke_cfg(tmp_path):
    """The smoke config on the random tiny model and the 48 px samples, writing into a temporary runs directory.

    Plumbing tests need no model that reads; the bundled base has its own tests.
    """
    from deepsynth_ocr.config import RunConfig

    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.model.name_or_path = "random"
    cfg.output_root = str(tmp_path / "runs")
    cfg.data.train_path = str(SAMPLES / "train.jsonl")
    cfg.data.eval_path = str(SAMPLES / "eval.jsonl")
    return cfg
