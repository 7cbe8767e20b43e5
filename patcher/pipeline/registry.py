"""The patch registry, a git + DVC repository following the DVC model-registry conventions.

Per production model M, `registry/M/` holds the live version: `patches.safetensors` (DVC-tracked, pushed to
the DVC remote, e.g. s3://patcher/dvc) and, in git, `manifest.json` (the patch set's manifest),
`gate_report.json`, `approval.json` and `version.json` (number, action, parent, edits, neurons, metrics).
`dvc.yaml` declares M as an artifact (type: model); each version is a commit tagged `M@vN.0.0` (GTO) and a
stage assignment is a tag `M#STAGE#K`, so `dvc artifacts get REPO M --stage prod` and `dvc pull` work from
a clean clone. History is never rewritten: rollbacks and removals make new versions.

A registration holds a file lock in .git (a second one waits), pushes the weights before it commits, and
becomes a version only when its tag is written; a crash before that leaves every earlier version as it
was (tags point at their commits), and the next registration first restores the model's directory.

`live_base` (what to train on) and `register_version` (an approval becomes a version) are those steps' one
implementation: `patcher train` / `patcher approve` (the DVC route) and the Prefect flows call them.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from patcher.engine.patchset import MANIFEST, WEIGHTS, CorruptPatchSet, PatchSet
from patcher.engine.records import stamp

from .store import version_name

TAG = re.compile(r"^(?P<model>[A-Za-z0-9._-]+)@v(?P<number>\d+)\.0\.0$")
FILES = (MANIFEST, "gate_report.json", "approval.json", "version.json")


class RegistryError(ValueError):
    pass


class Registry:
    def __init__(self, repo: str | Path):
        from .s3 import export_settings

        export_settings()                 # DVC reads the AWS settings itself
        self.repo = Path(repo).resolve()
        if not (self.repo / ".dvc").is_dir():
            raise RegistryError(f"{self.repo} is not a DVC repository: `patcher registry init --repo {repo}`")

    # --- git and dvc --------------------------------------------------------------------------------
    def identity(self) -> tuple[str, str]:
        """Who commits and tags: git's configured user, else "patcher registry" (machines with no git
        identity, such as CI, can still register)."""
        name = os.environ.get("GIT_COMMITTER_NAME") or self.git("config", "user.name", check=False).strip()
        email = os.environ.get("GIT_COMMITTER_EMAIL") or self.git("config", "user.email", check=False).strip()
        return name or "patcher registry", email or "registry@patcher.local"

    def git(self, *args: str, check: bool = True) -> str:
        env = {**os.environ}
        if args and args[0] == "commit":
            for key, value in zip(("NAME", "EMAIL"), self.identity()):
                env.setdefault(f"GIT_AUTHOR_{key}", value)
                env.setdefault(f"GIT_COMMITTER_{key}", value)
        proc = subprocess.run(["git", *args], cwd=self.repo, capture_output=True, text=True, env=env)
        if check and proc.returncode:
            raise RegistryError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    @classmethod
    def init(cls, repo: str | Path, remote: str | None = None) -> "Registry":
        """A git + DVC repository (created if needed) whose default DVC remote is `remote` (s3://...;
        the endpoint and keys come from the standard AWS settings)."""
        repo = Path(repo)
        repo.mkdir(parents=True, exist_ok=True)
        if not (repo / ".git").exists():
            subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        if not (repo / ".dvc").exists():
            import sys

            dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
            subprocess.run([dvc, "init", "-q"], cwd=repo, check=True)
        registry = cls(repo)
        if remote:
            from dvc.repo import Repo

            with Repo(str(repo)).config.edit() as config:
                config["core"]["remote"] = "store"
                config["remote"]["store"] = {"url": remote}
            if remote.startswith("s3://"):
                from .s3 import client, ensure_bucket, parse_uri

                ensure_bucket(client(), parse_uri(remote)[0])
        registry.git("add", ".dvc", ".dvcignore")
        if registry.git("status", "--porcelain", "--", ".dvc", ".dvcignore").strip():
            registry.git("commit", "-q", "-m", "patch registry: DVC set up", "--", ".dvc", ".dvcignore")
        return registry

    @contextmanager
    def _locked(self):
        path = self.repo / ".git" / "patcher-registry.lock"
        with open(path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)          # a second registration waits here
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def model_dir(self, model: str) -> Path:
        return self.repo / "registry" / model

    # --- reading ------------------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Every model with at least one version (a tag M@vN.0.0)."""
        return sorted({m["model"] for tag in self.git("tag", "-l").split() if (m := TAG.match(tag))})

    def versions(self, model: str) -> list[dict]:
        """Every version, oldest first: number, tag, commit, the stages it holds now, and version.json."""
        tags = [t for t in self.git("tag", "-l", f"{model}@v*").split() if TAG.match(t)]
        stages = self.stages(model)
        out = []
        for tag in sorted(tags, key=lambda t: int(TAG.match(t)["number"])):
            number = int(TAG.match(tag)["number"])
            info = json.loads(self.git("show", f"{tag}:registry/{model}/version.json"))
            out.append({**info, "tag": tag, "commit": self.git("rev-list", "-n1", tag).strip(),
                        "stages": sorted(s for s, v in stages.items() if v == number)})
        return out

    def stages(self, model: str) -> dict[str, int]:
        """Stage -> version number it points at now: per stage, the assignment tag M#STAGE#K with the
        largest K (GTO's convention), on the commit of a version tag."""
        by_commit = {self.git("rev-list", "-n1", t).strip(): int(TAG.match(t)["number"])
                     for t in self.git("tag", "-l", f"{model}@v*").split() if TAG.match(t)}
        latest: dict[str, tuple[int, str]] = {}
        for tag in self.git("tag", "-l", f"{model}#*").split():
            m = re.match(rf"^{re.escape(model)}#(?P<stage>[A-Za-z0-9_-]+)#(?P<k>\d+)$", tag)
            if m and int(m["k"]) > latest.get(m["stage"], (-1, ""))[0]:
                latest[m["stage"]] = (int(m["k"]), tag)
        return {stage: by_commit[c] for stage, (_, tag) in latest.items()
                if (c := self.git("rev-list", "-n1", tag).strip()) in by_commit}

    def resolve(self, model: str, version: int | str | None = None, stage: str | None = None) -> dict:
        """A version by number, tag version (v3.0.0), stage, or the latest."""
        versions = self.versions(model)
        if not versions:
            raise RegistryError(f"no versions of {model} in {self.repo}")
        if stage:
            number = self.stages(model).get(stage)
            if number is None:
                raise RegistryError(f"no version of {model} is in stage {stage!r}")
        elif version is None:
            return versions[-1]
        else:
            number = int(str(version).lstrip("v").split(".")[0])
        for v in versions:
            if v["number"] == number:
                return v
        raise RegistryError(f"{model} has no version {version}; versions: {[v['number'] for v in versions]}")

    def read(self, model: str, name: str, version: int | str | None = None, stage: str | None = None) -> dict:
        v = self.resolve(model, version, stage)
        return json.loads(self.git("show", f"{v['tag']}:registry/{model}/{name}"))

    def fetch(self, model: str, out: str | Path, version: int | str | None = None, stage: str | None = None) -> Path:
        """The version's patch set (weights from the DVC remote or cache) into `out`, checked against the sha256
        its manifest recorded (DVC does not re-hash what it copies: a corrupt cache or remote would pass). -> out."""
        from dvc.repo.artifacts import Artifacts

        v = self.resolve(model, version, stage)
        out = Path(out)
        if out.exists():
            shutil.rmtree(out)
        Artifacts.get(str(self.repo), model, version=f"v{v['number']}.0.0", out=str(out))
        try:
            PatchSet.load(out)
        except CorruptPatchSet as error:
            shutil.rmtree(out)
            raise RegistryError(f"{model} version {v['number']} ({v['tag']}) is corrupt in the DVC cache or remote: "
                                f"{error}") from None
        return out

    def diff(self, model: str, a: int | str, b: int | str) -> dict:
        """Which edits version b has that a has not, and the reverse."""
        ea = {e["error_id"]: e for e in self.read(model, MANIFEST, a)["edits"]}
        eb = {e["error_id"]: e for e in self.read(model, MANIFEST, b)["edits"]}
        return {"from": self.resolve(model, a)["number"], "to": self.resolve(model, b)["number"],
                "added": [eb[i] | {"error_id": i} for i in eb if i not in ea],
                "removed": [ea[i] | {"error_id": i} for i in ea if i not in eb], "kept": len(set(ea) & set(eb))}

    # --- writing ------------------------------------------------------------------------------------
    def register(self, model: str, patches: str | Path, gate_report: dict | None, approval: dict,
                 action: str = "register", parent: int | None = None, note: str = "") -> dict:
        """A new version whose content is the patch set in directory `patches`. -> its version info.
        Its steps run in this order, so a crash at any point leaves no half version (tests kill each one)."""
        patch_set = PatchSet.load(patches)
        with self._locked():
            self._restore(model)
            number = max([v["number"] for v in self.versions(model)], default=0) + 1
            metrics = (gate_report or {}).get("metrics", {})
            info = {"model": model, "number": number, "version": f"v{number}.0.0", "action": action,
                    "parent": parent, "note": note, "edits": len(patch_set.edits), "neurons": len(patch_set),
                    "error_ids": patch_set.error_ids, "registered_at": stamp(),
                    "metrics": {k: metrics.get(k) for k in ("SR", "GR", "ER", "TrainR", "TestR") if k in metrics},
                    "approved_by": approval.get("reviewer")}
            self._write(model, Path(patches), gate_report or {}, approval, info)
            self._push(model)
            self._commit(model, info)
            self._tag(model, info, approval)
        return self.resolve(model, number)

    def _write(self, model: str, patches: Path, gate_report: dict, approval: dict, info: dict) -> None:
        """The version's files into registry/M/, and M declared in dvc.yaml."""
        target = self.model_dir(model)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(patches / WEIGHTS, target / WEIGHTS)
        shutil.copyfile(patches / MANIFEST, target / MANIFEST)
        for name, data in (("gate_report.json", gate_report), ("approval.json", approval), ("version.json", info)):
            (target / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        self._declare(model)

    def _push(self, model: str) -> None:
        """The weights into DVC, and to its remote (before the commit that names them)."""
        from dvc.repo import Repo

        weights = str(self.model_dir(model) / WEIGHTS)
        dvc = Repo(str(self.repo))
        dvc.add(weights)
        if dvc.config.get("core", {}).get("remote"):
            dvc.push(targets=[weights])

    def _commit(self, model: str, info: dict) -> None:
        self.git("add", "--", f"registry/{model}", "dvc.yaml")
        self.git("commit", "-q", "-m", f"{model} v{info['number']}: {info['action']} ({info['edits']} edits, "
                                       f"{info['neurons']} neurons)", "--", f"registry/{model}", "dvc.yaml")

    def _tag(self, model: str, info: dict, approval: dict) -> None:
        """The GTO tag M@vN.0.0 on the commit: from here on it is a version."""
        from gto.api import register

        author, email = self.identity()
        register(str(self.repo), model, "HEAD", version=info["version"],
                 message=f"{model} v{info['number']}: {info['action']}; approved by {approval.get('reviewer')}",
                 author=author, author_email=email)

    def _restore(self, model: str) -> None:
        """Undoes what a crashed registration left in the model's directory (the tags never moved)."""
        paths = [f"registry/{model}", "dvc.yaml"]
        tracked = [p for p in paths if self.git("ls-files", "--", p).strip()]
        if tracked:
            self.git("reset", "-q", "--", *tracked)
            self.git("checkout", "-q", "HEAD", "--", *tracked)
        self.git("clean", "-fdq", "--", f"registry/{model}", check=False)

    def _declare(self, model: str) -> None:
        import yaml

        path = self.repo / "dvc.yaml"
        data = yaml.safe_load(path.read_text()) if path.exists() else None
        data = data or {}
        artifacts = data.setdefault("artifacts", {})
        if model not in artifacts:
            artifacts[model] = {"path": f"registry/{model}", "type": "model",
                                "desc": f"Transformer-Patcher patch set for {model} (safetensors + manifest)",
                                "labels": ["transformer-patcher", "patches"]}
            path.write_text(yaml.safe_dump(data, sort_keys=False))

    def promote(self, model: str, version: int | str, stage: str) -> str:
        from gto.api import assign

        v = self.resolve(model, version)
        with self._locked():
            author, email = self.identity()
            assign(str(self.repo), model, stage, version=f"v{v['number']}.0.0",
                   message=f"{model} v{v['number']} -> {stage}", author=author, author_email=email)
        return f"{model} v{v['number']} is {stage}"

    def rollback(self, model: str, to: int | str, reviewer: str, comment: str = "") -> dict:
        """A new version with exactly the content of an earlier one."""
        source = self.resolve(model, to)
        with tempfile.TemporaryDirectory() as tmp:
            self.fetch(model, Path(tmp) / "p", source["number"])
            return self.register(model, Path(tmp) / "p", self.read(model, "gate_report.json", source["number"]),
                                 _decision(reviewer, comment), "rollback", self.resolve(model)["number"],
                                 f"content of v{source['number']}")

    def remove_edit(self, model: str, error_id: str, reviewer: str, comment: str = "") -> dict:
        """A new version: the latest without one edit's neurons (every other neuron unchanged)."""
        latest = self.resolve(model)
        with tempfile.TemporaryDirectory() as tmp:
            current = PatchSet.load(self.fetch(model, Path(tmp) / "p"))
            current.without(error_id).save(Path(tmp) / "q")
            return self.register(model, Path(tmp) / "q", None, _decision(reviewer, comment), "remove-edit",
                                 latest["number"], f"without {error_id}")


def live_base(repo: str | Path | None, model: str, out: str | Path) -> tuple[PatchSet | None, dict[str, str]]:
    """The patch set new patches go on top of: the registry's latest version, fetched into `out` (the registry
    is the source of truth, so a rollback there is what the next run builds on). The DVC stages and the
    Prefect pipeline both train on it. -> (it, {error id it holds: "registry TAG"}); (None, {}) for none."""
    if not repo:
        return None, {}
    registry = Registry(repo)
    versions = registry.versions(model)
    if not versions:
        return None, {}
    latest = versions[-1]
    base = PatchSet.load(registry.fetch(model, out, latest["number"]))
    return base, {e["error_id"]: f"registry {latest['tag']}" for e in base.edits}


def register_version(repo: str | Path | None, model: str, patches: str | Path | None, gate_report: dict | None,
                     approval: dict, note: str = "", number: int | None = None) -> dict:
    """An approved patch set becomes the model's next version, for `patcher approve` and the pipeline alike: in
    the registry at `repo`, which numbers it, or with no registry as version `number` (S3-only versions,
    numbered by the pipeline's ledger). -> {"number", "name" (vNNNN, in S3 and serving), "tag" (None without
    a registry), and the registry's version info}."""
    if repo:
        info = Registry(repo).register(model, patches, gate_report, approval, note=note)
        return {**info, "name": version_name(info["number"])}
    if number is None:
        raise ValueError("without a registry the version's number must be given")
    return {"number": number, "name": version_name(number), "tag": None}


def _decision(reviewer: str, comment: str) -> dict:
    if not reviewer.strip():
        raise ValueError("a registry change needs the reviewer's name (--reviewer)")
    return {"approved": True, "reviewer": reviewer, "comment": comment, "at": stamp(), "by_policy": False}
