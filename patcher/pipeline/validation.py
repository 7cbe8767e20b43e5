"""Validation of error-record batches with a great-expectations suite. Every input line ends up accepted or
quarantined with its original text and a list of reasons: accepted + quarantined = received, always.

Lines that are not JSON objects are quarantined before the suite runs; the rest become one DataFrame
row each (`line` numbers the input) and the suite checks schema, types, text bounds, control characters,
ids (bounded, safe characters, unique in the batch: the first occurrence is kept), a model of the catalog, the
task that model does, a classifier's labels (its config.id2label), RFC 3339 timestamps of real dates not in the
future, and the reporter's `source`. Lines that are not UTF-8 are quarantined with their bytes (base64).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from patcher.engine.records import (
    CLOCK_SKEW_S,
    ID_PATTERN,
    MAX_TEXT,
    OPTIONAL,
    REQUIRED,
    RFC3339,
    SOURCE_PATTERN,
    load_json,
    logged_at_problem,
)

TEXT = ("model", "input", "prediction", "target")
CONTROL = r"[\x00-\x08\x0a-\x1f\x7f]"


@dataclass(frozen=True)
class Expected:
    """What a model's records must say: its task, and a classifier's labels (None: free text)."""

    task: str
    labels: tuple[str, ...] | None = None


def expected_of(entry) -> Expected:
    """A catalog entry's rules (a classifier's labels read from its config.json)."""
    from .catalog import labels_of

    labels = labels_of(entry.model_dir()) if entry.task == "classification" else None
    return Expected(entry.task, tuple(labels) if labels else None)


def known_models(names: list[str] | None = None, catalog=None) -> dict[str, Expected]:
    """The catalog's models (or those `names`) -> their rules."""
    from .catalog import Catalog

    catalog = catalog or Catalog()
    return {name: expected_of(catalog.entry(name)) for name in (names or catalog.names())}


@dataclass
class Validated:
    accepted: list[dict] = field(default_factory=list)        # the records, as parsed
    quarantined: list[dict] = field(default_factory=list)     # {"line", "record" (original text), "reasons"}

    @property
    def received(self) -> int:
        return len(self.accepted) + len(self.quarantined)


def _suite(gx, models: dict[str, Expected]):
    from great_expectations.expectations.row_conditions import Column

    E = gx.expectations
    suite = gx.ExpectationSuite(name="error_records")
    for name in REQUIRED:
        suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column=name, meta={"reason": f"missing field {name!r}"}))
    for name in TEXT + ("id", "logged_at"):
        suite.add_expectation(E.ExpectColumnValuesToBeOfType(column=name, type_="str",
                                                             meta={"reason": f"{name} must be a string"}))
    for name in TEXT:
        suite.add_expectation(E.ExpectColumnValuesToMatchRegex(column=name, regex=r"\S",
                                                               meta={"reason": f"{name} is empty"}))
        suite.add_expectation(E.ExpectColumnValueLengthsToBeBetween(
            column=name, max_value=MAX_TEXT, meta={"reason": f"{name} longer than {MAX_TEXT}"}))
        suite.add_expectation(E.ExpectColumnValuesToNotMatchRegex(
            column=name, regex=CONTROL, meta={"reason": f"{name} contains control characters"}))
    suite.add_expectation(E.ExpectColumnValuesToMatchRegex(
        column="id", regex=ID_PATTERN.pattern, meta={"reason": "id must be 1-128 of letters, digits and . _ : -"}))
    suite.add_expectation(E.ExpectColumnValuesToBeUnique(column="id", meta={"reason": "duplicate id"}))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(
        column="task", value_set=["classification", "generation"], meta={"reason": "unknown task"}))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(
        column="model", value_set=sorted(models), meta={"reason": f"model is not {' or '.join(sorted(models))}"}))
    suite.add_expectation(E.ExpectColumnValuesToMatchRegex(
        column="logged_at", regex=RFC3339.pattern, meta={"reason": "logged_at is not an RFC 3339 timestamp"}))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(
        column="logged_at_ok", value_set=[True],
        meta={"reason": f"logged_at is not a real date, or more than {CLOCK_SKEW_S} s in the future"}))
    suite.add_expectation(E.ExpectColumnValuesToMatchRegex(
        column="source", regex=SOURCE_PATTERN.pattern,
        meta={"reason": "source must be 1-128 of letters, digits and . _ : @ -"}))
    for name in OPTIONAL:
        suite.add_expectation(E.ExpectColumnValuesToBeInSet(
            column=f"{name}_ok", value_set=[True], meta={"reason": f"{name} must be a list of valid texts"}))
    for model, expected in models.items():
        suite.add_expectation(E.ExpectColumnValuesToBeInSet(
            column="task", value_set=[expected.task], row_condition=Column("model") == model,
            meta={"reason": f"task is not {expected.task}, what {model} does"}))
        if expected.labels:
            suite.add_expectation(E.ExpectColumnValuesToBeInSet(
                column="target", value_set=list(expected.labels), row_condition=Column("model") == model,
                meta={"reason": f"target is not one of {model}'s labels {list(expected.labels)}"}))
    return suite


def _texts_ok(value) -> bool:
    if value is None:
        return True
    return isinstance(value, list) and all(
        isinstance(r, str) and r.strip() and len(r) <= MAX_TEXT and not re.search(CONTROL, r) for r in value)


