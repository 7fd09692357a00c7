"""Loading the reports plugin, as every task process does, builds no web app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_PROBE = """
import json, sys
from airflow_ascora_provider.ui.plugin import AscoraReportsPlugin
loaded = sorted(m for m in ("fastapi", "alembic", "airflow_ascora_provider.ui.app") if m in sys.modules)
apps = AscoraReportsPlugin.fastapi_apps
print(json.dumps({
    "loaded_with_the_plugin": loaded,
    "app": type(apps[0]["app"]).__name__,
    "url_prefix": apps[0]["url_prefix"],
    "same_list_from_an_instance": AscoraReportsPlugin().fastapi_apps is apps,
    "built_once": AscoraReportsPlugin.fastapi_apps[0]["app"] is apps[0]["app"],
}))
"""


def test_the_plugin_imports_no_web_stack_until_its_apps_are_read():
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"loaded_with_the_plugin": [], "app": "FastAPI", "url_prefix": "/ascora-migrations",
                    "same_list_from_an_instance": True, "built_once": True}
