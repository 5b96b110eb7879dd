import shutil

import pytest

from workflow_helpers import make_workdir, snakemake


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """A working directory in which the whole workflow has run once on 12 demo images
    (batches of 4, inference shards of 5)."""
    workdir = make_workdir(tmp_path_factory.mktemp("wf") / "done")
    snakemake(workdir)
    return workdir


@pytest.fixture
def copy_of_finished(finished, tmp_path):
    # copytree keeps modification times, so Snakemake sees the copy as up to date.
    return shutil.copytree(finished, tmp_path / "copy", symlinks=True)
