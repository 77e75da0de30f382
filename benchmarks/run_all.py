"""The evaluation suite: the DiScoFormer and every reference in one harness, then BENCHMARKS.md.

    python benchmarks/run_all.py [--checkpoint PATH] [-n 10000] [--only discoformer,floor,smiles_lm]

Parts (each writes benchmarks/results/eval_<part>.json; BENCHMARKS.md is rebuilt from whatever
part files exist, so a part can be rerun alone):
  * discoformer: ``molgen evaluate`` of the checkpoint (bundled by default): 10,000 samples at
    default settings, drawn three times (``--draws``, seeds 0 to 2) and averaged; density metrics on
    1,000 test molecules and their single-edit mutants, the kNN-Tanimoto scorer on the same decoys;
  * floor: 10,000 training molecules drawn with replacement, scored as if generated (a perfect sampler
    of the training set);
  * smiles_lm: an autoregressive SMILES Transformer of comparable size trained here on the same
    split with the DiScoFormer's budget (10 epochs, at most 35 CPU minutes; runs/smiles_lm.pt,
    resumed if interrupted), then sampled (10,000) and scored like the DiScoFormer.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import REPO, RESULTS, SHARED_DATA, machine

from molgen.baselines.smiles_lm import SmilesLMConfig, build_vocabulary, train_smiles_lm, training_record
from molgen.checkpoint import load_model, warm_start_seconds
from molgen.stats import mean_with_stderr, reliability_of_mean
from molgen.evaluation.generation import generation_metrics
from molgen.evaluation.report import (
    decoy_aurocs,
    decoy_sets,
    evaluate_discoformer,
    floor_reference,
    load_reference_data,
)
from molgen.sampler import SamplerSettings

PARTS = ("discoformer", "floor", "smiles_lm")
# Read into the QM9 tables when present, not run here: the drug-like model's QM9 evaluation
# (benchmarks/finish_qm9_moses.sh writes it; copied to benchmarks/results/eval_qm9_moses.json).
QM9_ONLY_READ = ("qm9_moses",)
LM_CHECKPOINT = REPO / "runs" / "smiles_lm.pt"

# Published QM9 figures (10,000 samples, test split of the MoFlow/GDSS tables), not rerun here.
PUBLISHED = [
    {"model": "GDSS (published: Jo et al., ICML 2022, Table 3)", "validity_without_correction": 0.9572,
     "uniqueness": 0.9846, "novelty": 0.8627, "fcd_test": 2.900, "nspdk_mmd_test": 0.003},
    {"model": "DiGress (published: Vignac et al., ICLR 2023, QM9 implicit H)", "validity_without_correction": 0.990,
     "uniqueness": 0.962},
]


def smiles_lm_part(data, n: int, seed: int, epochs: int, max_minutes: float) -> dict:
    model = train_smiles_lm(
        data.train, data.val, LM_CHECKPOINT, epochs=epochs, max_minutes=max_minutes, seed=seed,
        config=SmilesLMConfig(vocab=build_vocabulary(data.train)),
    )
    record = training_record(LM_CHECKPOINT)
    started = time.perf_counter()
    samples = model.sample(n, seed=seed)
    sampling_seconds = time.perf_counter() - started
    generation = generation_metrics(samples, data.test, set(data.train) | set(data.val))
    generation["sampling_molecules_per_second"] = n / sampling_seconds
    nll = model.nll(data.density_test)
    decoys = {name: -model.nll(smiles) for name, smiles in decoy_sets(data).items()}
    log_likelihood = decoy_aurocs(-nll, decoys)
    return {
        "model": {"parameters": model.num_parameters(), "epochs": record["epoch"],
                  "training_seconds": record["elapsed"], "history": record["history"]},
        "generation": generation,
        "density": {
            "nll_test": mean_with_stderr(nll[~np.isnan(nll)]),
            "log_likelihood": log_likelihood,
            "nll_auroc_vs_mutants": log_likelihood["auroc_vs_mutants"],
        },
    }


def fmt(value, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "percent":
        return f"{100 * value:.1f}%"
    if kind == "nats":
        return f"{value['mean']:.2f} ± {value['stderr']:.2f}"
    return f"{value:.{kind}f}"


# Published MOSES rows (the MOSES repository's table: 30,000 samples, mean of 3 runs, Test columns; DiGress:
# Vignac et al., ICLR 2023, validity without correction), not rerun here.
PUBLISHED_MOSES = [
    {"model": "CharRNN (published, MOSES)", "valid": 0.975, "unique@10000": 0.999, "novelty": 0.842, "filters": 0.994,
     "fcd_test": 0.073, "snn_test": 0.601, "frag_test": 1.000, "scaf_test": 0.924, "int_div": 0.856},
    {"model": "VAE (published, MOSES)", "valid": 0.977, "unique@10000": 0.998, "novelty": 0.695, "filters": 0.997,
     "fcd_test": 0.099, "snn_test": 0.626, "frag_test": 0.999, "scaf_test": 0.939, "int_div": 0.856},
    {"model": "JT-VAE (published, MOSES)", "valid": 1.0, "unique@10000": 1.0, "novelty": 0.914, "filters": 0.976,
     "fcd_test": 0.395, "snn_test": 0.548, "frag_test": 0.997, "scaf_test": 0.896, "int_div": 0.855},
    {"model": "DiGress (published: Vignac et al., ICLR 2023)", "valid_without_correction": 0.857, "unique@10000": 1.0,
     "novelty": 0.950, "filters": 0.971, "fcd_test": 1.19, "snn_test": 0.52, "scaf_test": 0.148},
]
MOSES_COLUMNS = [("valid w/o correction", "valid_without_correction", "percent"), ("valid", "valid", "percent"),
                 ("unique@10k", "unique@10000", "percent"), ("novelty", "novelty", "percent"),
                 ("filters", "filters", "percent"), ("FCD ↓", "fcd_test", "3"), ("SNN", "snn_test", "3"),
                 ("Frag", "frag_test", "3"), ("Scaf", "scaf_test", "3"), ("IntDiv", "int_div", "3")]


def moses_section(parts: dict) -> list[str]:
    """BENCHMARKS.md's MOSES section from benchmarks/run_moses.py's part files."""
    lines = ["## Generation and density (MOSES, drug-like)", "",
             "From `python benchmarks/run_moses.py` (`benchmarks/results/eval_moses_*.json`): the MOSES metrics as",
             "its reference code computes them, against its Test split (the shared data has no TestSF), on",
             "10,000 samples of each model; the floor is 10,000 training molecules drawn with replacement.",
             "", "| model | " + " | ".join(c[0] for c in MOSES_COLUMNS) + " |", "|---|" + "---|" * len(MOSES_COLUMNS)]
    disco, lm = parts.get("discoformer"), parts.get("smiles_lm")
    rows = []
    if disco:
        rows.append((f"DiScoFormer `--dist moses` ({Path(disco.get('checkpoint') or '-').name})", disco["generation"]))
    if lm:
        model = lm["model"]
        rows.append((f"SMILES Transformer reference (this repo, {model['parameters']:,} parameters, "
                     f"{model['epochs']:.2f} epochs, {model['training_seconds'] / 60:.0f} min)", lm["generation"]))
    if disco:
        rows.append(("floor: 10,000 training molecules drawn with replacement", disco["reference_train_sample"]))
    rows += [(row["model"], row) for row in PUBLISHED_MOSES]
    for label, figures in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(figures.get(key), kind) for _, key, kind in MOSES_COLUMNS) + " |")
    if disco and "density" in disco:
        density, knn, decoys = disco["density"], disco["reference_knn_tanimoto"], disco["decoys"]
        lines += ["", f"Density: {decoys['test_molecules']:,} held-out test molecules against {decoys['mutants']:,} "
                  "single-edit mutants of them in neither MOSES split.", "",
                  "| scorer | NLL on test (nats/molecule) | AUROC vs mutants |", "|---|---|---|",
                  f"| DiScoFormer density head, `log_density` | – | "
                  f"{fmt(density['log_density'].get('auroc_vs_mutants'), '3')} |",
                  f"| DiScoFormer ELBO ({density['elbo_samples']} levels) | bound {fmt(density['nll_bound_test'], 'nats')} | "
                  f"{fmt(density['elbo_auroc_vs_mutants'], '3')} |"]
        if lm:
            lines.append(f"| SMILES Transformer, exact NLL of the canonical string | "
                         f"{fmt(lm['density']['nll_test'], 'nats')} | {fmt(lm['density']['nll_auroc_vs_mutants'], '3')} |")
        lines += [f"| kNN-Tanimoto to train (k={knn['k']}) | – | {fmt(knn.get('auroc_vs_mutants'), '3')} |", "",
                  f"Calibration of `density_percentile` over the MOSES test split: "
                  f"{fmt(density['calibration_test']['share_below_5th'], 'percent')} below the 5th percentile (ideal 5%)."]
    return lines + [""]


def write_benchmarks_md(parts: dict, moses_parts: dict | None = None) -> None:
    columns = [("validity w/o correction", "validity_without_correction", "percent"),
               ("uniqueness", "uniqueness", "percent"), ("novelty", "novelty", "percent"),
               ("FCD ↓", "fcd_test", "3"), ("NSPDK MMD ↓", "nspdk_mmd_test", "4"),
               ("KL score ↑", "kl_score", "3"), ("IntDiv", "internal_diversity", "3")]
    lines = [
        "# Benchmarks",
        "",
        "Every figure below comes from `python benchmarks/run_all.py` (one command; each part can be rerun",
        "alone with `--only`) on the machine named under each table; raw numbers are in",
        "`benchmarks/results/eval_*.json`. QM9 protocol of the published tables: 10,000 samples, the",
        "MoFlow/GDSS test split (13,082 molecules), novelty against all other rows. Validity without",
        "correction is the share of raw sampled graphs RDKit accepts (for SMILES models, the share of",
        "strings RDKit parses); uniqueness is over valid molecules, novelty over unique valid ones.",
        "",
        "## Generation (QM9)",
        "",
        "| model | " + " | ".join(c[0] for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    names = {"discoformer": "DiScoFormer (this repo, {params} parameters, {epochs} epochs, {minutes:.0f} CPU-min)",
             "smiles_lm": "SMILES Transformer reference (this repo, {params} parameters, {epochs} epochs, "
                          "{minutes:.0f} CPU-min)",
             "floor": "floor: 10,000 training molecules drawn with replacement",
             "qm9_moses": "DiScoFormer QM9 + MOSES (`qm9_moses.pt` under `--dist qm9`, {params} parameters, "
                          "{epochs} epoch on both sets, {minutes:.0f} CPU-min; one draw)"}
    draws = parts.get("discoformer", {}).get("generation", {}).get("draws", [])
    for part in names:
        if part not in parts:
            continue
        result = parts[part]
        generation = dict(result["generation"])
        generation["kl_score"] = (generation.get("kl_test") or {}).get("score")
        model = result.get("model", {})
        # `molgen evaluate` reports (the qm9_moses row) keep a checkpoint's training under model.training.
        model = {"epochs": (model.get("training") or {}).get("epochs"),
                 "training_seconds": (model.get("training") or {}).get("seconds"), **model}
        label = names[part].format(params=f"{model.get('parameters') or 0:,}", epochs=round(model.get("epochs") or 0),
                                   minutes=(model.get("training_seconds") or 0) / 60)
        if model.get("initialized_from"):
            total = warm_start_seconds(model["initialized_from"])
            label = label[:-1] + f", started from models of {total / 60:.0f} CPU-min in all)"
        if part == "discoformer" and len(draws) > 1:
            label = label[:-1] + f"; mean of {len(draws)} draws)"
        lines.append(f"| {label} | " + " | ".join(fmt(generation.get(key), kind) for _, key, kind in columns) + " |")
    for row in PUBLISHED:
        lines.append(f"| {row['model']} | " + " | ".join(fmt(row.get(key), kind) for _, key, kind in columns) + " |")
    if len(draws) > 1:
        lines += ["", f"The DiScoFormer's row is the mean of {len(draws)} independent draws of "
                  f"{parts['discoformer']['generation']['samples']:,} samples; each draw (seed: validity w/o "
                  "correction, uniqueness, FCD): " + "; ".join(
                      f"{draw['seed']}: {100 * draw['validity_without_correction']:.2f}%, "
                      f"{100 * draw['uniqueness']:.2f}%, {draw['fcd_test']:.3f}" for draw in draws) + "."]
    lines += ["", "Published rows are quoted, not rerun; their NSPDK comes from EDeN's hashing, ours from",
              "`molgen/evaluation/nspdk.py` (same kernel, different hash), so compare magnitudes only. FCD",
              "reads both sets as RDKit canonical SMILES (as GDSS does); the KL score compares equal-sized sets.",
              "Training budgets are in the model column: the references never got more than the DiScoFormer.", ""]

    if "discoformer" in parts:
        density = parts["discoformer"]["density"]
        knn = parts["discoformer"]["reference_knn_tanimoto"]
        decoys = parts["discoformer"]["decoys"]
        lm = parts.get("smiles_lm", {}).get("density")
        lines += [
            "## Density (QM9 test molecules against decoys)",
            "",
            f"{decoys['test_molecules']:,} random test molecules; decoys: {decoys['mutants']:,} single-edit mutants of",
            f"them that RDKit accepts and that are not in QM9 ({', '.join(f'{k} {v}' for k, v in decoys['mutant_edits'].items())}),",
            f"and {decoys['druglike']:,} drug-like molecules ({Path(decoys['druglike_source'] or '-').name}). A molecule a",
            "scorer cannot take (the DiScoFormer: more than 9 heavy atoms or other elements; the SMILES model:",
            "unknown tokens) scores lowest.",
            "",
            "| scorer | NLL on test (nats/molecule) | AUROC vs mutants | AUROC vs drug-like |",
            "|---|---|---|---|",
            f"| DiScoFormer density head, `log_density` | – | {fmt(density['log_density'].get('auroc_vs_mutants'), '3')} | "
            f"{fmt(density['log_density'].get('auroc_vs_druglike'), '3')} |",
            f"| DiScoFormer ELBO ({density['elbo_samples']} levels) | bound {fmt(density['nll_bound_test'], 'nats')} | "
            f"{fmt(density['elbo_auroc_vs_mutants'], '3')} | – |",
        ]
        if lm:
            lines.append(f"| SMILES Transformer, exact NLL of the canonical string | {fmt(lm['nll_test'], 'nats')} | "
                         f"{fmt(lm['log_likelihood'].get('auroc_vs_mutants'), '3')} | "
                         f"{fmt(lm['log_likelihood'].get('auroc_vs_druglike'), '3')} |")
        lines += [
            f"| kNN-Tanimoto to train (k={knn['k']}) | – | {fmt(knn.get('auroc_vs_mutants'), '3')} | "
            f"{fmt(knn.get('auroc_vs_druglike'), '3')} |",
            "",
            f"Spearman(density head, ELBO) on these test molecules: {fmt(density['spearman_density_elbo'], '3')}. Two",
            f"independent ELBO estimates agree to {fmt(density['elbo_repeatability_spearman'], '3')}, so a density head",
            f"equal to the exact ELBO would reach about {fmt(density['elbo_repeatability_spearman'] ** 0.5, '2')} against",
            "one estimate."]
        if "spearman_density_elbo_pooled" in density:
            pooled_ceiling = reliability_of_mean(density["elbo_repeatability_spearman"], 2) ** 0.5
            lines += [f"Against the mean of both estimates ({2 * density['elbo_samples']} levels) the head reaches",
                      f"{fmt(density['spearman_density_elbo_pooled'], '3')}, where the exact ELBO would reach about {fmt(pooled_ceiling, '2')}."]
        if density.get("spearman_density_elbo_corrected") is not None:
            lines += ["Corrected for that noise (Spearman's correction for attenuation), the head against the exact ELBO:",
                      f"{fmt(density['spearman_density_elbo_corrected'], '3')}."]
            if density.get("spearman_density_elbo_corrected_interval"):
                low, high = density["spearman_density_elbo_corrected_interval"]
                lines += [f"Another {density['nll_bound_test']['molecules']:,} test molecules could move it within "
                          f"{fmt(low, '3')} to {fmt(high, '3')} (95% bootstrap interval over molecules)."]
        lines += [
            "Calibration of `density_percentile` over all 13,082 test molecules: "
            f"{fmt(density['calibration_test']['share_below_5th'], 'percent')} fall below the 5th percentile (ideal 5%),",
            f"Kolmogorov-Smirnov distance to uniform {fmt(density['calibration_test']['ks_distance'], '3')}.",
            "",
        ]
    if "qm9_moses" in parts:
        other = parts["qm9_moses"]["density"]
        knn = parts["qm9_moses"]["reference_knn_tanimoto"]
        lines += [
            "The drug-like model under `--dist qm9`, same decoys: AUROC of `log_density` against mutants "
            f"{fmt(other['log_density'].get('auroc_vs_mutants'), '3')} (kNN-Tanimoto {fmt(knn.get('auroc_vs_mutants'), '3')}),",
            f"corrected Spearman(D, ELBO) {fmt(other.get('spearman_density_elbo_corrected'), '3')}, NLL bound "
            f"{fmt(other['nll_bound_test'], 'nats')}, {fmt(other['calibration_test']['share_below_5th'], 'percent')} of test "
            "molecules below the 5th percentile: QM9 keeps `qm9.pt` as its default model.",
            "",
        ]
    if moses_parts:
        lines += moses_section(moses_parts)
    lines += ["## Machines and runs", ""]
    runs = {**parts, **{f"moses {part}": result for part, result in (moses_parts or {}).items()}}
    for part, result in runs.items():
        m = result["machine"]
        lines.append(f"- `{part}`: {m['date']}, commit {m['commit']}, {m['cpu_count']} CPUs ({m['processor']}), "
                     f"Python {m['python']}, {result['seconds'] / 60:.1f} min.")
    lines += ["", "## Other benchmarks", "",
              "Speed and memory scripts, each `python benchmarks/<name>.py`; their latest tables:", ""]
    for path in sorted(RESULTS.glob("*.md")):
        if not path.stem.startswith("eval_"):
            lines += [f"### {path.stem}", "", path.read_text().strip(), ""]
    (REPO / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=3,
                        help="Independent draws of -n DiScoFormer samples (seeds --seed, --seed + 1, ...), averaged.")
    parser.add_argument("--density-molecules", type=int, default=1000)
    parser.add_argument("--elbo-samples", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampler temperature of the DiScoFormer.")
    parser.add_argument("--only", default=",".join(PARTS), help="Comma-separated parts to (re)run.")
    parser.add_argument("--lm-epochs", type=int, default=10)
    parser.add_argument("--lm-max-minutes", type=float, default=35.0)
    args = parser.parse_args()
    chosen = [part for part in args.only.split(",") if part]
    unknown = set(chosen) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")

    data = load_reference_data(SHARED_DATA, args.density_molecules, seed=args.seed)
    for part in chosen:
        print(f"== {part}", flush=True)
        started = time.perf_counter()
        if part == "discoformer":
            result = evaluate_discoformer(load_model(args.checkpoint), data, args.n, args.seed, args.elbo_samples,
                                          SamplerSettings(temperature=args.temperature),
                                          log=lambda message: print(f"   {message}", flush=True), draws=args.draws)
            result["checkpoint"] = args.checkpoint or "bundled"
        elif part == "floor":
            result = {"generation": floor_reference(data, args.n, args.seed)}
        else:
            result = smiles_lm_part(data, args.n, args.seed, args.lm_epochs, args.lm_max_minutes)
        result.update(seconds=time.perf_counter() - started, machine=machine(),
                      settings={"n": args.n, "seed": args.seed, "density_molecules": args.density_molecules,
                                "draws": args.draws if part == "discoformer" else 1})
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"eval_{part}.json").write_text(json.dumps(result, indent=2) + "\n")
    rebuild_benchmarks_md()
    print((REPO / "BENCHMARKS.md").read_text())


def rebuild_benchmarks_md() -> None:
    """BENCHMARKS.md from every part file in benchmarks/results (QM9's and MOSES's)."""
    def read(prefix: str, names) -> dict:
        return {name: json.loads((RESULTS / f"{prefix}{name}.json").read_text())
                for name in names if (RESULTS / f"{prefix}{name}.json").is_file()}

    write_benchmarks_md(read("eval_", PARTS + QM9_ONLY_READ), read("eval_moses_", ("discoformer", "smiles_lm")))


if __name__ == "__main__":
    main()
