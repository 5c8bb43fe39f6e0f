"""The operations guide names every setting the edge reads and every metric it exports, and the README's
configuration table lists every setting."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edge.config import env_variables
from edge.ops.runtime import EdgeRuntime

REPO = Path(__file__).resolve().parents[1]
GUIDE = (REPO / "docs" / "operations.md").read_text()
README = (REPO / "README.md").read_text()


def test_every_setting_is_documented():
    for variable in env_variables():
        assert f"| `{variable}` |" in GUIDE, variable
        assert f"| `{variable}` |" in README, variable


def test_every_metric_is_documented():
    runtime = EdgeRuntime.create("docs")
    families = {family.name for family in text_string_to_metric_families(runtime.metrics.exposition().decode())}
    assert families
    for name in families:
        assert not name.endswith("_created"), name
        documented = f"`{name}`" in GUIDE or f"`{name}_total`" in GUIDE
        assert documented, name
