"""The benchmark suite's single entry point: one test bed, every scenario, JSON + docs/benchmarks.md.

    sudo .venv/bin/python -m benchmarks.run                     # the full run (about an hour)
    sudo .venv/bin/python -m benchmarks.run --quick --out /tmp/b  # the smoke run (tiny N, ~2 min)
    sudo .venv/bin/python -m benchmarks.run --only bringup,failure --repeats 3
    sudo .venv/bin/python -m benchmarks.run --only serving --update   # one scenario again, the others kept
    sudo .venv/bin/python -m benchmarks.run --only overhead --update --repeats 9

Builds one test bed with as many hosts as the largest scenario needs, runs each scenario's
``run(bed, opts)`` (modules in this directory, see ``SCENARIOS``), and writes the raw results
with the machine's facts to ``<out>/results-<time>.json`` and ``<out>/latest.json``, then renders
``docs/benchmarks.md`` and the bring-up plot from them (``--no-docs`` to skip; ``--quick`` never
touches docs). ``--update`` keeps the other scenarios of ``<out>/latest.json`` (each scenario
records the date and commit it was measured at; the page says so where they differ). The package's
bytecode is written first, as installing it does. Every host gets an empty home of its own, as a
fresh node has (``--machine-home`` keeps this machine's). A scenario that fails is recorded with
its error and the others still run; the exit status is then 1. Nothing here is a pass/fail test
of the numbers: the targets are reported next to the measurements. Needs root (the test bed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import ROOT, Options, machine_facts
from benchmarks.hosts import private_homes

# name → (module, hosts it needs given the options); run in this order (the quiet ones first)
SCENARIOS: dict[str, tuple[str, object]] = {
    "cli_latency": ("benchmarks.cli_latency", lambda o: 4 if o.quick else 32),
    "footprint": ("benchmarks.footprint", lambda o: 4 if o.quick else 32),
    "overhead": ("benchmarks.overhead", lambda o: 1),
    "bringup": ("benchmarks.bringup", lambda o: max(o.sizes)),
    "failure": ("benchmarks.failure", lambda o: 4),
    "ray_up": ("benchmarks.ray_up", lambda o: o.ray_hosts),
    "serving": ("benchmarks.serving", lambda o: 3),
}
DEFAULT_OUT = ROOT / "benchmarks" / "results"


def parse(argv: list[str] | None = None) -> tuple[Options, argparse.Namespace]:
    ap = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: N = 1, 2; one repeat; short windows; no docs")
    ap.add_argument("--sizes", help="bring-up host counts, comma-separated (default 1,4,8,16,32)")
    ap.add_argument("--repeats", type=int, help="runs per measurement (default 5; --quick 1)")
    ap.add_argument("--kills", type=int, help="kill -9s in the failure scenario (default 20; --quick 3)")
    ap.add_argument("--idle", type=float, help="footprint idle window, seconds (default 60; --quick 5)")
    ap.add_argument("--baseline", metavar="REV",
                    help="serving: the launcher revision measured as 'before' (default 66c509c; 'none': skip)")
    ap.add_argument("--serving-cases", help="serving: comma-separated case names or layouts (single, disagg)")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--out", type=Path, help=f"results directory (default {DEFAULT_OUT.relative_to(ROOT)})")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md and its plot")
    ap.add_argument("--update", action="store_true",
                    help="keep the other scenarios of <out>/latest.json and replace only those run now")
    ap.add_argument("--machine-home", action="store_true",
                    help="hosts keep this machine's /root (its .bashrc runs for every SSH command) instead of "
                         "an empty home each, as fresh nodes have")
    a = ap.parse_args(argv)
    o = Options()
    if a.quick:
        o.quick, o.sizes, o.repeats, o.kills, o.idle_seconds = True, [1, 2], 1, 3, 5.0
    if a.sizes:
        o.sizes = sorted({int(x) for x in a.sizes.split(",")})
    o.repeats = a.repeats or o.repeats
    o.kills = a.kills or o.kills
    o.idle_seconds = a.idle or o.idle_seconds
    o.baseline = a.baseline or ""
    o.serving_cases = [x.strip() for x in a.serving_cases.split(",")] if a.serving_cases else None
    # (`ray up` needs rsync and a minute a run; serving takes minutes and has a smoke test of its own)
    chosen = ([s.strip() for s in a.only.split(",")] if a.only
              else [s for s in SCENARIOS if not (a.quick and s in ("ray_up", "serving"))])
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    a.chosen = chosen
    a.out = a.out or (Path(tempfile.mkdtemp(prefix="dl-bench-")) if a.quick else DEFAULT_OUT)
    return o, a


def main(argv: list[str] | None = None) -> int:
    opts, a = parse(argv)
    from tests.testbed_fixture import new_testbed  # the bed needs root; imported late for --help

    n = max(SCENARIOS[s][1](opts) for s in a.chosen)  # type: ignore[operator]
    now = machine_facts()
    results: dict = {"machine": now, "options": {k: str(v) if isinstance(v, Path) else v
                                                             for k, v in vars(opts).items()},
                     "bed_hosts": n, "scenarios": {}}
    if a.update and (a.out / "latest.json").exists():
        earlier = json.loads((a.out / "latest.json").read_text())
        results["scenarios"] = earlier.get("scenarios", {})
        # The machine table stays that of the run most numbers come from; this run's facts go with
        # the scenarios it measures (each scenario's `run` says which run it is from).
        results["machine"] = earlier.get("machine", now)
        stamp = _stamp(earlier.get("machine", {}), earlier.get("options", {}).get("repeats"))
        before = earlier.get("updated") or {}  # a merge of before per-scenario stamps: its older part
        for name, kept in results["scenarios"].items():
            if name in before.get("scenarios", [name]):
                kept.setdefault("run", stamp)
            else:
                kept.setdefault("run", {"date": before.get("earlier", ""), "git": "", "repeats": None})
        results["bed_hosts"] = max(n, earlier.get("bed_hosts", 0))
        results["updated"] = {"earlier": earlier.get("machine", {}).get("date"), "scenarios": a.chosen, "machine": now}
    a.out.mkdir(parents=True, exist_ok=True)
    results["bytecode"] = bytecode = _compile_package()
    opts.tmp = Path(tempfile.mkdtemp(prefix="dl-bench-run-"))
    print(f"benchmarks: a test bed of {n} hosts; scenarios {', '.join(a.chosen)}", file=sys.stderr, flush=True)
    bed = new_testbed(n)
    homes = [] if a.machine_home else [h.name for h in bed.hosts]
    results["private_homes"] = bool(homes)
    home_root = Path(tempfile.mkdtemp(prefix="dl-bench-homes-", dir="/var/tmp"))  # the hosts share /var/tmp, not /tmp
    failed = False
    try:
        private_homes(bed, homes, home_root, mount=True)
        for name in a.chosen:
            module = importlib.import_module(SCENARIOS[name][0])
            t0 = time.monotonic()
            print(f"benchmarks: {name} …", file=sys.stderr, flush=True)
            try:
                out = module.run(bed, opts, log=lambda m, _n=name: print(f"  {_n}: {m}", file=sys.stderr, flush=True))
            except Exception as e:  # one scenario's failure must not lose the others' results
                failed = True
                out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
                print(f"benchmarks: {name} FAILED: {out['error']}", file=sys.stderr, flush=True)
            out["seconds"] = round(time.monotonic() - t0, 1)
            out["run"] = {**_stamp(now, opts.repeats), "bytecode": bytecode}
            results["scenarios"][name] = out
            _write(a.out, results)  # after each scenario: a later crash keeps what was measured
    finally:
        private_homes(bed, homes, home_root, mount=False)
        bed.teardown()
        shutil.rmtree(home_root, ignore_errors=True)
        if not failed:  # the runs' inventories and logs; kept to look into when a scenario failed
            shutil.rmtree(opts.tmp, ignore_errors=True)
    path = _write(a.out, results, final=True)
    print(f"benchmarks: results in {path}", file=sys.stderr)
    if not (a.quick or a.no_docs):
        from benchmarks.report import write_docs

        for p in write_docs(results, ROOT / "docs"):
            print(f"benchmarks: wrote {p}", file=sys.stderr)
    return 1 if failed else 0


def _stamp(machine: dict, repeats: int | None) -> dict:
    """When, at which commit and with how many repeats a scenario was measured (the report shows
    it when the results merge several runs)."""
    return {"date": machine.get("date", ""), "git": machine.get("git", ""), "repeats": repeats}


def _compile_package() -> bool:
    """Write the package's bytecode, as installing it does: the CLI the scenarios launch must not
    compile its modules on every start (``PYTHONDONTWRITEBYTECODE``, or a fresh checkout), which
    an installed dynamo-launch never does. True when every module compiled."""
    import compileall

    return bool(compileall.compile_dir(str(ROOT / "dynamo_launch"), quiet=1))


def _write(out: Path, results: dict, final: bool = False) -> Path:
    text = json.dumps(results, indent=1, sort_keys=False) + "\n"
    (out / "latest.json").write_text(text)
    if not final:
        return out / "latest.json"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out / f"results-{stamp}.json"
    path.write_text(text)
    return path


if __name__ == "__main__":
    sys.exit(main())
