"""Markdown rows from `crystalformer-rl evaluate` summaries, for model cards and the README.

python scripts/summary_table.py new=runs/eval_new/eval/summary.json old=runs/eval_old/eval/summary.json
"""

import json
import sys


COLUMNS = [
    ("struct. valid", "frac_struct_valid"),
    ("comp. valid", "frac_comp_valid"),
    ("valid", "frac_valid"),
    ("scorable", None),
    ("unique", "frac_unique"),
    ("novel", "frac_novel"),
    ("E_hull median", "ehull_median"),
    ("stable", "frac_stable"),
    ("S.U.N.", "frac_sun"),
]


def cell(summary: dict, key: str | None) -> str:
    if key is None:  # scorable: crystals with an E_hull, of all
        n = summary.get("n_ehull")
        return "–" if n is None else f"{100 * n / summary['n_total']:.1f} %"
    value = summary.get(key)
    if value is None:
        return "–"
    return f"{value:.2f}" if key.startswith("ehull") else f"{100 * value:.1f} %"


def main(specs: list[str]) -> None:
    print("| model | n | " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for spec in specs:
        label, path = spec.split("=", 1)
        summary = json.loads(open(path).read())
        print(f"| {label} | {summary['n_total']} | " + " | ".join(cell(summary, k) for _, k in COLUMNS) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
