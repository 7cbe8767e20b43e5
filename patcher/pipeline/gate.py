"""The locality gate: a patch set goes to a reviewer only if it keeps what the model knew and what earlier
edits fixed, and holds no correction flagged as suspicious. Thresholds live in params.yaml (`gate`), a catalog
entry's `gate` on top. Every locality suite is checked: its unchanged share (predictions the same as the unpatched
model's) and, where the suite has targets, its retain ratio (accuracy now / before). The report is what the
reviewer reads (`summary()`: the approval form's short text; `markdown()`: the full report, an artifact) and what
the registry keeps (JSON)."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

from patcher.engine.config import from_section


@dataclass
class GateThresholds:
    """params.yaml `gate`."""

    retain: float = 0.99             # each suite with targets: accuracy now / before at least this
    unchanged: float = 0.99          # each suite: share of predictions still the unpatched model's at least this
    edit_retain: float = 0.99        # ER over every edit of the new patch set (registry edits and new ones)
    max_failed_share: float = 0.5    # share of this run's attempted edits that may fail (they go to review)
    max_suspicious: int = 0          # patched corrections flagged as suspicious (possible poisoning) allowed;
    #                                  flagged ones go to review either way

    @classmethod
    def from_dict(cls, data: dict | None) -> "GateThresholds":
        kinds = {f.name: int if f.type == "int" else float for f in fields(cls)}
        return from_section(cls, {k: kinds.get(k, float)(v) for k, v in (data or {}).items()})


@dataclass
class GateReport:
    passed: bool
    checks: list[dict]                       # name, value, threshold, passed, detail
    review: list[dict] = field(default_factory=list)     # errors for a person: error_id, reason
    metrics: dict = field(default_factory=dict)
    edits: list[dict] = field(default_factory=list)      # this run's edits, each with its source and suspicious
    changed: list[dict] = field(default_factory=list)    # locality examples whose prediction moved (predates: the
    #                                                      base patch set had already moved it)
    suspicious: list[dict] = field(default_factory=list)  # flagged corrections: error_id, source, input, target,
    #                                                       status, reasons

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def changed_now(self) -> list[dict]:
        """The locality examples this run's patches moved."""
        return [c for c in self.changed if not c.get("predates")]

    @property
    def changed_before(self) -> list[dict]:
        """The locality examples the base patch set (earlier versions) had already moved."""
        return [c for c in self.changed if c.get("predates")]

    def markdown(self, title: str = "Gate report", limit: int = 30) -> str:
        """The full report (an artifact, gate_report.md): every check, the edits, the locality changes."""
        lines = [f"## {title}: {'PASSED' if self.passed else 'FAILED'}", "",
                 "| check | value | threshold | result |", "|---|---|---|---|"]
        lines += [f"| {c['name']} | {fmt(c['value'])} | {c['threshold']} | {'pass' if c['passed'] else '**FAIL**'} |"
                  for c in self.checks]
        m = self.metrics
        lines += ["", f"SR {fmt(m.get('SR'))} · GR {fmt(m.get('GR'))} · edits {m.get('n_edits')} · failed "
                      f"{m.get('n_failed')} · already right {m.get('n_skipped_already_correct')} · neurons "
                      f"{m.get('n_neurons')} · median {fmt(m.get('edit_seconds_median'))} s per edit", ""]
        if self.suspicious:
            lines += [f"### ⚠ Corrections flagged as suspicious ({len(self.suspicious)})", ""]
            lines += _bullets([_suspicious_line(s) for s in self.suspicious], limit) + [""]
        lines += self._edits_table(limit)
        lines += _changed_table(f"Locality examples changed by this run's patches ({len(self.changed_now)})",
                                self.changed_now, limit)
        lines += _changed_table("Locality examples changed already before this run (earlier versions) "
                                f"({len(self.changed_before)})", self.changed_before, limit)
        if self.review:
            lines += ["", f"### For review ({len(self.review)})", ""]
            lines += [f"- {_code(r['error_id'])}: {_escape(r['reason'])}" for r in self.review[:limit]]
        return "\n".join(lines) + "\n"

    def _edits_table(self, limit: int) -> list[str]:
        edits = [e for e in self.edits if e["status"] != "skipped"]
        if not edits:
            return []
        return [f"### Edits ({min(len(edits), limit)} of {len(edits)} shown)", "",
                "| error | source | input | target | before | after | at the end | status |",
                "|---|---|---|---|---|---|---|---|"] + \
            [f"| {_cell(e['error_id'])} | {_cell(e.get('source') or 'unknown')} | {_cell(e['input'])} | "
             f"{_cell(e['target'])} | {_cell(e['before'])} | {_cell(e['after'])} | {_cell(e.get('final'))} | "
             f"{e['status']}{' ⚠ suspicious' if e.get('suspicious') else ''} |" for e in edits[:limit]]

    def summary(self, title: str = "Gate", link: str | None = None, where: str | None = None, limit: int = 10) -> str:
        """The approval form's text: the checks, the counts, the suspicious corrections, the locality examples this
        run's patches moved and by which edit, and where the full report is (`link`: its artifact in the UI,
        `where`: its file). No wide tables: the form is a narrow modal."""
        m = self.metrics
        lines = [f"**{title}: {'PASSED' if self.passed else 'FAILED'}** · {m.get('n_edits')} edits, "
                 f"{m.get('n_failed')} failed, {m.get('n_neurons')} neurons · SR {fmt(m.get('SR'))} · "
                 f"GR {fmt(m.get('GR'))}"]
        # what needs a person's eyes first: the form shows the top of its description without scrolling
        if self.suspicious:
            lines += ["", f"**⚠ Corrections flagged as suspicious ({len(self.suspicious)})**", ""]
            lines += _bullets([_suspicious_line(s) for s in self.suspicious], limit)
        lines += self._summary_changes(limit) + self._summary_checks()
        full = f"[the gate-report artifact]({link})" if link else "the run's gate-report artifact"
        lines += ["", f"Full report (every edit with its source and outputs): {full}"
                      + (f", `{where}`" if where else "")]
        return "\n".join(lines) + "\n"

    def _summary_checks(self) -> list[str]:
        # a failing check on its own line with its threshold; the passing ones on one line, values only
        ok = [c for c in self.checks if c["passed"]]
        lines = ["", f"**Checks: {len(ok)} of {len(self.checks)} pass**", ""]
        lines += [f"- **FAIL**: {c['name']} {fmt(c['value'])} ({c['threshold']})" for c in self.checks
                  if not c["passed"]]
        if ok:
            lines.append("- pass: " + " · ".join(f"{c['name']} {fmt(c['value'])}" for c in ok))
        return lines

    def _summary_changes(self, limit: int) -> list[str]:
        # only this run's: what earlier versions moved was approved then, and is counted in the full report
        now, before = self.changed_now, self.changed_before
        lines = ["", f"**Locality examples changed by this run's patches ({len(now)})**", ""]
        lines += _bullets([f"{c['set']}: {_code(c['input'])}: {_code(c['before'])} → {_code(c['after'])}, moved by "
                           f"{_movers(c.get('fired_by', []))}" for c in now], limit) or ["- none"]
        if before:
            lines += ["", f"{len(before)} more changed already before this run (earlier versions): in the full "
                          "report."]
        return lines


