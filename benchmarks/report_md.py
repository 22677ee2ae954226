"""Compose BENCHMARKS.md from the JSON results under benchmarks/results/."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

PEERS_DIGITS = """Floors and peers on the same split (ANCHORS.md §1b, test nats per image, discrete space):
independent per-pixel categorical 106.5 (exact; the floor) · mixture of 40 categoricals by EM
100.0 (exact) · zuko NSF 98.5 (bound) · zuko MAF 125.2 (bound) · normflows RealNVP 118.6 (bound,
2 of 5 seeds diverge)."""


def _fmt(v: float | None, nd: int = 2) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def _machine(m: dict) -> str:
    return (f"{m['cpu']} ({m['cores']} cores), Python {m['python']}, torch {m['torch']}, "
            f"commit {m['commit']}, {m['date']}; command `{m['command']}`")


def _digits(data: dict) -> str:
    rows, book = data["rows"], data["book"]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["model"], []).append(r)
    out = [
        "## 8x8 digits (book protocol: split 1000/350/447, early stopping, best weights)",
        "",
        f"Machine: {_machine(data['machine'])}. One thread per run; CPU seconds of the training "
        "loop (validation included).",
        "",
        "| model | test nats/image | bits/dim | what it is | IWAE(k) | seeds | epochs (best) "
        "| CPU s | params | reference (book's code or peer) | NLL vs ref | CPU vs ref |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, rs in by.items():
        nats = statistics.mean(r["test_nats"] for r in rs)
        bpd = statistics.mean(r["test_bpd"] for r in rs)
        cpu = statistics.mean(r["cpu_s"] for r in rs)
        iw = [r["iwae_nats"] for r in rs if "iwae_nats" in r]
        iw_s = f"{statistics.mean(iw):.2f} (k={rs[0]['iwae_k']})" if iw else "–"
        spread = f"{len(rs)}" + (f" (sd {statistics.stdev(r['test_nats'] for r in rs):.2f})" if len(rs) > 1 else "")
        ep = ", ".join(f"{r['epochs']} ({r['best_epoch']})" for r in rs)
        b = book.get(model, {})
        bn = b.get("nats")
        book_s = (f"{bn:.2f} {b['what']}" if bn is not None else b["what"]) if b else "–"
        ratio = f"{nats - bn:+.2f} nats" if bn else "–"
        cpu_ratio = f"{cpu / b['cpu_s']:.2f}x" if b.get("cpu_s") else "–"
        out.append(
            f"| {model} | {nats:.2f} | {bpd:.3f} | {rs[0]['label']} | {iw_s} | {spread} | {ep} "
            f"| {cpu:.1f} | {rs[0]['params']:,} | {book_s} | {ratio} | {cpu_ratio} |"
        )
    out += ["", PEERS_DIGITS, ""]
    return "\n".join(out)


def _mnist(data: dict) -> str:
    out = [
        "## MNIST (50k train / 10k validation / 10k test)",
        "",
        f"Machine: {_machine(data['machine'])}.",
        "",
        "| model | data | test nats/image | bits/dim | what it is | IWAE(k) | epochs (best) | wall s "
        "| CPU s | params | budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        iw = f"{r['iwae_nats']:.2f} (k={r['iwae_k']})" if "iwae_nats" in r else "–"
        if "first" in r.get("iwae_label", ""):
            iw = iw[:-1] + ", " + r["iwae_label"].rsplit(", ", 1)[-1] + ")"
        out.append(
            f"| {r['model']} | {r['data']} | {r['test_nats']:.2f} | {r['test_bpd']:.4f} | {r['label']} "
            f"| {iw} | {r['epochs']} ({r['best_epoch']}) | {r['wall_s']:.0f} | {r['cpu_s']:.0f} "
            f"| {r['params']:,} | {r.get('budget', '')} |"
        )
    if data.get("notes"):
        out += ["", data["notes"]]
    out.append("")
    return "\n".join(out)


def _cache(data: dict) -> str:
    out = [
        "## Transformer ARM: sampling with and without the key/value cache",
        "",
        f"Machine: {_machine(data['machine'])}; {data['threads']} thread(s). Width 128, 4 blocks, "
        "4 heads; wall seconds to draw n samples, same seed, same samples both ways.",
        "",
        "| positions | n | with cache s | without cache s | speed-up | ms/token (cache) "
        "| ms/token (no cache) | same samples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        out.append(
            f"| {r['positions']} | {r['n']} | {r['cached_s']:.2f} | {r['uncached_s']:.2f} "
            f"| **{r['speedup']:.1f}x** | {r['cached_ms_per_token']:.2f} "
            f"| {r['uncached_ms_per_token']:.2f} | {'yes' if r['same_samples'] else 'NO'} |"
        )
    out.append("")
    return "\n".join(out)


def _text(data: dict) -> str:
    out = [
        "## Language and sequence models (exact NLL of held-out text, per token and character)",
        "",
        f"Machine: {_machine(data['machine'])} (the last run; each row's budget is its own).",
        "",
        "| model | data | tokenizer | test nats/sequence | bits/token | perplexity | bits/char "
        "| val bits/char | floors: unigram / bigram bits/token | epochs | CPU s | params | budget "
        "| notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        out.append(
            f"| {r['model']} | {r['data']} | {r['tokenizer']} | {r['test_nats']:.2f} "
            f"| {r['bits_per_token']:.4f} | {r['perplexity']:.3f} | {_fmt(r.get('bits_per_char'), 4)} "
            f"| {_fmt(r.get('val_bits_per_char'), 4)} "
            f"| {_fmt(r.get('floor_unigram_bits_per_token'), 3)} / "
            f"{_fmt(r.get('floor_bigram_bits_per_token'), 3)} "
            f"| {r['epochs']} | {r['cpu_s']:.0f} | {r['params']:,} | {r.get('budget', '')} "
            f"| {r.get('notes', '')} |"
        )
    for r in data["rows"]:
        if r.get("samples"):
            out += ["", f"Samples of {r['model']} on {r['data']} ({r.get('sampling', '')}):", "",
                    "```", *r["samples"], "```"]
    if data.get("notes"):
        out += ["", data["notes"]]
    out.append("")
    return "\n".join(out)


def _lora(data: dict) -> str:
    out = [
        "## Fine-tuning the Shakespeare GPT on Python's docs: LoRA and full",
        "",
        f"Machine: {_machine(data['machine'])}. Target: {data['target']}. "
        f"{data['epochs']} epochs per run; exact test bits per (kept) character.",
        "",
        "| run | test bits/char | test nats/block | trainable params | all params | CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        out.append(
            f"| {r['run']} | {r['test_bits_per_char']:.4f} | {r['test_nats']:.2f} "
            f"| {r['trainable']:,} | {r['params']:,} | {r['cpu_s']:.0f} |"
        )
    out.append("")
    return "\n".join(out)


def _toy_flows(data: dict) -> str:
    st, floors = data["settings"], data["gaussian"]
    toys = list(dict.fromkeys(r["toy"] for r in data["rows"]))
    by: dict[str, dict[str, dict]] = {}
    for r in data["rows"]:
        by.setdefault(r["model"], {})[r["toy"]] = r
    out = [
        "## Flat flows on 2-D toy densities (negative log-density, continuous)",
        "",
        f"Machine: {_machine(data['machine'])}. Split {st['split']} points; Adam, batch "
        f"{st['batch_size']}, up to {st['epochs']} epochs, patience {st['patience']}, a budget of "
        f"{st['time_budget_s']:g} wall s per run, best validation weights; one thread. Each cell: "
        "test negative log-density in nats per 2-D point (a density of continuous data, not a "
        "discrete NLL; no bits/dim), then CPU s and epochs (best). The floor is one "
        "full-covariance Gaussian fitted to the training points; † marks cells less than 0.02 "
        "nats below it (about two standard errors), bold the best per toy. Densities drawn in "
        "`benchmarks/results/toy_flows.png`.",
        "",
        "| model | params | " + " | ".join(toys) + " |",
        "|---|---|" + "---|" * len(toys),
        "| Gaussian (floor) | 5 | " + " | ".join(_fmt(floors.get(t), 3) for t in toys) + " |",
    ]
    best = {t: min(r["test_nats"] for r in data["rows"] if r["toy"] == t) for t in toys}
    for model, rs in by.items():
        cells = []
        for t in toys:
            r = rs.get(t)
            if r is None:
                cells.append("–")
                continue
            mark = "" if r["test_nats"] < floors.get(t, float("inf")) - 0.02 else " †"
            v = f"{r['test_nats']:.3f}"
            v = f"**{v}**" if r["test_nats"] == best[t] else v
            cells.append(f"{v}{mark} ({r['cpu_s']:.1f} s, "
                         f"{r['epochs']} ({r['best_epoch']}))")
        params = next(iter(rs.values()))["params"]
        out.append(f"| {model} | {params:,} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def _vae_digits(data: dict) -> str:
    rows, book = data["rows"], data["book"]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    k = rows[0]["iwae_k"] if rows else 0
    out = [
        "## Latent-variable models on 8x8 digits (issue 8)",
        "",
        f"Machine: {_machine(data['machine'])}. Same split and protocol as above (one thread, "
        "early stopping on validation, best weights). Test nats per image in the 17-level space: "
        "-ELBO averaged over 10 posterior draws per image (an upper bound on the NLL) and "
        f"IWAE(k={k}) (a tighter upper bound in expectation). KL per level is the mean closed-form "
        "KL (or its one-sample estimate) on the test split, level 0 next to the data; active units "
        "have Cov_x E_q[z_u|x] > 0.01 (Burda et al. 2016). The book's numbers are its notebooks' "
        "-ELBO (ANCHORS.md §1); the floors are the independent per-pixel categorical (106.5) and "
        "the mixture of 40 categoricals (100.0).",
        "",
        "| variant | what | test -ELBO | IWAE | book -ELBO | -ELBO vs book | KL per level | active "
        "units | epochs (best) | CPU s | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in by.items():
        elbo = statistics.mean(r["neg_elbo"] for r in rs)
        iw = statistics.mean(r["iwae_nats"] for r in rs)
        elbo_s = f"{elbo:.2f}" + (
            f" ± {statistics.stdev(r['neg_elbo'] for r in rs):.2f}" if len(rs) > 1 else "")
        iw_s = f"{iw:.2f}" + (
            f" ± {statistics.stdev(r['iwae_nats'] for r in rs):.2f}" if len(rs) > 1 else "")
        cpu = statistics.mean(r["cpu_s"] for r in rs)
        b = book.get(name)
        vs = f"{100 * (elbo - b) / b:+.1f}%" if b else "–"
        kl = ", ".join(f"{v:.2f}" for v in rs[0].get("kl_per_level") or []) or "–"
        act = ", ".join(str(v) for v in rs[0].get("active_units") or []) or "–"
        ep = ", ".join(f"{r['epochs']} ({r['best_epoch']})" for r in rs)
        seed_list = ", ".join(str(r["seed"]) for r in rs)
        seeds = f" (seeds {seed_list}: mean ± sd)" if len(rs) > 1 else ""
        out.append(
            f"| {name} | {rs[0]['what']}{seeds} | {elbo_s} | {iw_s} | {_fmt(b)} | {vs} | {kl} "
            f"| {act} | {ep} | {cpu:.1f} | {rs[0]['params']:,} |"
        )
    out.append("")
    return "\n".join(out)


def write_benchmarks_md() -> Path:
    parts = [
        "# Benchmarks",
        "",
        "Written by the scripts in `benchmarks/` from their JSON results in `benchmarks/results/`;"
        " do not edit by hand. Every number is in nats per example (summed over dimensions) and "
        "bits per dimension of the data's own discrete space, labelled with what it is: an exact "
        "NLL, an upper bound (-ELBO, or a dequantized flow's bound), or an IWAE(k) estimate. Lower "
        "is better.",
        "",
    ]
    for name, fn in (("digits", _digits), ("vae_digits", _vae_digits), ("mnist", _mnist),
                     ("transformer_cache", _cache),
                     ("text", _text), ("lora", _lora), ("toy_flows", _toy_flows)):
        p = RESULTS / f"{name}.json"
        if p.is_file():
            parts.append(fn(json.loads(p.read_text())))
    notes = ROOT / "benchmarks" / "NOTES.md"
    if notes.is_file():
        parts.append(notes.read_text())
    path = ROOT / "BENCHMARKS.md"
    path.write_text("\n".join(parts))
    return path


if __name__ == "__main__":
    print(write_benchmarks_md())
