"""The benchmark table (text), ``bench.json`` and the ``bench.png`` bar chart."""

from __future__ import annotations

import json
from collections.abc import Sequence

from deploycam.bench.runner import Result
from explainer.timing import NOISY_SPREAD


def table(results: Sequence[Result]) -> str:
    """One line per case: median ms, the paired floor's median, their ratio, speed-up over peers, memory.

    ``x floor`` is ``median ms / paired floor ms``, both from the same alternating rounds; a floor
    row's own ``median ms`` was timed alone and may differ from the paired floors. Rows whose
    floor spread says the machine was busy are marked ``!`` and counted in a note below.
    """
    lines = [f"{'case':<54} {'median ms':>10} {'floor ms':>9} {'x floor':>8} {'peak MB (+)':>12} "
             f"{'x floor mem':>11}  speed-up vs peers"]
    noisy = 0
    for r in results:
        if r.unavailable:
            lines.append(f"{r.case.name:<54} {'n/a':>10}   ({r.unavailable})")
            continue
        flag = r.floor_spread is not None and r.floor_spread > NOISY_SPREAD
        noisy += flag
        ratio = f"{r.ratio:.2f}x" + ("!" if flag else "") if r.ratio is not None else "-"
        floor = f"{r.floor_ms:.2f}" if r.floor_ms is not None else "-"
        mem = f"{r.memory['delta_mb']:.0f}" if r.memory else "-"
        mem_ratio = f"{r.memory_ratio:.2f}x" if r.memory_ratio is not None else "-"
        peers = ", ".join(f"{p} {s:.1f}x" for p, s in sorted(r.speedups.items()))
        lines.append(f"{r.case.name:<54} {r.median_ms:>10.2f} {floor:>9} {ratio:>8} {mem:>12} {mem_ratio:>11}  {peers}")
    lines.append("x floor = median ms / floor ms, both medians of the same alternating rounds (the floor row's own "
                 "median was timed alone)")
    if noisy:
        lines.append(f"! {noisy} row(s): the floor's spread exceeded {NOISY_SPREAD:.0%} of its median: the machine "
                     "was busy and those ratios are unreliable; rerun on a quiet machine")
    return "\n".join(lines)


def write_json(path: str, results: Sequence[Result], env: dict) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump({"environment": env, "results": [r.to_dict() for r in results]}, out, indent=1)


def write_png(path: str, results: Sequence[Result], env: dict) -> None:
    """Horizontal bars of median ms per case, one panel per (model, batch, device), floors hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    groups: dict[tuple, list[Result]] = {}
    for r in results:
        if r.median_ms is not None:
            groups.setdefault((r.case.model, r.case.batch, r.case.device), []).append(r)
    if not groups:
        return
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 0.32 * sum(len(v) for v in groups.values()) + 1.2 * len(groups)),
                             squeeze=False)
    colours = {"eager": "tab:blue", "torchscript": "tab:green", "onnxruntime": "tab:purple", "aoti": "tab:olive",
               "openvino": "tab:cyan", "opencv": "tab:brown"}
    for ax, ((model, batch, device), rows) in zip(axes[:, 0], groups.items()):
        labels = [f"{r.case.runtime} {r.case.method}" for r in rows]
        values = [r.median_ms for r in rows]
        bars = ax.barh(labels, values, color=[colours.get(r.case.runtime, "tab:gray") for r in rows])
        for bar, r in zip(bars, rows):
            if r.case.method == "plain":
                bar.set_hatch("//")
            if r.ratio is not None:
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {r.median_ms:.1f} ms ({r.ratio:.2f}x)",
                        va="center", fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{model}, batch {batch}, {device}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel(f"median ms (log scale); torch {env.get('torch')}, {env.get('threads')} threads, "
                           f"{env.get('gpu', env.get('cpu', ''))}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def paired_rows(rows: dict, floor_ms: float) -> list[str]:
    """One line per case of ``rows`` (name -> :class:`explainer.timing.Paired`): its median, its ratio to
    ``floor_ms`` (plain inference measured alone), ``! busy`` where the floor beside it spread over 25%, and
    the floor beside it where that moved over 25% from ``floor_ms`` (a case that slows what runs after it)."""
    lines = []
    for name, p in rows.items():
        note = "  ! busy" if p.floor_spread > NOISY_SPREAD else ""
        if abs(p.floor_ms / floor_ms - 1) > 0.25:
            note += f"  ! plain inference beside it: {p.floor_ms:.1f} ms"
        lines.append(f"  {name:<26} {p.case_ms:7.1f} ms  {p.case_ms / floor_ms:5.2f}x of plain inference{note}")
    return lines


def time_against_plain(benchmark, group: str, title: str, plain, cases: dict, headline, rounds: int = 10) -> dict:
    """The detector benchmarks' protocol: the floor ``plain`` timed alone, then each case of ``cases`` (name ->
    callable) in rounds alternating with it (:func:`explainer.timing.paired_ms`), ``headline`` through
    pytest-benchmark; prints ``title`` (``{floor}``: plain inference's ms) and a line per case; ratios into
    ``benchmark.extra_info``. Returns the rows (name -> Paired)."""
    from explainer.timing import paired_ms

    alone = paired_ms(plain, plain, rounds=rounds)  # the floor by itself, before any case ran
    rows = {name: paired_ms(fn, plain, rounds=rounds) for name, fn in cases.items()}
    benchmark.group = group
    benchmark.pedantic(headline, rounds=3, warmup_rounds=1, iterations=1)
    floor = alone.floor_ms
    # a case can slow the plain run after it (pytorch-grad-cam's OpenCV resize wakes OpenCV's own
    # thread pool on the same cores): ratios are to the floor measured alone, and such rows are marked
    print("\n" + title.format(floor=floor))
    print("\n".join(paired_rows(rows, floor)))
    benchmark.extra_info.update({name: p.case_ms / floor for name, p in rows.items()})
    return rows
