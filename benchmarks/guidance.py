"""Property-guided generation against sample-then-filter and the SMILES Transformer reference.

    python benchmarks/guidance.py [--checkpoint PATH] [-n 1000] [--scales 1,2,4] [--seed 0]
                                  [--lm-checkpoint runs/smiles_lm.pt] [--lm-minutes 35]

For each property window (targets as `molgen generate --target` takes them), ``-n`` requested
molecules from each arm:
  * unguided: the DiScoFormer's default sampler, then the window checked by RDKit (sample-then-filter);
  * guided at each of ``--scales``: the same sampler following the property head's window gradient;
  * smiles_lm: the SMILES Transformer reference (benchmarks/run_all.py's, trained here if its
    checkpoint is missing) sampled, then the same RDKit checks.
A hit is a valid, unique, novel molecule (not a training molecule) inside every window by RDKit's
values. Hits per second is the arm's hits over its wall time for sampling, decoding, density and
RDKit checks on this machine (nothing else running: the same figure as CPU time up to the core
count); the arms are compared by that rate, which is what "at the same CPU time" asks. Beside it:
hit rate among samples, validity without correction, uniqueness, internal diversity of the hits
(1 - mean Tanimoto, Morgan radius 2) and the hits' median density percentile under the DiScoFormer
(whether guided hits stay in distribution). A window on a distribution the checkpoint does not have
(MOSES before the drug-like model ships) is skipped and says so.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from _common import REPO, SHARED_DATA, write_results

from molgen.checkpoint import load_model
from molgen.checks import CheckConfig, run_checks
from molgen.chemistry import canonical_smiles, parse_smiles
from molgen.evaluation.generation import internal_diversity
from molgen.guidance import parse_targets
from molgen.novelty import is_novel
from molgen.pipeline import GenerateOptions, generate
from molgen.scoring import Scorer

WINDOWS = {
    "easy: qed>=0.5 (QM9)": ("qm9", ("qed>=0.5",)),
    "narrow: clogp 2..2.5, tpsa<=40 (QM9)": ("qm9", ("clogp=2..2.5", "tpsa<=40")),
    "drug-like: qed>=0.8, clogp 2..3 (MOSES)": ("moses", ("qed>=0.8", "clogp=2..3")),
}


def hit_figures(smiles: list[str | None], raw_valid: list[bool], seconds: float, targets, loaded, distribution: str) -> dict:
    """Hits and the figures around them for one arm's samples (None: a sample that is no molecule)."""
    windows = tuple(window for target in targets for window in target.windows())
    mols = [parse_smiles(s) for s in smiles]
    canonical = [canonical_smiles(mol) if mol is not None else None for mol in mols]
    frame = pd.DataFrame({"smiles": canonical})
    valid = frame["smiles"].notna()
    frame["unique"] = valid & ~frame["smiles"].duplicated()
    frame["novel"] = False
    frame.loc[valid, "novel"] = is_novel(frame.loc[valid, "smiles"].tolist(), loaded.train_hashes)
    checks = run_checks(frame["smiles"].where(valid, None).tolist(), CheckConfig(rules=(), alerts=(), windows=windows),
                        index=frame.index)
    frame["on_target"] = (checks["status"] == "ok") & checks["failed_checks"].eq("")
    hits = frame[frame["unique"] & frame["novel"] & frame["on_target"]]["smiles"].tolist()
    percentile = Scorer(loaded, distribution).score_smiles(hits)["density_percentile"] if hits else pd.Series([])
    return {
        "samples": len(smiles),
        "seconds": seconds,
        "hits": len(hits),
        "hits_per_second": len(hits) / seconds if seconds else None,  # the LM arm sets its own, checks included
        "hit_rate": len(hits) / len(smiles),
        "on_target_share": float(frame["on_target"].mean()),
        "validity_without_correction": float(np.mean(raw_valid)),
        "validity": float(valid.mean()),
        "uniqueness": float(frame["unique"].sum() / max(valid.sum(), 1)),
        "novelty": float(frame.loc[frame["unique"], "novel"].mean()),
        "hits_internal_diversity": internal_diversity([parse_smiles(s) for s in hits]) if len(hits) > 1 else None,
        "hits_median_density_percentile": float(np.nanmedian(percentile)) if hits else None,
        "examples": hits[:8],
    }


