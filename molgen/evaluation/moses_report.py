"""``molgen evaluate --dist moses``: the MOSES protocol on a checkpoint's drug-like samples or on any
file of SMILES, beside the references measured in the same run.

The references: a random sample of the training set scored as if generated (the floor a perfect
generator reaches, drawn with replacement as a sampler's independent draws are) and, for the density
head, a kNN-Tanimoto scorer over the training set on the same held-out molecules and single-edit
mutants of them that are in neither MOSES split.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from molgen.checkpoint import LoadedModel
from molgen.evaluation.moses import ReferenceStatistics, cached_reference, moses_metrics
from molgen.evaluation.report import ReferenceData, discoformer_density, knn_reference
from molgen.mutants import single_edit_mutants
from molgen.pipeline import GenerateOptions, sample_molecules
from molgen.sampler import SamplerSettings

Log = Callable[[str], None]


def locate_moses(path: str | Path | None) -> Path:
    """The folder holding MOSES's ``train.csv.gz`` and ``test.csv.gz`` (default ../shared/data/moses)."""
    folder = Path(path) if path else Path("../shared/data/moses")
    missing = [name for name in ("train.csv.gz", "test.csv.gz") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} has no {' or '.join(missing)}: pass --moses-path, the folder with "
                                "MOSES's train.csv.gz and test.csv.gz")
    return folder


def load_moses_reference(folder: Path, density_molecules: int = 1000, seed: int = 0,
                         log: Log = lambda message: None) -> tuple[ReferenceData, ReferenceStatistics]:
    """The MOSES splits as canonical SMILES (train: the prepared set's), held-out molecules and their
    single-edit mutants for the density metrics, and the test set's cached statistics."""
    from molgen.data import prepare_dataset

    log("preparing MOSES (cached after the first run)")
    train_set, _ = prepare_dataset(folder / "train.csv.gz", aromatic_bonds=True)
    test_set, _ = prepare_dataset(folder / "test.csv.gz", aromatic_bonds=True, vocab=train_set.vocab, val_fraction=0.0)
    train = train_set.smiles.astype(str).tolist()
    test = test_set.smiles.astype(str).tolist()
    rng = np.random.default_rng(seed)
    density_test = [test[i] for i in np.sort(rng.permutation(len(test))[:density_molecules])]
    log("single-edit mutants of held-out molecules")
    known = set(train) | set(test)
    found = [m for m in single_edit_mutants(density_test, known, seed=seed,
                                            elements=("C", "N", "O", "S", "F", "Cl", "Br"), max_atoms=32) if m is not None]
    edits: dict[str, int] = {}
    for mutant in found:
        edits[mutant.edit] = edits.get(mutant.edit, 0) + 1
    data = ReferenceData(train, [], test, density_test, [m.smiles for m in found], edits, [], None)
    log("test-set statistics (ChemNet, fingerprints, fragments, scaffolds; cached after the first run)")
    return data, cached_reference(folder / "test.csv.gz")


def floor_reference(data: ReferenceData, statistics: ReferenceStatistics, n: int, seed: int) -> dict:
    """``n`` training molecules drawn with replacement, scored as if generated."""
    rng = np.random.default_rng(seed)
    sample = [data.train[i] for i in rng.integers(0, len(data.train), n)]
    return moses_metrics(sample, statistics, set(data.train))


def evaluate_moses(
    loaded: LoadedModel | None, data: ReferenceData, statistics: ReferenceStatistics, n: int = 10_000,
    seed: int = 0, elbo_samples: int = 256, sampler: SamplerSettings = SamplerSettings(), distribution: str = "moses",
    samples: list[str] | None = None, samples_raw_valid: list[bool] | None = None, log: Log = lambda message: None,
) -> dict:
    """The MOSES report: the generation metrics of ``n`` samples of ``distribution`` (or of ``samples``,
    with ``samples_raw_valid`` where their raw validity is known), the random-train floor, and with a
    model its density metrics beside kNN-Tanimoto's."""
    train = set(data.train)
    report: dict = {}
    if samples is None:
        log(f"sampling {n:,} molecules of {distribution} (seed {seed})")
        started = time.perf_counter()
        frame, _ = sample_molecules(loaded, GenerateOptions(n=n, seed=seed, sampler=sampler, distribution=distribution))
        seconds = time.perf_counter() - started
        log("MOSES metrics of the samples")
        report["generation"] = moses_metrics(frame["smiles"].tolist(), statistics, train, frame["raw_valid"].tolist())
        report["generation"]["sampling_molecules_per_second"] = n / seconds
    else:
        log(f"MOSES metrics of {len(samples):,} molecules")
        report["generation"] = moses_metrics(samples, statistics, train, samples_raw_valid)
    log("random-train floor")
    report["reference_train_sample"] = floor_reference(data, statistics, report["generation"]["samples"], seed)
    if loaded is not None:
        log(f"density metrics ({len(data.density_test):,} held-out molecules, {elbo_samples} ELBO levels)")
        report["density"] = discoformer_density(loaded, data, elbo_samples, seed, distribution=distribution)
        log("kNN-Tanimoto reference")
        report["reference_knn_tanimoto"] = knn_reference(data)
    report["decoys"] = {"test_molecules": len(data.density_test), "mutants": len(data.mutants),
                        "mutant_edits": data.mutant_edits}
    return report
