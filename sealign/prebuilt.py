"""The built-in task's default pi_ref and preference model, built by the project and shipped in
the package with a checksum of every file.

A build is bit-identical only on one kind of CPU (float sums round differently elsewhere) and
takes minutes. A copy of the very weights the README's figures were measured with makes a fresh
clone's first run start at once and reproduce them; a copy whose checksum fails is not used.

Refresh after a change of either recipe: `python -m sealign.prebuilt` builds the defaults (in an
empty $SEALIGN_HOME to build anew) and writes them and SHA256SUMS here.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).with_name("prebuilt_models")
SUMS = ROOT / "SHA256SUMS"  # `sha256sum -c SHA256SUMS` format, paths relative to ROOT


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checksums() -> dict[str, str]:
    """Shipped file (relative to ROOT) -> its sha256."""
    if not SUMS.is_file():
        return {}
    pairs = (line.split(maxsplit=1) for line in SUMS.read_text().splitlines() if line.strip())
    return {name.strip(): digest for digest, name in pairs}


def shipped(final: Path) -> Path:
    """Where the package would hold the cache folder `final` (…/ref/NAME or …/pm/NAME)."""
    return ROOT / final.parent.name / final.name


def verified(folder: Path) -> bool:
    """True when `folder` holds exactly the files SHA256SUMS lists for it, each with its sum."""
    rel = folder.relative_to(ROOT).as_posix()
    sums = {name: digest for name, digest in checksums().items() if name.rsplit("/", 1)[0] == rel}
    files = {f"{rel}/{f.name}": f for f in folder.iterdir() if f.is_file()}
    return bool(sums) and set(files) == set(sums) and all(sha256(f) == sums[name] for name, f in files.items())


def install(final: Path) -> bool:
    """Copy the shipped model for the cache folder `final` into place; False when none is
    shipped for these settings or its checksum fails (then the caller builds it)."""
    from sealign.sft import write_folder

    source = shipped(final)
    if not source.is_dir():
        return False
    if not verified(source):
        print(f"sealign: the shipped {source.relative_to(ROOT)} fails its checksum ({SUMS}): building it instead", file=sys.stderr)
        return False
    write_folder(final, lambda tmp: shutil.copytree(source, tmp))
    return True


def ship(folders: list[Path]) -> None:
    """Copy built cache folders into the package and rewrite SHA256SUMS for all shipped files."""
    for folder in folders:
        target = shipped(folder)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(folder, target)
    files = sorted(f for f in ROOT.rglob("*") if f.is_file() and f != SUMS)
    SUMS.write_text("".join(f"{sha256(f)}  {f.relative_to(ROOT).as_posix()}\n" for f in files))


def main() -> None:
    from sealign.config import PolicyConfig, PreferenceModelConfig, SFTConfig, TaskConfig
    from sealign.preference_model import ensure_preference_model
    from sealign.sft import ensure_reference

    task = TaskConfig()
    ship([ensure_reference(task, PolicyConfig(), SFTConfig()).path, ensure_preference_model(task, PreferenceModelConfig()).path])
    print(f"wrote {SUMS}")


if __name__ == "__main__":
    main()
