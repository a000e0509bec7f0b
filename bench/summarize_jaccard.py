"""Prints the closing-note table from a pytest-benchmark JSON of bench/bench_jaccard.py:
N | threads | ours | reference | torch.mm | reference/ours | ours/mm (seconds, min over rounds)."""

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    rows: dict = defaultdict(dict)
    dbscan: dict = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b["extra_info"]
        t = b["stats"]["min"]
        if "contender" in info:
            rows[(info["n"], info["threads"])][info["contender"]] = t
        elif "layout" in info:
            dbscan[info["n"]][info["layout"]] = t
    print("| N | threads | ours (s) | reference (s) | torch.mm fp32 (s) | reference / ours | ours / mm |")
    print("|---|---|---|---|---|---|---|")
    for (n, th), r in sorted(rows.items()):
        o, ref, mm = r.get("ours"), r.get("reference"), r.get("mm")
        f = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        ratio_ref = f"{ref / o:.1f}x" if o and ref else "-"
        ratio_mm = f"{o / mm:.2f}" if o and mm else "-"
        print(f"| {n} | {th} | {f(o)} | {f(ref)} | {f(mm)} | {ratio_ref} | {ratio_mm} |")
    if dbscan:
        print("\n| N | DBSCAN dense (s) | DBSCAN sparse (s) |")
        print("|---|---|---|")
        for n, r in sorted(dbscan.items()):
            print(f"| {n} | {r.get('dense', float('nan')):.2f} | {r.get('sparse', float('nan')):.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