def _bullets(items: list[str], limit: int) -> list[str]:
    return [f"- {x}" for x in items[:limit]] + ([f"- and {len(items) - limit} more: in the full report"]
                                                if len(items) > limit else [])


def _changed_table(heading: str, changed: list[dict], limit: int) -> list[str]:
    if not changed:
        return []
    return ["", f"### {heading}", "", "| set | input | target | before | after | neurons firing on it (edit: "
            "pre-activation) |", "|---|---|---|---|---|---|"] + \
        [f"| {c['set']} | {_cell(c['input'])} | {_cell(c['target'])} | {_cell(c['before'])} | {_cell(c['after'])} | "
         f"{_cell(_firing(c.get('fired_by', [])))} |" for c in changed[:limit]]


def _suspicious_line(s: dict) -> str:
    return (f"{_code(s['error_id'])} from {_code(s['source'] or 'an unknown source')}, {fate(s['status'])}: "
            f"{_code(s['input'])} → {_code(s['target'])}: " + "; ".join(_code(r, 160) for r in s["reasons"]))


def fate(status: str) -> str:
    """What became of a flagged correction, for people."""
    return {"edited": "PATCHED", "failed": "held (not patched)", "skipped": "already right (not patched)"}.get(
        status, status)


def _firing(fired_by: list[dict]) -> str:
    return ", ".join(f"{f['error_id']}: {f['preactivation']:.2f}" for f in fired_by) or "none"


def _movers(fired_by: list[dict]) -> str:
    return ", ".join(f"{_code(f['error_id'])} ({f['preactivation']:.2f})" for f in fired_by) or "no neuron firing on it"


def fmt(x) -> str:
    """A metric for people: 3 decimals for floats, n/a for missing."""
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _cell(text) -> str:
    text = _escape(text)
    return text if len(text) <= 80 else text[:77] + "..."


def _escape(text) -> str:
    # users' text: Markdown's active characters escaped, so a correction cannot render as a link or an image
    return re.sub(r"([\\`*_\[\]<>!|])", r"\\\1", "" if text is None else str(text)).replace("\n", " ")


