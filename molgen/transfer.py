"""Starting a model from another checkpoint's weights when the vocabularies differ.

Only the layers that read or write atom and bond types depend on the vocabulary: the input
embeddings (noisy channels and, with self-conditioning, the previous estimate) and the output heads.
Their rows and columns are carried over by key, so an atom type or bond type the source knew keeps
what it learned. A new type starts from its nearest old ones: an aromatic atom type with stated
hydrogens from the same element and charge, the aromatic bond from the mean of single and double
(its order 1.5 lies between them). Everything else must have the same shape and is copied; types with
no source keep their fresh initialisation. Derived input features the source lacks (Kekulé features
turned on for the new run) start with zero weights, so the model starts out computing what the
source computed.

Two tables grow with the data rather than the vocabulary: the atom positions (room for larger
molecules: the source's positions are kept, the new ones start fresh) and the ``[DIST]`` embeddings
(carried by distribution name; a new distribution starts from the source's null embedding, the
"any molecule" it learned, and the null stays the null).
"""

from __future__ import annotations

import torch

from molgen.model import DiScoConfig, DiScoFormer
from molgen.model.features import derived_atom_features
from molgen.tokenizer import Vocabulary

# Bond types without a counterpart in the source, as mixtures of source bond types.
NEW_BOND_SOURCES = {"aromatic": {"single": 0.5, "double": 0.5}}


def atom_mapping(source: Vocabulary, target: Vocabulary) -> torch.Tensor:
    """(target types, source types) weights: 1 for the same key, else for the key without hydrogens."""
    mapping = torch.zeros(target.num_atom_types, source.num_atom_types)
    for row, (symbol, charge, hydrogens) in enumerate(target.atom_types):
        column = source.index((symbol, charge, hydrogens))
        if column is None:
            column = source.index((symbol, charge, 0))
        if column is not None:
            mapping[row, column] = 1.0
    return mapping


def bond_mapping(source: Vocabulary, target: Vocabulary) -> torch.Tensor:
    """(target bond types, source bond types) weights, by name, new types per ``NEW_BOND_SOURCES``."""
    mapping = torch.zeros(target.num_bond_types, source.num_bond_types)
    for row, name in enumerate(target.bond_types):
        sources = {name: 1.0} if name in source.bond_types else NEW_BOND_SOURCES.get(name, {})
        for source_name, weight in sources.items():
            if source_name in source.bond_types:
                mapping[row, source.bond_types.index(source_name)] = weight
    return mapping


def _rows(mapping: torch.Tensor, old: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """Output rows mixed by ``mapping``; rows with no source keep ``fresh``."""
    mixed = mapping @ old.reshape(old.shape[0], -1)
    covered = mapping.sum(dim=1) > 0
    return torch.where(covered[:, None], mixed, fresh.reshape(fresh.shape[0], -1)).reshape(fresh.shape)


def _columns(
    segments: list[tuple[torch.Tensor | None, int, int]], old: torch.Tensor, fresh: torch.Tensor
) -> torch.Tensor:
    """Input columns of a linear layer whose input is a concatenation of segments, each
    (mapping, source width, target width): mapped by the matrix, copied as is when None, or zero
    when the source has no columns for it."""
    parts, start_old, start_new = [], 0, 0
    for mapping, source_width, width in segments:
        block_old = old[:, start_old : start_old + source_width]
        if not source_width:
            parts.append(torch.zeros_like(fresh[:, start_new : start_new + width]))
        elif mapping is None:
            parts.append(block_old)
        else:
            parts.append(_rows(mapping, block_old.T, fresh[:, start_new : start_new + width].T).T)
        start_old += source_width
        start_new += width
    return torch.cat(parts, dim=1)


def _derived_segments(source: DiScoConfig, target: DiScoConfig) -> list[tuple[None, int, int]]:
    """Column segments of the derived atom features: the source's copied, new ones zero."""
    source_widths = dict(derived_atom_features(source))
    target_names = {name for name, _ in derived_atom_features(target)}
    if missing := set(source_widths) - target_names:
        raise ValueError(f"the source checkpoint reads {', '.join(sorted(missing))} features this model does not")
    return [(None, source_widths.get(name, 0), width) for name, width in derived_atom_features(target)]


def transfer_weights(
    target: DiScoFormer, target_vocab: Vocabulary, source_state: dict, source_config: dict, source_vocab: Vocabulary,
    source_names: list[str] | None = None, target_names: list[str] | None = None,
) -> list[str]:
    """Load ``source_state`` into ``target`` through the vocabulary mappings; returns the names of the
    tensors that were mapped rather than copied. ``source_names`` and ``target_names`` are the two
    models' distributions (default: the same ones). Raises ValueError when the backbones differ."""
    atoms, bonds = atom_mapping(source_vocab, target_vocab), bond_mapping(source_vocab, target_vocab)
    config = target.config
    source_model = DiScoConfig.from_dict(source_config)
    if source_model.self_conditioning != config.self_conditioning:
        raise ValueError("the source checkpoint's self-conditioning differs from this model's")
    self_cond = config.self_conditioning
    atom_segment = (atoms, source_vocab.num_atom_types, target_vocab.num_atom_types)
    atom_segments = [atom_segment] + ([atom_segment] + _derived_segments(source_model, config) if self_cond else [])
    bond_segments = [(bonds, source_vocab.num_bond_types, target_vocab.num_bond_types)] * (2 if self_cond else 1)
    mapped_inputs = {"atom_in.weight": atom_segments, "bond_in.weight": bond_segments}
    mapped_outputs = {"atom_head.weight": atoms, "atom_head.bias": atoms,
                      "bond_head.3.weight": bonds, "bond_head.3.bias": bonds}
    # Mapped on CPU, where the source was read; loading copies onto the target's device.
    state = {name: value.cpu() for name, value in target.state_dict().items()}
    mapped = []
    for name, fresh in state.items():
        if name not in source_state:
            raise ValueError(f"the source checkpoint has no {name}: another architecture")
        old = source_state[name].to(fresh.dtype)
        if name in mapped_inputs:
            state[name] = _columns(mapped_inputs[name], old, fresh)
            mapped.append(name)
        elif name in mapped_outputs:
            state[name] = _rows(mapped_outputs[name], old, fresh)
            mapped.append(name)
        elif name == "position" and old.shape[1:] == fresh.shape[1:]:
            kept = min(len(old), len(fresh))
            state[name] = torch.cat([old[:kept], fresh[kept:]])
            if len(old) != len(fresh):
                mapped.append(name)
        elif name == "dist.weight" and target_names is not None and source_names not in (None, target_names):
            state[name] = _distribution_rows(old, source_names, target_names)
            mapped.append(name)
        elif old.shape != fresh.shape:
            raise ValueError(f"{name} is {tuple(old.shape)} in the source and {tuple(fresh.shape)} here")
        else:
            state[name] = old
    target.load_state_dict(state)
    return mapped


def _distribution_rows(old: torch.Tensor, source_names: list[str], target_names: list[str]) -> torch.Tensor:
    """``[DIST]`` embeddings (one row per distribution, then the null one) carried by name; a
    distribution the source lacks starts from its null row."""
    null = old[len(source_names)]
    rows = [old[source_names.index(name)] if name in source_names else null for name in target_names]
    return torch.stack(rows + [null])
