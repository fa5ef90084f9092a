#!/usr/bin/env python3
"""Writes bench/FAULTS.md from the fault campaign's rows (one JSON file per fault, written by
tests/common/faults.rs) and the fuzzing figures (one JSON file per target, written by
fuzz/run.sh). Keeps the fuzzing section of the existing file when no new figures exist."""
import argparse
import datetime
import json
import pathlib
import re
import sys

AREAS = ["registry", "control-plane", "process", "disk", "node"]


def load(folder):
    p = pathlib.Path(folder)
    if not p.is_dir():
        return []
    return [json.loads(f.read_text()) for f in sorted(p.glob("*.json"))]


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def fault_table(rows):
    out = ["| area | fault | injected | outcome | requests | recovered after | lost/partial |",
           "|---|---|---|---|---|---|---|"]
    rows = sorted(rows, key=lambda r: (AREAS.index(r["area"]) if r["area"] in AREAS else 99, r["fault"]))
    for r in rows:
        rec = r.get("recovered_after_s")
        rec = "-" if rec is None else f"{rec:.1f} s"
        out.append("| " + " | ".join(cell(x) for x in [
            r["area"], r["fault"], r["injected"], r["outcome"], r.get("requests") or "-", rec,
            f'{r["lost"]}/{r["partial"]}']) + " |")
    return out


def fuzz_table(stats):
    out = ["| target | seconds | executions | exec/s | coverage | corpus | crashes |",
           "|---|---|---|---|---|---|---|"]
    for s in sorted(stats, key=lambda s: s["target"]):
        secs = s.get("seconds") or 0
        execs = s.get("execs") or 0
        rate = f"{execs / secs:.0f}" if secs else "-"
        out.append("| " + " | ".join(cell(x) for x in [
            s["target"], secs, execs, rate, s.get("coverage", "-"), s.get("corpus", "-"),
            s.get("crashes", "-")]) + " |")
    return out


def old_fuzz_section(path):
    if not path.exists():
        return None
    m = re.search(r"(## Fuzzing\n.*?)(?=\n## |\Z)", path.read_text(), re.S)
    return m.group(1).rstrip("\n").splitlines() if m else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rows")
    ap.add_argument("fuzz")
    ap.add_argument("out")
    ap.add_argument("--seconds", type=int, default=0)
    ap.add_argument("--exit", type=int, default=0)
    a = ap.parse_args()
    rows, stats, out = load(a.rows), load(a.fuzz), pathlib.Path(a.out)
    bad = [r["fault"] for r in rows if r["lost"] or r["partial"]]
    today = datetime.date.today().isoformat()
    text = ["# Fault campaign and fuzzing", "",
            f"Written by `make faults` (e2e/faults/run.sh) on {today}: {len(rows)} faults in "
            f"{a.seconds} s, test exit status {a.exit}. Each row is asserted by its test "
            "(tests/faults_*.rs) before it is written: a fault whose promise broke fails its "
            "test and writes no row.", "", "## Faults", ""]
    text += fault_table(rows) if rows else ["(no rows: the campaign did not run)"]
    fuzz = ["## Fuzzing", "", "Written by `make fuzz` (fuzz/run.sh); one fuzzer process at a time.", ""]
    if stats:
        fuzz += fuzz_table(stats)
    else:
        fuzz = old_fuzz_section(out) or fuzz + ["(no figures: `make fuzz` has not run here)"]
    text += [""] + fuzz
    out.write_text("\n".join(text) + "\n")
    print(f"wrote {out}: {len(rows)} faults, {len(stats)} fuzz targets", file=sys.stderr)
    if bad:
        print(f"lost or partial in: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