def _code(text, width: int = 60) -> str:
    # a code span: inputs and corrections are users' text, which must not render as Markdown (links, images)
    text = "" if text is None else " ".join(str(text).split()).replace("`", "'")
    return f"`{text if len(text) <= width else text[:width - 3] + '...'}`"


def gate(report: dict, thresholds: GateThresholds) -> GateReport:
    """Checks a train report (patcher.pipeline.train.train_patches) against the thresholds. Rows of older reports
    without `source`, `suspicious` (edits) or `predates` (locality changes) read as unknown, none, False."""
    m = report["metrics"]
    attempted = m.get("n_edits") or 0
    failed_share = (m.get("n_failed") or 0) / attempted if attempted else 0.0
    wrong = report.get("registry_wrong", [])
    edits = [{**e, "source": e.get("source") or "", "suspicious": list(e.get("suspicious") or [])}
             for e in report["edits"]]
    new_ids = {e["error_id"] for e in edits if e["status"] == "edited"}
    suspicious = [{k: e[k] for k in ("error_id", "source", "input", "target", "status")} | {"reasons": e["suspicious"]}
                  for e in edits if e["suspicious"]]
    checks = [] if report.get("locality") else [{
        "name": "locality suites", "value": 0, "threshold": ">= 1", "passed": False,
        "detail": "no locality suite: nothing shows the patches leave unrelated answers alone; give the catalog "
                  "entry one (`locality: {NAME: FILE}`)"}]
    for name, suite in report.get("locality", {}).items():
        if suite.get("targets"):
            checks.append(_check(f"{name}: retain", suite.get("retain"), thresholds.retain))
        checks.append(_check(f"{name}: unchanged", suite.get("unchanged"), thresholds.unchanged))
    checks += [
        _check("ER (every edit of the patch set)", report.get("registry_ER"), thresholds.edit_retain),
        {"name": "each new patch's own edit holds", "value": f"{len(new_ids) - len(new_ids & set(wrong))}/{len(new_ids)}",
         "threshold": "all", "passed": not (new_ids & set(wrong)), "detail": sorted(new_ids & set(wrong))},
        {"name": "failed edits (share)", "value": round(failed_share, 4), "threshold": f"<= {thresholds.max_failed_share}",
         "passed": failed_share <= thresholds.max_failed_share, "detail": report.get("failed_ids", [])},
        _suspicious_check(report["edits"], suspicious, thresholds.max_suspicious),
    ]
    passed = all(c["passed"] for c in checks)
    changed = [{"set": name, **c, "predates": bool(c.get("predates"))}
               for name, suite in report.get("locality", {}).items() for c in suite.get("changed", [])]
    return GateReport(passed, checks, _review(report, wrong, suspicious), m, edits, changed, suspicious)


def _suspicious_check(rows: list[dict], suspicious: list[dict], allowed: int) -> dict:
    """Flagged corrections in the patch set (train holds them back; one that got trained anyway fails the gate):
    only a patched one changes the model. An older report, which flags nothing, says it was not checked."""
    name = "corrections flagged as suspicious, patched"
    if rows and not any("suspicious" in e for e in rows):
        return {"name": name, "value": None, "threshold": f"<= {allowed}", "passed": True,
                "detail": "not checked: the train report flags no corrections (an older report)"}
    patched = [s["error_id"] for s in suspicious if s["status"] == "edited"]
    return {"name": name, "value": len(patched), "threshold": f"<= {allowed}", "passed": len(patched) <= allowed,
            "detail": patched}


def _review(report: dict, wrong: list[str], suspicious: list[dict]) -> list[dict]:
    """The errors for a person, one entry per error (its reasons joined)."""
    reasons, flagged = report.get("failed_reasons", {}), {s["error_id"] for s in suspicious}
    found: dict[str, list[str]] = {}
    for i in report.get("failed_ids", []):
        why = reasons.get(i) or "step limit"
        if not (i in flagged and why.startswith("held for review")):   # a held correction: its flag says why
            found.setdefault(i, []).append(f"the edit failed (not patched): {why}")
    for i in wrong:
        found.setdefault(i, []).append("wrong in the final patched model (a later edit broke it)")
    for s in suspicious:
        found.setdefault(s["error_id"], []).append(f"flagged as suspicious, {fate(s['status'])} (source: "
                                                   f"{s['source'] or 'unknown'}): {'; '.join(s['reasons'])}")
    return [{"error_id": i, "reason": "; ".join(why)} for i, why in found.items()]


def _check(name: str, value: float | None, threshold: float) -> dict:
    # no data (None) passes: e.g. ER of a run whose every edit was already right
    return {"name": name, "value": value, "threshold": f">= {threshold}",
            "passed": value is None or value >= threshold, "detail": None}