def validate_lines(lines: list[str | dict], models: dict[str, Expected] | None = None,
                   docs_dir: str | Path | None = None) -> Validated:
    """Validates JSON lines (patcher.engine.records.split_lines: text, or the quarantine entry of a line that is not
    UTF-8; blank lines are skipped, not counted). With `docs_dir`, great-expectations
    Data Docs of this validation are built there (open its index.html, or the page under validations/)."""
    import logging

    import great_expectations as gx
    import pandas as pd

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)             # its INFO lines are per-run noise
    models = models if models is not None else known_models()
    out = Validated()
    rows, raw = [], {}
    for number, line in enumerate(lines, 1):
        if isinstance(line, dict):                          # not UTF-8: split_lines kept its bytes
            out.quarantined.append({"line": number, **line})
            continue
        if not line.strip():
            continue
        try:
            data = load_json(line)
        except ValueError as e:
            out.quarantined.append({"line": number, "record": line, "reasons": [str(e)]})
            continue
        if not isinstance(data, dict):
            out.quarantined.append({"line": number, "record": line, "reasons": ["not a JSON object"]})
            continue
        unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL) - {"source"})
        row = {name: data.get(name) for name in REQUIRED}
        row["source"] = data.get("source")
        # a date the pattern allows but the calendar does not (Feb 30, year 0), or one from the future
        row["logged_at_ok"] = not isinstance(row["logged_at"], str) or not RFC3339.match(row["logged_at"]) or \
            logged_at_problem(row["logged_at"]) is None
        row.update({f"{name}_ok": _texts_ok(data.get(name)) for name in OPTIONAL})
        row.update(line=number, unknown=", ".join(unknown))
        rows.append(row)
        raw[number] = (line, data)
    if not rows:
        return out
    frame = pd.DataFrame(rows).astype(object)
    context = gx.get_context(mode="ephemeral")
    if docs_dir is not None:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.add_data_docs_site(site_name="report", site_config={
            "class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
    batch = context.data_sources.add_pandas("errors").add_dataframe_asset("batch") \
        .add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(_suite(gx, models))
    result = context.validation_definitions.add(gx.ValidationDefinition(name="errors", data=batch, suite=suite)) \
        .run(batch_parameters={"dataframe": frame},
             result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["line"]})
    reasons: dict[int, list[str]] = {}
    first_line_of_id: dict = {}
    for row in rows:
        if isinstance(row["id"], str):
            first_line_of_id.setdefault(row["id"], row["line"])
    for r in result.results:
        reason = r.expectation_config.meta["reason"]
        for hit in r.result.get("unexpected_index_list") or []:
            number = int(hit["line"])
            if reason == "duplicate id":
                if first_line_of_id.get(hit.get("id")) == number:
                    continue                       # the first occurrence is kept
                reason_text = f"duplicate id (first at line {first_line_of_id.get(hit.get('id'))})"
            else:
                reason_text = reason
            reasons.setdefault(number, []).append(reason_text)
        if not r.success and not r.result.get("unexpected_index_list"):
            # an expectation that failed without naming rows (it raised): never accept the batch blindly
            raise RuntimeError(f"validation suite could not evaluate {r.expectation_config.type} on "
                               f"{r.expectation_config.kwargs.get('column')}: {getattr(r, 'exception_info', None)}")
    for row in rows:
        number = row["line"]
        problems = reasons.get(number, []) + ([f"unknown fields {row['unknown']}"] if row["unknown"] else [])
        line, data = raw[number]
        if problems:
            out.quarantined.append({"line": number, "record": line, "reasons": sorted(set(problems))})
        else:
            out.accepted.append(data)
    out.quarantined.sort(key=lambda q: q["line"])
    if docs_dir is not None:
        context.build_data_docs(site_names=["report"])
    return out


@dataclass
class BatchValidation:
    """A run's batch files validated together (ids must be unique across them)."""

    accepted: list[dict] = field(default_factory=list)                    # records, in batch and line order
    quarantined: dict[str, list[dict]] = field(default_factory=dict)      # batch key -> its quarantined lines

    @property
    def counts(self) -> dict:
        q = sum(map(len, self.quarantined.values()))
        return {"received": len(self.accepted) + q, "accepted": len(self.accepted), "quarantined": q}


def validate_batches(batches: dict[str, list[str | dict]], model: str, processed: dict[str, str] | None = None,
                     docs_dir: str | Path | None = None, expected: Expected | None = None) -> BatchValidation:
    """Validates the batch files of one model's error stream as one suite run. Records of another model, and
    records whose id was already processed (`processed`: id -> where, e.g. "run RUN_ID"), are quarantined
    too. `expected`: the model's rules (default: the catalog's)."""
    expected = {model: expected} if expected is not None else known_models([model])
    lines, origin = [], []
    for key, batch in batches.items():
        for number, line in enumerate(batch, 1):
            if isinstance(line, dict) or line.strip():
                lines.append(line)
                origin.append((key, number))
    result = validate_lines(lines, expected, docs_dir)
    out = BatchValidation()
    processed = processed or {}
    by_line = {q["line"]: q for q in result.quarantined}
    accepted = iter(result.accepted)
    for index, (key, number) in enumerate(origin, 1):
        if index in by_line:
            q = by_line[index]
            out.quarantined.setdefault(key, []).append({**q, "line": number})
            continue
        record = next(accepted)
        if record["id"] in processed:
            out.quarantined.setdefault(key, []).append({"line": number, "record": lines[index - 1], "reasons": [
                f"id already processed ({processed[record['id']]})"]})
        else:
            out.accepted.append(record)
    return out
