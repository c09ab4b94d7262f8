"""The public API through Spark Connect (as Databricks shared and serverless clusters use it).

A local Spark Connect server is started by the ``connect_server`` fixture; the
checks in ``connect_checks.py`` run in a separate Python process, because a
Connect session switches its whole process to Connect mode (this one keeps its
classic session for the other tests). Each check is reported as its own test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from connect_checks import NAMES

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "connect_checks.py")
DRIVER_TIMEOUT = 900

# A Connect server JVM and a driver process of their own: the heavy tier.
pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture(scope="module")
def connect_results(connect_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("connect-results") / "results.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE")}
    done = subprocess.run([sys.executable, DRIVER, connect_server, str(out)], env=env,
                          capture_output=True, text=True, timeout=DRIVER_TIMEOUT, check=False)
    results = json.loads(out.read_text()) if out.exists() else {}
    return done, results


@pytest.mark.parametrize("name", NAMES)
def test_through_spark_connect(connect_results, name):
    done, results = connect_results
    if name not in results:
        pytest.fail(f"the Connect driver exited with {done.returncode} before {name!r}:\n"
                    f"{done.stderr[-4000:]}")
    assert results[name]["ok"], results[name]["error"]
