"""Installed library versions, and a warning when one is outside the range pyproject.toml says we tested."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement

WATCHED = ("transformers", "peft", "accelerate")
RECORDED = ("torch", "transformers", "peft", "glm-sft")


def library_versions() -> dict[str, str]:
    """Installed versions of what a checkpoint depends on (missing packages left out)."""
    found = {}
    for package in RECORDED:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def check_supported() -> list[str]:
    """One warning line per watched package whose installed version is outside glm-sft's declared range."""
    try:
        declared = [Requirement(line) for line in requires("glm-sft") or []]
    except PackageNotFoundError:
        return []
    warnings = []
    for requirement in declared:
        if requirement.name not in WATCHED or requirement.marker is not None:
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            warnings.append(f"warning: {requirement.name} {installed} is outside the tested range "
                            f"{requirement.specifier} (README, Versions; the tested set: "
                            f"pip install -c requirements.lock -e .)")
    return warnings