def discoformer_arm(loaded, distribution: str, targets, scale: float, n: int, seed: int) -> dict:
    """``n`` samples, unguided (scale 0) or guided; the window judged as for every arm."""
    options = GenerateOptions(n=n, seed=seed, distribution=distribution, targets=targets, guidance_scale=scale,
                              apply_filters=False, checks=CheckConfig(rules=(), alerts=()))
    started = time.perf_counter()
    frame, _ = generate(loaded, options)
    seconds = time.perf_counter() - started
    return hit_figures(frame["smiles"].tolist(), frame["raw_valid"].tolist(), seconds, targets, loaded, distribution)


def smiles_lm_arm(model, loaded, distribution: str, targets, n: int, seed: int) -> dict:
    started = time.perf_counter()
    samples = model.sample(n, seed=seed)
    figures = hit_figures(samples, [parse_smiles(s) is not None for s in samples], 0.0, targets, loaded, distribution)
    # The arm's time is its sampling plus the same parsing and RDKit checks as the others'.
    seconds = time.perf_counter() - started
    figures.update(seconds=seconds, hits_per_second=figures["hits"] / seconds)
    return figures


def smiles_lm(path: str, minutes: float, seed: int):
    from molgen.baselines.smiles_lm import SmilesLMConfig, build_vocabulary, load_smiles_lm, train_smiles_lm
    from molgen.evaluation.report import load_reference_data

    if not (REPO / path).is_file():
        data = load_reference_data(SHARED_DATA)
        train_smiles_lm(data.train, data.val, REPO / path, epochs=10, max_minutes=minutes, seed=seed,
                        config=SmilesLMConfig(vocab=build_vocabulary(data.train)))
    return load_smiles_lm(REPO / path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--scales", default="1,2,4", help="Guidance scales, comma-separated.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lm-checkpoint", default="runs/smiles_lm.pt")
    parser.add_argument("--lm-minutes", type=float, default=35.0)
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()

    loaded = load_model(args.checkpoint)
    scales = [float(scale) for scale in args.scales.split(",")]
    lm = smiles_lm(args.lm_checkpoint, args.lm_minutes, args.seed)
    results, rows = {}, []
    for window, (distribution, texts) in WINDOWS.items():
        if distribution not in loaded.distributions:
            results[window] = {"skipped": f"the checkpoint has no {distribution!r} distribution"}
            continue
        targets = parse_targets(texts)
        arms = {"unguided, then filtered": discoformer_arm(loaded, distribution, targets, 0.0, args.n, args.seed)}
        for scale in scales:
            arms[f"guided, scale {scale:g}"] = discoformer_arm(loaded, distribution, targets, scale, args.n, args.seed)
        if distribution == "qm9":  # the reference is trained on QM9
            arms["SMILES Transformer, then filtered"] = smiles_lm_arm(lm, loaded, distribution, targets, args.n, args.seed)
        unguided = arms["unguided, then filtered"]["hits_per_second"]
        for arm, figures in arms.items():
            figures["speedup_over_unguided"] = figures["hits_per_second"] / unguided if unguided else None
            rows.append((window, arm, figures["hits"], f"{figures['hits_per_second']:.3f}",
                         "–" if figures["speedup_over_unguided"] is None else f"{figures['speedup_over_unguided']:.1f}x",
                         f"{100 * figures['hit_rate']:.1f}%", f"{100 * figures['validity_without_correction']:.1f}%",
                         f"{100 * figures['uniqueness']:.1f}%",
                         "–" if figures["hits_internal_diversity"] is None else f"{figures['hits_internal_diversity']:.3f}",
                         "–" if figures["hits_median_density_percentile"] is None
                         else f"{figures['hits_median_density_percentile']:.0f}"))
        results[window] = {"distribution": distribution, "targets": list(texts), "arms": arms}
    payload = {"checkpoint": args.checkpoint or "bundled", "samples_per_arm": args.n, "seed": args.seed,
               "scales": scales, "windows": results}
    head = loaded.meta.get("property_head")
    if head:  # the property head's held-out fit per noise level, as molgen fit-properties measured it
        held_out = head["held_out"]
        write_results(f"guidance_property_head_{args.tag}", {"property_head": head},
                      [(name, *(f"{r2:.2f} / {mae:.3g} / {within:.2f}" for r2, mae, within in
                                zip(figures["r2"], figures["mae"], figures["within_1sd"])))
                       for name, figures in held_out["properties"].items()],
                      ("property", *(f"t = {t:g}: R^2 / MAE / within 1 SD" for t in held_out["times"])))
    write_results(f"guidance_{args.tag}", payload, rows,
                  ("window", "arm", "hits", "hits/s", "vs unguided", "hit rate", "valid w/o correction",
                   "unique", "IntDiv of hits", "median density percentile of hits"))


if __name__ == "__main__":
    main()
