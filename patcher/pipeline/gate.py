"""The locality gate: a patch set goes to a reviewer only if it keeps what the model knew and what earlier
edits fixed. Thresholds live in params.yaml (`gate`), a catalog entry's `gate` on top. Every locality suite is
checked: its unchanged share (predictions the same as the unpatched model's) and, where the suite has targets,
its retain ratio (accuracy now / before). The report is what the reviewer reads (Markdown) and what the
registry keeps (JSON)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from patcher.engine.config import from_section


@dataclass
class GateThresholds:
    """params.yaml `gate`."""

    retain: float = 0.99             # each suite with targets: accuracy now / before at least this
    unchanged: float = 0.99          # each suite: share of predictions still the unpatched model's at least this
    edit_retain: float = 0.99        # ER over every edit of the new patch set (registry edits and new ones)
    max_failed_share: float = 0.5    # share of this run's attempted edits that may fail (they go to review)

    @classmethod
    def from_dict(cls, data: dict | None) -> "GateThresholds":
        return from_section(cls, {k: float(v) for k, v in (data or {}).items()})


@dataclass
class GateReport:
    passed: bool
    checks: list[dict]                       # name, value, threshold, passed, detail
    review: list[dict] = field(default_factory=list)     # errors for a person: error_id, reason
    metrics: dict = field(default_factory=dict)
    edits: list[dict] = field(default_factory=list)
    changed: list[dict] = field(default_factory=list)    # locality examples whose prediction moved

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self, title: str = "Gate report", limit: int = 30) -> str:
        lines = [f"## {title}: {'PASSED' if self.passed else 'FAILED'}", "",
                 "| check | value | threshold | result |", "|---|---|---|---|"]
        for c in self.checks:
            lines.append(f"| {c['name']} | {fmt(c['value'])} | {c['threshold']} | "
                         f"{'pass' if c['passed'] else '**FAIL**'} |")
        m = self.metrics
        lines += ["", f"SR {fmt(m.get('SR'))} · GR {fmt(m.get('GR'))} · edits {m.get('n_edits')} · failed "
                      f"{m.get('n_failed')} · already right {m.get('n_skipped_already_correct')} · neurons "
                      f"{m.get('n_neurons')} · median {fmt(m.get('edit_seconds_median'))} s per edit", ""]
        shown = [e for e in self.edits if e["status"] != "skipped"][:limit]
        if shown:
            lines += [f"### Edits ({len(shown)} of {sum(e['status'] != 'skipped' for e in self.edits)} shown)", "",
                      "| error | input | target | before | after | at the end | status |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {_cell(e['error_id'])} | {_cell(e['input'])} | {_cell(e['target'])} | {_cell(e['before'])} "
                      f"| {_cell(e['after'])} | {_cell(e.get('final'))} | {e['status']} |" for e in shown]
        if self.changed:
            lines += ["", f"### Locality examples whose prediction changed ({len(self.changed)})", "",
                      "| set | input | target | before | after | neurons firing on it (edit: pre-activation) |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {c['set']} | {_cell(c['input'])} | {_cell(c['target'])} | {_cell(c['before'])} | "
                      f"{_cell(c['after'])} | {_cell(_firing(c.get('fired_by', [])))} |" for c in self.changed[:limit]]
        if self.review:
            lines += ["", f"### For review ({len(self.review)})", ""]
            lines += [f"- `{r['error_id']}`: {r['reason']}" for r in self.review[:limit]]
        return "\n".join(lines) + "\n"


def _firing(fired_by: list[dict]) -> str:
    return ", ".join(f"{f['error_id']}: {f['preactivation']:.2f}" for f in fired_by) or "none"


def fmt(x) -> str:
    """A metric for people: 3 decimals for floats, n/a for missing."""
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _cell(text) -> str:
    text = "" if text is None else str(text)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def gate(report: dict, thresholds: GateThresholds) -> GateReport:
    """Checks a train report (patcher.pipeline.train.train_patches) against the thresholds."""
    m = report["metrics"]
    attempted = m.get("n_edits") or 0
    failed_share = (m.get("n_failed") or 0) / attempted if attempted else 0.0
    wrong = report.get("registry_wrong", [])
    new_ids = {e["error_id"] for e in report["edits"] if e["status"] == "edited"}
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
    ]
    passed = all(c["passed"] for c in checks)
    reasons = report.get("failed_reasons", {})
    review = [{"error_id": i, "reason": f"the edit failed (not patched): {reasons.get(i) or 'step limit'}"}
              for i in report.get("failed_ids", [])]
    review += [{"error_id": i, "reason": "wrong in the final patched model (a later edit broke it)"} for i in wrong]
    changed = [{"set": name, **c} for name, suite in report.get("locality", {}).items() for c in suite.get("changed", [])]
    return GateReport(passed, checks, review, m, report["edits"], changed)


def _check(name: str, value: float | None, threshold: float) -> dict:
    # no data (None) passes: e.g. ER of a run whose every edit was already right
    return {"name": name, "value": value, "threshold": f">= {threshold}",
            "passed": value is None or value >= threshold, "detail": None}
