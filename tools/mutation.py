"""``make mutation``: mutmut over every module of ``harness/``, on a stratified sample of its mutants.

mutmut (``[tool.mutmut]`` in ``pyproject.toml``) makes every mutant of every function (a flipped
comparison, a changed constant, a dropped argument ...); running the suite against all of them
(about 10 000) would take days on 2 cores. So this script

1. has mutmut generate the mutants (``mutants/``, its own working copy);
2. draws, per module, ``--per-module`` of them (all of them where a module has fewer), with a fixed
   seed, so the sample is the same for the same code;
3. runs ``mutmut run`` on the sample: each mutant against the tests that execute its function (the
   suite's fast tests: ``-m "not slow"``), until one fails (killed) or all pass (survived);
4. prints a table per module (killed, survived, timeouts, no test) and the score, which leaves out
   the survivors judged equivalent in ``tools/mutation_equivalents.txt`` (a mutant that cannot
   change behaviour, with the reason) — and writes it to ``mutants/mutation.md``.

    make mutation                      # or: python tools/mutation.py --per-module 10 --seed 0
    .venv/bin/mutmut show <name>       # the diff of one mutant
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
EQUIVALENTS = ROOT / "tools" / "mutation_equivalents.txt"
KILLED, SURVIVED, TIMEOUT, NO_TESTS = "killed", "survived", "timeout", "no tests"


def generate() -> None:
    """mutmut's own generation step (what ``mutmut run`` does first), without running anything."""
    os.chdir(ROOT)
    from mutmut.__main__ import create_mutants, set_mutant_under_test, store_lines_covered_by_tests
    from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths

    set_mutant_under_test("mutant_generation")
    MUTANTS.mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    setup_source_paths()
    store_lines_covered_by_tests()
    create_mutants(2)


def mutants_by_module() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for meta in sorted((MUTANTS / "harness").rglob("*.py.meta")):
        module = str(meta.relative_to(MUTANTS))[: -len(".meta")]
        names = sorted(json.loads(meta.read_text())["exit_code_by_key"])
        if names:
            out[module] = names
    return out


def sample(by_module: dict[str, list[str]], per_module: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    return {m: sorted(rng.sample(names, min(per_module, len(names)))) for m, names in by_module.items()}


def status(exit_code) -> str:
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[exit_code]


def results(chosen: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for module, names in chosen.items():
        codes = json.loads((MUTANTS / f"{module}.meta").read_text())["exit_code_by_key"]
        out[module] = {n: status(codes.get(n)) for n in names}
    return out


def equivalents() -> dict[str, str]:
    """``name  reason`` lines of survivors judged equivalent (``#`` comments)."""
    out = {}
    if EQUIVALENTS.is_file():
        for line in EQUIVALENTS.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, why = line.partition(" ")
                out[name] = why.strip()
    return out


def table(res: dict[str, dict[str, str]], judged: dict[str, str]) -> tuple[str, float]:
    lines = ["| module | mutants | killed | survived | judged equivalent | timeout | no test | score |",
             "|---|---|---|---|---|---|---|---|"]
    total_killed = total_counted = total_equivalent = 0
    survivors = []
    for module, by_name in res.items():
        counts: dict[str, int] = defaultdict(int)
        for name, st in by_name.items():
            if st in (SURVIVED, NO_TESTS) and name in judged:
                counts["equivalent"] += 1
                continue
            counts[st] += 1
            if st in (SURVIVED, NO_TESTS):
                survivors.append(name)
        killed = counts[KILLED] + counts[TIMEOUT]  # a mutant that hangs the tests is caught
        counted = len(by_name) - counts["equivalent"]
        total_killed, total_counted = total_killed + killed, total_counted + counted
        total_equivalent += counts["equivalent"]
        score = 100.0 * killed / counted if counted else 100.0
        lines.append(f"| {module} | {len(by_name)} | {counts[KILLED]} | {counts[SURVIVED]} | {counts['equivalent']} | "
                     f"{counts[TIMEOUT]} | {counts[NO_TESTS]} | {score:.0f} % |")
    overall = 100.0 * total_killed / total_counted if total_counted else 100.0
    lines.append(f"| **all** | {sum(len(v) for v in res.values())} | | | {total_equivalent} | | | **{overall:.1f} %** |")
    text = "\n".join(lines) + "\n\nsurvivors (not judged equivalent):\n" + "\n".join(f"- {s}" for s in survivors)
    return text + "\n", overall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-module", type=int, default=10, help="mutants drawn per module (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--report-only", action="store_true", help="tabulate the last run's results")
    ap.add_argument("--resume", action="store_true",
                    help="run again only the sampled mutants not killed yet (no result, timeout, survived, no test)")
    ap.add_argument("--fail-under", type=float, default=90.0, help="exit 1 below this overall score (percent)")
    args = ap.parse_args(argv)
    sample_file = MUTANTS / "sample.json"
    if args.report_only:
        chosen = json.loads(sample_file.read_text())
    else:
        generate()
        chosen = sample(mutants_by_module(), args.per_module, args.seed)
        sample_file.write_text(json.dumps(chosen, indent=1))
        names = [n for ns in chosen.values() for n in ns]
        if args.resume:
            done = results(chosen)
            names = [n for m, ns in chosen.items() for n in ns if done[m][n] != KILLED]
        print(f"{len(names)} mutants drawn from {len(chosen)} modules", flush=True)
        # one thread per child: two children on two cores with torch's default thread pool oversubscribe
        # the CPU, and a slow mutant then reads as a timeout instead of a kill or a survival
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children), *names],
                       cwd=ROOT, check=False, env=env)
    text, overall = table(results(chosen), equivalents())
    (MUTANTS / "mutation.md").write_text(text)
    print(text)
    return 0 if overall >= args.fail_under else 1


if __name__ == "__main__":
    sys.exit(main())
