"""Generate: propose with the score, filter with the density, check with RDKit (docs/design.md, section 4).

sample -> decode_raw (``raw_valid``) and decode_constrained -> canonical SMILES -> duplicates marked
-> ``log_density`` from the density head -> ``density_percentile`` against the checkpoint's
calibration quantiles -> density filter (a floor, and the unique samples thinned where they outnumber
the data's density profile: ``thinned``) -> RDKit checks and windows -> ranked table, one row per
sample, each with why it passed or failed. ``rank`` sorts the molecules that passed by
``log_density``, most probable first.

With ``targets`` (``qed>=0.6``, ``clogp=1..3``) the sampler is guided towards their windows by the
property head (:mod:`molgen.guidance`), the windows join the RDKit checks, and ``on_target`` says
which molecules are inside all of them by RDKit's values. Guided samples follow the data tilted
towards the windows, not the data: they are not thinned to the data's density profile (the floor
still applies).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import pandas as pd
import torch

from molgen.checkpoint import LoadedModel
from molgen.checks import OPERATORS, CheckConfig, run_checks
from molgen.chemistry import canonical_smiles
from molgen.decode import decode_constrained, decode_raw
from molgen.guidance import Target
from molgen.novelty import is_novel
from molgen.model import model_denoiser
from molgen.sampler import SamplerSettings, sample
from molgen.scoring import Scorer, distribution_index, passes_density, thin_to_data_profile

# generate's floor under the profile rule: the lowest half percent of held-out molecules' density, where
# failed samples gather (on 3 x 10,000 QM9 samples it removes about 1.3% of them).
GENERATE_MIN_PERCENTILE = 0.5
DEFAULT_GUIDANCE_SCALE = 2.0


@dataclass
class GenerateOptions:
    n: int = 1000
    seed: int = 0
    batch_size: int = 500
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    distribution: str | None = None  # a training distribution's name; None: the first one
    num_atoms: int | None = None  # fixed size; None: drawn from the distribution's size histogram
    min_percentile: float = GENERATE_MIN_PERCENTILE
    match_profile: bool = True  # thin the samples where they outnumber the data's density profile
    apply_filters: bool = True
    checks: CheckConfig = field(default_factory=CheckConfig)
    targets: tuple[Target, ...] = ()  # property windows to guide the sampler towards
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    device: str = "cpu"


def sample_molecules(
    loaded: LoadedModel, options: GenerateOptions, on_progress: Callable[[int], None] | None = None
) -> tuple[pd.DataFrame, dict]:
    """Sampling and decoding only: one row per sample with ``smiles``, ``raw_valid``, ``raw_failure``,
    ``repaired`` (the constrained decode changed the raw graph) and ``num_atoms``."""
    device = torch.device(options.device)
    model = loaded.model.to(device)
    dist_index = distribution_index(loaded, options.distribution)
    size_probs = torch.tensor(loaded.size_distributions[dist_index], dtype=torch.float64)
    generator = torch.Generator(device=device).manual_seed(options.seed)
    size_generator = torch.Generator().manual_seed(options.seed)
    n_max = loaded.vocab.max_atoms
    rows: list[dict] = []
    moves = accepted = 0
    done = 0
    while done < options.n:
        count = min(options.batch_size, options.n - done)
        if options.num_atoms is not None:
            if not 1 <= options.num_atoms <= n_max:
                raise ValueError(f"--num-atoms must be between 1 and {n_max} for this model")
            sizes = torch.full((count,), options.num_atoms)
        else:
            sizes = torch.multinomial(size_probs, count, replacement=True, generator=size_generator)
        # Padded to the batch's largest molecule, not the vocabulary's: pair features cost N^2.
        mask = (torch.arange(int(sizes.max()))[None, :] < sizes[:, None]).to(device)
        dist = torch.full((count,), dist_index, dtype=torch.long, device=device)
        denoiser = model_denoiser(model, mask, dist, loaded.noise, options.targets, options.guidance_scale)
        result = sample(
            denoiser, mask, loaded.vocab.num_atom_types, loaded.vocab.num_bond_types, loaded.noise, options.sampler, generator
        )
        moves += result.corrector_moves
        accepted += result.corrector_accepted
        atoms, bonds = result.atoms.cpu().numpy(), result.bonds.cpu().numpy()
        for i, k in enumerate(sizes.tolist()):
            raw = decode_raw(atoms[i, :k], bonds[i, :k, :k], loaded.vocab)
            fixed = decode_constrained(atoms[i, :k], bonds[i, :k, :k], loaded.vocab, raw)
            rows.append({
                "smiles": canonical_smiles(fixed.mol),
                "raw_valid": raw.valid,
                "raw_failure": raw.failure or "",
                "repaired": fixed.changed,
                "num_atoms": k,
            })
        done += count
        if on_progress:
            on_progress(done)
    # Unadjusted corrector moves count as accepted; a rate is only news when MALA tested them.
    stats = {"corrector_moves": moves, "corrector_accepted": accepted,
             "acceptance_rate": accepted / moves if moves and options.sampler.mala else None}
    return pd.DataFrame(rows), stats


def generate(
    loaded: LoadedModel, options: GenerateOptions, on_progress: Callable[[int], None] | None = None
) -> tuple[pd.DataFrame, dict]:
    """The full generate pipeline: one row per sample, ranked; plus run statistics."""
    frame, stats = sample_molecules(loaded, options, on_progress)
    frame["unique"] = ~frame["smiles"].duplicated()
    if loaded.train_hashes is not None:
        frame["novel"] = is_novel(frame["smiles"].tolist(), loaded.train_hashes)
    else:
        frame["novel"] = pd.NA  # the checkpoint carries no training set to compare with
    scorer = Scorer(loaded, options.distribution, options.device)
    scores = scorer.score_smiles(frame["smiles"].tolist(), frame.index)
    frame["log_density"] = scores["log_density"]
    frame["density_percentile"] = scores["density_percentile"]
    frame["thinned"] = False
    if options.match_profile and not options.targets:
        unique = frame["unique"].to_numpy()
        frame.loc[unique, "thinned"] = ~thin_to_data_profile(frame.loc[unique, "density_percentile"], options.seed)
    frame["passed_density"] = passes_density(frame["density_percentile"], options.min_percentile) & ~frame["thinned"]
    target_windows = tuple(window for target in options.targets for window in target.windows())
    check_config = replace(options.checks, windows=options.checks.windows + target_windows)
    checks = run_checks(frame["smiles"].tolist(), check_config, index=frame.index)
    frame["passed_checks"] = checks["passed_checks"]
    if options.targets:
        inside = [OPERATORS[window.op](checks[window.prop], window.value) for window in target_windows]
        frame["on_target"] = (checks["status"] == "ok") & np.logical_and.reduce(inside)
    frame["failed_checks"] = checks["failed_checks"]
    properties = checks.drop(columns=["status", "reason", "passed_checks", "failed_checks"])
    frame = pd.concat([frame, properties], axis=1)
    # The rank orders by log_density: a sample the density head could not read (its decoded molecule
    # outside the model's vocabulary) stays unranked, with or without the filters.
    scored = frame["log_density"].notna()
    eligible = frame["unique"] & scored
    if options.apply_filters:
        eligible &= frame["passed_density"] & frame["passed_checks"]
    order = frame.loc[eligible, "log_density"].rank(ascending=False, method="first")
    frame["rank"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    frame.loc[eligible, "rank"] = order.astype("int64").to_numpy()
    stats.update({
        # Without calibration (the null distribution, a checkpoint saved before its first epoch ended)
        # there are no percentiles, and a floor above 0 rejects every sample: the CLI says why.
        "calibrated": scorer.quantiles is not None,
        "proposed": len(frame),
        "raw_valid": int(frame["raw_valid"].sum()),
        "unique": int(frame["unique"].sum()),
        "novel": int(frame["novel"].sum()) if frame["novel"].notna().all() else None,
        "thinned": int(frame["thinned"].sum()),
        "unscored": int((frame["unique"] & ~scored).sum()),
        "passed_density": int((frame["unique"] & frame["passed_density"]).sum()),
        "passed_checks": int((frame["unique"] & frame["passed_checks"]).sum()),
        "passed_both": int((frame["unique"] & frame["passed_density"] & frame["passed_checks"]).sum()),
    })
    if options.targets:
        stats["on_target"] = int((frame["unique"] & frame["on_target"]).sum())
    frame = frame.sort_values("rank", na_position="last", kind="stable").reset_index(drop=True)
    return frame, stats
