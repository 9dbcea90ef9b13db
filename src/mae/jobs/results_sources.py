"""Where the results files in a directory came from, as tables of the results pages: which code and machine made
them (:class:`Sources`), and which weights file each run that started from one read (:class:`Encoders`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mae.runs.provenance import PROVENANCE_KEY, describe_machine
from mae.runs.run_directory import read_json_object

DIGEST_DIGITS = 12
"""How much of a SHA-256 a table shows: enough to tell this project's files apart."""

UNKNOWN_WRITER = "no results file here records it (an earlier run, or one from before digests were recorded)"


@dataclass(frozen=True)
class Sources:
    """Which code and machine made the results files in the directory: one line per (commit, machine)."""

    name: str

    def render(self, results_dir: Path) -> str:
        groups: dict[tuple[str, str, str], list[str]] = {}
        for path in sorted(results_dir.glob("*.json")):
            record = read_json_object(path).get(PROVENANCE_KEY) or {}
            commit = record.get("commit")
            code = (
                "unknown"
                if commit is None
                else f"`{commit[:10]}`" + (" (uncommitted changes)" if record.get("dirty") else "")
            )
            versions = record.get("versions") or {}
            stack = ", ".join(
                f"{name} {versions[name]}" for name in ("torch", "lightning", "timm") if versions.get(name)
            )
            machine = describe_machine(record["machine"]) if record.get("machine") else "unknown"
            groups.setdefault((code, machine, stack or "unknown"), []).append(path.stem)
        lines = ["| runs | commit | machine | versions |", "|---|---|---|---|"]
        for (code, machine, stack), names in groups.items():
            lines.append(f"| {len(names)} | {code} | {machine} | {stack} |")
        return "\n".join(lines)


@dataclass(frozen=True)
class Encoders:
    """Which weights file the runs that started from one read, by its SHA-256 (``pretrained_sha256``), and which
    results file's run wrote that file (its ``checkpoint_sha256``). Runs of the same name can be made again (a fresh
    checkout re-makes a pre-training whose checkpoint it lacks), so a path alone does not say which encoder a
    downstream number comes from. A digest no results file here records was written by an earlier run of that name,
    or by a run made before pre-training recorded its checkpoint's digest."""

    name: str

    def render(self, results_dir: Path) -> str:
        made_by: dict[str, list[str]] = {}
        started_from: dict[str | None, list[str]] = {}
        for path in sorted(results_dir.glob("*.json")):
            record = read_json_object(path)
            if record.get("checkpoint_sha256"):
                made_by.setdefault(record["checkpoint_sha256"], []).append(path.stem)
            if record.get("pretrained") is not None:
                started_from.setdefault(record.get("pretrained_sha256"), []).append(path.stem)
        if not started_from:
            return "No run here started from a weights file."
        lines = ["| weights file (SHA-256) | written by | runs that started from it |", "|---|---|---|"]
        for digest, runs in sorted(started_from.items(), key=lambda item: (item[0] is None, item[0] or "")):
            if digest is None:
                file, writer = "not recorded (runs made before digests were recorded)", ""
            else:
                file = f"`{digest[:DIGEST_DIGITS]}`"
                writer = ", ".join(made_by.get(digest, [])) or UNKNOWN_WRITER
            lines.append(f"| {file} | {writer} | {', '.join(runs)} |")
        return "\n".join(lines)
