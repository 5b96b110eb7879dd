"""Two runs from scratch give byte-identical predictions and identical metrics."""

import json

import pytest

from workflow_helpers import make_workdir, snakemake

pytestmark = pytest.mark.slow


def test_two_runs_from_scratch_agree(tmp_path):
    first, second = (make_workdir(tmp_path / name, limit=6, batch_size=3, shard_size=3) for name in ("a", "b"))
    for workdir in (first, second):
        snakemake(workdir)
    predictions = sorted(p.relative_to(first) for p in first.glob("results/*/predictions/*.png"))
    assert len(predictions) == 6 * 3
    for path in predictions:
        assert (first / path).read_bytes() == (second / path).read_bytes(), path
    for summary in sorted(first.glob("results/*/summary.json")):
        a = json.loads(summary.read_text())
        b = json.loads((second / summary.relative_to(first)).read_text())
        assert a.pop("timing") != b.pop("timing")  # timings differ: proof that both really ran
        assert a == b, summary
    for table in ("per_class.csv",):
        for path in first.glob(f"results/*/{table}"):
            assert path.read_bytes() == (second / path.relative_to(first)).read_bytes()
