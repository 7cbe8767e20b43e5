"""prefect.yaml's hourly pipeline deployments, one per catalog model (`patcher pipeline deployments`), so that
`prefect deploy --all` schedules every model the catalog names. Other deployments (the GPU train step) and the
comments stay."""
from __future__ import annotations

from pathlib import Path

from .catalog import Catalog

ENTRYPOINT = "flows/pipeline.py:pipeline"


def pipeline_deployment(name: str, minute: int) -> dict:
    return {"name": f"hourly-{name}",
            "description": f"{name}: errors logged in the last hour -> validated -> patched -> gated -> approved -> "
                           f"registered -> exported.",
            "entrypoint": ENTRYPOINT,
            "parameters": {"model": name, "params": "params.yaml"},
            "work_pool": {"name": "cpu", "job_variables": {}},
            "schedules": [{"cron": f"{minute} * * * *", "timezone": "UTC", "active": True}]}


def write_deployments(prefect_yaml: str | Path, catalog: Catalog) -> list[str]:
    """Replaces prefect.yaml's pipeline deployments with one per catalog model (their minutes spread over the
    hour, so two models do not train at once). -> the deployments' names."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 120
    yaml.preserve_quotes = True
    path = Path(prefect_yaml)
    data = yaml.load(path)
    names = catalog.names()
    kept = [d for d in data.get("deployments") or [] if d.get("entrypoint") != ENTRYPOINT]
    hourly = [pipeline_deployment(name, (5 + 60 * i // max(1, len(names))) % 60) for i, name in enumerate(names)]
    data["deployments"] = hourly + kept
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        yaml.dump(data, fh)
    tmp.replace(path)
    return [d["name"] for d in hourly]
